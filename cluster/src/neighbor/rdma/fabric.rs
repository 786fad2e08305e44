//! Where a shard gets its queue pairs: an RDMA device (feature `rdma`),
//! or memory for nodes of one test process ([`super::mem::MemFabric`]).
//!
//! A node holds one [`Fabric`]; each shard opens its own access to it on
//! its own thread ([`ShardFabric`]: a device context and protection
//! domain are not shared between cores), once, and makes a queue pair
//! per connection from it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, Weak};

use super::handshake::Endpoint;
use super::RdmaError;

/// A queue pair end of whatever fabric made it.
pub type Qp = Box<dyn Endpoint>;

/// A node's RDMA fabric.
pub trait Fabric: Send + Sync + std::fmt::Debug {
    /// What the log calls it (the device's name).
    fn name(&self) -> String;

    /// The calling shard's access to it (on that shard's thread).
    fn open(&self) -> Result<Rc<dyn ShardFabric>, RdmaError>;
}

/// One shard's access to the fabric.
pub trait ShardFabric {
    /// A new queue pair end, not connected yet.
    fn endpoint(&self) -> Result<Qp, RdmaError>;
}

/// A fabric's access opened on a thread (or why it could not be).
type Opened = (Weak<dyn Fabric>, Result<Rc<dyn ShardFabric>, String>);

thread_local! {
    /// Each fabric's access opened on this thread, by the fabric's address.
    static OPENED: RefCell<HashMap<usize, Opened>> = RefCell::new(HashMap::new());
}

/// This thread's access to `fabric`, opened at the first call (the
/// requesting and the serving side of a shard share it); a failure to
/// open is kept too, so it is tried once per thread.
pub fn on_this_thread(fabric: &Arc<dyn Fabric>) -> Result<Rc<dyn ShardFabric>, RdmaError> {
    let key = Arc::as_ptr(fabric).cast::<()>() as usize;
    OPENED.with(|opened| {
        let mut opened = opened.borrow_mut();
        // An entry of a fabric that is gone (its address reused) is stale.
        let fresh = opened
            .get(&key)
            .is_some_and(|(weak, _)| weak.upgrade().is_some_and(|f| Arc::ptr_eq(&f, fabric)));
        if !fresh {
            let access = fabric.open().map_err(|e| e.to_string());
            opened.insert(key, (Arc::downgrade(fabric), access));
        }
        opened
            .get(&key)
            .map_or_else(
                || Err("no fabric".to_string()),
                |(_, access)| access.clone(),
            )
            .map_err(RdmaError::NoDevice)
    })
}
