//! Segments of the write-back journal (sans-IO): names, where an entry
//! lies, and how a segment's bytes read back after a crash.
//!
//! A segment is a file `seg-<20 digits>.log` of journal entries laid end
//! to end, each an encoded block object (header with CRC32C + payload, the
//! store's object format). Entries are appended under one writer lock and
//! made durable by one fdatasync of the segment per commit: on ext4 that
//! is a few times cheaper than the file per entry (create, fdatasync,
//! rename, directory fsync) it replaces, and a commit of many blocks pays
//! for one sync instead of one per block.
//!
//! Appends to a segment are serialized and a commit syncs the segment only
//! after its own append, so every entry below an acknowledged one reached
//! the page cache before that sync and is durable with it. After a crash a
//! segment therefore reads back as a run of whole entries, then perhaps a
//! torn tail (entries whose commit never returned). [`scan`] stops at the
//! first header that does not check; an entry whose header checks but whose
//! payload does not (a torn or damaged payload) is reported and skipped,
//! since its header says where the next one starts.

use crate::block::{BlockId, BLOCK_SIZE_MAX_BYTES};

use super::object::{self, ObjectKind, OBJECT_HEADER_BYTES};

const SEGMENT_PREFIX: &str = "seg-";
const SEGMENT_SUFFIX: &str = ".log";

/// Where a journal entry lies: `len` bytes (header and payload) at
/// `offset` of segment `segment`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// The segment's sequence number.
    pub segment: u64,
    /// Byte offset of the entry's header.
    pub offset: u64,
    /// Bytes of the entry.
    pub len: u64,
}

/// The file name of segment `seq`.
pub fn segment_name(seq: u64) -> String {
    format!("{SEGMENT_PREFIX}{seq:020}{SEGMENT_SUFFIX}")
}

/// The sequence number a segment file name carries.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name
        .strip_prefix(SEGMENT_PREFIX)?
        .strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// An entry whose header checks but whose payload does not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damaged {
    /// The block its header names.
    pub id: BlockId,
    /// Its offset in the segment.
    pub offset: u64,
    /// Its bytes (header and payload).
    pub len: u64,
    /// Why it is unusable.
    pub reason: String,
}

/// What a segment holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// Whole, checked entries in file order: the block and its offset and
    /// length in the segment.
    pub entries: Vec<(BlockId, u64, u64)>,
    /// Entries skipped because their payload does not check.
    pub damaged: Vec<Damaged>,
    /// Where the readable entries end.
    pub end: u64,
    /// Why the bytes from `end` on are not read, when there are any that
    /// are not zeros (a torn append, or damage).
    pub tail: Option<String>,
    /// Where a whole, checked entry lies after the unreadable bytes: then
    /// they are damage inside the segment, not a torn tail (an append
    /// never lands after one that did not), and entries past them were
    /// acknowledged.
    pub resumes_at: Option<u64>,
}

/// Reads a segment's bytes as entries.
pub fn scan(bytes: &[u8]) -> Scan {
    let mut out = Scan::default();
    let mut at = 0usize;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let header = object::block_header(&rest[..rest.len().min(OBJECT_HEADER_BYTES)]);
        let (id, payload) = match header {
            Ok((_, payload)) if payload > u64::from(BLOCK_SIZE_MAX_BYTES) => {
                out.tail = Some(format!(
                    "an entry at byte {at} claims {payload} bytes, more than a block can hold"
                ));
                break;
            }
            Ok(found) => found,
            Err(reason) => {
                // A file extended but not written (a crash before the
                // page reached the disk) reads as zeros: nothing torn
                // that was ever acknowledged.
                if rest.iter().any(|&b| b != 0) {
                    out.tail = Some(format!("{reason} at byte {at}"));
                }
                break;
            }
        };
        let len = OBJECT_HEADER_BYTES + payload as usize;
        if rest.len() < len {
            out.tail = Some(format!(
                "the entry of block {id} at byte {at} needs {len} bytes, {} are left",
                rest.len()
            ));
            break;
        }
        match object::decode(ObjectKind::Block(id), &rest[..len]) {
            Ok(_) => out.entries.push((id, at as u64, len as u64)),
            Err(reason) => out.damaged.push(Damaged {
                id,
                offset: at as u64,
                len: len as u64,
                reason,
            }),
        }
        at += len;
        out.end = at as u64;
    }
    if out.tail.is_some() {
        let from = out.end as usize + 1;
        out.resumes_at = next_entry(&bytes[from.min(bytes.len())..]).map(|p| (from + p) as u64);
    }
    out
}

/// The offset of the first whole, checked entry in `bytes`, looking at
/// every place its magic appears.
fn next_entry(bytes: &[u8]) -> Option<usize> {
    let magic = object::MAGIC;
    (0..(bytes.len() + 1).saturating_sub(OBJECT_HEADER_BYTES)).find(|&at| {
        bytes[at..].starts_with(&magic)
            && object::block_header(&bytes[at..at + OBJECT_HEADER_BYTES]).is_ok_and(
                |(id, payload)| {
                    let len = OBJECT_HEADER_BYTES as u64 + payload;
                    bytes.len() as u64 - at as u64 >= len
                        && object::decode(ObjectKind::Block(id), &bytes[at..at + len as usize])
                            .is_ok()
                },
            )
    })
}

/// Which bytes of each segment an fdatasync made durable, and which
/// segments failed one (sans IO; the journal calls it under its sync
/// lock, around each fdatasync).
///
/// After a failed fdatasync the kernel may have dropped the pages it could
/// not write, and it reports the error once: a later fdatasync of the
/// same file can succeed although bytes appended before the failure are
/// gone. So a segment that failed is never trusted again past what an
/// earlier good sync covered: every commit that needs more of it fails
/// (its blocks stay dirty, and the retry appends them to a new segment).
#[derive(Clone, Debug, Default)]
pub struct SegmentSyncs {
    /// Per segment: bytes from its start a good sync covered, and whether
    /// a sync of it failed.
    segments: std::collections::HashMap<u64, (u64, bool)>,
}

/// What a commit must do about one segment it appended to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncNeed {
    /// An earlier sync covered its bytes: nothing.
    Covered,
    /// Sync it.
    Sync,
    /// The segment failed a sync before its bytes were covered: fail.
    Failed,
}

impl SegmentSyncs {
    /// What a commit needing `segment`'s first `through` bytes durable
    /// must do.
    pub fn need(&self, segment: u64, through: u64) -> SyncNeed {
        match self.segments.get(&segment) {
            Some(&(good, _)) if good >= through => SyncNeed::Covered,
            Some(&(_, true)) => SyncNeed::Failed,
            _ => SyncNeed::Sync,
        }
    }

    /// A sync of `segment` that started when it held `covers` bytes
    /// succeeded (ignored once the segment failed: the success may hide
    /// the dropped pages). Other segments that never failed are
    /// forgotten: at worst a commit syncs one of them again, and the
    /// table stays as small as the failures.
    pub fn synced(&mut self, segment: u64, covers: u64) {
        let (good, failed) = self.segments.entry(segment).or_insert((0, false));
        if !*failed {
            *good = (*good).max(covers);
        }
        self.segments
            .retain(|&seq, &mut (_, failed)| seq == segment || failed);
    }

    /// A sync of `segment` failed.
    pub fn failed(&mut self, segment: u64) {
        self.segments.entry(segment).or_insert((0, false)).1 = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ino: u64, len: usize) -> Vec<u8> {
        object::encode(
            ObjectKind::Block(BlockId::new(ino, 0, 1)),
            &vec![ino as u8; len],
        )
    }

    #[test]
    fn after_a_failed_sync_only_what_a_good_one_covered_is_durable() {
        let mut syncs = SegmentSyncs::default();
        assert_eq!(syncs.need(1, 100), SyncNeed::Sync);
        syncs.synced(1, 100);
        assert_eq!(syncs.need(1, 100), SyncNeed::Covered);
        assert_eq!(syncs.need(1, 150), SyncNeed::Sync);
        // Commits A and B appended up to 150 and 200; A's sync fails.
        syncs.failed(1);
        assert_eq!(syncs.need(1, 150), SyncNeed::Failed);
        // B must fail too, even though a sync now would succeed.
        assert_eq!(syncs.need(1, 200), SyncNeed::Failed);
        syncs.synced(1, 200);
        assert_eq!(
            syncs.need(1, 200),
            SyncNeed::Failed,
            "a success after a failure is not trusted"
        );
        // What was covered before stays durable; other segments are apart,
        // and a good sync of another forgets none that failed.
        assert_eq!(syncs.need(1, 100), SyncNeed::Covered);
        assert_eq!(syncs.need(2, 10), SyncNeed::Sync);
        syncs.synced(2, 10);
        assert_eq!(syncs.need(2, 10), SyncNeed::Covered);
        assert_eq!(syncs.need(1, 200), SyncNeed::Failed);
        syncs.synced(3, 5);
        assert_eq!(syncs.need(2, 10), SyncNeed::Sync, "forgotten: synced again");
    }

    #[test]
    fn names() {
        assert_eq!(segment_name(7), "seg-00000000000000000007.log");
        assert_eq!(parse_segment_name(&segment_name(7)), Some(7));
        assert_eq!(parse_segment_name(&segment_name(u64::MAX)), Some(u64::MAX));
        for bad in [
            "seg-7.log",
            "seg-0000000000000000000x.log",
            "seg-00000000000000000007.blk",
            "1-2-3.blk",
            "gc-queue",
        ] {
            assert_eq!(parse_segment_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn whole_entries_read_back_in_order() {
        let (a, b) = (entry(1, 100), entry(2, 0));
        let bytes = [a.clone(), b.clone()].concat();
        let found = scan(&bytes);
        assert_eq!(
            found.entries,
            vec![
                (BlockId::new(1, 0, 1), 0, a.len() as u64),
                (BlockId::new(2, 0, 1), a.len() as u64, b.len() as u64)
            ]
        );
        assert_eq!(found.end, bytes.len() as u64);
        assert_eq!(found.tail, None);
        assert!(found.damaged.is_empty());
    }

    #[test]
    fn a_torn_tail_stops_the_scan() {
        let (a, b) = (entry(1, 100), entry(2, 5000));
        // Cut anywhere inside the second entry.
        for cut in [1, 20, OBJECT_HEADER_BYTES, b.len() - 1] {
            let bytes = [a.clone(), b[..cut].to_vec()].concat();
            let found = scan(&bytes);
            assert_eq!(found.entries.len(), 1, "cut {cut}");
            assert_eq!(found.end, a.len() as u64);
            assert!(found.tail.is_some(), "cut {cut}");
            assert_eq!(found.resumes_at, None, "cut {cut}");
        }
        // Zeros past the end (extended, never written) are no damage.
        let bytes = [a.clone(), vec![0; 9000]].concat();
        let found = scan(&bytes);
        assert_eq!((found.entries.len(), found.tail), (1, None));
        assert_eq!(found.end, a.len() as u64);
    }

    #[test]
    fn a_damaged_header_with_entries_after_it_is_damage_not_a_tail() {
        let (a, b, c) = (entry(1, 100), entry(2, 300), entry(3, 0));
        for flipped in [0, 9, OBJECT_HEADER_BYTES - 1] {
            let mut bytes = [a.clone(), b.clone(), c.clone()].concat();
            bytes[a.len() + flipped] ^= 0x40;
            let found = scan(&bytes);
            assert_eq!(found.entries.len(), 1, "flipped {flipped}");
            assert!(found.tail.is_some(), "flipped {flipped}");
            assert_eq!(
                found.resumes_at,
                Some((a.len() + b.len()) as u64),
                "flipped {flipped}"
            );
        }
    }

    #[test]
    fn a_damaged_payload_is_skipped_and_the_scan_goes_on() {
        let (a, b, c) = (entry(1, 100), entry(2, 300), entry(3, 10));
        let mut bytes = [a.clone(), b.clone(), c.clone()].concat();
        bytes[a.len() + OBJECT_HEADER_BYTES + 7] ^= 0x40;
        let found = scan(&bytes);
        let ids: Vec<u64> = found.entries.iter().map(|(id, _, _)| id.ino.0).collect();
        assert_eq!(ids, vec![1, 3]);
        assert_eq!(found.damaged.len(), 1);
        assert_eq!(found.damaged[0].id, BlockId::new(2, 0, 1));
        assert_eq!(found.damaged[0].offset, a.len() as u64);
        assert!(found.damaged[0].reason.contains("payload checksum"));
        assert_eq!(found.tail, None);
        // A damaged header hides what follows it.
        let mut bytes = [a.clone(), b, c].concat();
        bytes[a.len() + 9] ^= 0x40;
        let found = scan(&bytes);
        assert_eq!(found.entries.len(), 1);
        assert!(found.tail.is_some_and(|t| t.contains("header checksum")));
    }
}
