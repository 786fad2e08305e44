//! Warm-up orders (`datenlord warmup`): the home of each block of a set
//! fetches it from the store and keeps it, ahead of a job that will read
//! it (what `juicefs warmup` and Fluid's DataLoad do). The blocks'
//! bytes never travel to the one who orders: each home gets a `Warm`
//! frame per block and answers `Warmed` once it holds the block.
//!
//! The orders go out on a glommio executor of the calling thread, one
//! connection per home, up to [`super::conn::IN_FLIGHT_MAX`] orders in
//! flight on each.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use datenlord_engine::BlockId;
use futures::StreamExt;

use super::conn::{Conn, NeighborError, IN_FLIGHT_MAX};
use super::{DataLink, View, REQUEST_TIMEOUT_MS};

/// Memory glommio registers for its io_uring buffers (well within an
/// 8 MiB `ulimit -l`).
const IO_MEMORY_BYTES: usize = 256 << 10;
/// How often progress is reported.
pub const PROGRESS_INTERVAL_MS: u64 = 1_000;

/// What became of a warm-up order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WarmReport {
    /// Blocks ordered.
    pub blocks: u64,
    /// Blocks their homes now hold.
    pub warmed: u64,
    /// Blocks neither their home nor the store has (written in `back`
    /// mode and not uploaded yet, or deleted since).
    pub missing: u64,
    /// Blocks whose home failed, did not answer, or that have no home.
    pub failed: u64,
    /// The first failure at each home (node id, why); node 0: no home.
    pub failures: BTreeMap<u64, String>,
}

impl WarmReport {
    /// Orders answered so far.
    pub fn done(&self) -> u64 {
        self.warmed + self.missing + self.failed
    }

    fn fail(&mut self, node: u64, n: u64, why: &NeighborError) {
        self.failed += n;
        self.failures.entry(node).or_insert_with(|| why.to_string());
    }
}

/// Has each block's home in `view` fetch and keep it; `progress` is
/// called every [`PROGRESS_INTERVAL_MS`] and at the end.
pub fn warm(
    view: &View,
    blocks: &[BlockId],
    link: &DataLink,
    block_max: u32,
    progress: &mut dyn FnMut(&WarmReport),
) -> Result<WarmReport, NeighborError> {
    let mut by_home: BTreeMap<u64, (String, Vec<BlockId>)> = BTreeMap::new();
    let report = Rc::new(RefCell::new(WarmReport {
        blocks: blocks.len() as u64,
        ..WarmReport::default()
    }));
    for &id in blocks {
        match view.home(id) {
            Some((node, addr)) => by_home
                .entry(node)
                .or_insert_with(|| (addr.to_string(), Vec::new()))
                .1
                .push(id),
            None => report.borrow_mut().fail(
                0,
                1,
                &NeighborError::Io("no live cache node is registered".into()),
            ),
        }
    }
    let executor = local_executor("dl-warmup")?;
    let homes = by_home
        .into_iter()
        .map(|(node, (addr, ids))| warm_home(node, addr, ids, link, block_max, &report));
    executor.run(async {
        let all = Box::pin(futures::future::join_all(homes));
        let ticker = Box::pin(async {
            loop {
                glommio::timer::sleep(Duration::from_millis(PROGRESS_INTERVAL_MS)).await;
                progress(&report.borrow());
            }
        });
        futures::future::select(all, ticker).await;
    });
    let report = report.borrow().clone();
    progress(&report);
    Ok(report)
}

/// An executor on the calling thread for a command's connections to the
/// nodes (warm-up orders, cache checks).
pub(crate) fn local_executor(name: &str) -> Result<glommio::LocalExecutor, NeighborError> {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name(name)
        .io_memory(IO_MEMORY_BYTES)
        .make()
        .map_err(|e| NeighborError::Io(format!("starting an executor: {e}")))
}

async fn warm_home(
    node: u64,
    addr: String,
    ids: Vec<BlockId>,
    link: &DataLink,
    block_max: u32,
    report: &Rc<RefCell<WarmReport>>,
) {
    let conn = match Conn::open(node, &addr, link, block_max).await {
        Ok(conn) => conn,
        Err(e) => {
            report.borrow_mut().fail(node, ids.len() as u64, &e);
            return;
        }
    };
    let answers = futures::stream::iter(ids)
        .map(|id| conn.warm(id, REQUEST_TIMEOUT_MS))
        .buffer_unordered(IN_FLIGHT_MAX);
    futures::pin_mut!(answers);
    while let Some(answer) = answers.next().await {
        let mut report = report.borrow_mut();
        match answer {
            Ok(()) => report.warmed += 1,
            Err(NeighborError::Missing) => report.missing += 1,
            Err(e) => report.fail(node, 1, &e),
        }
    }
}
