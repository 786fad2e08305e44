//! Unflushed writes of one file: dirty blocks, each holding its valid bytes
//! (a block may be shorter than the block size; past its end it reads as
//! zeros). Sans-IO: the driver loads the current content of a partially
//! overwritten block ([`DirtyFile::needs_base`], [`DirtyFile::set_base`])
//! before it applies the write.

use std::collections::BTreeMap;
use std::ops::Range;

use crate::range::{block_start, pieces, Piece};

/// The dirty blocks of one file.
#[derive(Debug)]
pub struct DirtyFile {
    block_size: u32,
    blocks: BTreeMap<u64, Vec<u8>>,
    /// Sum of the lengths of the dirty blocks.
    bytes: usize,
}

impl DirtyFile {
    /// No dirty block; `block_size` is a power of two.
    pub fn new(block_size: u32) -> Self {
        debug_assert!(block_size.is_power_of_two());
        Self {
            block_size,
            blocks: BTreeMap::new(),
            bytes: 0,
        }
    }

    /// The lowest dirty block index.
    pub fn first_index(&self) -> Option<u64> {
        self.blocks.keys().next().copied()
    }

    /// The highest dirty block index.
    pub fn last_index(&self) -> Option<u64> {
        self.blocks.keys().next_back().copied()
    }

    /// The dirty block indices, in order.
    pub fn indices(&self) -> impl Iterator<Item = u64> + '_ {
        self.blocks.keys().copied()
    }
    /// Whether nothing is dirty.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Bytes held by dirty blocks.
    pub fn dirty_bytes(&self) -> usize {
        self.bytes
    }

    /// The valid bytes of dirty block `index`.
    pub fn get(&self, index: u64) -> Option<&[u8]> {
        self.blocks.get(&index).map(Vec::as_slice)
    }

    /// Blocks a write (or punch) of `len` bytes at `offset` overwrites only
    /// in part and that are not dirty yet, but may hold data: the file of
    /// `file_size` bytes reaches into them. Their current content must be
    /// loaded first.
    pub fn needs_base(&self, offset: u64, len: usize, file_size: u64) -> Vec<u64> {
        pieces(offset, len, self.block_size)
            .filter(|p| {
                !p.is_whole(self.block_size)
                    && !self.blocks.contains_key(&p.index)
                    && block_start(p.index, self.block_size) < file_size
            })
            .map(|p| p.index)
            .collect()
    }

    /// Makes `data` (the current content of block `index`, or empty for a
    /// hole) the dirty content of the block, unless it is dirty already.
    pub fn set_base(&mut self, index: u64, mut data: Vec<u8>) {
        if self.blocks.contains_key(&index) {
            return;
        }
        data.truncate(self.block_size as usize);
        self.bytes += data.len();
        self.blocks.insert(index, data);
    }

    fn block_mut(&mut self, piece: &Piece) -> &mut Vec<u8> {
        self.blocks.entry(piece.index).or_default()
    }

    /// Applies a write of `data` at `offset` (bases loaded).
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        for piece in pieces(offset, data.len(), self.block_size) {
            let src = &data[piece.buf_offset..piece.buf_offset + piece.len];
            let end = piece.start + piece.len;
            let block = self.block_mut(&piece);
            let before = block.len();
            if block.len() < end {
                block.resize(end, 0);
            }
            block[piece.start..end].copy_from_slice(src);
            let after = block.len();
            self.bytes += after - before;
        }
    }

    /// Zeroes `len` bytes at `offset` (bases loaded): a whole block becomes
    /// empty (all zeros), a partial one has the range zeroed.
    pub fn punch(&mut self, offset: u64, len: usize) {
        let block_size = self.block_size;
        for piece in pieces(offset, len, block_size) {
            let block = self.block_mut(&piece);
            let before = block.len();
            if piece.is_whole(block_size) || piece.start + piece.len >= block.len() {
                // Zeros up to the block's end are what a shorter block reads as.
                block.truncate(piece.start.min(block.len()));
            } else {
                block[piece.start..piece.start + piece.len].fill(0);
            }
            let after = block.len();
            self.bytes -= before - after;
        }
    }

    /// Forgets the dirty copies of blocks `blocks` (they became holes).
    pub fn discard(&mut self, blocks: Range<u64>) {
        if blocks.is_empty() {
            return;
        }
        let gone: Vec<u64> = self.blocks.range(blocks).map(|(&i, _)| i).collect();
        for index in gone {
            if let Some(data) = self.blocks.remove(&index) {
                self.bytes -= data.len();
            }
        }
    }

    /// Copies block `index`'s bytes `start..start + out.len()` into `out`
    /// (zeros past its valid length). `false` if the block is not dirty.
    pub fn read_into(&self, index: u64, start: usize, out: &mut [u8]) -> bool {
        let Some(block) = self.blocks.get(&index) else {
            return false;
        };
        let valid = block.len().saturating_sub(start).min(out.len());
        if valid > 0 {
            out[..valid].copy_from_slice(&block[start..start + valid]);
        }
        out[valid..].fill(0);
        true
    }

    /// Takes every dirty block out (to flush them).
    pub fn take(&mut self) -> BTreeMap<u64, Vec<u8>> {
        self.bytes = 0;
        std::mem::take(&mut self.blocks)
    }

    /// Puts blocks taken by [`DirtyFile::take`] back after a failed flush;
    /// blocks dirtied since keep their newer content.
    pub fn restore(&mut self, blocks: BTreeMap<u64, Vec<u8>>) {
        for (index, data) in blocks {
            if let std::collections::btree_map::Entry::Vacant(e) = self.blocks.entry(index) {
                self.bytes += data.len();
                e.insert(data);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::range::PunchSplit;

    const BS: u32 = 4096;

    fn read(d: &DirtyFile, offset: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0xAA; len];
        for p in pieces(offset, len, BS) {
            assert!(d.read_into(
                p.index,
                p.start,
                &mut out[p.buf_offset..p.buf_offset + p.len]
            ));
        }
        out
    }

    #[test]
    fn writes_overlay_their_base_and_short_blocks_read_as_zeros() {
        let mut d = DirtyFile::new(BS);
        assert_eq!(d.needs_base(100, 10, 0), Vec::<u64>::new(), "empty file");
        assert_eq!(d.needs_base(100, 10, 50), vec![0]);
        assert_eq!(d.needs_base(0, 4096, 50), Vec::<u64>::new(), "whole block");
        d.set_base(0, vec![1; 50]);
        d.write(100, &[2; 10]);
        let got = read(&d, 0, 200);
        assert_eq!(&got[..50], &[1; 50]);
        assert_eq!(&got[50..100], &[0; 50]);
        assert_eq!(&got[100..110], &[2; 10]);
        assert_eq!(&got[110..], &[0; 90]);
        assert_eq!(d.dirty_bytes(), 110);
        // A write across a boundary dirties both blocks.
        d.write(4090, &[3; 10]);
        assert_eq!(d.get(1), Some(&[3u8; 4][..]));
        assert_eq!(d.dirty_bytes(), 4096 + 4);
        let taken = d.take();
        assert!(d.is_empty() && d.dirty_bytes() == 0);
        d.write(0, &[9]);
        d.restore(taken);
        assert_eq!(d.get(0), Some(&[9u8][..]), "newer write wins over restore");
        assert_eq!(d.get(1).map(<[u8]>::len), Some(4));
    }

    #[test]
    fn punch_empties_whole_blocks_and_zeroes_partial_ones() {
        let mut d = DirtyFile::new(BS);
        d.write(0, &[7; 3 * 4096]);
        d.punch(10, 4096 * 2);
        assert_eq!(d.get(1), Some(&[][..]));
        let got = read(&d, 0, 3 * 4096);
        assert!(got[..10].iter().all(|&b| b == 7));
        assert!(got[10..8202].iter().all(|&b| b == 0));
        assert!(got[8202..].iter().all(|&b| b == 7));
        // Punching a block's tail shortens it.
        d.punch(4096 * 2 + 4000, 96);
        assert_eq!(d.get(2).map(<[u8]>::len), Some(4000));
        assert_eq!(
            d.dirty_bytes(),
            10 + 4000,
            "block 0 cut to 10 bytes, block 1 empty"
        );
        // Reading past a short block's end gives zeros.
        let mut out = [1u8; 8];
        assert!(d.read_into(0, 100, &mut out));
        assert_eq!(out, [0; 8]);
        // Blocks that became holes are forgotten.
        d.discard(1..3);
        assert_eq!((d.get(1), d.get(2)), (None, None));
        assert_eq!(d.dirty_bytes(), 10);
        d.discard(5..5);
        d.discard(0..1);
        assert!(d.is_empty() && d.dirty_bytes() == 0);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Write(u64, Vec<u8>),
        /// Zeroed through the dirty blocks only (a punch's partial ends).
        Punch(u64, usize),
        /// Whole blocks become holes (dirty copies discarded, flushed
        /// content gone), the partial ends are zeroed through the dirty
        /// blocks: `FALLOC_FL_PUNCH_HOLE`.
        Hole(u64, usize),
        Flush,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        let span = 5 * u64::from(BS);
        prop_oneof![
            4 => (0..span, proptest::collection::vec(any::<u8>(), 1..2 * BS as usize))
                .prop_map(|(o, d)| Op::Write(o, d)),
            2 => (0..span, 1..2 * BS as usize).prop_map(|(o, l)| Op::Punch(o, l)),
            2 => (0..span, 1..3 * BS as usize).prop_map(|(o, l)| Op::Hole(o, l)),
            1 => Just(Op::Flush),
        ]
    }

    /// The file a reader sees: dirty blocks over the flushed content.
    fn view(d: &DirtyFile, clean: &[u8], size: u64) -> Vec<u8> {
        let mut out = vec![0u8; size as usize];
        for p in pieces(0, size as usize, BS) {
            let dst = &mut out[p.buf_offset..p.buf_offset + p.len];
            if !d.read_into(p.index, p.start, dst) {
                let end = (p.buf_offset + p.len).min(clean.len());
                if p.buf_offset < end {
                    dst[..end - p.buf_offset].copy_from_slice(&clean[p.buf_offset..end]);
                }
            }
        }
        out
    }

    /// Zeroes `range` through the dirty blocks, bases loaded from `clean`.
    fn zero_in_place(d: &mut DirtyFile, clean: &[u8], range: Range<u64>, size: u64) {
        if range.is_empty() {
            return;
        }
        let len = (range.end - range.start) as usize;
        let bs = BS as usize;
        for index in d.needs_base(range.start, len, size) {
            let start = (index as usize * bs).min(clean.len());
            let stop = (start + bs).min(clean.len());
            d.set_base(index, clean[start..stop].to_vec());
        }
        d.punch(range.start, len);
    }

    proptest::proptest! {
        #[test]
        fn dirty_blocks_over_flushed_content_match_a_byte_model(
            ops in proptest::collection::vec(op(), 1..40)
        ) {
            let mut d = DirtyFile::new(BS);
            let mut clean: Vec<u8> = Vec::new();
            let mut expected: Vec<u8> = Vec::new();
            let bs = BS as usize;
            for op in ops {
                let size = expected.len() as u64;
                match op {
                    Op::Write(offset, data) => {
                        for index in d.needs_base(offset, data.len(), size) {
                            let start = (index as usize * bs).min(clean.len());
                            let end = (start + bs).min(clean.len());
                            d.set_base(index, clean[start..end].to_vec());
                        }
                        d.write(offset, &data);
                        let end = offset as usize + data.len();
                        if expected.len() < end {
                            expected.resize(end, 0);
                        }
                        expected[offset as usize..end].copy_from_slice(&data);
                    }
                    Op::Punch(offset, len) => {
                        let end = (offset + len as u64).min(size);
                        if offset < end {
                            zero_in_place(&mut d, &clean, offset..end, size);
                            expected[offset as usize..end as usize].fill(0);
                        }
                    }
                    Op::Hole(offset, len) => {
                        let end = (offset + len as u64).min(size);
                        if offset < end {
                            let split = PunchSplit::new(offset, end, size, BS);
                            // The block map first (flushed content gone),
                            // then the dirty copies.
                            for index in split.holes.clone() {
                                let start = (index as usize * bs).min(clean.len());
                                let stop = (start + bs).min(clean.len());
                                clean[start..stop].fill(0);
                            }
                            d.discard(split.holes.clone());
                            for index in split.holes {
                                proptest::prop_assert!(d.get(index).is_none());
                            }
                            zero_in_place(&mut d, &clean, split.head, size);
                            zero_in_place(&mut d, &clean, split.tail, size);
                            expected[offset as usize..end as usize].fill(0);
                        }
                    }
                    Op::Flush => {
                        clean.resize(expected.len(), 0);
                        for (index, data) in d.take() {
                            let start = index as usize * bs;
                            let stop = (start + bs).min(clean.len());
                            let block = &mut clean[start..stop];
                            block.fill(0);
                            block[..data.len()].copy_from_slice(&data);
                        }
                    }
                }
                proptest::prop_assert_eq!(view(&d, &clean, expected.len() as u64), expected.clone());
                let held: usize = (0..=7u64)
                    .filter_map(|i| d.get(i).map(<[u8]>::len))
                    .sum();
                proptest::prop_assert_eq!(held, d.dirty_bytes());
            }
        }
    }
}
