//! Block identity, block size and shard ownership.
//!
//! A block is an immutable piece of a file: writing a block makes a new
//! version, so a cached `(ino, index, version)` can never be stale. The owner
//! shard depends on `(ino, index)` only, so every version of a block lives on
//! the same shard and an old version can be replaced in place.

use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::str::FromStr;

use crate::error::Error;

/// Smallest block size a volume may use.
pub const BLOCK_SIZE_MIN_BYTES: u32 = 64 * 1024;
/// Largest block size a volume may use.
pub const BLOCK_SIZE_MAX_BYTES: u32 = 16 * 1024 * 1024;
/// Default block size of a volume.
pub const BLOCK_SIZE_DEFAULT_BYTES: u32 = 1024 * 1024;
/// Most shards (executors) one engine runs; also bounds shard bitmasks.
pub const SHARDS_MAX: usize = 128;

/// Inode number of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ino(pub u64);

/// One version of one block of one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId {
    /// The file.
    pub ino: Ino,
    /// Block number inside the file: byte offset / block size.
    pub index: u64,
    /// Version assigned by the metadata when the block was written. Its
    /// low [`VERSION_WRITER_BITS`] bits name the node that wrote it
    /// ([`BlockId::writer`]; 0 on a mount of its own).
    pub version: u64,
}

/// Low bits of a block version that hold the id of the node that wrote it:
/// until the version is uploaded, only that node's journal has it, and a
/// reader elsewhere knows whom to ask without a lookup.
pub const VERSION_WRITER_BITS: u32 = 16;
/// The largest writer id a version holds.
pub const VERSION_WRITER_MAX: u64 = (1 << VERSION_WRITER_BITS) - 1;

impl BlockId {
    /// A block id.
    pub const fn new(ino: u64, index: u64, version: u64) -> Self {
        Self {
            ino: Ino(ino),
            index,
            version,
        }
    }

    /// The node that wrote this version (0: a mount of its own, or a
    /// version from before writers were recorded, whose low bits mean
    /// nothing: asking a node for a block it does not have only misses).
    pub const fn writer(self) -> u64 {
        self.version & VERSION_WRITER_MAX
    }

    /// The part of the id that decides ownership (all versions share it).
    pub const fn key(self) -> BlockKey {
        BlockKey {
            ino: self.ino,
            index: self.index,
        }
    }

    /// Well-mixed 64-bit hash of the full id, used by admission sketches.
    pub fn hash64(self) -> u64 {
        mix64(self.key().hash64() ^ mix64(self.version.wrapping_add(0x51_7c_c1_b7)))
    }
}

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}@{}", self.ino.0, self.index, self.version)
    }
}

/// A block without its version: the unit of ownership.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockKey {
    /// The file.
    pub ino: Ino,
    /// Block number inside the file.
    pub index: u64,
}

impl BlockKey {
    /// Stable hash of `(ino, index)`. It must never change between releases:
    /// the NVMe tier stores blocks in the region of their owner shard, and a
    /// warm restart finds them there only if ownership is computed the same way.
    pub fn hash64(self) -> u64 {
        mix64(mix64(self.ino.0) ^ self.index.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    /// The shard that owns this block when the engine runs `shards` shards.
    pub fn owner(self, shards: usize) -> ShardId {
        debug_assert!(shards > 0 && shards <= SHARDS_MAX);
        ShardId((self.hash64() % shards as u64) as u16)
    }
}

/// Index of one shard (one executor, pinned to one core).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub u16);

impl ShardId {
    /// As a vector index.
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shard{}", self.0)
    }
}

/// The shard that is the home of an inode: where its sequential streams are
/// detected when a caller outside the executors does not choose one.
pub fn home_shard(ino: Ino, shards: usize) -> ShardId {
    debug_assert!(shards > 0 && shards <= SHARDS_MAX);
    ShardId((mix64(ino.0) % shards as u64) as u16)
}

/// Block size of a volume: a power of two between 64 KiB and 16 MiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockSize(u32);

impl BlockSize {
    /// Validates a block size.
    pub fn new(bytes: u64) -> Result<Self, Error> {
        let in_range =
            (u64::from(BLOCK_SIZE_MIN_BYTES)..=u64::from(BLOCK_SIZE_MAX_BYTES)).contains(&bytes);
        if !in_range || !bytes.is_power_of_two() {
            return Err(Error::Config(format!(
                "block size {bytes} bytes is invalid: use a power of two between {} KiB and {} MiB (default {} MiB)",
                BLOCK_SIZE_MIN_BYTES / 1024,
                BLOCK_SIZE_MAX_BYTES / 1024 / 1024,
                BLOCK_SIZE_DEFAULT_BYTES / 1024 / 1024
            )));
        }
        Ok(Self(bytes as u32))
    }

    /// Size in bytes.
    pub const fn bytes(self) -> u32 {
        self.0
    }

    /// Size in bytes as usize.
    pub const fn bytes_usize(self) -> usize {
        self.0 as usize
    }
}

impl Default for BlockSize {
    fn default() -> Self {
        Self(BLOCK_SIZE_DEFAULT_BYTES)
    }
}

impl FromStr for BlockSize {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::new(parse_bytes(s)?)
    }
}

/// Parses a size such as `4096`, `64KiB`, `1M`, `10GiB` (binary units; `k`,
/// `m`, `g`, `t` with or without `i`/`B` all mean powers of 1024).
pub fn parse_bytes(text: &str) -> Result<u64, Error> {
    let s = text.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let invalid = || {
        Error::Config(format!(
            "invalid size {text:?}: write a number with an optional unit, e.g. 4096, 64KiB, 512MiB, 10GiB"
        ))
    };
    let value: u64 = digits.parse().map_err(|_| invalid())?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(invalid()),
    };
    value.checked_mul(1u64 << shift).ok_or_else(invalid)
}

/// splitmix64 finalizer: a fast, stable, well-distributed 64-bit mix.
pub const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Hasher for maps keyed by block ids: keys are already structured integers,
/// so one multiply-mix per word beats SipHash on the hit path.
#[derive(Default, Clone, Copy, Debug)]
pub struct BlockHasher(u64);

impl Hasher for BlockHasher {
    fn finish(&self) -> u64 {
        mix64(self.0)
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(23) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }
}

/// `BuildHasher` for block-keyed maps.
pub type BlockHashBuilder = BuildHasherDefault<BlockHasher>;
/// A `HashMap` keyed by block ids or keys.
pub type BlockMap<K, V> = std::collections::HashMap<K, V, BlockHashBuilder>;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn block_size_limits() {
        assert!(BlockSize::new(64 * 1024).is_ok());
        assert!(BlockSize::new(16 * 1024 * 1024).is_ok());
        assert_eq!(BlockSize::default().bytes(), 1 << 20);
        for bad in [0, 4096, 32 * 1024, 3 << 20, 32 << 20] {
            let err = BlockSize::new(bad).expect_err("must reject").to_string();
            assert!(err.contains("power of two"), "{err}");
        }
        assert_eq!(
            "256KiB".parse::<BlockSize>().map(BlockSize::bytes).ok(),
            Some(256 * 1024)
        );
    }

    #[test]
    fn sizes_parse() {
        let check = |s: &str, v: Option<u64>| assert_eq!(parse_bytes(s).ok(), v, "{s}");
        check("4096", Some(4096));
        check("64KiB", Some(65536));
        check("1M", Some(1 << 20));
        check("10 GiB", Some(10 << 30));
        check("2t", Some(2 << 40));
        check("", None);
        check("GiB", None);
        check("12 parsecs", None);
        check("99999999999999999999T", None);
        check("18446744073709551615T", None);
    }

    #[test]
    fn ownership_is_stable() {
        // These values are part of the on-disk format (see BlockKey::hash64).
        let key = BlockId::new(1, 0, 7).key();
        assert_eq!(key.hash64(), BlockId::new(1, 0, 99).key().hash64());
        assert_eq!(key.owner(1), ShardId(0));
        assert_eq!(
            BlockKey {
                ino: Ino(42),
                index: 3
            }
            .hash64(),
            0x7f74_6e5c_dc4f_05f4
        );
    }

    proptest! {
        #[test]
        fn owners_spread_evenly(base in 0u64..1_000_000) {
            let shards = 4;
            let mut counts = [0u32; 4];
            for i in 0..4000u64 {
                let key = BlockKey { ino: Ino(base + i / 64), index: i % 64 };
                counts[key.owner(shards).index()] += 1;
            }
            for c in counts {
                prop_assert!((800..1200).contains(&c), "{counts:?}");
            }
        }
    }
}
