//! Serving the CSI services on a unix socket, and a client of them.

use std::ffi::OsString;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::controller::ControllerService;
use crate::error::{Error, Result};
use crate::identity::IdentityService;
use crate::namespace::Namespace;
use crate::node::NodeService;
use crate::proto::controller_server::ControllerServer;
use crate::proto::identity_server::IdentityServer;
use crate::proto::node_server::NodeServer;
use crate::store::VolumeStore;

/// The socket's mode: whoever can connect can mount as root.
const SOCKET_MODE: u32 = 0o600;

/// How long requests in flight may finish after the stop signal.
const SHUTDOWN_GRACE_S: u64 = 10;

/// What the plugin serves and where its volumes live.
#[derive(Debug, Clone)]
pub struct Config {
    /// The unix socket to serve (from `unix:///path`).
    pub socket: PathBuf,
    /// The node's DatenLord mount (absolute, no symbolic links).
    pub mountpoint: PathBuf,
    /// The program and arguments that mount it when it is not mounted
    /// (`None`: it must be mounted by someone else).
    pub mount_command: Option<Vec<OsString>>,
    /// The directory of the namespace that holds the volumes (a name).
    pub volumes_dir: String,
    /// Serve the controller service.
    pub controller: bool,
    /// Serve the node service as this node (the Kubernetes node name).
    pub node_name: Option<String>,
}

/// The socket path of a CSI endpoint: `unix:///abs/path` (or the bare
/// absolute path, as the sidecars accept).
pub fn socket_path(endpoint: &str) -> std::result::Result<PathBuf, String> {
    let path = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
    if !path.starts_with('/') {
        return Err(format!(
            "endpoint {endpoint:?}: give a unix socket as unix:///absolute/path"
        ));
    }
    Ok(PathBuf::from(path))
}

/// Removes a socket a dead plugin left; refuses one a live plugin serves.
fn clear_stale_socket(path: &Path) -> Result<()> {
    let serve_error = |message: String| Error::Serve {
        path: path.to_path_buf(),
        message,
    };
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(serve_error(e.to_string())),
        Ok(meta) => {
            use std::os::unix::fs::FileTypeExt as _;
            if !meta.file_type().is_socket() {
                return Err(serve_error("the path exists and is not a socket".into()));
            }
        }
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(serve_error(
            "another plugin serves this socket: stop it first".into(),
        ));
    }
    std::fs::remove_file(path).map_err(|e| serve_error(format!("removing the stale socket: {e}")))
}

/// A listener on `socket` that takes connections from the moment the path
/// exists: `bind(2)` makes the file before `listen(2)` lets anyone in, so
/// the socket is made under a private name, made to listen and given its
/// mode, then renamed into place (a client, kubelet's registrar or a test,
/// that sees the path never gets ECONNREFUSED).
fn listen(socket: &Path) -> Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    let serve_error = |message: String| Error::Serve {
        path: socket.to_path_buf(),
        message,
    };
    let dir = socket.parent().unwrap_or_else(|| Path::new("/"));
    let private = dir.join(format!(".csi-{}.sock", std::process::id()));
    match std::fs::remove_file(&private) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(serve_error(format!("removing {}: {e}", private.display())));
        }
        _ => {}
    }
    let listener = tokio::net::UnixListener::bind(&private)
        .map_err(|e| serve_error(format!("binding {}: {e}", private.display())))?;
    let placed = std::fs::set_permissions(&private, std::fs::Permissions::from_mode(SOCKET_MODE))
        .and_then(|()| std::fs::rename(&private, socket));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&private);
        return Err(serve_error(format!(
            "placing the socket (made as {}): {e}",
            private.display()
        )));
    }
    Ok(listener)
}

/// Serves the identity service and, as configured, the controller and
/// node services on `config.socket` until `shutdown` completes; then
/// removes the socket.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
    let namespace = Arc::new(Namespace::new(
        config.mountpoint.clone(),
        config.mount_command.clone(),
    ));
    // Mount now when the plugin mounts, so a bad mount command shows at
    // start (a mount kept by someone else may come later: requests wait
    // for it with UNAVAILABLE); and remove what deletions that a crash
    // interrupted left.
    let purge = {
        let namespace = Arc::clone(&namespace);
        let store = VolumeStore::new(&config.mountpoint, &config.volumes_dir);
        let mounts = config.mount_command.is_some();
        tokio::task::spawn_blocking(move || {
            if mounts {
                namespace.ensure()?;
            }
            if namespace.live().is_some() {
                store.purge_trash();
            }
            Ok::<_, Error>(())
        })
    };
    purge
        .await
        .map_err(|e| Error::Unavailable(e.to_string()))??;
    if let Some(dir) = config.socket.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    }
    clear_stale_socket(&config.socket)?;
    let listener = listen(&config.socket)?;
    let controller = config.controller.then(|| {
        ControllerServer::new(ControllerService::new(
            Arc::clone(&namespace),
            &config.volumes_dir,
        ))
    });
    let node = config.node_name.clone().map(|name| {
        NodeServer::new(NodeService::new(
            name,
            Arc::clone(&namespace),
            &config.volumes_dir,
        ))
    });
    tracing::info!(
        socket = %config.socket.display(),
        mountpoint = %config.mountpoint.display(),
        controller = config.controller,
        node = ?config.node_name,
        "serving CSI"
    );
    // After the shutdown signal, requests in flight get a grace period
    // (one stuck on a hung mount must not keep the plugin from exiting).
    let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tonic::transport::Server::builder()
        .add_service(IdentityServer::new(IdentityService::new(
            Arc::clone(&namespace),
            config.controller,
        )))
        .add_optional_service(controller)
        .add_optional_service(node)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            async move {
                shutdown.await;
                let _ = stopping.send(());
            },
        );
    let outcome = tokio::select! {
        outcome = serving => outcome,
        () = async {
            if stopped.await.is_ok() {
                tokio::time::sleep(std::time::Duration::from_secs(SHUTDOWN_GRACE_S)).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => {
            tracing::warn!("requests still in flight {SHUTDOWN_GRACE_S} s after the stop: stopping anyway");
            Ok(())
        }
    };
    let removed = std::fs::remove_file(&config.socket);
    outcome.map_err(|e| Error::Serve {
        path: config.socket.clone(),
        message: e.to_string(),
    })?;
    removed.map_err(Error::io(format!("removing {}", config.socket.display())))
}

/// A gRPC channel to the plugin serving `socket` (for the CSI clients in
/// `proto`: `IdentityClient::new(channel)`, ...).
pub async fn connect(socket: &Path) -> Result<tonic::transport::Channel> {
    let path = socket.to_path_buf();
    // The URI is required by the API and unused: the connector dials the socket.
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| Error::Serve {
            path: socket.to_path_buf(),
            message: format!("connecting: {e}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_unix_sockets_at_absolute_paths() {
        assert_eq!(
            socket_path("unix:///csi/csi.sock").ok(),
            Some(PathBuf::from("/csi/csi.sock"))
        );
        assert_eq!(
            socket_path("/csi/csi.sock").ok(),
            Some(PathBuf::from("/csi/csi.sock"))
        );
        for bad in ["unix://csi.sock", "tcp://127.0.0.1:10000", "csi.sock", ""] {
            assert!(socket_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_stale_socket_is_removed_a_live_one_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("csi.sock");
        assert!(clear_stale_socket(&path).is_ok(), "nothing there");
        let live = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        assert!(matches!(
            clear_stale_socket(&path),
            Err(Error::Serve { .. })
        ));
        drop(live);
        assert!(clear_stale_socket(&path).is_ok());
        assert!(!path.exists());
        std::fs::write(&path, b"x").expect("a file");
        assert!(clear_stale_socket(&path).is_err(), "not a socket: kept");
    }

    #[tokio::test]
    async fn the_socket_appears_listening_with_its_mode_and_nothing_else_is_left() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("csi.sock");
        let listener = listen(&path).expect("listen");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, SOCKET_MODE);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("csi.sock")]);
        let client = tokio::net::UnixStream::connect(&path);
        let (accepted, connected) = tokio::join!(listener.accept(), client);
        accepted.expect("accept");
        connected.expect("connect");
        // A directory that is not there: a clear error, nothing made.
        let err = listen(&dir.path().join("gone/csi.sock")).expect_err("no directory");
        assert!(err.to_string().contains("binding"), "{err}");
    }
}
