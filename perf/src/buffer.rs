//! IO buffers aligned for O_DIRECT, allocated once per worker thread.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

use crate::rng::SplitMix64;
use crate::spec::DIRECT_ALIGN_BYTES;

/// A zero-initialized, `DIRECT_ALIGN_BYTES`-aligned byte buffer.
#[derive(Debug)]
pub struct AlignedBuffer {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the buffer owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuffer {}

impl AlignedBuffer {
    /// At least `len_bytes` (rounded up to the alignment, minimum one page),
    /// filled with seeded pseudo-random bytes so that no layer below can
    /// shortcut writes of zeros.
    pub fn new(len_bytes: u64, seed: u64) -> Self {
        let align = DIRECT_ALIGN_BYTES as usize;
        let len = (len_bytes as usize).max(align).next_multiple_of(align);
        let layout = Layout::from_size_align(len, align)
            .expect("len and alignment are bounded by MAX_BLOCK_BYTES");
        // SAFETY: layout has a non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        let mut buffer = Self { ptr, layout };
        let mut rng = SplitMix64::new(seed);
        for chunk in buffer.as_mut_slice().chunks_mut(8) {
            let bytes = rng.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        buffer
    }

    pub fn len(&self) -> usize {
        self.layout.size()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for layout.size() initialized bytes we own.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self guarantees exclusivity.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this very layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::AlignedBuffer;
    use crate::spec::DIRECT_ALIGN_BYTES;

    #[test]
    fn aligned_and_rounded() {
        let b = AlignedBuffer::new(5000, 1);
        assert_eq!(b.len(), 8192);
        assert_eq!(
            b.as_slice().as_ptr() as usize % DIRECT_ALIGN_BYTES as usize,
            0
        );
        assert!(b.as_slice().iter().any(|&x| x != 0));
        assert_eq!(AlignedBuffer::new(0, 1).len(), 4096);
    }
}
