//! A random-operation file checker in the style of fsx: the same seeded
//! sequence of write / truncate / punch-hole / read / mmap-read /
//! copy_file_range / fsync / reopen operations runs on several files in two
//! directories (the file system under test and a local reference), and every
//! read, size and final content must be equal byte for byte.
//!
//! A failure names the seed, the op number and the op, so it replays.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// What to run.
#[derive(Clone, Debug)]
pub struct FsxConfig {
    /// Seed of the operation sequence.
    pub seed: u64,
    /// Operations in all.
    pub ops: u64,
    /// Files used at once.
    pub files: usize,
    /// Largest file offset written (exclusive).
    pub file_bytes_max: u64,
    /// Largest single write, read or copy.
    pub io_bytes_max: u64,
    /// Also punch holes (`fallocate(PUNCH_HOLE | KEEP_SIZE)`).
    pub punch: bool,
    /// Also read through `mmap`.
    pub mmap: bool,
    /// Test hook for the checker itself: from this op on, every write to
    /// the tested side has one byte flipped.
    pub corrupt_writes_from: Option<u64>,
}

impl Default for FsxConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            ops: 10_000,
            files: 4,
            file_bytes_max: 8 << 20,
            io_bytes_max: 256 << 10,
            punch: true,
            mmap: true,
            corrupt_writes_from: None,
        }
    }
}

/// splitmix64: small, seeded, reproducible.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// An offset or length biased towards interesting places: often block
    /// boundaries (64 KiB multiples) and their neighbours.
    fn position(&mut self, max: u64) -> u64 {
        match self.below(4) {
            0 => {
                let boundary = (self.below(max / (64 << 10) + 1)) * (64 << 10);
                let wiggle = self.below(3);
                (boundary + wiggle).saturating_sub(1).min(max)
            }
            _ => self.below(max + 1),
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Write {
        file: usize,
        offset: u64,
        len: u64,
    },
    Read {
        file: usize,
        offset: u64,
        len: u64,
    },
    MmapRead {
        file: usize,
        offset: u64,
        len: u64,
    },
    Truncate {
        file: usize,
        size: u64,
    },
    Punch {
        file: usize,
        offset: u64,
        len: u64,
    },
    Copy {
        from: usize,
        to: usize,
        from_offset: u64,
        to_offset: u64,
        len: u64,
    },
    Fsync {
        file: usize,
    },
    Reopen {
        file: usize,
    },
}

fn next_op(rng: &mut Rng, config: &FsxConfig) -> Op {
    let file = rng.below(config.files as u64) as usize;
    let max = config.file_bytes_max;
    let len = 1 + rng.below(config.io_bytes_max);
    match rng.below(100) {
        0..=29 => Op::Write {
            file,
            offset: rng.position(max - 1),
            len,
        },
        55..=64 if config.mmap => Op::MmapRead {
            file,
            offset: rng.position(max),
            len,
        },
        65..=74 => Op::Truncate {
            file,
            size: rng.position(max),
        },
        75..=81 if config.punch => Op::Punch {
            file,
            offset: rng.position(max - 1),
            len,
        },
        82..=89 => Op::Copy {
            from: file,
            to: rng.below(config.files as u64) as usize,
            from_offset: rng.position(max),
            to_offset: rng.position(max - 1),
            len,
        },
        90..=94 => Op::Fsync { file },
        95..=99 => Op::Reopen { file },
        // 30..=54, and mmap reads or punches when they are off.
        _ => Op::Read {
            file,
            offset: rng.position(max),
            len,
        },
    }
}

/// One side of the comparison: a directory and its open files.
struct Side {
    dir: PathBuf,
    files: Vec<File>,
}

fn open_rw(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

impl Side {
    fn new(dir: &Path, files: usize) -> std::io::Result<Self> {
        let files = (0..files)
            .map(|i| {
                let path = dir.join(format!("fsx{i}"));
                let file = open_rw(&path)?;
                file.set_len(0)?;
                Ok(file)
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Self {
            dir: dir.to_owned(),
            files,
        })
    }

    fn size(&self, file: usize) -> std::io::Result<u64> {
        Ok(self.files[file].metadata()?.len())
    }

    /// Runs `op`; returns the bytes it read (empty for other ops).
    fn run(&mut self, op: &Op, data: &[u8]) -> std::io::Result<Vec<u8>> {
        match *op {
            Op::Write { file, offset, .. } => {
                self.files[file].write_all_at(data, offset)?;
                Ok(Vec::new())
            }
            Op::Read { file, offset, len } => {
                let mut buf = vec![0u8; len as usize];
                let mut done = 0;
                while done < buf.len() {
                    let n = self.files[file].read_at(&mut buf[done..], offset + done as u64)?;
                    if n == 0 {
                        break;
                    }
                    done += n;
                }
                buf.truncate(done);
                Ok(buf)
            }
            Op::MmapRead { file, offset, len } => mmap_read(&self.files[file], offset, len),
            Op::Truncate { file, size } => {
                self.files[file].set_len(size)?;
                Ok(Vec::new())
            }
            Op::Punch { file, offset, len } => {
                let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
                // SAFETY: a valid fd and plain integers.
                let rc = unsafe {
                    libc::fallocate(self.files[file].as_raw_fd(), mode, off(offset), off(len))
                };
                if rc != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(Vec::new())
            }
            Op::Copy {
                from,
                to,
                from_offset,
                to_offset,
                len,
            } => {
                let mut off_in = off(from_offset);
                let mut off_out = off(to_offset);
                let mut left = len as usize;
                while left > 0 {
                    // SAFETY: valid fds and pointers to live offsets.
                    let n = unsafe {
                        libc::copy_file_range(
                            self.files[from].as_raw_fd(),
                            &raw mut off_in,
                            self.files[to].as_raw_fd(),
                            &raw mut off_out,
                            left,
                            0,
                        )
                    };
                    if n < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    if n == 0 {
                        break;
                    }
                    left -= n as usize;
                }
                Ok(Vec::new())
            }
            Op::Fsync { file } => {
                self.files[file].sync_all()?;
                Ok(Vec::new())
            }
            Op::Reopen { file } => {
                let path = self.dir.join(format!("fsx{file}"));
                self.files[file] = open_rw(&path)?;
                Ok(Vec::new())
            }
        }
    }
}

/// A file offset for libc (the checker's offsets are far below `i64::MAX`).
fn off(value: u64) -> i64 {
    i64::try_from(value).expect("offset fits in off_t")
}

fn mmap_read(file: &File, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
    let size = file.metadata()?.len();
    if offset >= size {
        return Ok(Vec::new());
    }
    let end = (offset + len).min(size);
    let page = 4096;
    let map_offset = offset / page * page;
    let map_len = (end - map_offset) as usize;
    // SAFETY: a fresh private read-only mapping of a valid fd, unmapped below.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            map_len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            off(map_offset),
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the mapping is `map_len` readable bytes and lives until munmap.
    let bytes = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), map_len) };
    let out = bytes[(offset - map_offset) as usize..].to_vec();
    // SAFETY: the mapping made above.
    unsafe { libc::munmap(ptr, map_len) };
    Ok(out)
}

fn describe(config: &FsxConfig, n: u64, op: &Op) -> String {
    format!("seed {} op #{n} {op:?}", config.seed)
}

/// Runs the sequence on `tested` and `reference` and fails at the first
/// difference (results, errors, sizes, or final contents).
pub fn run(config: &FsxConfig, tested: &Path, reference: &Path) -> Result<(), String> {
    let mut rng = Rng::new(config.seed);
    let mut a = Side::new(tested, config.files).map_err(|e| format!("open tested: {e}"))?;
    let mut b = Side::new(reference, config.files).map_err(|e| format!("open reference: {e}"))?;
    let mut data = Vec::new();
    for n in 0..config.ops {
        let op = next_op(&mut rng, config);
        if let Op::Write { len, .. } = op {
            data.clear();
            let fill = rng.next_u64();
            data.extend((0..len).map(|i| (fill.wrapping_add(i.wrapping_mul(31)) >> 3) as u8));
        }
        let ra = if matches!(op, Op::Write { .. })
            && config.corrupt_writes_from.is_some_and(|from| n >= from)
        {
            let mut bad = data.clone();
            bad[0] ^= 0xff;
            a.run(&op, &bad)
        } else {
            a.run(&op, &data)
        };
        let rb = b.run(&op, &data);
        match (ra, rb) {
            (Ok(x), Ok(y)) => {
                if x != y {
                    let at = x.iter().zip(&y).position(|(p, q)| p != q);
                    return Err(format!(
                        "{}: read differs (tested {} bytes, reference {} bytes, first difference at {at:?})",
                        describe(config, n, &op),
                        x.len(),
                        y.len()
                    ));
                }
            }
            (Err(x), Err(y)) if x.raw_os_error() == y.raw_os_error() => {}
            (x, y) => {
                return Err(format!(
                    "{}: tested gave {:?}, reference gave {:?}",
                    describe(config, n, &op),
                    x.map(|v| v.len()),
                    y.map(|v| v.len())
                ))
            }
        }
        for file in 0..config.files {
            let (sa, sb) = (a.size(file), b.size(file));
            match (sa, sb) {
                (Ok(x), Ok(y)) if x == y => {}
                (x, y) => {
                    return Err(format!(
                        "{}: size of fsx{file}: tested {x:?}, reference {y:?}",
                        describe(config, n, &op)
                    ))
                }
            }
        }
    }
    for file in 0..config.files {
        let x = std::fs::read(tested.join(format!("fsx{file}")))
            .map_err(|e| format!("read back tested fsx{file}: {e}"))?;
        let y = std::fs::read(reference.join(format!("fsx{file}")))
            .map_err(|e| format!("read back reference fsx{file}: {e}"))?;
        if x != y {
            return Err(format!(
                "seed {}: final content of fsx{file} differs ({} vs {} bytes)",
                config.seed,
                x.len(),
                y.len()
            ));
        }
    }
    Ok(())
}
