//! datenlord-perf: workloads, measurement, SLO checks and peer comparison
//! for DatenLord (and any other directory).
//!
//! Code map: `workload` generates seeded op streams (no IO); `runner`
//! executes them on threads (synchronous IO, or `ring`: one io_uring per
//! thread for queue depths above 1) and fills per-thread `latency` books; `compare`
//! interleaves targets round by round; `slo` parses and judges objectives;
//! `report` renders JSON and Markdown; `plot` draws SVG plots.

pub mod buffer;
pub mod compare;
pub mod error;
pub mod latency;
pub mod machine;
pub mod pingpong;
pub mod plot;
pub mod process;
pub mod quantity;
pub mod report;
pub mod ring;
pub mod rng;
pub mod runner;
pub mod s3;
pub mod slo;
pub mod spec;
pub mod workload;

pub use error::{Error, Result};
