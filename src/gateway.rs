//! `datenlord mount … --s3-listen ADDR`: the S3 gateway (`datenlord_s3`)
//! in the mount's process, over the same file system and cache, telling
//! the mount's kernel caches what it changes.

use std::sync::Arc;

use anyhow::Context;
use datenlord_fs::{Fs, Ino};
use datenlord_s3::{Gateway, KernelCaches, Users};
use tracing::{info, warn};

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

/// A running gateway.
pub(crate) struct S3Gateway {
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

/// The gateway's users when it is asked for (`--s3-listen`): read before
/// the mount, so a missing access key fails the start.
pub(crate) fn users(listen: Option<&str>) -> anyhow::Result<Option<Users>> {
    listen
        .map(|_| Users::from_env(|name| std::env::var(name).ok()))
        .transpose()
        .map_err(anyhow::Error::msg)
}

impl S3Gateway {
    /// Listens on `listen` and serves `fs` (mounted as `mount`) to
    /// `users`; nothing when either is not given.
    pub(crate) fn start(
        listen: Option<&str>,
        users: Option<Users>,
        fs: &Arc<Fs>,
        mount: &datenlord_fuse::Mount,
    ) -> anyhow::Result<Option<Self>> {
        let (Some(listen), Some(users)) = (listen, users) else {
            return Ok(None);
        };
        Self::serve(listen, Arc::clone(fs), users, mount.notifier()).map(Some)
    }

    fn serve(
        listen: &str,
        fs: Arc<Fs>,
        users: Users,
        notifier: Option<datenlord_fuse::Notifier>,
    ) -> anyhow::Result<Self> {
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
        if notifier.is_none() {
            warn!("the mount's kernel caches are not told of S3 changes: names the gateway changes show on the mount after its entry timeout");
        }
        let kernel = notifier.map(|n| Arc::new(MountCaches(n)) as Arc<dyn KernelCaches>);
        let gateway = Gateway::new(fs, users, kernel);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("s3-gateway".into())
            .spawn(move || {
                runtime.block_on(datenlord_s3::serve(listener, gateway, async {
                    let _ = stopped.await;
                }));
            })
            .context("starting the S3 gateway's thread")?;
        info!(%addr, "serving the namespace over S3");
        Ok(Self { stop, thread })
    }

    /// Stops taking requests and waits for those in flight.
    pub(crate) fn stop(self) {
        let _ = self.stop.send(());
        if self.thread.join().is_err() {
            warn!("the S3 gateway's thread panicked");
        }
    }
}
