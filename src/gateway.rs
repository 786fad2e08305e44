//! The S3 gateway (`datenlord_s3`) of a node: `datenlord mount …
//! --s3-listen ADDR` serves it in the mount's process, over the same file
//! system and cache, telling the mount's kernel caches what it changes;
//! `datenlord gateway --listen ADDR -- [mount flags]` serves it alone (the
//! node's assembly without the FUSE mount).

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use datenlord_fs::{Fs, Ino};
use datenlord_s3::{Gateway, KernelCaches, Users};
use tracing::{info, warn};

/// `datenlord gateway` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct GatewayArgs {
    /// Where S3 clients reach the gateway (HTTP, path-style requests).
    #[arg(long, default_value = "127.0.0.1:9000", value_name = "HOST:PORT")]
    listen: String,
    /// After `--`: the flags of `datenlord mount` saying which file system
    /// to serve (`--data-dir`, `--store`, `--masters` with `--node-id`,
    /// cache sizes…); none for the embedded defaults.
    #[arg(last = true, value_name = "MOUNT FLAGS")]
    node: Vec<String>,
}

/// The node flags of a gateway, parsed as `datenlord mount`'s.
#[derive(Debug, clap::Parser)]
#[command(name = "datenlord gateway --listen ADDR --", no_binary_name = true)]
struct NodeFlags {
    #[command(flatten)]
    node: crate::mount::MountArgs,
}

/// Runs `datenlord gateway` in the foreground until SIGTERM or SIGINT.
pub(crate) fn run(args: &GatewayArgs) -> anyhow::Result<ExitCode> {
    use clap::Parser as _;
    // `datenlord mount`'s flags, with a mount point it never uses.
    let words = std::iter::once("/".to_string()).chain(args.node.iter().cloned());
    let flags = NodeFlags::try_parse_from(words)
        .map_err(|e| anyhow::anyhow!("the node flags after --: {e}"))?;
    let node = flags.node;
    anyhow::ensure!(
        node.s3_listen.is_none(),
        "--s3-listen is for `datenlord mount`: give the gateway's address as --listen"
    );
    let data_dir = node
        .data_dir
        .clone()
        .unwrap_or_else(crate::mount::default_data_dir);
    crate::mount::private_dir(&data_dir, "the data directory")?;
    let data_dir = data_dir.canonicalize()?;
    let mut ready = crate::daemon::Ready::foreground();
    crate::mount::serve(
        &node,
        &crate::mount::Front::S3(&args.listen),
        &data_dir,
        &mut ready,
    )?;
    Ok(ExitCode::SUCCESS)
}

/// The gateway's threads (its file system calls run on tokio's blocking
/// threads).
const S3_WORKER_THREADS: usize = 2;

/// The mount's kernel caches, told of the gateway's changes.
struct MountCaches(datenlord_fuse::Notifier);

impl KernelCaches for MountCaches {
    fn forget_entry(&self, parent: Ino, name: &[u8]) {
        self.0.forget_entry(parent.0, name);
    }

    fn forget_inode(&self, ino: Ino) {
        self.0.forget_inode(ino.0);
    }
}

/// What the gateway serves with: its users, its TLS, the mount's kernel
/// caches (when it runs beside a mount).
struct Front {
    users: Users,
    tls: Option<Arc<datenlord_s3::tls::ServerConfig>>,
    notifier: Option<datenlord_fuse::Notifier>,
    mounted: bool,
}

/// A running gateway.
pub(crate) struct S3Gateway {
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
    stats: Arc<datenlord_s3::S3Stats>,
}

/// The gateway's users when it is asked for (`--s3-listen`, or
/// `datenlord gateway`): from `--s3-credentials` when given, else from the
/// environment; read before the mount, so a missing or bad one fails the
/// start.
pub(crate) fn users(
    listen: Option<&str>,
    credentials: Option<&std::path::Path>,
) -> anyhow::Result<Option<Users>> {
    listen
        .map(|_| match credentials {
            Some(path) => Users::from_file(path).map_err(|e| format!("--s3-credentials: {e}")),
            None => Users::from_env(|name| std::env::var(name).ok()),
        })
        .transpose()
        .map_err(anyhow::Error::msg)
}

/// The gateway's HTTPS configuration when it is asked for: from
/// `--s3-tls-cert`/`--s3-tls-key`, else from the node's `--tls-dir` when
/// its cluster certificate names hosts (`certs issue --host`), else none
/// (HTTP, with a warning on a node with certificates); loaded before the
/// mount, so a bad file fails the start.
pub(crate) fn tls(
    listen: Option<&str>,
    args: &crate::mount::MountArgs,
) -> anyhow::Result<Option<Arc<datenlord_s3::tls::ServerConfig>>> {
    use datenlord_cluster::tls::{CERT_FILE, KEY_FILE};
    if listen.is_none() {
        return Ok(None);
    }
    let files = match (&args.s3_tls_cert, &args.s3_tls_key, &args.tls_dir) {
        (Some(cert), Some(key), _) => datenlord_s3::tls::CertFiles {
            cert: cert.clone(),
            key: key.clone(),
        },
        (None, None, Some(dir)) => {
            let hosts = datenlord_cluster::tls::host_names(dir).context("--tls-dir")?;
            if hosts.is_empty() {
                warn!("the S3 gateway serves plain HTTP: the node's certificate names no host for S3 clients to check (issue it with `datenlord certs issue --host NAME`, or give --s3-tls-cert and --s3-tls-key)");
                return Ok(None);
            }
            info!(
                ?hosts,
                "the S3 gateway serves HTTPS with the node's certificate"
            );
            datenlord_s3::tls::CertFiles {
                cert: dir.join(CERT_FILE),
                key: dir.join(KEY_FILE),
            }
        }
        (None, None, None) => return Ok(None),
        _ => anyhow::bail!("give both --s3-tls-cert and --s3-tls-key, or neither"),
    };
    let cert = files.cert.display().to_string();
    let config = datenlord_s3::tls::server_config(files).context("the S3 gateway's TLS")?;
    info!(%cert, "the S3 gateway serves HTTPS");
    Ok(Some(config))
}

impl S3Gateway {
    /// Listens on `listen` and serves `fs` (mounted as `mount`, if it
    /// is) to `users`, over HTTPS with `tls`; nothing when `listen` or the
    /// users are not given.
    pub(crate) fn start(
        listen: Option<&str>,
        (users, tls): (Option<Users>, Option<Arc<datenlord_s3::tls::ServerConfig>>),
        fs: &Arc<Fs>,
        mount: Option<&datenlord_fuse::Mount>,
    ) -> anyhow::Result<Option<Self>> {
        let (Some(listen), Some(users)) = (listen, users) else {
            return Ok(None);
        };
        let notifier = mount.and_then(datenlord_fuse::Mount::notifier);
        let front = Front {
            users,
            tls,
            notifier,
            mounted: mount.is_some(),
        };
        Self::serve(listen, Arc::clone(fs), front).map(Some)
    }

    /// Serves until SIGTERM or SIGINT (`signals`, blocked in every
    /// thread), then flushes what is written and stops (the gateway without
    /// a mount: `datenlord gateway`).
    pub(crate) fn serve_until_signal(
        self,
        signals: libc::sigset_t,
        fs: &Arc<Fs>,
        security: Option<&datenlord_cluster::link::Security>,
    ) -> anyhow::Result<()> {
        let signal = crate::wait_for_stop_signal(&signals, security);
        info!(signal, "stopping the S3 gateway on signal");
        self.stop();
        futures::executor::block_on(fs.flush_all()).context("flushing before the stop")
    }

    fn serve(listen: &str, fs: Arc<Fs>, front: Front) -> anyhow::Result<Self> {
        let Front {
            users,
            tls,
            notifier,
            mounted,
        } = front;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(S3_WORKER_THREADS)
            .thread_name("s3")
            .enable_all()
            .build()
            .context("starting the S3 gateway's runtime")?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(listen))
            .with_context(|| format!("listening on --s3-listen {listen}"))?;
        let addr = listener.local_addr().context("the S3 gateway's address")?;
        if mounted && notifier.is_none() {
            warn!("the mount's kernel caches are not told of S3 changes: names the gateway changes show on the mount after its entry timeout");
        }
        let kernel = notifier.map(|n| Arc::new(MountCaches(n)) as Arc<dyn KernelCaches>);
        let gateway = Gateway::new(fs, users, kernel);
        let stats = gateway.stats();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("s3-gateway".into())
            .spawn(move || {
                runtime.block_on(datenlord_s3::serve(listener, gateway, tls, async {
                    let _ = stopped.await;
                }));
            })
            .context("starting the S3 gateway's thread")?;
        info!(%addr, "serving the namespace over S3");
        Ok(Self {
            stop,
            thread,
            stats,
        })
    }

    /// Its counters per S3 operation.
    pub(crate) fn stats(&self) -> Arc<datenlord_s3::S3Stats> {
        Arc::clone(&self.stats)
    }

    /// Stops taking requests and waits for those in flight.
    pub(crate) fn stop(self) {
        let _ = self.stop.send(());
        if self.thread.join().is_err() {
            warn!("the S3 gateway's thread panicked");
        }
    }
}
