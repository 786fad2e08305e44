//! Operations in flight, one per volume: a second request for a volume
//! that is being worked on is ABORTED (the CO retries it), as the spec
//! asks, instead of racing the first.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::{Error, Result};

/// The volumes with an operation in flight.
#[derive(Debug, Default)]
pub struct InFlight {
    volumes: Mutex<HashSet<String>>,
}

/// A volume's operation; the volume is free again when it drops.
#[derive(Debug)]
pub struct Operation {
    set: Arc<InFlight>,
    volume: String,
}

impl InFlight {
    /// Starts an operation on `volume`, or ABORTED if one is in flight.
    pub fn begin(self: &Arc<Self>, volume: &str) -> Result<Operation> {
        let mut volumes = self.volumes.lock().unwrap_or_else(PoisonError::into_inner);
        if !volumes.insert(volume.to_string()) {
            return Err(Error::Aborted(format!(
                "an operation on volume {volume:?} is in flight: retry when it is done"
            )));
        }
        Ok(Operation {
            set: Arc::clone(self),
            volume: volume.to_string(),
        })
    }
}

impl Drop for Operation {
    fn drop(&mut self) {
        self.set
            .volumes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.volume);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_operation_per_volume_at_a_time() {
        let set = Arc::new(InFlight::default());
        let first = set.begin("v").expect("free");
        assert!(matches!(set.begin("v"), Err(Error::Aborted(_))));
        let other = set.begin("w").expect("another volume is free");
        drop(first);
        assert!(set.begin("v").is_ok(), "free again once the first ended");
        drop(other);
    }
}
