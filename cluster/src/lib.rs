//! DatenLord's cluster layer: the metadata state machine replicated with
//! Raft (raft-rs) on a persistent log. Later: the Lord (controller), the
//! Sklavin (node agent) and the neighbor block transport.
//!
//! The engine and the FUSE frontend are unknown here; `fs` glues them.

pub mod certs;
pub mod client_rpc;
mod frame;
pub mod group;
pub mod link;
pub mod listener;
pub mod master;
pub mod meta;
pub mod node;
pub mod placement;
pub mod raft_driver;
pub mod raft_log;
mod raft_logger;
pub mod raft_transport;
pub mod replica;
pub mod sessions;
pub mod shared_state;
pub mod tls;
