//! `datenlord csi`: the Kubernetes CSI plugin (controller, node or both)
//! on a unix socket, over the node's DatenLord mount. The plugin mounts
//! DatenLord itself (`datenlord mount MOUNTPOINT ARGS...`, the arguments
//! after `--`) when the mount point is not mounted, at start and again
//! whenever a request finds the mount gone; `--no-mount` uses a mount
//! someone else keeps. SIGTERM or SIGINT stops it and removes the socket;
//! the DatenLord mount stays (pods use it through their bind mounts).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

/// `datenlord csi --help`'s example.
const CSI_EXAMPLE: &str = r#"Example (one node serving both services, embedded defaults):
  datenlord csi --endpoint unix:///csi/csi.sock --controller --node --node-name "$NODE_NAME" \
    --mountpoint /var/lib/datenlord/mnt -- --data-dir /var/lib/datenlord/data

On several nodes, every plugin must mount the same namespace: give the mount
arguments of a node of a master group (--masters, --node-id, --node-listen and
a shared --store); embedded defaults give each node a namespace of its own."#;

#[derive(Debug, clap::Args)]
#[command(after_help = CSI_EXAMPLE)]
pub struct CsiArgs {
    /// The CSI socket to serve: `unix:///path/csi.sock`.
    #[arg(long, env = "CSI_ENDPOINT")]
    endpoint: String,
    /// Serve the controller service (CreateVolume, DeleteVolume, ...).
    #[arg(long)]
    controller: bool,
    /// Serve the node service (stage, publish, stats, ...).
    #[arg(long, requires = "node_name")]
    node: bool,
    /// This node's Kubernetes node name (not the Raft --node-id): the node
    /// id the CO sees and the value of the topology key
    /// `topology.csi.datenlord.io/node`.
    #[arg(long = "node-name", env = "NODE_NAME", value_name = "NAME")]
    node_name: Option<String>,
    /// The node's DatenLord mount: volumes are directories of it.
    #[arg(long, value_name = "DIR")]
    mountpoint: PathBuf,
    /// The directory of the namespace that holds the volumes.
    #[arg(
        long = "volumes-dir",
        value_name = "NAME",
        default_value = "csi-volumes"
    )]
    volumes_dir: String,
    /// Never mount: use the DatenLord mount at --mountpoint that someone
    /// else keeps (requests fail with UNAVAILABLE while it is not there).
    #[arg(long = "no-mount")]
    no_mount: bool,
    /// Arguments of `datenlord mount` when the plugin mounts (after `--`:
    /// `--data-dir`, `--store`, `--masters`, `--cache-dir`, ...). The
    /// plugin adds `-o allow_other`: pods run as any user.
    #[arg(last = true, value_name = "MOUNT-ARGS")]
    mount_args: Vec<OsString>,
}

/// `dir` with its parent resolved (the mount table shows resolved
/// paths); `dir` itself may be a dead mount, so it is not resolved.
fn resolved_mountpoint(dir: &Path) -> anyhow::Result<PathBuf> {
    let absolute =
        std::path::absolute(dir).with_context(|| format!("--mountpoint {}", dir.display()))?;
    let (Some(parent), Some(name)) = (absolute.parent(), absolute.file_name()) else {
        anyhow::bail!(
            "--mountpoint {}: give a directory other than /",
            dir.display()
        );
    };
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let parent =
        std::fs::canonicalize(parent).with_context(|| format!("resolving {}", parent.display()))?;
    Ok(parent.join(name))
}

fn config(args: &CsiArgs) -> anyhow::Result<datenlord_csi::Config> {
    anyhow::ensure!(
        args.controller || args.node,
        "give --controller, --node or both: which services this plugin serves"
    );
    datenlord_csi::volume::VolumeName::parse(&args.volumes_dir)
        .map_err(|why| anyhow::anyhow!("--volumes-dir: {why}"))?;
    let socket = datenlord_csi::socket_path(&args.endpoint).map_err(anyhow::Error::msg)?;
    let mountpoint = resolved_mountpoint(&args.mountpoint)?;
    anyhow::ensure!(
        !args.no_mount || args.mount_args.is_empty(),
        "--no-mount and mount arguments after `--` contradict each other"
    );
    let mount_command = (!args.no_mount)
        .then(|| {
            let exe = std::env::current_exe().context("finding this executable to mount with")?;
            let mut command: Vec<OsString> = vec![
                exe.into(),
                "mount".into(),
                mountpoint.clone().into(),
                "-o".into(),
                "allow_other".into(),
            ];
            command.extend(args.mount_args.iter().cloned());
            Ok::<_, anyhow::Error>(command)
        })
        .transpose()?;
    Ok(datenlord_csi::Config {
        socket,
        mountpoint,
        mount_command,
        volumes_dir: args.volumes_dir.clone(),
        controller: args.controller,
        node_name: args.node.then(|| args.node_name.clone()).flatten(),
    })
}

/// Runs the plugin until SIGTERM or SIGINT.
pub fn run(args: &CsiArgs) -> anyhow::Result<ExitCode> {
    let config = config(args)?;
    let stopped = stop_signal("the CSI plugin")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(CSI_WORKER_THREADS)
        .thread_name("csi")
        .enable_all()
        .build()
        .context("starting the CSI plugin's runtime")?;
    let socket = config.socket.clone();
    runtime
        .block_on(datenlord_csi::serve(config, stopped))
        .with_context(|| format!("CSI plugin on {}", socket.display()))?;
    tracing::info!("CSI plugin stopped; the DatenLord mount stays");
    Ok(ExitCode::SUCCESS)
}

/// Completes at SIGTERM or SIGINT (logged as stopping `what`). Call it
/// before any other thread starts: the signals are blocked here, so only
/// its waiting thread takes them.
pub(crate) fn stop_signal(
    what: &'static str,
) -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    let signals = crate::block_stop_signals();
    let (stop, stopped) = tokio::sync::oneshot::channel::<i32>();
    std::thread::Builder::new()
        .name("stop-signals".into())
        .spawn(move || {
            let signal = crate::wait_for_stop_signal(&signals, None);
            let _ = stop.send(signal);
        })
        .context("starting the signal thread")?;
    Ok(async move {
        if let Ok(signal) = stopped.await {
            tracing::info!(signal, "stopping {what}");
        }
    })
}

/// The gRPC runtime's threads (the file system work runs on tokio's
/// blocking threads).
const CSI_WORKER_THREADS: usize = 2;
