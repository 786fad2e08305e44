//! The RDMA transport on a glommio shard: thin drivers around the sans-IO
//! [`Requester`] and [`Home`], in the shape of the TCP path's
//! [`crate::neighbor::conn::Conn::read`] and `serve_connection`, so the
//! neighbor tier can take either.
//!
//! Completions are polled every [`POLL_INTERVAL_US`] while a request is
//! out (a completion channel's file descriptor awaited by the executor
//! would replace the polling: not done).

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

use datenlord_engine::BlockId;
use futures::future::LocalBoxFuture;

use super::home::{Home, Outcome};
use super::requester::{Answer, Requester};
use super::verbs::Verbs;
use super::RdmaError;
use crate::neighbor::conn::NeighborError;
use crate::neighbor::frame::Header;

/// How often a waiting end polls its completion queue.
pub const POLL_INTERVAL_US: u64 = 50;

/// What the home's engine made of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Served {
    /// The bytes asked for.
    Block(Vec<u8>),
    /// In none of the tiers, nor the store.
    Missing,
    /// Reading failed (the message goes to the requester).
    Failed(String),
}

/// Reads a requested block (the home's engine).
pub type ReadBlock = Rc<dyn Fn(Header) -> LocalBoxFuture<'static, Served>>;

/// The requesting end of one RDMA connection, on one shard.
pub struct RdmaConn<V: Verbs> {
    node: u64,
    requester: RefCell<Requester<V>>,
    /// Answers polled by another waiter.
    done: RefCell<HashMap<u64, Answer>>,
    epoch: Instant,
}

impl<V: Verbs> std::fmt::Debug for RdmaConn<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdmaConn")
            .field("node", &self.node)
            .field("in_flight", &self.requester.borrow().in_flight())
            .finish_non_exhaustive()
    }
}

impl<V: Verbs> RdmaConn<V> {
    /// The connection to node `node` the handshake set up.
    pub fn new(node: u64, requester: Requester<V>) -> Rc<Self> {
        Rc::new(Self {
            node,
            requester: RefCell::new(requester),
            done: RefCell::new(HashMap::new()),
            epoch: Instant::now(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether the connection failed (a new one is needed).
    pub fn is_broken(&self) -> bool {
        self.requester.borrow().broken().is_some()
    }

    /// Asks for a block version (`range`: only `(offset, len)` of it): its
    /// bytes, checked against their checksum, within `timeout_ms` (waiting
    /// for a free credit included).
    pub async fn read(
        &self,
        id: BlockId,
        range: Option<(u32, u32)>,
        timeout_ms: u64,
    ) -> Result<Vec<u8>, NeighborError> {
        let deadline_ms = self.now_ms().saturating_add(timeout_ms);
        let request = loop {
            let now = self.now_ms();
            if now >= deadline_ms {
                return Err(NeighborError::Timeout(timeout_ms));
            }
            if let Some(started) = self.try_start(id, range, now, deadline_ms - now) {
                break started?;
            }
            // Back-pressure: every credit is out; answers free them.
            pause().await;
        };
        loop {
            if let Some(answer) = self.done.borrow_mut().remove(&request) {
                return answer;
            }
            let ended = self.requester.borrow_mut().progress(self.now_ms());
            self.stash(ended);
            if let Some(answer) = self.done.borrow_mut().remove(&request) {
                return answer;
            }
            pause().await;
        }
    }

    /// Starts the request if a credit is free (or fails it if the
    /// connection broke); else takes what completed and says to wait.
    fn try_start(
        &self,
        id: BlockId,
        range: Option<(u32, u32)>,
        now: u64,
        timeout_ms: u64,
    ) -> Option<Result<u64, NeighborError>> {
        let mut requester = self.requester.borrow_mut();
        if requester.credits_free() > 0 || requester.broken().is_some() {
            return Some(requester.start(id, range, now, timeout_ms));
        }
        let ended = requester.progress(now);
        drop(requester);
        self.stash(ended);
        None
    }

    fn stash(&self, ended: Vec<(u64, Answer)>) {
        self.done.borrow_mut().extend(ended);
    }

    /// Closes the connection: whatever is outstanding fails.
    pub fn close(&self) {
        let ended = self.requester.borrow_mut().close();
        self.stash(ended);
    }
}

async fn pause() {
    glommio::timer::sleep(Duration::from_micros(POLL_INTERVAL_US)).await;
}

/// Serves one RDMA connection until it breaks or `stop` resolves: each
/// request is read with `read` in a task of its own and answered as it
/// completes (the home's credits bound how many at once).
pub async fn serve<V: Verbs + 'static>(
    home: Home<V>,
    read: ReadBlock,
    stop: impl Future<Output = ()>,
) -> RdmaError {
    let home = Rc::new(RefCell::new(home));
    let serving = async {
        loop {
            let requests = match home.borrow_mut().poll() {
                Ok(requests) => requests,
                Err(e) => return e,
            };
            for request in requests {
                let (home, read) = (Rc::clone(&home), Rc::clone(&read));
                glommio::spawn_local(async move {
                    let served = read(request.header).await;
                    let outcome = match &served {
                        Served::Block(data) => Outcome::Block(data),
                        Served::Missing => Outcome::Missing,
                        Served::Failed(message) => Outcome::Failed(message),
                    };
                    // A failure breaks the connection; the loop sees it.
                    let _ = home.borrow_mut().answer(request, outcome);
                })
                .detach();
            }
            pause().await;
        }
    };
    futures::pin_mut!(serving, stop);
    match futures::future::select(serving, stop).await {
        futures::future::Either::Left((e, _)) => e,
        futures::future::Either::Right(((), _)) => {
            RdmaError::Protocol("the RDMA connection was stopped".into())
        }
    }
}
