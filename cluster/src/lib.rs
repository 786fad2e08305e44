//! DatenLord's cluster layer: the metadata state machine replicated with
//! Raft (raft-rs) on a persistent log, and the neighbor tier (nodes serve
//! each other's cached blocks: a source in the engine's chain), and the
//! Lord's node liveness. Later: the Sklavin's health reports and orders.
//!
//! The FUSE frontend is unknown here; `fs` glues the parts together.

pub mod certs;
pub mod client_rpc;
mod frame;
pub mod group;
pub mod health;
pub mod link;
pub mod listener;
pub mod lord;
pub mod master;
pub mod meta;
pub mod neighbor;
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
