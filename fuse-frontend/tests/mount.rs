//! A real FUSE mount (needs root and /dev/fuse) of a file system over an
//! embedded master, a memory-only engine and a `MemoryStore` sink, driven
//! through std::fs and libc like any program would.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datenlord_cluster::master::Master;
use datenlord_engine::{BlockSize, Engine, EngineConfig, MemoryStore};
use datenlord_fs::{CopyConfig, Fs, FsConfig, MemorySink, MetaLink};
use datenlord_fuse::{mount, FuseError, Mount, MountOptions, UringMode};

const BLOCK: usize = 64 << 10;

/// One executor, a memory tier of `blocks` blocks, no hugepages.
fn memory_engine_config(blocks: u64) -> EngineConfig {
    EngineConfig {
        cores: Some(1),
        block_size: BlockSize::new(BLOCK as u64).expect("block size"),
        memory_bytes: blocks * BLOCK as u64,
        hugepages: false,
        ..EngineConfig::default()
    }
}
/// [`BLOCK`] as an `off_t`.
const BLOCK_OFF: i64 = 64 << 10;

/// Whether this process can mount (root with /dev/fuse); the tests say why
/// they did nothing otherwise.
fn can_mount() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let ok = root && Path::new("/dev/fuse").exists();
    if !ok {
        eprintln!("skipped: mounting needs root and /dev/fuse");
    }
    ok
}

fn is_mounted(path: &Path) -> bool {
    let Ok(mounts) = fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    let shown = path.display().to_string();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(shown.as_str()))
}

/// A mounted file system that is always unmounted, even when a test fails.
struct Mounted {
    mount: Option<Mount>,
    engine: Option<Engine>,
    master: Option<Master>,
    mnt: PathBuf,
    _dir: tempfile::TempDir,
}

/// An embedded master (in `dir`), a memory-only engine of `blocks` blocks
/// and a file system over them, not mounted.
fn start_fs(dir: &Path, blocks: u64) -> (Master, Engine, Arc<Fs>) {
    start_fs_with(dir, blocks, FsConfig::default())
}

fn start_fs_with(dir: &Path, blocks: u64, config: FsConfig) -> (Master, Engine, Arc<Fs>) {
    let master = Master::embedded(&dir.join("meta"), None).expect("master");
    let store = MemoryStore::new();
    let engine = Engine::start(&memory_engine_config(blocks), Arc::clone(&store)).expect("engine");
    let fs = Fs::new(
        config,
        MetaLink::from_master(&master),
        engine.handle(),
        MemorySink::new(store),
    )
    .expect("fs");
    (master, engine, fs)
}

impl Mounted {
    fn new(opts: impl FnOnce(&mut MountOptions)) -> Self {
        Self::with_config(|_, _| {}, opts)
    }

    /// A mount whose file system config `config` adjusts (given the test's
    /// directory).
    fn with_config(
        config: impl FnOnce(&mut FsConfig, &Path),
        opts: impl FnOnce(&mut MountOptions),
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).expect("mkdir mountpoint");
        let mut fs_config = FsConfig::default();
        config(&mut fs_config, dir.path());
        let (master, engine, fs) = start_fs_with(dir.path(), 64, fs_config);
        let mut options = MountOptions::new(&mnt);
        options.threads = 2;
        // Classic /dev/fuse loops unless a test asks for the ring (a ring
        // test elsewhere may have the kernel switch on right now).
        options.uring = UringMode::Off;
        opts(&mut options);
        let mount = mount(fs, &options).expect("mount");
        Self {
            mount: Some(mount),
            engine: Some(engine),
            master: Some(master),
            mnt,
            _dir: dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.mnt.join(name)
    }

    fn unmount(&mut self) {
        if let Some(m) = self.mount.take() {
            m.unmount().expect("clean unmount");
        }
        assert!(!is_mounted(&self.mnt), "still mounted after unmount");
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(m) = self.mount.take() {
            let _ = m.unmount();
        }
        if is_mounted(&self.mnt) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.mnt)
                .status();
        }
        if let Some(e) = self.engine.take() {
            let _ = e.shutdown();
        }
        if let Some(m) = self.master.take() {
            let _ = m.stop();
        }
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i % 253) as u8))
        .collect()
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

#[test]
fn posix_basics_through_a_real_mount() {
    if !can_mount() {
        return;
    }
    let mut m = Mounted::new(|_| {});
    posix_basics(&m);
    m.unmount();
}

/// mkdir, create, write, read, stat, readdir, rename, links, truncate,
/// append, xattrs, unlink while open, errnos, statfs.
fn posix_basics(m: &Mounted) {
    // mkdir, create, write, read back.
    fs::create_dir(m.path("dir")).expect("mkdir");
    let file = m.path("dir/hello.txt");
    fs::write(&file, b"hello, world\n").expect("write");
    assert_eq!(fs::read(&file).expect("read"), b"hello, world\n");
    let meta = fs::metadata(&file).expect("stat");
    assert_eq!(meta.len(), 13);
    assert!(meta.is_file());
    assert_eq!(meta.permissions().mode() & 0o777, 0o644 & !0o022 & 0o777);
    // Listing.
    let mut names: Vec<String> = fs::read_dir(m.path("dir"))
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec!["hello.txt"]);
    // Rename, hard link, symlink.
    let renamed = m.path("dir/renamed.txt");
    fs::rename(&file, &renamed).expect("rename");
    assert!(!file.exists());
    fs::hard_link(&renamed, m.path("hard")).expect("link");
    assert_eq!(fs::metadata(&renamed).expect("stat").nlink(), 2);
    std::os::unix::fs::symlink("dir/renamed.txt", m.path("sym")).expect("symlink");
    assert_eq!(
        fs::read_link(m.path("sym")).expect("readlink"),
        PathBuf::from("dir/renamed.txt")
    );
    assert_eq!(
        fs::read(m.path("sym")).expect("read via symlink"),
        b"hello, world\n"
    );
    // Truncate and extend.
    let handle = OpenOptions::new().write(true).open(&renamed).expect("open");
    handle.set_len(5).expect("truncate");
    handle.set_len(8).expect("extend");
    drop(handle);
    assert_eq!(fs::read(&renamed).expect("read"), b"hello\0\0\0");
    // Append.
    let mut a = OpenOptions::new()
        .append(true)
        .open(&renamed)
        .expect("open append");
    a.write_all(b"!!").expect("append");
    drop(a);
    assert_eq!(fs::read(&renamed).expect("read"), b"hello\0\0\0!!");
    // xattrs through libc.
    let cpath_renamed = cpath(&renamed);
    let name = CString::new("user.color").expect("name");
    // SAFETY: valid C strings and buffer.
    let rc = unsafe {
        libc::setxattr(
            cpath_renamed.as_ptr(),
            name.as_ptr(),
            b"blue".as_ptr().cast(),
            4,
            0,
        )
    };
    assert_eq!(rc, 0, "setxattr: {}", std::io::Error::last_os_error());
    let mut buf = [0u8; 16];
    // SAFETY: valid C strings and buffer.
    let n = unsafe {
        libc::getxattr(
            cpath_renamed.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert_eq!(n, 4, "getxattr: {}", std::io::Error::last_os_error());
    assert_eq!(&buf[..4], b"blue");
    // Unlink while open: the handle still reads the data.
    let mut open = File::open(m.path("hard")).expect("open");
    fs::remove_file(m.path("hard")).expect("unlink");
    fs::remove_file(&renamed).expect("unlink");
    let mut content = Vec::new();
    open.read_to_end(&mut content).expect("read unlinked");
    assert_eq!(content, b"hello\0\0\0!!");
    drop(open);
    fs::remove_file(m.path("sym")).expect("unlink symlink");
    fs::remove_dir(m.path("dir")).expect("rmdir");
    assert_eq!(fs::read_dir(&m.mnt).expect("readdir").count(), 0);
    // Errors carry their errno.
    let err = fs::remove_dir(m.path("nothing")).expect_err("missing");
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    let err = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(m.path("x"))
        .and_then(|_| {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(m.path("x"))
        })
        .expect_err("O_EXCL");
    assert_eq!(err.raw_os_error(), Some(libc::EEXIST));
    // statfs.
    // SAFETY: a zeroed statvfs is valid output space.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let root = cpath(&m.mnt);
    // SAFETY: valid C string and output struct.
    assert_eq!(unsafe { libc::statvfs(root.as_ptr(), &raw mut st) }, 0);
    assert_eq!(st.f_bsize as usize, BLOCK);
}

#[test]
fn big_files_with_unaligned_offsets_survive_remount_of_the_data_path() {
    if !can_mount() {
        return;
    }
    let mut m = Mounted::new(|_| {});
    let path = m.path("big");
    let data = pattern(5 * BLOCK + 4321, 7);
    {
        let mut f = File::create(&path).expect("create");
        // Unaligned pieces of odd sizes.
        let mut pos = 0;
        for chunk in data.chunks(BLOCK / 3 + 17) {
            f.write_all(chunk).expect("write");
            pos += chunk.len();
        }
        assert_eq!(pos, data.len());
        f.sync_all().expect("fsync");
    }
    assert_eq!(fs::read(&path).expect("read"), data);
    // Overwrite across a block boundary, then read ranges.
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open");
    f.seek(SeekFrom::Start(2 * BLOCK as u64 - 10))
        .expect("seek");
    f.write_all(&[0xEE; 30]).expect("overwrite");
    f.flush().expect("flush");
    let mut expected = data.clone();
    expected[2 * BLOCK - 10..2 * BLOCK + 20].fill(0xEE);
    f.seek(SeekFrom::Start(2 * BLOCK as u64 - 100))
        .expect("seek");
    let mut got = vec![0u8; 200];
    f.read_exact(&mut got).expect("read");
    assert_eq!(got, expected[2 * BLOCK - 100..2 * BLOCK + 100]);
    // A sparse write far away (> 4 GiB).
    let far = 5u64 << 30;
    f.seek(SeekFrom::Start(far)).expect("seek far");
    f.write_all(b"far").expect("write far");
    drop(f);
    let meta = fs::metadata(&path).expect("stat");
    assert_eq!(meta.len(), far + 3);
    let mut f = File::open(&path).expect("open");
    f.seek(SeekFrom::Start(far - 2)).expect("seek");
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).expect("read tail");
    assert_eq!(tail, b"\0\0far");
    f.seek(SeekFrom::Start(0)).expect("seek");
    let mut head = vec![0u8; expected.len()];
    f.read_exact(&mut head).expect("read head");
    assert_eq!(head, expected);
    drop(f);
    m.unmount();
}

#[test]
fn an_outside_umount_ends_wait() {
    if !can_mount() {
        return;
    }
    let mut m = Mounted::new(|o| o.threads = 1);
    fs::write(m.path("f"), b"x").expect("write");
    let mnt = m.mnt.clone();
    let umount = std::thread::spawn(move || {
        std::process::Command::new("umount")
            .arg(&mnt)
            .status()
            .expect("run umount")
    });
    let mount = m.mount.take().expect("mount");
    mount.wait().expect("wait returns after the outside umount");
    assert!(umount.join().expect("umount thread").success());
    assert!(!is_mounted(&m.mnt));
}

#[test]
fn mount_errors_say_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (master, engine, fs) = start_fs(dir.path(), 16);
    let missing = dir.path().join("missing");
    let err = mount(Arc::clone(&fs), &MountOptions::new(&missing)).expect_err("missing");
    assert!(matches!(err, FuseError::MountpointMissing(_)), "{err}");
    assert!(err.to_string().contains("mkdir -p"), "{err}");
    let file = dir.path().join("file");
    fs::write(&file, b"").expect("write");
    let err = mount(Arc::clone(&fs), &MountOptions::new(&file)).expect_err("file");
    assert!(matches!(err, FuseError::NotADirectory(_)), "{err}");
    drop(fs);
    let _ = engine.shutdown();
    let _ = master.stop();
}

#[test]
fn permissions_are_enforced_for_other_users() {
    if !can_mount() {
        return;
    }
    let mut m = Mounted::new(|o| o.allow_other = true);
    fs::create_dir(m.path("private")).expect("mkdir");
    fs::set_permissions(m.path("private"), fs::Permissions::from_mode(0o700)).expect("chmod");
    fs::write(m.path("public"), b"data").expect("write");
    assert_eq!(
        fs::metadata(m.path("private"))
            .expect("stat")
            .permissions()
            .mode()
            & 0o7777,
        0o700
    );
    // A child running as uid 65534 may read the public file but not list
    // the private directory.
    let status = |cmd: &str| {
        std::process::Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "sh",
                "-c",
                cmd,
            ])
            .current_dir(&m.mnt)
            .status()
    };
    match status("cat public >/dev/null") {
        Ok(s) => {
            assert!(s.success(), "other users may read 0644 files");
            let denied = status("ls private").expect("ls");
            assert!(!denied.success(), "0700 directories are private");
            let denied = status("echo x > public").expect("write");
            assert!(!denied.success(), "0644 files are read-only for others");
            // A supplementary group grants what the group bits allow: the
            // credentials carry the groups from /proc/<pid>/status.
            fs::create_dir(m.path("team")).expect("mkdir");
            fs::set_permissions(m.path("team"), fs::Permissions::from_mode(0o770)).expect("chmod");
            let team = cpath(&m.path("team"));
            // SAFETY: valid C string.
            assert_eq!(unsafe { libc::chown(team.as_ptr(), 0, 4321) }, 0);
            let member = std::process::Command::new("setpriv")
                .args([
                    "--reuid=65534",
                    "--regid=65534",
                    "--groups=4321",
                    "sh",
                    "-c",
                ])
                .arg("touch team/mine")
                .current_dir(&m.mnt)
                .status()
                .expect("setpriv");
            assert!(
                member.success(),
                "a member of the group may create in a 0770 directory"
            );
            assert!(m.path("team/mine").exists());
            let outsider = status("touch team/theirs").expect("setpriv");
            assert!(!outsider.success(), "others may not");
        }
        Err(e) => eprintln!("setpriv not available ({e}); permission checks skipped"),
    }
    m.unmount();
}

#[test]
fn file_creation_mode_and_owner_follow_the_caller() {
    if !can_mount() {
        return;
    }
    let mut m = Mounted::new(|_| {});
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o640)
        .open(m.path("m"))
        .expect("create");
    drop(f);
    let meta = fs::metadata(m.path("m")).expect("stat");
    assert_eq!(meta.permissions().mode() & 0o777, 0o640 & !0o022);
    assert_eq!(meta.uid(), 0);
    m.unmount();
}

#[test]
fn a_copied_source_tree_compares_equal_and_parallel_writers_do_not_mix() {
    if !can_mount() {
        return;
    }
    let mut m = Mounted::new(|o| o.threads = 2);
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster/src");
    let copied = std::process::Command::new("cp")
        .arg("-r")
        .arg(&src)
        .arg(m.path("tree"))
        .status()
        .expect("cp");
    assert!(copied.success());
    let diff = std::process::Command::new("diff")
        .arg("-r")
        .arg(&src)
        .arg(m.path("tree"))
        .status()
        .expect("diff");
    assert!(diff.success(), "the copy differs from its source");
    let writers: Vec<_> = (0..4u8)
        .map(|n| {
            let path = m.path(&format!("w{n}"));
            std::thread::spawn(move || {
                let data = pattern(3 * BLOCK + 11 * usize::from(n), n);
                let mut f = File::create(&path).expect("create");
                for chunk in data.chunks(4096 + usize::from(n)) {
                    f.write_all(chunk).expect("write");
                }
                drop(f);
                assert_eq!(fs::read(&path).expect("read back"), data, "writer {n}");
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer");
    }
    m.unmount();
}

#[test]
fn rename_flags_punch_hole_and_seek_hole_through_the_kernel() {
    if !can_mount() {
        return;
    }
    let mut m = Mounted::new(|_| {});
    fs::write(m.path("a"), b"A").expect("write");
    fs::write(m.path("b"), b"B").expect("write");
    let (a, b) = (cpath(&m.path("a")), cpath(&m.path("b")));
    // SAFETY: valid C strings.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    assert_eq!(rc, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EEXIST)
    );
    // SAFETY: valid C strings.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    assert_eq!(rc, 0, "exchange: {}", std::io::Error::last_os_error());
    assert_eq!(fs::read(m.path("a")).expect("read"), b"B");
    assert_eq!(fs::read(m.path("b")).expect("read"), b"A");
    // Replace an existing file with rename(2).
    fs::rename(m.path("a"), m.path("b")).expect("rename over");
    assert_eq!(fs::read(m.path("b")).expect("read"), b"B");
    // Punch a hole of whole blocks in the middle of a file.
    let path = m.path("holey");
    fs::write(&path, pattern(4 * BLOCK, 1)).expect("write");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open");
    punch_hole(&f, BLOCK as u64 + 7, BLOCK as u64).expect("punch");
    drop(f);
    let got = fs::read(&path).expect("read");
    let mut expected = pattern(4 * BLOCK, 1);
    expected[BLOCK + 7..2 * BLOCK + 7].fill(0);
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "punched range reads as zeros");
    // Punch whole blocks: they become holes (st_blocks shrinks, SEEK_HOLE
    // finds them) and the size stays.
    let whole = m.path("whole");
    fs::write(&whole, pattern(4 * BLOCK, 2)).expect("write");
    let sectors = |path: &Path| fs::metadata(path).expect("stat").blocks();
    assert_eq!(sectors(&whole), 4 * BLOCK as u64 / 512);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&whole)
        .expect("open");
    punch_hole(&f, BLOCK as u64, 2 * BLOCK as u64).expect("punch");
    // SAFETY: valid fd.
    let hole = unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_HOLE) };
    assert_eq!(hole, BLOCK_OFF, "the first punched block is a hole");
    // SAFETY: valid fd.
    let data = unsafe { libc::lseek(f.as_raw_fd(), BLOCK_OFF, libc::SEEK_DATA) };
    assert_eq!(data, 3 * BLOCK_OFF, "data resumes after the punched blocks");
    drop(f);
    let meta = fs::metadata(&whole).expect("stat");
    assert_eq!(meta.len(), 4 * BLOCK as u64, "the size stays");
    assert_eq!(meta.blocks(), 2 * BLOCK as u64 / 512, "st_blocks shrinks");
    let got = fs::read(&whole).expect("read");
    let mut expected = pattern(4 * BLOCK, 2);
    expected[BLOCK..3 * BLOCK].fill(0);
    assert!(got == expected, "punched blocks read as zeros");
    // SEEK_HOLE on a sparse file finds the first hole.
    let sparse = m.path("sparse");
    let mut f = File::create(&sparse).expect("create");
    f.write_all(b"data").expect("write");
    f.seek(SeekFrom::Start(10 * BLOCK as u64)).expect("seek");
    f.write_all(b"tail").expect("write");
    f.sync_all().expect("fsync");
    // SAFETY: valid fd.
    let hole = unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_HOLE) };
    assert_eq!(hole, BLOCK_OFF);
    // SAFETY: valid fd.
    let data = unsafe { libc::lseek(f.as_raw_fd(), BLOCK_OFF, libc::SEEK_DATA) };
    assert_eq!(data, 10 * BLOCK_OFF);
    drop(f);
    m.unmount();
}

#[test]
fn a_read_only_mount_refuses_writes() {
    if !can_mount() {
        return;
    }
    let mut m = Mounted::new(|o| o.read_only = true);
    let err = fs::write(m.path("f"), b"x").expect_err("read-only");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    assert_eq!(fs::read_dir(&m.mnt).expect("readdir").count(), 0);
    m.unmount();
}

#[test]
fn fifos_are_created_as_special_files() {
    if !can_mount() {
        return;
    }
    let mut m = Mounted::new(|_| {});
    // A fifo.
    let fifo = cpath(&m.path("fifo"));
    // SAFETY: valid C string.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let ft = fs::symlink_metadata(m.path("fifo"))
        .expect("stat fifo")
        .file_type();
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&ft));
    fs::remove_file(m.path("fifo")).expect("unlink fifo");
    m.unmount();
}

/// A tiny deterministic generator (xorshift64*), so failures replay.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// fsx in miniature: random pwrite, ftruncate, punch hole, fsync, close and
/// reopen, pread through the kernel, checked against a byte model.
#[test]
fn random_operations_through_the_kernel_match_a_model() {
    if !can_mount() {
        return;
    }
    let mut m = Mounted::new(|o| o.threads = 2);
    let path = m.path("fsx");
    let open = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .expect("open")
    };
    let mut f = open();
    let mut model: Vec<u8> = Vec::new();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let span = 5 * BLOCK as u64;
    for step in 0..400u32 {
        let offset = rng.below(span);
        let len = rng.below(BLOCK as u64 + 5000) as usize + 1;
        match rng.below(12) {
            0..=3 => {
                let data = pattern(len, (step % 251) as u8);
                f.write_all_at(&data, offset).expect("pwrite");
                let end = offset as usize + len;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[offset as usize..end].copy_from_slice(&data);
            }
            4 => {
                let size = rng.below(span);
                f.set_len(size).expect("ftruncate");
                model.resize(size as usize, 0);
            }
            5 => {
                punch_hole(&f, offset, len as u64).expect("punch");
                let end = (offset as usize + len).min(model.len());
                if (offset as usize) < end {
                    model[offset as usize..end].fill(0);
                }
            }
            6 => f.sync_all().expect("fsync"),
            7 => {
                drop(f);
                f = open();
            }
            _ => {
                let mut got = vec![0u8; len];
                let mut n = 0;
                while n < len {
                    let r = f.read_at(&mut got[n..], offset + n as u64).expect("pread");
                    if r == 0 {
                        break;
                    }
                    n += r;
                }
                got.truncate(n);
                let start = (offset as usize).min(model.len());
                let end = (offset as usize + len).min(model.len());
                assert!(got == model[start..end], "step {step}: read {offset}+{len}");
            }
        }
        assert_eq!(
            f.metadata().expect("fstat").len(),
            model.len() as u64,
            "step {step}"
        );
    }
    drop(f);
    assert!(fs::read(&path).expect("read") == model, "whole file");
    m.unmount();
}

#[test]
fn writeback_cache_and_direct_io_mounts_keep_data_intact() {
    if !can_mount() {
        return;
    }
    for (writeback, direct) in [(true, false), (false, true)] {
        let mut m = Mounted::new(|o| {
            o.writeback_cache = writeback;
            o.direct_io = direct;
        });
        let path = m.path("f");
        let data = pattern(2 * BLOCK + 333, 3);
        fs::write(&path, &data).expect("write");
        let mut f = OpenOptions::new().write(true).open(&path).expect("open wo");
        f.seek(SeekFrom::Start(100)).expect("seek");
        f.write_all(b"middle").expect("write");
        drop(f);
        let mut expected = data.clone();
        expected[100..106].copy_from_slice(b"middle");
        assert!(
            fs::read(&path).expect("read") == expected,
            "writeback {writeback} direct {direct}"
        );
        let mut a = OpenOptions::new().append(true).open(&path).expect("append");
        a.write_all(b"end").expect("append");
        drop(a);
        expected.extend_from_slice(b"end");
        assert!(fs::read(&path).expect("read") == expected);
        assert_eq!(
            fs::metadata(&path).expect("stat").len(),
            expected.len() as u64
        );
        m.unmount();
    }
}

#[test]
fn unmount_returns_even_while_a_file_is_open() {
    if !can_mount() {
        return;
    }
    unmount_aborts_a_held_file(Mounted::new(|_| {}));
}

/// `unmount` returns within the wait even though a file stays open: the
/// connection is aborted under it.
fn unmount_aborts_a_held_file(mut m: Mounted) {
    fs::write(m.path("held"), b"held").expect("write");
    let held = File::open(m.path("held")).expect("open");
    let started = std::time::Instant::now();
    m.unmount();
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    let mut buf = [0u8; 4];
    let err = held.read_at(&mut buf, 0).expect_err("connection aborted");
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN));
}

fn sh(dir: &Path, script: &str) -> std::process::Output {
    std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("run sh")
}

#[test]
fn flock_and_posix_locks_block_across_processes_and_can_be_interrupted() {
    if !can_mount() {
        return;
    }
    let have = |tool: &str| {
        sh(Path::new("/"), &format!("command -v {tool}"))
            .status
            .success()
    };
    if !have("flock") || !have("python3") {
        eprintln!("skipped: needs flock(1) and python3");
        return;
    }
    let mut m = Mounted::new(|o| o.threads = 2);
    blocking_locks(&m);
    m.unmount();
}

/// A blocking flock and a blocking F_SETLKW wait for a holder in another
/// process; a blocked F_SETLKW is interrupted by a signal.
fn blocking_locks(m: &Mounted) {
    fs::write(m.path("lockfile"), b"").expect("create");
    // flock: a holder for 1 s; a non-blocking try fails, a blocking one waits.
    let out = sh(
        &m.mnt,
        "flock -x lockfile -c 'sleep 1' & sleep 0.3; \
         if flock -n -x lockfile -c true; then echo nb-ok; else echo nb-busy; fi; \
         start=$(date +%s%N); flock -x lockfile -c true; end=$(date +%s%N); \
         echo waited=$(( (end - start) / 1000000 )); wait",
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("nb-busy"), "{text}");
    let waited: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("waited="))
        .and_then(|v| v.trim().parse().ok())
        .expect("waited");
    assert!(
        waited >= 400,
        "the blocking flock waited for the holder: {text}"
    );
    // POSIX record locks: same, through fcntl from two processes, and a
    // blocked F_SETLKW interrupted by a signal.
    let script = r#"
import fcntl, os, signal, sys, time
fd = os.open("lockfile", os.O_RDWR)
pid = os.fork()
if pid == 0:
    fcntl.lockf(fd, fcntl.LOCK_EX, 10, 0)
    time.sleep(1.0)
    os._exit(0)
time.sleep(0.3)
other = os.open("lockfile", os.O_RDWR)
try:
    fcntl.lockf(other, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 0)
    print("nb-ok")
except OSError:
    print("nb-busy")
class Alarm(Exception):
    pass
def ring(*_):
    raise Alarm()
signal.signal(signal.SIGALRM, ring)
signal.setitimer(signal.ITIMER_REAL, 0.2)
try:
    fcntl.lockf(other, fcntl.LOCK_EX, 10, 0)
    print("not-interrupted")
except Alarm:
    print("interrupted")
start = time.time()
fcntl.lockf(other, fcntl.LOCK_EX, 10, 0)
print("waited=%d" % int((time.time() - start) * 1000))
os.waitpid(pid, 0)
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .current_dir(&m.mnt)
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("nb-busy"), "{text}");
    assert!(text.contains("interrupted"), "{text}");
    let waited: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("waited="))
        .and_then(|v| v.trim().parse().ok())
        .expect("waited");
    assert!(
        waited >= 100,
        "the blocking lock waited for the holder: {text}"
    );
}

#[test]
fn mounting_twice_on_one_directory_is_refused() {
    if !can_mount() {
        return;
    }
    let mut m = Mounted::new(|_| {});
    let fs = Arc::clone(m.mount.as_ref().expect("mount").fs());
    let err = mount(fs, &MountOptions::new(&m.mnt)).expect_err("busy");
    assert!(matches!(err, FuseError::Busy(_)), "{err}");
    assert!(err.to_string().contains("fusermount3 -u"), "{err}");
    m.unmount();
}

/// copy_file_range(2) is answered by the daemon in one request (not the
/// kernel's read + write fallback), with the bytes, sizes and errors a
/// local file system gives.
#[test]
fn copy_file_range_is_served_by_the_daemon() {
    if !can_mount() {
        return;
    }
    copy_file_range_checks(&Mounted::new(|_| {}));
}

/// copy_file_range(2) in one request, with a local file system's bytes,
/// sizes and errors.
fn copy_file_range_checks(m: &Mounted) {
    let src = pattern(300_000, 7);
    fs::write(m.path("src"), &src).expect("write src");
    fs::write(m.path("dst"), pattern(10_000, 9)).expect("write dst");
    let input = fs::File::open(m.path("src")).expect("open src");
    let output = fs::OpenOptions::new()
        .write(true)
        .open(m.path("dst"))
        .expect("open dst");
    let copy = |off_in: i64, off_out: i64, len: usize| -> std::io::Result<usize> {
        let (mut off_in, mut off_out) = (off_in, off_out);
        // SAFETY: valid fds and offsets owned by this frame.
        let n = unsafe {
            libc::copy_file_range(
                input.as_raw_fd(),
                &raw mut off_in,
                output.as_raw_fd(),
                &raw mut off_out,
                len,
                0,
            )
        };
        usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
    };
    // Into the middle of dst and past its end (it grows).
    assert_eq!(copy(1_000, 5_000, 200_000).expect("copy"), 200_000);
    // Short at the source's end; nothing past it.
    assert_eq!(copy(290_000, 0, 50_000).expect("tail"), 10_000);
    assert_eq!(copy(400_000, 0, 10).expect("past the end"), 0);
    let mut want = pattern(10_000, 9);
    want.resize(205_000, 0);
    want[5_000..205_000].copy_from_slice(&src[1_000..201_000]);
    want[..10_000].copy_from_slice(&src[290_000..]);
    drop(output);
    assert_eq!(fs::read(m.path("dst")).expect("read dst"), want);
    let served: u64 = m
        .mount
        .as_ref()
        .expect("mounted")
        .stats()
        .snapshot()
        .iter()
        .filter(|s| s.op == "copy_file_range")
        .map(|s| s.count)
        .sum();
    // (The kernel answers the copy from past the end itself.)
    assert!(
        served >= 2,
        "the daemon answered {served} copy_file_range requests"
    );
    // A source opened write-only is refused like anywhere else.
    let wronly = fs::OpenOptions::new()
        .write(true)
        .open(m.path("src"))
        .expect("open");
    let (mut a, mut b) = (0i64, 0i64);
    let out = fs::OpenOptions::new()
        .write(true)
        .open(m.path("dst"))
        .expect("open dst");
    // SAFETY: valid fds and offsets owned by this frame.
    let n = unsafe {
        libc::copy_file_range(
            wronly.as_raw_fd(),
            &raw mut a,
            out.as_raw_fd(),
            &raw mut b,
            10,
            0,
        )
    };
    assert_eq!(n, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EBADF)
    );
}

/// Requests of the kinds `ops` the mount's daemon has served, once the
/// count stopped moving: a request is counted after its reply is out, so
/// a count read right after the syscall may lag.
fn served(m: &Mounted, ops: &[&str]) -> u64 {
    let count = || -> u64 {
        m.mount
            .as_ref()
            .expect("mounted")
            .stats()
            .snapshot()
            .iter()
            .filter(|s| ops.contains(&s.op))
            .map(|s| s.count)
            .sum()
    };
    let mut last = count();
    loop {
        std::thread::sleep(std::time::Duration::from_millis(20));
        let now = count();
        if now == last {
            return now;
        }
        last = now;
    }
}

/// `attr_timeout`/`entry_timeout`/`negative_timeout` decide how often a
/// `stat` reaches the daemon.
#[test]
fn cache_timeouts_decide_what_reaches_the_daemon() {
    use std::time::Duration;
    if !can_mount() {
        return;
    }
    let stats_of = |timeout: Duration| {
        let m = Mounted::new(|o| {
            o.attr_timeout = timeout;
            o.entry_timeout = timeout;
            o.negative_timeout = timeout;
        });
        fs::write(m.path("f"), b"x").expect("write");
        let _ = fs::metadata(m.path("f")).expect("warm");
        let _ = fs::metadata(m.path("missing"));
        let before = served(&m, &["lookup", "getattr"]);
        for _ in 0..20 {
            fs::metadata(m.path("f")).expect("stat");
            assert!(fs::metadata(m.path("missing")).is_err());
        }
        served(&m, &["lookup", "getattr"]) - before
    };
    let uncached = stats_of(Duration::ZERO);
    let cached = stats_of(Duration::from_secs(60));
    assert!(uncached >= 40, "every stat reached the daemon: {uncached}");
    // (A refresh after the write's close may still reach the daemon once:
    // the kernel drops the attributes a write changed.)
    assert!(
        cached <= 2,
        "the kernel answered the stats itself: {cached} reached the daemon"
    );
}

/// A hot page cache is the kernel's alone: once a file is cached, reads of
/// it (4 KiB at random offsets and 1 MiB sequential, through a new open)
/// send no `read` and no per-read `getattr` to the daemon, and the kernel
/// does no atime work for the mount (`noatime`; the file system keeps its
/// own atime policy). `FUSE_AUTO_INVAL_DATA` would add an attribute check
/// to every read and a cache drop on every size or mtime change seen.
#[test]
fn hot_page_cache_reads_never_reach_the_daemon() {
    const FILE_BYTES: usize = 1 << 20;
    if !can_mount() {
        return;
    }
    let m = Mounted::new(|_| {});
    let requests = |op: &str| served(&m, &[op]);
    let options = fs::read_to_string("/proc/self/mounts")
        .expect("mounts")
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(m.mnt.to_str().expect("utf-8 path")))
        .and_then(|l| l.split_whitespace().nth(3).map(str::to_string))
        .expect("the mount is listed");
    assert!(
        options.split(',').any(|o| o == "noatime"),
        "mount options: {options}"
    );
    let data = pattern(FILE_BYTES, 3);
    fs::write(m.path("hot"), &data).expect("write");
    // Warm: the open after the write's close may drop the cache (the file
    // changed since its last open); this read fills it.
    assert_eq!(fs::read(m.path("hot")).expect("warm"), data);
    let (reads, getattrs) = (requests("read"), requests("getattr"));
    let f = File::open(m.path("hot")).expect("open");
    let mut buf = vec![0u8; 4096];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..2_000 {
        // xorshift: offsets spread over the file, 4 KiB aligned.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let off = (x % (FILE_BYTES as u64 / 4096)) * 4096;
        f.read_exact_at(&mut buf, off).expect("pread");
        let off = usize::try_from(off).expect("offset");
        assert_eq!(buf[..], data[off..off + 4096]);
    }
    let mut whole = vec![0u8; FILE_BYTES];
    for _ in 0..4 {
        f.read_exact_at(&mut whole, 0).expect("1 MiB read");
    }
    assert_eq!(whole, data);
    drop(f);
    assert_eq!(requests("read") - reads, 0, "reads reached the daemon");
    // (An attribute refresh may happen once if the 1 s attr_timeout ran out.)
    let refreshed = requests("getattr") - getattrs;
    assert!(refreshed <= 2, "{refreshed} getattrs for 2,004 reads");
}

// FUSE over io_uring: the same operations on a mount whose requests come
// over the per-CPU ring queues.

/// Holds the kernel switch (`enable_uring`) at a value while a test mounts,
/// and puts the old value back. Tests in other processes that flip it wait
/// on a lock file meanwhile. The switch only matters at INIT: a connection
/// that took the ring keeps it.
struct UringSwitch {
    _lock: File,
    old: String,
}

impl UringSwitch {
    const LOCK: &str = "/tmp/datenlord-test-enable-uring.lock";

    /// `None` (and why, printed) if this kernel has no FUSE over io_uring.
    fn set(value: &str) -> Option<Self> {
        let Ok(old) = fs::read_to_string(datenlord_fuse::URING_ENABLE_PARAMETER) else {
            eprintln!(
                "skipped: this kernel has no FUSE over io_uring ({} is missing)",
                datenlord_fuse::URING_ENABLE_PARAMETER
            );
            return None;
        };
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(Self::LOCK)
            .expect("open the switch lock");
        // SAFETY: a valid fd.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
        // Read again under the lock: another test may have just put it back.
        let old = fs::read_to_string(datenlord_fuse::URING_ENABLE_PARAMETER).unwrap_or(old);
        fs::write(datenlord_fuse::URING_ENABLE_PARAMETER, value).expect("set enable_uring");
        Some(Self { _lock: lock, old })
    }
}

impl Drop for UringSwitch {
    fn drop(&mut self) {
        let _ = fs::write(datenlord_fuse::URING_ENABLE_PARAMETER, self.old.trim());
    }
}

impl Mounted {
    /// A mount served over FUSE-over-io_uring queues (`-o uring`), or
    /// `None` with the reason printed.
    fn ring(opts: impl FnOnce(&mut MountOptions)) -> Option<Self> {
        if !can_mount() {
            return None;
        }
        let switch = UringSwitch::set("Y")?;
        let m = Self::new(|o| {
            o.uring = UringMode::On;
            opts(o);
        });
        drop(switch);
        assert!(m.mount().uring(), "the kernel took the ring");
        Some(m)
    }

    fn mount(&self) -> &Mount {
        self.mount.as_ref().expect("mounted")
    }

    fn ring_requests(&self) -> u64 {
        self.mount().stats().ring_requests()
    }
}

#[test]
fn posix_basics_over_io_uring() {
    let Some(mut m) = Mounted::ring(|_| {}) else {
        return;
    };
    let before = m.ring_requests();
    posix_basics(&m);
    // Many creates and stats, all of them over the ring.
    for i in 0..200 {
        File::create(m.path(&format!("f{i}"))).expect("create");
    }
    let after_creates = m.ring_requests();
    assert!(
        after_creates - before >= 200,
        "creates came over the ring: {before} -> {after_creates}"
    );
    for i in 0..200 {
        assert_eq!(
            fs::metadata(m.path(&format!("f{i}"))).expect("stat").len(),
            0
        );
    }
    assert_eq!(fs::read_dir(&m.mnt).expect("readdir").count(), 201);
    m.unmount();
}

/// Writes and reads larger than one ring payload buffer (1 MiB: the
/// kernel splits them), through the page cache and with O_DIRECT.
#[test]
fn data_larger_than_a_ring_buffer_round_trips_over_io_uring() {
    let Some(mut m) = Mounted::ring(|_| {}) else {
        return;
    };
    let data = pattern(3 * (1 << 20) + 12_345, 3);
    fs::write(m.path("big"), &data).expect("write");
    assert_eq!(fs::read(m.path("big")).expect("read"), data);
    let before = m.ring_requests();
    let direct = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(m.path("big"))
        .expect("open O_DIRECT");
    let layout = std::alloc::Layout::from_size_align(2 << 20, 4096).expect("layout");
    // SAFETY: a non-zero size; freed below with the same layout.
    let buf = unsafe { std::alloc::alloc_zeroed(layout) };
    assert!(!buf.is_null());
    // SAFETY: `buf` is valid for `layout.size()` bytes.
    let slice = unsafe { std::slice::from_raw_parts_mut(buf, layout.size()) };
    let n = direct.read_at(slice, 1 << 20).expect("O_DIRECT read");
    assert_eq!(n, 2 << 20);
    let same = slice[..] == data[1 << 20..3 << 20];
    // SAFETY: allocated above with `layout`.
    unsafe { std::alloc::dealloc(buf, layout) };
    drop(direct);
    assert!(same, "O_DIRECT read of 2 MiB");
    assert!(
        m.ring_requests() - before >= 2,
        "the reads came over the ring"
    );
    m.unmount();
}

#[test]
fn blocking_locks_over_io_uring_release_their_ring_entry() {
    let have = |tool: &str| {
        sh(Path::new("/"), &format!("command -v {tool}"))
            .status
            .success()
    };
    if !have("flock") || !have("python3") {
        eprintln!("skipped: needs flock(1) and python3");
        return;
    }
    // A blocked lock holds its ring entry, not its queue: the holder's
    // unlock and other requests from the same CPU still get through.
    let Some(mut m) = Mounted::ring(|_| {}) else {
        return;
    };
    blocking_locks(&m);
    // More waiters than half a queue's entries at once: the ones past the
    // limit fail ENOLCK instead of filling the queue; the queue keeps
    // serving, and every waiter is answered once the holder goes.
    fs::write(m.path("many"), b"").expect("create");
    let out = sh(
        &m.mnt,
        "flock -x many -c 'sleep 1.5' & sleep 0.3; \
         for i in $(seq 1 12); do (flock -x many -c true; echo rc=$?) & done; \
         sleep 0.3; ls > /dev/null && echo served-while-blocked; wait",
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("served-while-blocked"), "{text}");
    assert_eq!(text.matches("rc=").count(), 12, "{text}");
    m.unmount();
}

#[test]
fn copy_file_range_is_served_over_io_uring() {
    let Some(mut m) = Mounted::ring(|_| {}) else {
        return;
    };
    let before = m.ring_requests();
    copy_file_range_checks(&m);
    assert!(m.ring_requests() > before);
    m.unmount();
}

/// Unmount while requests are in flight on both queues: `unmount` returns
/// (aborting the connection for the files still open) and every ring
/// thread ends; an idle ring mount ends on an outside umount.
#[test]
fn a_ring_mount_unmounts_under_load_and_when_idle() {
    let Some(mut m) = Mounted::ring(|_| {}) else {
        return;
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (stop, dir) = (Arc::clone(&stop), m.mnt.clone());
            std::thread::spawn(move || {
                let data = pattern(100_000, w);
                let mut i = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // Errors are expected once the mount goes away.
                    let path = dir.join(format!("w{w}-{}", i % 8));
                    let _ = fs::write(&path, &data);
                    let _ = fs::metadata(&path);
                    let _ = fs::read(&path);
                    i += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(m.ring_requests() > 0);
    let started = std::time::Instant::now();
    m.unmount();
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        w.join().expect("worker");
    }

    let Some(mut m) = Mounted::ring(|_| {}) else {
        return;
    };
    fs::write(m.path("f"), b"x").expect("write");
    let mnt = m.mnt.clone();
    let tool = if sh(Path::new("/"), "command -v fusermount3")
        .status
        .success()
    {
        "fusermount3 -u"
    } else {
        "umount"
    };
    let umount = std::thread::spawn(move || sh(&mnt, &format!("cd /; {tool} '{}'", mnt.display())));
    let mount = m.mount.take().expect("mount");
    mount.wait().expect("wait returns after the outside umount");
    assert!(umount.join().expect("umount thread").status.success());
    assert!(!is_mounted(&m.mnt));
}

/// The abort path (fusectl) ends the ring threads too.
#[test]
fn a_ring_mount_unmounts_while_a_file_is_open() {
    if let Some(m) = Mounted::ring(|_| {}) {
        unmount_aborts_a_held_file(m);
    }
}

#[test]
fn forcing_the_ring_with_the_kernel_switch_off_says_how_to_enable_it() {
    if !can_mount() {
        return;
    }
    let Some(switch) = UringSwitch::set("N") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).expect("mkdir");
    let (master, engine, fs) = start_fs(dir.path(), 16);
    let mut options = MountOptions::new(&mnt);
    options.uring = UringMode::On;
    let err = mount(Arc::clone(&fs), &options).expect_err("refused");
    assert!(matches!(err, FuseError::Uring(_)), "{err}");
    assert!(
        err.to_string()
            .contains("echo Y > /sys/module/fuse/parameters/enable_uring"),
        "{err}"
    );
    assert!(!is_mounted(&mnt));
    // Auto falls back to /dev/fuse reads.
    options.uring = UringMode::Auto;
    let m = mount(fs, &options).expect("auto mount");
    drop(switch);
    assert!(!m.uring());
    fs::write(mnt.join("f"), b"x").expect("write");
    m.unmount().expect("unmount");
    let _ = engine.shutdown();
    let _ = master.stop();
}

/// A mount with local copies (made after two read-only closes, 64 MiB of
/// room) and `-o passthrough`.
fn passthrough_mount() -> Mounted {
    Mounted::with_config(
        |c, dir| {
            c.local_copies = Some(CopyConfig {
                dir: dir.join("copies"),
                capacity_bytes: 64 << 20,
                after_opens: 2,
            });
        },
        |o| o.passthrough = true,
    )
}

/// Waits (up to 10 s) until the file system has made `n` local copies.
fn wait_for_copies(m: &Mounted, n: u64) {
    let fs = m.mount.as_ref().expect("mounted").fs();
    for _ in 0..1000 {
        if fs.copy_counts().expect("local copies configured").0 >= n {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("no local copy made: {:?}", fs.copy_counts());
}

/// Reads all of `file` after dropping the FUSE inode's page cache
/// (`POSIX_FADV_DONTNEED`): the reads reach the daemon unless the file is
/// open on its local copy.
fn read_uncached(file: &File) -> Vec<u8> {
    // SAFETY: a valid fd; the advice changes no memory of ours.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "fadvise");
    let mut out = Vec::new();
    let mut f = file;
    f.seek(SeekFrom::Start(0)).expect("seek");
    f.read_to_end(&mut out).expect("read");
    out
}

/// `-o passthrough`: a file opened read-only twice gets a local copy, and
/// later opens read it without the daemon; an open made before the copy
/// keeps the kernel's page cache (the kernel refuses to mix the two).
#[test]
fn passthrough_reads_a_file_read_again_from_its_local_copy() {
    if !can_mount() {
        return;
    }
    let m = passthrough_mount();
    let data = pattern(3 * BLOCK + 1234, 7);
    fs::write(m.path("f"), &data).expect("write");
    // Never read: no copy.
    fs::write(m.path("g"), b"small").expect("write g");
    let before_copy = File::open(m.path("f")).expect("open");
    let reads = served(&m, &["read"]);
    assert_same(&read_uncached(&before_copy), &data, "content");
    assert!(
        served(&m, &["read"]) > reads,
        "a cached open reads through the daemon"
    );
    drop(before_copy);
    assert_same(
        &fs::read(m.path("f")).expect("second read"),
        &data,
        "content",
    );
    wait_for_copies(&m, 1);

    let held = File::open(m.path("f")).expect("open on the copy");
    let reads = served(&m, &["read"]);
    assert_same(&read_uncached(&held), &data, "content");
    let mut piece = vec![0u8; 5000];
    held.read_exact_at(&mut piece, 70_000).expect("pread");
    assert_eq!(piece, data[70_000..75_000]);
    assert_eq!(
        served(&m, &["read"]),
        reads,
        "reads of a file open on its local copy reached the daemon"
    );
    // More opens of the same inode join it, writable ones too.
    let again = File::open(m.path("f")).expect("second open on the copy");
    assert_same(&read_uncached(&again), &data, "content");
    let writer = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("f"))
        .expect("writable open of a file in passthrough mode");
    drop((again, writer, held));
    assert_eq!(fs::read(m.path("g")).expect("read g"), b"small");
    assert_eq!(
        m.mount
            .as_ref()
            .expect("mounted")
            .fs()
            .copy_counts()
            .map(|c| c.1),
        Some(1)
    );
}

/// Changes made while a file is open on its local copy (writes, truncate,
/// punched holes, and writes through a shared mapping of a writable
/// handle, which go to the copy itself) show to the copy's readers at
/// once and are all in the file after the last close.
#[test]
fn changes_while_a_file_is_open_on_its_copy_reach_readers_and_the_file() {
    if !can_mount() {
        return;
    }
    let m = passthrough_mount();
    let mut model = pattern(2 * BLOCK + 100, 3);
    fs::write(m.path("f"), &model).expect("write");
    for _ in 0..2 {
        assert_same(&fs::read(m.path("f")).expect("read"), &model, "content");
    }
    wait_for_copies(&m, 1);
    let reader = File::open(m.path("f")).expect("open on the copy");
    let reads = served(&m, &["read"]);
    let writer = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("f"))
        .expect("writable open");

    writer.write_all_at(b"hello", 100).expect("pwrite");
    model[100..105].copy_from_slice(b"hello");
    assert_same(&read_uncached(&reader), &model, "after a write");

    writer.set_len(50_000).expect("shrink");
    model.truncate(50_000);
    assert_same(&read_uncached(&reader), &model, "after shrinking");
    writer.set_len(70_000).expect("extend");
    model.resize(70_000, 0);
    assert_same(&read_uncached(&reader), &model, "after extending");

    punch_hole(&writer, 10, 20).expect("punch");
    model[10..30].fill(0);
    assert_same(&read_uncached(&reader), &model, "after punching a hole");
    assert_eq!(
        served(&m, &["read"]),
        reads,
        "the reader stayed on the copy"
    );

    // A shared mapping of the writable handle maps the copy itself.
    let len = model.len();
    // SAFETY: maps `len` bytes of the open file; unmapped below.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            writer.as_raw_fd(),
            0,
        )
    };
    assert_ne!(
        map,
        libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: the mapping is `len` bytes long and writable.
    unsafe {
        std::ptr::copy_nonoverlapping(b"MAPPED".as_ptr(), map.cast::<u8>().add(60_000), 6);
        libc::munmap(map, len);
    }
    model[60_000..60_006].copy_from_slice(b"MAPPED");
    drop(writer);
    drop(reader);

    // The copy changed while open: dropped once the kernel's releases
    // (sent after close returns) are in. Reads then come from the file.
    let fs = m.mount.as_ref().expect("mounted").fs();
    for _ in 0..1000 {
        if fs.copy_counts().is_some_and(|c| c.1 == 0) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(fs.copy_counts().map(|c| c.1), Some(0), "changed copy kept");
    // No page the kernel cached before the copy was opened shows again.
    assert_same(
        &fs::read(m.path("f")).expect("read"),
        &model,
        "through the page cache after the last close",
    );
    // O_DIRECT: every read of a cached open reaches the daemon (one on
    // the copy would go to it, and fail there: unaligned).
    let fresh = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(m.path("f"))
        .expect("open after the last close");
    let reads = served(&m, &["read"]);
    let mut got = Vec::new();
    (&fresh).read_to_end(&mut got).expect("direct read");
    assert_same(&got, &model, "the file after the last close");
    assert!(
        served(&m, &["read"]) > reads,
        "the changed copy was still served"
    );
}

#[test]
fn passthrough_refuses_options_it_cannot_go_with() {
    if !can_mount() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).expect("mkdir");
    let (master, engine, fs) = start_fs(dir.path(), 16);
    let mut options = MountOptions::new(&mnt);
    options.passthrough = true;
    let err = mount(Arc::clone(&fs), &options).expect_err("no local copies");
    assert!(err.to_string().contains("local copies"), "{err}");
    drop(fs);
    engine.shutdown().expect("engine");
    master.stop().expect("master");

    let m_dir = tempfile::tempdir().expect("tempdir");
    let mnt = m_dir.path().join("mnt");
    fs::create_dir(&mnt).expect("mkdir");
    let config = FsConfig {
        local_copies: Some(CopyConfig {
            dir: m_dir.path().join("copies"),
            capacity_bytes: 1 << 20,
            after_opens: 1,
        }),
        ..FsConfig::default()
    };
    let (master, engine, fs) = start_fs_with(m_dir.path(), 16, config);
    let mut options = MountOptions::new(&mnt);
    options.passthrough = true;
    options.direct_io = true;
    let err = mount(Arc::clone(&fs), &options).expect_err("with direct_io");
    assert!(err.to_string().contains("drop one"), "{err}");
    assert!(!is_mounted(&mnt));
    drop(fs);
    engine.shutdown().expect("engine");
    master.stop().expect("master");
}

/// Equal bytes, or a panic naming `what` and the first differing offset
/// (not both buffers).
fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: {} bytes read, {} expected, first difference at {at:?}",
            got.len(),
            want.len()
        );
    }
}

/// Seeded random changes to a few files (writes, truncates, punched holes,
/// writes through shared mappings, fsyncs) while readers come and go and
/// hold files open, on their local copies once made or in the page cache
/// before: every read, through any handle, matches a model, and so does
/// every file after the last close.
#[test]
#[allow(clippy::too_many_lines)]
fn random_changes_with_readers_on_local_copies_match_a_model() {
    const FILES: usize = 3;
    const MAX_LEN: u64 = 200_000;
    if !can_mount() {
        return;
    }
    let m = passthrough_mount();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut next = |bound: u64| rng.below(bound);
    let path = |i: usize| m.path(&format!("f{i}"));
    let mut models: Vec<Vec<u8>> = (0..FILES)
        .map(|i| pattern(50_000 + 30_000 * i, i as u8))
        .collect();
    for (i, model) in models.iter().enumerate() {
        fs::write(path(i), model).expect("write");
    }
    let mut readers: Vec<Option<File>> = (0..FILES).map(|_| None).collect();
    let mut writers: Vec<Option<File>> = (0..FILES).map(|_| None).collect();
    for step in 0..1500 {
        let i = next(FILES as u64) as usize;
        let what = next(10);
        let len = models[i].len() as u64;
        let ctx = format!("step {step}, op {what}, file {i}");
        let writable = |w: &Option<File>| -> File {
            match w {
                Some(f) => f.try_clone().expect("dup"),
                None => OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path(i))
                    .expect("writable open"),
            }
        };
        match what {
            0 | 1 => assert_same(&fs::read(path(i)).expect("read"), &models[i], &ctx),
            2 => {
                readers[i] = match readers[i].take() {
                    Some(_) => None,
                    None => Some(File::open(path(i)).expect("open reader")),
                }
            }
            3 => {
                writers[i] = match writers[i].take() {
                    Some(_) => None,
                    None => Some(writable(&None)),
                }
            }
            4 => {
                let at = next(MAX_LEN);
                let data = pattern(1 + next(20_000) as usize, step as u8);
                writable(&writers[i])
                    .write_all_at(&data, at)
                    .expect("pwrite");
                let end = at as usize + data.len();
                if models[i].len() < end {
                    models[i].resize(end, 0);
                }
                models[i][at as usize..end].copy_from_slice(&data);
            }
            5 => {
                let size = next(MAX_LEN);
                writable(&writers[i]).set_len(size).expect("truncate");
                models[i].resize(size as usize, 0);
            }
            6 if len > 0 => {
                let at = next(len);
                let n = 1 + next(len - at);
                punch_hole(&writable(&writers[i]), at, n)
                    .unwrap_or_else(|e| panic!("{ctx}: punch {e}"));
                models[i][at as usize..(at + n) as usize].fill(0);
            }
            7 if len > 0 => {
                let at = next(len) as usize;
                let n = (1 + next(5_000) as usize).min(models[i].len() - at);
                let data = pattern(n, !(step as u8));
                write_through_mapping(&path(i), at, &data);
                models[i][at..at + n].copy_from_slice(&data);
            }
            8 => {
                if let Some(f) = &writers[i] {
                    f.sync_all().expect("fsync");
                }
            }
            _ => {
                if let Some(r) = &readers[i] {
                    let mut got = vec![0u8; models[i].len() + 10];
                    let n = r.read_at(&mut got, 0).expect("pread");
                    let mut total = n;
                    while total < got.len() {
                        let k = r.read_at(&mut got[total..], total as u64).expect("pread");
                        if k == 0 {
                            break;
                        }
                        total += k;
                    }
                    got.truncate(total);
                    assert_same(&got, &models[i], &format!("{ctx}: held reader"));
                }
            }
        }
    }
    readers.clear();
    writers.clear();
    let copies = m.mount.as_ref().expect("mounted").fs().copy_counts();
    for (i, model) in models.iter().enumerate() {
        assert_same(
            &fs::read(path(i)).expect("read"),
            model,
            &format!("file {i} at the end"),
        );
    }
    assert!(
        copies.is_some_and(|(made, _, _)| made > 0),
        "no local copy was made: {copies:?}"
    );
}

/// Writes `data` at `at` of `path` through a shared mapping, in another
/// process: in the daemon's own process the unmap (which writes a FUSE
/// mapping back and waits, holding the address space's lock) would wait
/// for daemon threads that need that lock to fault in memory.
fn write_through_mapping(path: &Path, at: usize, data: &[u8]) {
    let script = "import mmap, os, sys\n\
                  fd = os.open(sys.argv[1], os.O_RDWR)\n\
                  m = mmap.mmap(fd, 0)\n\
                  at = int(sys.argv[2])\n\
                  d = sys.stdin.buffer.read()\n\
                  m[at:at + len(d)] = d\n\
                  m.close()\n\
                  os.close(fd)\n";
    let mut child = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(path)
        .arg(at.to_string())
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(data)
        .expect("data to python3");
    let status = child.wait().expect("python3");
    assert!(status.success(), "mapped write through python3: {status}");
}

/// `fallocate(PUNCH_HOLE | KEEP_SIZE)` of `len` bytes at `offset` of `f`.
fn punch_hole(f: &File, offset: u64, len: u64) -> std::io::Result<()> {
    let offset = i64::try_from(offset).map_err(std::io::Error::other)?;
    let len = i64::try_from(len).map_err(std::io::Error::other)?;
    // SAFETY: a valid fd; fallocate reads no memory of ours.
    let rc = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
