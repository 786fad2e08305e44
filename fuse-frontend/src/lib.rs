//! FUSE frontend: mounts a [`datenlord_fs::Fs`] through the kernel's FUSE
//! protocol (fuse-backend-rs), with one pinned request loop per core, each
//! on its own cloned /dev/fuse fd.
//!
//! Code map:
//! - `options`: [`MountOptions`] and the `-o` parser.
//! - `adapter`: [`FuseFs`], the `FileSystem` trait over `Fs` (op by op,
//!   errno from `FsError::errno`).
//! - `lock_wait`: blocking lock requests, answered from waiter threads.
//! - `mount`: [`mount`], [`Mount`] and the request loops.
//! - `stats`: [`OpStats`], per-op counters and latency histograms.

mod adapter;
mod copy_range;
mod error;
mod lock_wait;
mod mount;
mod options;
mod stats;

pub use adapter::{AdapterOptions, FuseFs};
pub use error::FuseError;
pub use lock_wait::LOCK_WAITERS_MAX;
pub use mount::{check_mountpoint, mount, Mount, THREADS_MAX};
pub use options::{parse_mount_options, MountOptions, ParsedOptions};
pub use stats::{op_name, OpSample, OpStats, LATENCY_BUCKETS};
