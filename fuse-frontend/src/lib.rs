//! FUSE frontend: mounts a [`datenlord_fs::Fs`] through the kernel's FUSE
//! protocol (fuse-backend-rs), with one pinned request loop per core, each
//! on its own cloned /dev/fuse fd.
//!
//! Code map:
//! - `options`: [`MountOptions`] and the `-o` parser.
//! - `adapter`: [`FuseFs`], the `FileSystem` trait over `Fs` (op by op,
//!   errno from `FsError::errno`).
//! - `groups`: callers' supplementary groups (`/proc`, kept for a second).
//! - `idle_poll`: `-o idle_poll`, `SCHED_IDLE` spinners that keep idle
//!   CPUs awake while requests come.
//! - `lock_wait`: blocking lock requests, answered from waiter threads.
//! - `copy_range`: `FUSE_COPY_FILE_RANGE`, answered by the loops.
//! - `dispatch`: what every transport does with a request before
//!   fuse-backend-rs, and answering into a buffer.
//! - `mount`: [`mount`], [`Mount`] and the classic /dev/fuse loops.
//! - `uring`, `uring_abi`: the FUSE-over-io_uring queues (driver, and the
//!   wire format sans IO).
//! - `stats`: [`OpStats`], per-op counters and latency histograms.

mod adapter;
mod copy_range;
mod dispatch;
mod error;
mod groups;
mod idle_poll;
mod lock_wait;
mod mount;
mod options;
mod passthrough;
mod stats;
mod uring;
mod uring_abi;

pub use adapter::{AdapterOptions, FuseFs, Notifier, TTL_DEFAULT, TTL_SOLE_WRITER};
pub use error::FuseError;
pub use lock_wait::LOCK_WAITERS_MAX;
pub use mount::{check_mountpoint, is_mountpoint, mount, Mount, THREADS_MAX};
pub use options::{parse_mount_options, MountOptions, ParsedOptions, UringMode};
pub use stats::{op_name, OpSample, OpStats, LATENCY_BUCKETS};
pub use uring::{
    kernel_enabled as uring_enabled_in_kernel, ENABLE_PARAMETER as URING_ENABLE_PARAMETER,
    RING_DEPTH,
};
