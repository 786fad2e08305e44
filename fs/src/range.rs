//! Byte ranges to block pieces: the arithmetic every data operation shares.
//! Sans-IO.

use std::ops::Range;

/// The part of one block a byte range covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// Block index (byte offset / block size).
    pub index: u64,
    /// First byte inside the block.
    pub start: usize,
    /// Bytes covered inside the block.
    pub len: usize,
    /// Position of the piece's first byte in the caller's buffer.
    pub buf_offset: usize,
}

impl Piece {
    /// Whether the piece covers its whole block.
    pub fn is_whole(&self, block_size: u32) -> bool {
        self.start == 0 && self.len == block_size as usize
    }
}

/// The pieces of `len` bytes at `offset`, in block order. `block_size` is a
/// power of two; an empty range has no pieces.
pub fn pieces(offset: u64, len: usize, block_size: u32) -> impl Iterator<Item = Piece> {
    debug_assert!(block_size.is_power_of_two());
    let bs = u64::from(block_size);
    let end = offset.saturating_add(len as u64);
    let mut pos = offset;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let index = pos / bs;
        let start = pos % bs;
        let piece_len = (bs - start).min(end - pos);
        let piece = Piece {
            index,
            start: start as usize,
            len: piece_len as usize,
            buf_offset: (pos - offset) as usize,
        };
        pos += piece_len;
        Some(piece)
    })
}

/// Blocks that hold bytes `0..size`.
pub fn blocks_for(size: u64, block_size: u32) -> u64 {
    size.div_ceil(u64::from(block_size))
}

/// First byte of block `index`.
pub fn block_start(index: u64, block_size: u32) -> u64 {
    index.saturating_mul(u64::from(block_size))
}

/// How a punched range of a file splits: blocks whose bytes (below the
/// file's end) all lie in the range become holes; the bytes before and
/// after them, in partly punched blocks, are zeroed in place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PunchSplit {
    /// Block indices that become holes (may be empty).
    pub holes: Range<u64>,
    /// Bytes zeroed in place before the holes (may be empty; within one block).
    pub head: Range<u64>,
    /// Bytes zeroed in place after the holes (may be empty; within one block).
    pub tail: Range<u64>,
}

impl PunchSplit {
    /// Splits bytes `offset..end` of a file of `size` bytes (`end <= size`:
    /// the caller cuts the range at the end of file). The last block counts
    /// as whole when the range reaches the end of file: past it the block
    /// reads as zeros anyway.
    pub fn new(offset: u64, end: u64, size: u64, block_size: u32) -> Self {
        debug_assert!(block_size.is_power_of_two());
        debug_assert!(offset <= end && end <= size);
        let bs = u64::from(block_size);
        let first = offset.div_ceil(bs);
        let stop = if end == size {
            end.div_ceil(bs)
        } else {
            end / bs
        };
        let holes = first..stop.max(first);
        let head_end = end.min(block_start(first, block_size));
        let tail_start = head_end.max(block_start(holes.end, block_size)).min(end);
        Self {
            holes,
            head: offset..head_end,
            tail: tail_start..end,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(offset: u64, len: usize, expected: &[(u64, usize, usize, usize)]) {
        let got: Vec<_> = pieces(offset, len, 4096)
            .map(|p| (p.index, p.start, p.len, p.buf_offset))
            .collect();
        assert_eq!(got, expected, "offset {offset} len {len}");
    }

    #[test]
    fn ranges_split_at_block_boundaries() {
        check(0, 0, &[]);
        check(0, 4096, &[(0, 0, 4096, 0)]);
        check(10, 10, &[(0, 10, 10, 0)]);
        check(4000, 200, &[(0, 4000, 96, 0), (1, 0, 104, 96)]);
        check(
            4095,
            8194,
            &[
                (0, 4095, 1, 0),
                (1, 0, 4096, 1),
                (2, 0, 4096, 4097),
                (3, 0, 1, 8193),
            ],
        );
        let big = 5u64 << 30;
        check(big + 1, 2, &[(big / 4096, 1, 2, 0)]);
        assert_eq!(blocks_for(0, 4096), 0);
        assert_eq!(blocks_for(1, 4096), 1);
        assert_eq!(blocks_for(8192, 4096), 2);
        assert!(pieces(0, 4096, 4096).all(|p| p.is_whole(4096)));
    }

    /// Every `(offset, end, size)` with small numbers against the
    /// definition: a block is a hole exactly when all its bytes below the
    /// end of file are punched, and head, holes and tail cover the range
    /// once, in order.
    #[test]
    fn punch_splits_into_whole_blocks_and_partial_ends() {
        let bs = 4u32;
        let b = u64::from(bs);
        for size in 0..20u64 {
            for end in 0..=size {
                for offset in 0..=end {
                    let split = PunchSplit::new(offset, end, size, bs);
                    let holes: Vec<u64> = split.holes.clone().collect();
                    let expected: Vec<u64> = (0..size.div_ceil(b))
                        .filter(|&i| i * b >= offset && ((i + 1) * b).min(size) <= end)
                        .collect();
                    let case = format!("{offset}..{end} of {size}: {split:?}");
                    assert_eq!(holes, expected, "{case}");
                    let hole_bytes =
                        (split.holes.start * b).min(size)..(split.holes.end * b).min(size);
                    let mut covered = Vec::new();
                    for r in [&split.head, &hole_bytes, &split.tail] {
                        covered.extend(r.clone());
                    }
                    assert_eq!(covered, (offset..end).collect::<Vec<_>>(), "{case}");
                    for r in [&split.head, &split.tail] {
                        if !r.is_empty() {
                            assert_eq!(r.start / b, (r.end - 1) / b, "one block: {case}");
                        }
                    }
                }
            }
        }
        let s = PunchSplit::new(100, 3 * 4096 + 7, 10 * 4096, 4096);
        assert_eq!(
            (s.holes, s.head, s.tail),
            (1..3, 100..4096, 3 * 4096..3 * 4096 + 7)
        );
    }
}
