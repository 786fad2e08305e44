//! The neighbor tier over RDMA verbs (issue 19): the same frames as TCP
//! on reliable-connected queue pairs.
//!
//! A requester SENDs a `Read` header ([`super::frame::Header`], encoded
//! and validated by the TCP path's code) followed by a slot of its
//! registered memory (address, rkey, length); the home checks both, reads
//! the block, RDMA-WRITEs the payload into that slot and SENDs the answer
//! header after it, which the requester validates and checks the payload
//! against (its CRC32C), as TCP does. Credits bound the requests on a
//! connection (back-pressure), every request has a deadline, and any
//! error — an error completion, a bad header or slot, a timeout — breaks
//! the connection: the caller falls back to the store as with TCP's
//! [`NeighborError`].
//!
//! - [`verbs`]: the trait the logic is written against (one RC queue pair,
//!   its completion queue, its registered memory).
//! - [`mem`]: that trait in memory, checked like an HCA, for tests that
//!   can also make it fail.
//! - [`wire`], [`requester`], [`home`]: the transport logic, sans IO.
//! - [`handshake`]: the queue pairs' parameters, exchanged over a
//!   mutual-TLS connection with the cluster's certificates.
//! - `device` (cargo feature `rdma`): the trait on a real device
//!   (rdma-core through `rdma-mummy-sys`) and device discovery.

pub mod dial;
pub mod driver;
pub mod fabric;
pub mod handshake;
pub mod home;
pub mod link;
pub mod mem;
pub mod requester;
pub mod verbs;
pub mod wire;

#[cfg(feature = "rdma")]
pub mod device;

#[cfg(test)]
mod tests;

use std::sync::{Arc, Once};

use fabric::Fabric;

use tracing::warn;

use super::conn::NeighborError;
use super::frame::FrameError;
use verbs::{Opcode, VerbsError, WcStatus};

/// Most requests one RDMA connection carries at once.
pub const CREDITS_MAX: u16 = 64;
/// Requests one RDMA connection carries at once unless told otherwise: a
/// landing slot of a block each is registered per credit, on both ends.
pub const CREDITS_DEFAULT: u16 = 8;
/// Most bytes of landing slots (or staging buffers) one connection
/// registers.
pub const REGISTERED_PER_CONNECTION_MAX_BYTES: u64 = 256 << 20;
/// Completions taken from the queue at once.
pub const POLL_BATCH: usize = 32;

/// What both ends of a connection agreed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// Requests at once.
    pub credits: u16,
    /// The volume's block size: the most a payload carries, and the size
    /// of a landing slot.
    pub block_max: u32,
}

impl Params {
    /// Checked: 1 to [`CREDITS_MAX`] credits, and their slots within
    /// [`REGISTERED_PER_CONNECTION_MAX_BYTES`].
    pub fn new(credits: u16, block_max: u32) -> Result<Self, RdmaError> {
        let bytes = u64::from(credits) * u64::from(block_max);
        if !(1..=CREDITS_MAX).contains(&credits)
            || block_max == 0
            || bytes > REGISTERED_PER_CONNECTION_MAX_BYTES
        {
            return Err(RdmaError::Handshake(format!(
                "{credits} credits of {block_max}-byte slots: 1 to {CREDITS_MAX} credits, at most {REGISTERED_PER_CONNECTION_MAX_BYTES} bytes in all"
            )));
        }
        Ok(Self { credits, block_max })
    }
}

/// Why the RDMA transport failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum RdmaError {
    /// A verb was refused.
    #[error("RDMA verb failed: {0}")]
    Verbs(#[from] VerbsError),
    /// A work request completed with an error (the queue pair is in the
    /// error state).
    #[error("an RDMA {0:?} completed with {1:?}")]
    Completion(Opcode, WcStatus),
    /// A header failed validation.
    #[error("{0}")]
    Frame(#[from] FrameError),
    /// The peer broke the protocol.
    #[error("RDMA peer broke the protocol: {0}")]
    Protocol(String),
    /// The handshake failed (TLS, the parameters).
    #[error("RDMA handshake: {0}")]
    Handshake(String),
    /// The peer's certificate may not have an RDMA connection.
    #[error("{0}")]
    Identity(String),
    /// No usable device (or no RDMA support in this build).
    #[error("{0}")]
    NoDevice(String),
}

impl From<RdmaError> for NeighborError {
    fn from(e: RdmaError) -> Self {
        match e {
            RdmaError::Frame(f) => Self::Frame(f),
            RdmaError::Identity(m) => Self::Identity(m),
            other => Self::Io(other.to_string()),
        }
    }
}

/// How a node's shards reach other nodes' caches
/// (`datenlord mount --neighbor-transport`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Transport {
    /// TCP (mutual TLS).
    #[default]
    Tcp,
    /// RDMA verbs, where a device and this build allow.
    Rdma,
}

impl std::str::FromStr for Transport {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcp" => Ok(Self::Tcp),
            "rdma" => Ok(Self::Rdma),
            other => Err(format!("{other}: the neighbor transport is tcp or rdma")),
        }
    }
}

/// The first words of the log line when RDMA was asked for and TCP is used.
pub const FALLBACK_MESSAGE: &str = "no RDMA device; using TCP";

/// The fabric the node's blocks travel over when `wanted` was asked for
/// (`None`: TCP frames), and why RDMA is not used when it was asked for,
/// said once in the log: this build has no RDMA support, the machine has
/// no device, or the node has no certificates (`secured`: RDMA
/// connections are set up over mutual TLS).
pub fn choose(wanted: Transport, secured: bool) -> (Option<Arc<dyn Fabric>>, Option<String>) {
    static LOGGED: Once = Once::new();
    if wanted == Transport::Tcp {
        return (None, None);
    }
    match rdma_fabric(secured) {
        Ok(fabric) => {
            LOGGED.call_once(|| {
                tracing::info!(device = %fabric.name(), "blocks travel over RDMA to and from nodes that have it, over TCP otherwise");
            });
            (Some(fabric), None)
        }
        Err(why) => {
            LOGGED.call_once(|| warn!("{why}"));
            (None, Some(why))
        }
    }
}

/// The node's fabric, or why RDMA is not used on it.
#[cfg(not(feature = "rdma"))]
fn rdma_fabric(_secured: bool) -> Result<Arc<dyn Fabric>, String> {
    Err(format!("{FALLBACK_MESSAGE} (this datenlord was built without RDMA support: build it with `--features rdma`)"))
}

/// The node's fabric (its first RDMA device), or why RDMA is not used on
/// it.
#[cfg(feature = "rdma")]
fn rdma_fabric(secured: bool) -> Result<Arc<dyn Fabric>, String> {
    // The error says "no RDMA device; using TCP" and why.
    let devices = device::discover().map_err(|e| e.to_string())?;
    tracing::info!(?devices, "RDMA devices found");
    if !secured {
        return Err(format!(
            "RDMA device {} found, but RDMA connections are set up over mutual TLS and this node has no certificates (--tls-dir): using TCP",
            devices.join(", ")
        ));
    }
    Ok(Arc::new(device::DeviceFabric { name: None }))
}
