//! DatenLord's data storage engine (DSE): the per-node block cache.
//!
//! Thread per core, shared nothing: one pinned glommio executor per shard;
//! a block `(ino, index, version)` is owned by shard `hash(ino, index) %
//! shards`, which holds it in its memory arena or its region of the NVMe
//! cache device, or fetches it (once) from the source below. See
//! ARCHITECTURE.md for the code map and invariants.

pub mod admission;
pub mod arena;
pub mod block;
pub mod config;
pub mod disk_index;
pub mod disk_tier;
pub mod error;
pub mod eviction;
pub mod hit_view;
pub mod inspect;
pub mod layout;
pub mod lock_file;
pub mod memory_tier;
pub mod mesh;
pub mod prefetch;
pub mod runtime;
pub mod shard;
pub mod slot;
pub mod source;
pub mod stats;
pub mod store;
pub mod verify;

pub use block::{BlockId, BlockKey, BlockSize, Ino, ShardId};
pub use config::{DiskConfig, EngineConfig};
pub use error::{Error, Result};
pub use eviction::PolicyKind;
pub use prefetch::PrefetchConfig;
pub use runtime::{Engine, EngineHandle, Request, Response, ShardContext};
pub use source::{BlockSource, Checksum, MemoryStore, SourceError, SourceFactory, VersionResolver};
pub use stats::ShardStats;
pub use verify::VerifyReport;
