//! Byte ranges to block pieces: the arithmetic every data operation shares.
//! Sans-IO.

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
}
