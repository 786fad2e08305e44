//! A state machine that threads outside the Raft driver can read directly:
//! the local copy behind a reader-writer lock. The driver takes the write
//! lock for each applied entry (microseconds); readers (a node's metadata
//! lookups) take the read lock in their own thread instead of a round trip
//! through the driver. This is the metadata read path; the block data path
//! stays lock-free.

use std::sync::{Arc, RwLock, RwLockReadGuard};

use crate::replica::StateMachine;

/// A state machine shared between its driver and local readers.
#[derive(Debug, Default)]
pub struct SharedState<T>(Arc<RwLock<T>>);

impl<T> Clone for SharedState<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T> SharedState<T> {
    /// Wraps a state machine.
    pub fn new(state: T) -> Self {
        Self(Arc::new(RwLock::new(state)))
    }

    /// Reads the local copy as it is now (it may lag the leader; use the
    /// driver's ReadIndex read for linearizable reads).
    pub fn read(&self) -> RwLockReadGuard<'_, T> {
        // A panic while applying is a bug that stops the driver; readers
        // still see the last state written.
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<T: StateMachine> StateMachine for SharedState<T> {
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8> {
        let mut state = self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.apply(index, command)
    }

    fn snapshot(&self) -> Vec<u8> {
        self.read().snapshot()
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        let mut state = self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.restore(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Counter(u64);

    impl StateMachine for Counter {
        fn apply(&mut self, _index: u64, command: &[u8]) -> Vec<u8> {
            self.0 += command.len() as u64;
            self.0.to_le_bytes().to_vec()
        }
        fn snapshot(&self) -> Vec<u8> {
            self.0.to_le_bytes().to_vec()
        }
        fn restore(&mut self, data: &[u8]) -> Result<(), String> {
            self.0 = u64::from_le_bytes(data.try_into().map_err(|_| "8 bytes")?);
            Ok(())
        }
    }

    #[test]
    fn readers_see_what_the_driver_applied() {
        let mut shared = SharedState::new(Counter::default());
        let reader = shared.clone();
        shared.apply(1, b"abc");
        assert_eq!(reader.read().0, 3);
        shared.restore(&10u64.to_le_bytes()).expect("restore");
        assert_eq!(reader.read().0, 10);
        assert_eq!(shared.snapshot(), 10u64.to_le_bytes());
    }
}
