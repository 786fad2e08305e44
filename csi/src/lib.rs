//! DatenLord's Kubernetes CSI driver (CSI spec v1): the identity,
//! controller and node services over a unix socket.
//!
//! A volume is a directory of the DatenLord namespace
//! (`/<volumes-dir>/<name>`), its capacity recorded in the directory's
//! `trusted.datenlord.quota` attribute (`store`). The node service
//! stages a volume as a bind mount of that directory from the node's
//! DatenLord mount (`namespace`), and publishes it as a bind mount of the
//! staging path, read-only when asked (`node`). The deciding parts
//! (names, capacity ranges, pagination, the mount table, request checks)
//! are plain functions without IO; the services call them and do the file
//! system work on blocking threads. The data-locality scheduler
//! extender (`extender`) lives here too.

pub mod bind;
pub mod capability;
pub mod controller;
pub mod error;
pub mod extender;
pub mod identity;
pub mod inflight;
pub mod mountinfo;
pub mod namespace;
pub mod node;
pub mod page;
pub mod server;
pub mod store;
pub mod volume;

pub use error::{Error, Result};
pub use identity::DRIVER_NAME;
pub use server::{connect, serve, socket_path, Config};

/// The CSI spec v1 messages, services and clients generated from
/// `proto/csi.proto`.
#[allow(
    clippy::all,
    clippy::pedantic,
    missing_debug_implementations,
    missing_docs,
    unreachable_pub
)]
pub mod proto {
    tonic::include_proto!("csi.v1");
}
