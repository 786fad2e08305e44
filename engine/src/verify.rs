//! Checks a running node's cached blocks against the source's checksums
//! (`datenlord cache inspect --verify --masters …`): every block a shard
//! holds in memory or on NVMe is read, its CRC32C compared with the one
//! the source (the store, or the writer's journal) holds for that block
//! version, and a copy that differs, or that fails its own chunk
//! checksums, is dropped: the next read fetches it again. Nothing is
//! dropped when the source cannot say (unreachable) or holds no such
//! version (deleted since, or written on another node and not uploaded
//! yet). The offline check of a stopped node's cache device is
//! [`crate::inspect`].

use std::cell::RefCell;
use std::ops::AddAssign;
use std::rc::Rc;

use futures::StreamExt;
use tracing::warn;

use crate::block::BlockId;
use crate::disk_tier::DiskRead;
use crate::shard::Shard;
use crate::source::Checksum;

/// Blocks of one shard checked at once (each may wait for a store request).
pub const VERIFY_INFLIGHT_MAX: usize = 16;

/// What a check of cached blocks found, per shard or summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Cached blocks checked.
    pub blocks: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Blocks equal to the source's.
    pub matched: u64,
    /// Blocks that differed from the source's: dropped.
    pub mismatched: u64,
    /// Blocks whose NVMe copy failed its own chunk checksums: dropped.
    pub corrupt: u64,
    /// Blocks the source does not hold (deleted since, or written on
    /// another node and not uploaded yet): kept.
    pub absent: u64,
    /// Blocks the source could not be asked about (unreachable): kept.
    pub unchecked: u64,
}

impl VerifyReport {
    /// The counters, in field order (the neighbor frame's payload).
    pub fn to_words(&self) -> [u64; 7] {
        [
            self.blocks,
            self.bytes,
            self.matched,
            self.mismatched,
            self.corrupt,
            self.absent,
            self.unchecked,
        ]
    }

    /// The report [`Self::to_words`] gave.
    pub fn from_words(w: [u64; 7]) -> Self {
        Self {
            blocks: w[0],
            bytes: w[1],
            matched: w[2],
            mismatched: w[3],
            corrupt: w[4],
            absent: w[5],
            unchecked: w[6],
        }
    }

    /// Blocks dropped because they were wrong.
    pub fn dropped(&self) -> u64 {
        self.mismatched + self.corrupt
    }

    fn count(&mut self, verdict: Verdict, bytes: u64) {
        self.blocks += 1;
        self.bytes += bytes;
        match verdict {
            Verdict::Matched => self.matched += 1,
            Verdict::Mismatched => self.mismatched += 1,
            Verdict::Corrupt => self.corrupt += 1,
            Verdict::Absent => self.absent += 1,
            Verdict::Unchecked => self.unchecked += 1,
        }
    }
}

impl AddAssign for VerifyReport {
    fn add_assign(&mut self, other: Self) {
        let mut words = self.to_words();
        for (w, o) in words.iter_mut().zip(other.to_words()) {
            *w += o;
        }
        *self = Self::from_words(words);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Matched,
    Mismatched,
    Corrupt,
    Absent,
    Unchecked,
}

/// A cached copy's checksum and length.
type Sum = (u32, u64);

fn sum_of(bytes: &[u8]) -> Sum {
    (crc32c::crc32c(bytes), bytes.len() as u64)
}

impl Shard {
    /// Checks every block this shard caches (see the module doc).
    pub(crate) async fn verify_cached(self: &Rc<Self>) -> VerifyReport {
        let mut ids = self.memory.borrow().ids();
        if let Some(disk) = &self.disk {
            ids.extend(disk.ids());
        }
        ids.sort_unstable();
        ids.dedup();
        let report = RefCell::new(VerifyReport::default());
        futures::stream::iter(ids)
            .for_each_concurrent(VERIFY_INFLIGHT_MAX, |id| {
                let report = &report;
                async move {
                    if let Some((verdict, bytes)) = self.verify_block(id).await {
                        report.borrow_mut().count(verdict, bytes);
                    }
                }
            })
            .await;
        report.into_inner()
    }

    /// Checks one block's copies; `None` when it left the cache meanwhile.
    async fn verify_block(self: &Rc<Self>, id: BlockId) -> Option<(Verdict, u64)> {
        let in_memory = self.memory.borrow().get(id).map(sum_of);
        let on_disk = match &self.disk {
            Some(disk) => match disk.read_quietly(id).await {
                Ok(DiskRead::Hit {
                    data, skip, len, ..
                }) => Some(sum_of(&data.as_slice()[skip..skip + len])),
                Ok(DiskRead::Corrupt) => return Some((Verdict::Corrupt, 0)),
                Ok(DiskRead::Miss) => None,
                Err(e) => {
                    warn!(block = %id, %e, "reading a cached block to check it failed");
                    return Some((Verdict::Unchecked, 0));
                }
            },
            None => None,
        };
        let bytes = in_memory.or(on_disk)?.1;
        let Some(asked) = self.source.checksum(id) else {
            return Some((Verdict::Unchecked, bytes));
        };
        let (crc, len) = match asked.await {
            Ok(Checksum::Known { crc, len }) => (crc, len),
            Ok(Checksum::Absent) => return Some((Verdict::Absent, bytes)),
            Err(e) => {
                warn!(block = %id, %e, "the source could not give a cached block's checksum");
                return Some((Verdict::Unchecked, bytes));
            }
        };
        let mut verdict = Verdict::Matched;
        if in_memory.is_some_and(|s| s != (crc, len)) {
            warn!(block = %id, "memory copy differs from the store: dropped, will refetch");
            self.memory.borrow_mut().remove(id);
            verdict = Verdict::Mismatched;
        }
        if on_disk.is_some_and(|s| s != (crc, len)) {
            if let Some(disk) = &self.disk {
                disk.discard(id).await;
            }
            verdict = Verdict::Mismatched;
        }
        Some((verdict, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_add_up_and_travel_as_words() {
        let mut a = VerifyReport::default();
        a.count(Verdict::Matched, 10);
        a.count(Verdict::Mismatched, 20);
        let mut b = VerifyReport::default();
        b.count(Verdict::Corrupt, 0);
        b.count(Verdict::Absent, 5);
        b.count(Verdict::Unchecked, 7);
        a += b;
        assert_eq!(
            a,
            VerifyReport {
                blocks: 5,
                bytes: 42,
                matched: 1,
                mismatched: 1,
                corrupt: 1,
                absent: 1,
                unchecked: 1,
            }
        );
        assert_eq!(a.dropped(), 2);
        assert_eq!(VerifyReport::from_words(a.to_words()), a);
    }
}
