//! Engine configuration and its validation against this machine's limits.
//!
//! Validation happens before any executor starts, so a bad configuration is
//! one clear error instead of a half-started engine.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::block::{BlockSize, SHARDS_MAX};
use crate::error::{Error, Result};
use crate::eviction::PolicyKind;
use crate::layout::Layout;
use crate::prefetch::PrefetchConfig;

/// Name of the cache file created inside `--cache-dir`.
pub const CACHE_FILE_NAME: &str = "datenlord-cache.bin";
/// Default io_uring registered-buffer memory per executor.
pub const IO_MEMORY_DEFAULT_BYTES: usize = 4 << 20;
/// Smallest io memory glommio accepts per executor.
pub const IO_MEMORY_MIN_BYTES: usize = 64 << 10;
/// glommio refuses to start below this RLIMIT_MEMLOCK.
pub const MEMLOCK_MIN_BYTES: u64 = 512 << 10;
/// Default io_uring submission queue depth per executor.
pub const RING_DEPTH_DEFAULT: usize = 128;
/// Largest io_uring submission queue depth accepted.
pub const RING_DEPTH_MAX: usize = 4096;

/// The NVMe tier: a raw block device or a preallocated file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// A directory (the cache file is created in it) or a block device.
    pub path: PathBuf,
    /// Bytes of the cache file; for a block device, at most this many bytes
    /// of it are used (`None`: the whole device; required for a file).
    pub size_bytes: Option<u64>,
}

/// Configuration of one engine (one node's data storage engine).
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Executors, one per core; `None` means every CPU this process may use.
    pub cores: Option<usize>,
    /// Block size of the volume.
    pub block_size: BlockSize,
    /// Memory tier size summed over all shards; 0 disables the memory tier.
    pub memory_bytes: u64,
    /// Back the memory tier with hugetlb pages when the system has them.
    pub hugepages: bool,
    /// The NVMe tier, if any.
    pub disk: Option<DiskConfig>,
    /// Eviction policy of both tiers.
    pub policy: PolicyKind,
    /// Sequential readahead.
    pub prefetch: PrefetchConfig,
    /// io_uring registered buffer memory per executor; `None` derives it from
    /// RLIMIT_MEMLOCK.
    pub io_memory_bytes: Option<usize>,
    /// io_uring submission queue depth per executor.
    pub ring_depth: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            cores: None,
            block_size: BlockSize::default(),
            memory_bytes: 256 << 20,
            hugepages: true,
            disk: None,
            policy: PolicyKind::default(),
            prefetch: PrefetchConfig::default(),
            io_memory_bytes: None,
            ring_depth: RING_DEPTH_DEFAULT,
        }
    }
}

/// A configuration checked against the machine, with everything derived.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The configuration it was made from.
    pub config: EngineConfig,
    /// CPU each shard is pinned to (`cpus.len()` is the shard count).
    pub cpus: Vec<usize>,
    /// Memory-tier slots per shard.
    pub memory_slots_per_shard: u32,
    /// io_uring registered memory per executor.
    pub io_memory_bytes: usize,
    /// Cache device layout and its path, when the NVMe tier is on.
    pub disk: Option<(PathBuf, Layout)>,
}

impl Plan {
    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.cpus.len()
    }
}

impl EngineConfig {
    /// Checks the configuration against this machine and derives the plan.
    pub fn plan(&self) -> Result<Plan> {
        let allowed = allowed_cpus()?;
        let shards = self.cores.unwrap_or(allowed.len()).min(SHARDS_MAX);
        if shards == 0 {
            return Err(Error::Config("--cores must be at least 1".into()));
        }
        if self.cores.is_some_and(|c| c > allowed.len()) {
            return Err(Error::TooManyCores {
                requested: self.cores.unwrap_or(shards),
                available: allowed.len(),
            });
        }
        if self.ring_depth == 0
            || self.ring_depth > RING_DEPTH_MAX
            || !self.ring_depth.is_power_of_two()
        {
            return Err(Error::Config(format!(
                "ring depth {} is invalid: use a power of two between 1 and {RING_DEPTH_MAX}",
                self.ring_depth
            )));
        }
        self.prefetch
            .validate()
            .map_err(|e| Error::Config(format!("prefetch: {e}")))?;
        let io_memory_bytes =
            io_memory_per_executor(memlock_limit_bytes(), shards, self.io_memory_bytes)?;
        let memory_slots_per_shard = memory_slots(self.memory_bytes, self.block_size, shards)?;
        let disk = match &self.disk {
            None => None,
            Some(disk) => Some(plan_disk(disk, self.block_size, shards)?),
        };
        Ok(Plan {
            config: self.clone(),
            cpus: allowed[..shards].to_vec(),
            memory_slots_per_shard,
            io_memory_bytes,
            disk,
        })
    }
}

fn memory_slots(memory_bytes: u64, block_size: BlockSize, shards: usize) -> Result<u32> {
    if memory_bytes == 0 {
        return Ok(0);
    }
    // The arena is allocated and touched at start: more than the machine
    // has would never finish starting.
    let physical = physical_memory_bytes();
    if memory_bytes > physical {
        return Err(Error::Config(format!(
            "--memory-size {memory_bytes} is more than this machine's memory ({physical} bytes): give at most that, and leave room for the rest of the system"
        )));
    }
    let per_shard = memory_bytes / shards as u64 / u64::from(block_size.bytes());
    if per_shard == 0 {
        return Err(Error::Config(format!(
            "--memory-size {memory_bytes} is too small for {shards} shards of {} KiB blocks: use at least {} bytes, or 0 to disable the memory tier",
            block_size.bytes() / 1024,
            shards as u64 * u64::from(block_size.bytes())
        )));
    }
    u32::try_from(per_shard)
        .map_err(|_| Error::Config(format!(
            "--memory-size {memory_bytes} needs more than 2^32 slots per shard: use a larger --block-size or a smaller --memory-size"
        )))
}

/// CPUs in this process's affinity mask, in ascending order.
pub fn allowed_cpus() -> Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; zeroed is a valid empty set, and
    // sched_getaffinity writes at most size_of::<cpu_set_t>() bytes into it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw mut set) };
    if rc != 0 {
        return Err(Error::io(
            "sched_getaffinity",
            "/proc/self",
            std::io::Error::last_os_error(),
        ));
    }
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: cpu < CPU_SETSIZE, the set was initialised above.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect();
    if cpus.is_empty() {
        return Err(Error::Config("this process may not run on any CPU".into()));
    }
    Ok(cpus)
}

/// Soft RLIMIT_MEMLOCK in bytes (`u64::MAX` when unlimited).
pub fn memlock_limit_bytes() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the provided struct.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &raw mut lim) };
    if rc != 0 || lim.rlim_cur == libc::RLIM_INFINITY {
        return u64::MAX;
    }
    lim.rlim_cur
}

/// Sizes io_uring registered memory so that all executors fit in the
/// locked-memory limit with half of it left for the rings and the rest of the
/// process.
pub fn io_memory_per_executor(
    memlock_bytes: u64,
    shards: usize,
    wanted: Option<usize>,
) -> Result<usize> {
    let needed_bytes = MEMLOCK_MIN_BYTES.max(2 * shards as u64 * IO_MEMORY_MIN_BYTES as u64);
    if memlock_bytes < needed_bytes {
        return Err(Error::MemlockLimit {
            limit_bytes: memlock_bytes,
            needed_bytes,
            needed_kib: needed_bytes.div_ceil(1024),
            shards,
        });
    }
    let fair = usize::try_from(memlock_bytes / 2 / shards as u64).unwrap_or(usize::MAX);
    let bytes = wanted.unwrap_or(IO_MEMORY_DEFAULT_BYTES).min(fair);
    Ok((bytes & !4095).max(IO_MEMORY_MIN_BYTES))
}

fn plan_disk(disk: &DiskConfig, block_size: BlockSize, shards: usize) -> Result<(PathBuf, Layout)> {
    let meta = std::fs::metadata(&disk.path).map_err(|e| {
        Error::Config(format!(
            "--cache-dir {}: {e}: create the directory or give an existing block device",
            disk.path.display()
        ))
    })?;
    let (path, device_bytes) = if meta.file_type().is_block_device() {
        let file = File::open(&disk.path).map_err(|e| Error::io("open", &disk.path, e))?;
        (
            disk.path.clone(),
            Some(block_device_bytes(&file, &disk.path)?),
        )
    } else if meta.is_dir() {
        (disk.path.join(CACHE_FILE_NAME), None)
    } else {
        return Err(Error::Config(format!(
            "--cache-dir {} is neither a directory nor a block device",
            disk.path.display()
        )));
    };
    let size_bytes = match (disk.size_bytes, device_bytes) {
        (Some(size), Some(dev)) => size.min(dev),
        (None, Some(dev)) => dev,
        (Some(size), None) => size,
        (None, None) => {
            return Err(Error::Config(
                "a cache file needs a size: pass --cache-size (e.g. 10GiB)".into(),
            ))
        }
    };
    let layout = Layout::new(size_bytes, block_size, shards)?;
    if device_bytes.is_none() {
        // A cache file larger than the space left would fail its writes
        // later, one block at a time: refused now, naming the limit.
        let existing = std::fs::metadata(&path).map_or(0, |m| m.len());
        let room = free_bytes(&disk.path)?.map(|free| free.saturating_add(existing));
        if let Some(room) = room.filter(|&room| layout.total_bytes() > room) {
            return Err(Error::Config(format!(
                "--cache-size {} needs {} bytes in {}, which has {room} bytes free (counting the cache file already there): give a smaller --cache-size or another --cache-dir",
                size_bytes,
                layout.total_bytes(),
                disk.path.display()
            )));
        }
        probe_direct_io(&path, layout.total_bytes())?;
    }
    Ok((path, layout))
}

/// Bytes of physical memory.
fn physical_memory_bytes() -> u64 {
    // SAFETY: sysconf reads system constants.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages <= 0 || page <= 0 {
        return u64::MAX;
    }
    (pages as u64).saturating_mul(page as u64)
}

/// Bytes an unprivileged writer may still use in the file system of
/// `dir`; `None` when it reports no size (ramfs).
fn free_bytes(dir: &Path) -> Result<Option<u64>> {
    use std::os::unix::ffi::OsStrExt as _;
    let c_dir = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| Error::Config(format!("{}: a path with a NUL byte", dir.display())))?;
    // SAFETY: statvfs writes into a zeroed struct through a valid pointer,
    // for a NUL-terminated path.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_dir.as_ptr(), &raw mut stat) } != 0 {
        return Err(Error::io("statvfs", dir, std::io::Error::last_os_error()));
    }
    if stat.f_blocks == 0 {
        return Ok(None);
    }
    Ok(Some(stat.f_bavail.saturating_mul(stat.f_frsize)))
}

/// Creates (or reopens) the cache file with O_DIRECT, so that a file system
/// without direct IO is reported before any executor starts, and makes sure
/// the free space for the whole file is there.
fn probe_direct_io(path: &Path, total_bytes: u64) -> Result<()> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|source| match source.raw_os_error() {
            Some(libc::EINVAL) => Error::DirectIoUnsupported {
                path: path.to_path_buf(),
                source,
            },
            _ => Error::io("open the cache file", path, source),
        })?;
    let len = file
        .metadata()
        .map_err(|e| Error::io("stat", path, e))?
        .len();
    if len < total_bytes {
        use std::os::fd::AsRawFd;
        // SAFETY: plain syscall on an fd we own.
        let rc = unsafe {
            libc::posix_fallocate(
                file.as_raw_fd(),
                0,
                libc::off_t::try_from(total_bytes).unwrap_or(libc::off_t::MAX),
            )
        };
        if rc != 0 {
            return Err(Error::io(
                "preallocate the cache file (is --cache-size larger than the free space?)",
                path,
                std::io::Error::from_raw_os_error(rc),
            ));
        }
    }
    Ok(())
}

fn block_device_bytes(file: &File, path: &Path) -> Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = file;
    f.seek(SeekFrom::End(0))
        .map_err(|e| Error::io("size the block device", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_memory_fits_memlock() {
        // 8 MiB limit, 2 shards: 2 MiB each, half the limit stays free.
        assert_eq!(io_memory_per_executor(8 << 20, 2, None).ok(), Some(2 << 20));
        assert_eq!(
            io_memory_per_executor(u64::MAX, 2, None).ok(),
            Some(IO_MEMORY_DEFAULT_BYTES)
        );
        assert_eq!(
            io_memory_per_executor(u64::MAX, 2, Some(1 << 20)).ok(),
            Some(1 << 20)
        );
        let err = io_memory_per_executor(64 << 10, 2, None).expect_err("too low");
        let msg = err.to_string();
        assert!(
            msg.contains("RLIMIT_MEMLOCK") && msg.contains("ulimit -l 512"),
            "{msg}"
        );
    }

    #[test]
    fn too_many_cores_is_a_clear_error() {
        let config = EngineConfig {
            cores: Some(100_000),
            ..EngineConfig::default()
        };
        let msg = config.plan().expect_err("too many").to_string();
        assert!(
            msg.contains("--cores 100000") && msg.contains("or fewer"),
            "{msg}"
        );
    }

    #[test]
    fn sizes_beyond_the_machine_are_refused_naming_the_limit() {
        let memory = EngineConfig {
            cores: Some(1),
            memory_bytes: physical_memory_bytes().saturating_add(1 << 30),
            ..EngineConfig::default()
        };
        let msg = memory.plan().expect_err("more than RAM").to_string();
        assert!(msg.contains("this machine's memory"), "{msg}");
        let dir = tempfile::tempdir().expect("tempdir");
        let free = free_bytes(dir.path())
            .expect("statvfs")
            .expect("a sized file system");
        let disk = EngineConfig {
            cores: Some(1),
            disk: Some(DiskConfig {
                path: dir.path().to_path_buf(),
                size_bytes: Some(free.saturating_mul(2).max(1 << 40)),
            }),
            ..EngineConfig::default()
        };
        let msg = disk
            .plan()
            .expect_err("more than the free space")
            .to_string();
        assert!(msg.contains("bytes free"), "{msg}");
        assert!(
            !dir.path().join(CACHE_FILE_NAME).exists(),
            "nothing was made"
        );
    }

    #[test]
    fn memory_too_small_is_a_clear_error() {
        let config = EngineConfig {
            cores: Some(1),
            memory_bytes: 4096,
            ..EngineConfig::default()
        };
        let msg = config.plan().expect_err("too small").to_string();
        assert!(
            msg.contains("--memory-size") && msg.contains("at least"),
            "{msg}"
        );
    }

    #[test]
    fn cache_dir_must_exist_and_have_a_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = EngineConfig {
            cores: Some(1),
            disk: Some(DiskConfig {
                path: dir.path().join("missing"),
                size_bytes: Some(64 << 20),
            }),
            ..EngineConfig::default()
        };
        let msg = config.plan().expect_err("missing dir").to_string();
        assert!(msg.contains("create the directory"), "{msg}");
        config.disk = Some(DiskConfig {
            path: dir.path().to_path_buf(),
            size_bytes: None,
        });
        let msg = config.plan().expect_err("no size").to_string();
        assert!(msg.contains("--cache-size"), "{msg}");
        config.disk = Some(DiskConfig {
            path: dir.path().to_path_buf(),
            size_bytes: Some(1 << 20),
        });
        let msg = config.plan().expect_err("too small").to_string();
        assert!(
            msg.contains("--cache-size") && msg.contains("at least"),
            "{msg}"
        );
        config.disk = Some(DiskConfig {
            path: dir.path().to_path_buf(),
            size_bytes: Some(64 << 20),
        });
        let plan = config.plan().expect("valid");
        let (path, layout) = plan.disk.expect("disk planned");
        assert_eq!(path, dir.path().join(CACHE_FILE_NAME));
        assert!(std::fs::metadata(&path).expect("created").len() >= layout.total_bytes());
    }
}
