//! A FUSE file system over a backing directory that keeps every write in
//! memory until the file is fsynced — the page cache of a machine about
//! to lose power — so a test can cut the power: what was not synced is
//! gone, what was synced is in the backing directory. (LazyFS's approach;
//! LazyFS itself is not installable here, and this kernel has no
//! device-mapper for dm-flakey.) It can also fail a chosen file's next
//! fsync with EIO, dropping the writes it would have made durable, as a
//! disk error does to the page cache.
//!
//! Data is what is lost: writes, truncations and `fallocate` of regular
//! files are kept as an ordered log per file and applied to the backing
//! file by `fsync`/`fdatasync` (of any handle of the file). Namespace
//! operations (create, mkdir, unlink, rename, link, symlink, mknod,
//! chmod, utimes) go to the backing directory at once, as a journaling
//! file system's metadata does once committed (ext4 commits every 5 s; a
//! test that wants to model their loss needs more than this).
//!
//! The test process serves the mount on threads of its own; nothing is
//! cached by the kernel (zero timeouts), so every request reaches it.

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, FsOptions, OpenOptions as FuseOpen, SetattrValid,
    ZeroCopyReader, ZeroCopyWriter,
};
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::FuseSession;

const ROOT: u64 = 1;

/// A backing file's identity: (device, inode).
type Key = (u64, u64);

/// One unsynced change of a file's data, in the order made.
#[derive(Clone, Debug)]
enum Op {
    Write(u64, Vec<u8>),
    SetLen(u64),
    /// The size grows to at least this (zeros).
    Grow(u64),
    /// These bytes read as zeros (a punched hole).
    Zero(u64, u64),
}

#[derive(Debug)]
struct Node {
    /// Relative to the backing directory.
    path: PathBuf,
    key: Key,
    lookups: u64,
}

#[derive(Debug)]
struct Handle {
    file: File,
    key: Key,
    path: PathBuf,
}

#[derive(Debug, Default)]
struct State {
    nodes: HashMap<u64, Node>,
    by_key: HashMap<Key, u64>,
    next_ino: u64,
    /// Unsynced data changes per backing file.
    pending: HashMap<Key, Vec<Op>>,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
    /// The next fsync of a file whose path contains this fails.
    fail_fsync: Option<String>,
    failed_fsyncs: u64,
}

/// The file system (see the module's text).
#[derive(Debug)]
pub struct LazyFs {
    root: PathBuf,
    state: Mutex<State>,
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| errno(libc::EINVAL))
}

fn lstat(path: &Path) -> io::Result<stat64> {
    let c = cstring(path)?;
    // SAFETY: `st` is plain old data, written by lstat64.
    let mut st: stat64 = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `st` a valid out pointer.
    if unsafe { libc::lstat64(c.as_ptr(), &raw mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

fn fstat(file: &File) -> io::Result<stat64> {
    use std::os::fd::AsRawFd;
    // SAFETY: as in `lstat`.
    let mut st: stat64 = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd and out pointer.
    if unsafe { libc::fstat64(file.as_raw_fd(), &raw mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

fn key_of(st: &stat64) -> Key {
    (st.st_dev, st.st_ino)
}

/// The size after `ops`, from `size`.
fn logical_size(mut size: u64, ops: &[Op]) -> u64 {
    for op in ops {
        size = match op {
            Op::Write(at, data) => size.max(at + data.len() as u64),
            Op::SetLen(n) => *n,
            Op::Grow(n) => size.max(*n),
            Op::Zero(..) => size,
        };
    }
    size
}

/// Applies `ops` to `window`, the bytes at `offset` of a file whose
/// backing content they were read from (zeros past its end).
fn overlay(window: &mut [u8], offset: u64, ops: &[Op]) {
    let end = offset + window.len() as u64;
    let zero_from = |window: &mut [u8], from: u64, to: u64| {
        let (a, b) = (from.max(offset), to.min(end));
        if a < b {
            window[(a - offset) as usize..(b - offset) as usize].fill(0);
        }
    };
    for op in ops {
        match op {
            Op::Write(at, data) => {
                let (a, b) = ((*at).max(offset), (at + data.len() as u64).min(end));
                if a < b {
                    window[(a - offset) as usize..(b - offset) as usize]
                        .copy_from_slice(&data[(a - at) as usize..(b - at) as usize]);
                }
            }
            Op::SetLen(n) => zero_from(window, *n, u64::MAX),
            Op::Grow(_) => {}
            Op::Zero(at, len) => zero_from(window, *at, at.saturating_add(*len)),
        }
    }
}

impl LazyFs {
    /// Over the backing directory `root`.
    pub fn new(root: &Path) -> io::Result<Self> {
        let st = lstat(root)?;
        let mut state = State {
            next_ino: ROOT + 1,
            next_fh: 1,
            ..State::default()
        };
        state.nodes.insert(
            ROOT,
            Node {
                path: PathBuf::new(),
                key: key_of(&st),
                lookups: 1,
            },
        );
        state.by_key.insert(key_of(&st), ROOT);
        Ok(Self {
            root: root.to_owned(),
            state: Mutex::new(state),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn full(&self, rel: &Path) -> PathBuf {
        self.root.join(rel)
    }

    fn rel(&self, ino: u64) -> io::Result<PathBuf> {
        self.lock()
            .nodes
            .get(&ino)
            .map(|n| n.path.clone())
            .ok_or_else(|| errno(libc::ENOENT))
    }

    fn child(&self, parent: u64, name: &CStr) -> io::Result<PathBuf> {
        let name = OsStr::from_bytes(name.to_bytes());
        if name.as_bytes().contains(&b'/') {
            return Err(errno(libc::EINVAL));
        }
        Ok(self.rel(parent)?.join(name))
    }

    /// The attributes of `st` with the unsynced changes' size, as `ino`.
    fn attr(state: &State, ino: u64, mut st: stat64) -> stat64 {
        if let Some(ops) = state.pending.get(&key_of(&st)) {
            st.st_size = i64::try_from(logical_size(u64::try_from(st.st_size).unwrap_or(0), ops))
                .unwrap_or(i64::MAX);
        }
        st.st_ino = ino;
        st
    }

    /// The entry of backing path `rel` (one more lookup).
    fn entry(&self, rel: PathBuf) -> io::Result<Entry> {
        let st = lstat(&self.full(&rel))?;
        let key = key_of(&st);
        let mut state = self.lock();
        let ino = if let Some(&ino) = state.by_key.get(&key) {
            ino
        } else {
            let ino = state.next_ino;
            state.next_ino += 1;
            state.by_key.insert(key, ino);
            ino
        };
        let node = state.nodes.entry(ino).or_insert(Node {
            path: rel.clone(),
            key,
            lookups: 0,
        });
        node.lookups += 1;
        node.path = rel;
        let attr = Self::attr(&state, ino, st);
        Ok(Entry {
            inode: ino,
            generation: 0,
            attr,
            attr_flags: 0,
            attr_timeout: Duration::ZERO,
            entry_timeout: Duration::ZERO,
        })
    }

    /// Drops every unsynced change: the power is cut. (Call it once the
    /// programs using the mount are stopped.)
    pub fn cut(&self) {
        self.lock().pending.clear();
    }

    /// The next fsync of a file whose path (relative to the backing
    /// directory) contains `part` fails with EIO and loses the changes it
    /// would have made durable.
    pub fn fail_next_fsync(&self, part: &str) {
        self.lock().fail_fsync = Some(part.to_owned());
    }

    /// Fsyncs failed on purpose so far.
    pub fn failed_fsyncs(&self) -> u64 {
        self.lock().failed_fsyncs
    }

    /// Bytes of unsynced changes held.
    pub fn unsynced_bytes(&self) -> u64 {
        self.lock()
            .pending
            .values()
            .flatten()
            .map(|op| match op {
                Op::Write(_, d) => d.len() as u64,
                _ => 0,
            })
            .sum()
    }

    fn open_handle(&self, rel: PathBuf, file: File) -> io::Result<u64> {
        let key = key_of(&fstat(&file)?);
        let mut state = self.lock();
        let fh = state.next_fh;
        state.next_fh += 1;
        state.handles.insert(
            fh,
            Handle {
                file,
                key,
                path: rel,
            },
        );
        Ok(fh)
    }

    fn sync_file(&self, fh: u64, datasync: bool) -> io::Result<()> {
        let mut state = self.lock();
        let (key, path, file) = {
            let h = state.handles.get(&fh).ok_or_else(|| errno(libc::EBADF))?;
            (h.key, h.path.clone(), h.file.try_clone()?)
        };
        let ops = state.pending.remove(&key).unwrap_or_default();
        let fail = state
            .fail_fsync
            .as_ref()
            .is_some_and(|part| path.to_string_lossy().contains(part.as_str()));
        if fail {
            state.fail_fsync = None;
            state.failed_fsyncs += 1;
            // The writes it covered are lost, as a failed writeback's pages.
            return Err(errno(libc::EIO));
        }
        drop(state);
        for op in &ops {
            match op {
                Op::Write(at, data) => file.write_all_at(data, *at)?,
                Op::SetLen(n) => file.set_len(*n)?,
                Op::Grow(n) => {
                    if file.metadata()?.len() < *n {
                        file.set_len(*n)?;
                    }
                }
                Op::Zero(at, len) => {
                    let size = file.metadata()?.len();
                    let end = at.saturating_add(*len).min(size);
                    if *at < end {
                        file.write_all_at(&vec![0u8; (end - at) as usize], *at)?;
                    }
                }
            }
        }
        sync(&file, datasync)
    }

    fn push(&self, key: Key, op: Op) {
        self.lock().pending.entry(key).or_default().push(op);
    }

    fn handle_key(&self, fh: u64) -> io::Result<Key> {
        self.lock()
            .handles
            .get(&fh)
            .map(|h| h.key)
            .ok_or_else(|| errno(libc::EBADF))
    }

    /// After a rename of `from` to `to`: nodes under `from` follow.
    fn renamed(&self, from: &Path, to: &Path) {
        let mut state = self.lock();
        for node in state.nodes.values_mut() {
            if let Ok(rest) = node.path.strip_prefix(from) {
                node.path = if rest.as_os_str().is_empty() {
                    to.to_owned()
                } else {
                    to.join(rest)
                };
            }
        }
    }
}

/// `fdatasync` or `fsync` of `file`.
fn sync(file: &File, datasync: bool) -> io::Result<()> {
    if datasync {
        file.sync_data()
    } else {
        file.sync_all()
    }
}

/// Whether this process can mount a [`LazyMount`] (root, `/dev/fuse`).
pub fn can_mount() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root && Path::new("/dev/fuse").exists()
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl FileSystem for LazyFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, _capable: FsOptions) -> io::Result<FsOptions> {
        Ok(FsOptions::ASYNC_READ | FsOptions::BIG_WRITES)
    }

    fn lookup(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        let rel = self.child(parent, name)?;
        self.entry(rel)
    }

    fn forget(&self, _ctx: &Context, inode: u64, count: u64) {
        let mut state = self.lock();
        if inode == ROOT {
            return;
        }
        let gone = state.nodes.get_mut(&inode).is_some_and(|n| {
            n.lookups = n.lookups.saturating_sub(count);
            n.lookups == 0
        });
        if gone {
            if let Some(node) = state.nodes.remove(&inode) {
                state.by_key.remove(&node.key);
            }
        }
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(u64, u64)>) {
        for (inode, count) in requests {
            self.forget(ctx, inode, count);
        }
    }

    fn getattr(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        let st = match handle.and_then(|fh| {
            self.lock()
                .handles
                .get(&fh)
                .and_then(|h| h.file.try_clone().ok())
        }) {
            Some(file) => fstat(&file)?,
            None => lstat(&self.full(&self.rel(inode)?))?,
        };
        Ok((Self::attr(&self.lock(), inode, st), Duration::ZERO))
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: u64,
        attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        let path = self.full(&self.rel(inode)?);
        let c = cstring(&path)?;
        if valid.contains(SetattrValid::MODE) {
            // SAFETY: a valid C string.
            check(unsafe { libc::chmod(c.as_ptr(), attr.st_mode & 0o7777) })?;
        }
        if valid.intersects(SetattrValid::UID | SetattrValid::GID) {
            let uid = if valid.contains(SetattrValid::UID) {
                attr.st_uid
            } else {
                u32::MAX
            };
            let gid = if valid.contains(SetattrValid::GID) {
                attr.st_gid
            } else {
                u32::MAX
            };
            // SAFETY: a valid C string.
            check(unsafe { libc::lchown(c.as_ptr(), uid, gid) })?;
        }
        if valid.contains(SetattrValid::SIZE) {
            let key = key_of(&lstat(&path)?);
            self.push(key, Op::SetLen(attr.st_size as u64));
        }
        if valid.intersects(SetattrValid::ATIME | SetattrValid::MTIME) {
            let time = |set: bool, now: bool, sec: i64, nsec: i64| libc::timespec {
                tv_sec: sec,
                tv_nsec: if !set {
                    libc::UTIME_OMIT
                } else if now {
                    libc::UTIME_NOW
                } else {
                    nsec
                },
            };
            let times = [
                time(
                    valid.contains(SetattrValid::ATIME),
                    valid.contains(SetattrValid::ATIME_NOW),
                    attr.st_atime,
                    attr.st_atime_nsec,
                ),
                time(
                    valid.contains(SetattrValid::MTIME),
                    valid.contains(SetattrValid::MTIME_NOW),
                    attr.st_mtime,
                    attr.st_mtime_nsec,
                ),
            ];
            // SAFETY: a valid C string and two timespecs.
            check(unsafe {
                libc::utimensat(
                    libc::AT_FDCWD,
                    c.as_ptr(),
                    times.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            })?;
        }
        self.getattr(ctx, inode, handle)
    }

    fn readlink(&self, _ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        Ok(std::fs::read_link(self.full(&self.rel(inode)?))?
            .into_os_string()
            .into_vec())
    }

    fn symlink(
        &self,
        _ctx: &Context,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        let rel = self.child(parent, name)?;
        std::os::unix::fs::symlink(OsStr::from_bytes(linkname.to_bytes()), self.full(&rel))?;
        self.entry(rel)
    }

    fn mknod(
        &self,
        _ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let rel = self.child(parent, name)?;
        let c = cstring(&self.full(&rel))?;
        // SAFETY: a valid C string.
        check(unsafe { libc::mknod(c.as_ptr(), mode & !umask, u64::from(rdev)) })?;
        self.entry(rel)
    }

    fn mkdir(
        &self,
        _ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let rel = self.child(parent, name)?;
        let c = cstring(&self.full(&rel))?;
        // SAFETY: a valid C string.
        check(unsafe { libc::mkdir(c.as_ptr(), mode & !umask) })?;
        self.entry(rel)
    }

    fn unlink(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        std::fs::remove_file(self.full(&self.child(parent, name)?))
    }

    fn rmdir(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        std::fs::remove_dir(self.full(&self.child(parent, name)?))
    }

    fn rename(
        &self,
        _ctx: &Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        let (from, to) = (self.child(olddir, oldname)?, self.child(newdir, newname)?);
        let (a, b) = (cstring(&self.full(&from))?, cstring(&self.full(&to))?);
        // SAFETY: valid C strings.
        check(unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                a.as_ptr(),
                libc::AT_FDCWD,
                b.as_ptr(),
                flags,
            )
        })?;
        self.renamed(&from, &to);
        Ok(())
    }

    fn link(
        &self,
        _ctx: &Context,
        inode: u64,
        newparent: u64,
        newname: &CStr,
    ) -> io::Result<Entry> {
        let rel = self.child(newparent, newname)?;
        std::fs::hard_link(self.full(&self.rel(inode)?), self.full(&rel))?;
        self.entry(rel)
    }

    fn open(
        &self,
        _ctx: &Context,
        inode: u64,
        flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<(Option<u64>, FuseOpen, Option<u32>)> {
        let rel = self.rel(inode)?;
        let path = self.full(&rel);
        // Always writable: a sync writes the unsynced changes through any
        // handle (the caller's access was checked by the kernel).
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(i32::from_ne_bytes(flags.to_ne_bytes()) & libc::O_NOFOLLOW)
            .open(&path)
            .or_else(|_| File::open(&path))?;
        Ok((Some(self.open_handle(rel, file)?), FuseOpen::empty(), None))
    }

    fn create(
        &self,
        _ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, FuseOpen, Option<u32>)> {
        let rel = self.child(parent, name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .create_new(args.flags & libc::O_EXCL.unsigned_abs() != 0)
            .mode(args.mode & !args.umask)
            .open(self.full(&rel))?;
        let fh = self.open_handle(rel.clone(), file)?;
        Ok((self.entry(rel)?, Some(fh), FuseOpen::empty(), None))
    }

    fn read(
        &self,
        _ctx: &Context,
        _inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _flags: u32,
    ) -> io::Result<usize> {
        let state = self.lock();
        let h = state
            .handles
            .get(&handle)
            .ok_or_else(|| errno(libc::EBADF))?;
        let ops = state.pending.get(&h.key).map_or(&[][..], Vec::as_slice);
        let base = h.file.metadata()?.len();
        let end = logical_size(base, ops).min(offset.saturating_add(u64::from(size)));
        if offset >= end {
            return Ok(0);
        }
        let mut window = vec![0u8; (end - offset) as usize];
        let backed = base.saturating_sub(offset).min(window.len() as u64) as usize;
        let mut got = 0;
        while got < backed {
            match h
                .file
                .read_at(&mut window[got..backed], offset + got as u64)?
            {
                0 => break,
                n => got += n,
            }
        }
        overlay(&mut window, offset, ops);
        drop(state);
        w.write_all(&window)?;
        Ok(window.len())
    }

    fn write(
        &self,
        _ctx: &Context,
        _inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _delayed_write: bool,
        _flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<usize> {
        let mut data = vec![0u8; size as usize];
        r.read_exact(&mut data)?;
        let key = self.handle_key(handle)?;
        self.push(key, Op::Write(offset, data));
        Ok(size as usize)
    }

    fn flush(&self, _ctx: &Context, _inode: u64, _handle: u64, _lock_owner: u64) -> io::Result<()> {
        Ok(())
    }

    fn fsync(&self, _ctx: &Context, _inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.sync_file(handle, datasync)
    }

    fn fallocate(
        &self,
        _ctx: &Context,
        _inode: u64,
        handle: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        let key = self.handle_key(handle)?;
        let mode = i32::from_ne_bytes(mode.to_ne_bytes());
        let end = offset
            .checked_add(length)
            .ok_or_else(|| errno(libc::EFBIG))?;
        match mode {
            0 => self.push(key, Op::Grow(end)),
            libc::FALLOC_FL_KEEP_SIZE => {}
            m if m == libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE => {
                self.push(key, Op::Zero(offset, length));
            }
            _ => return Err(errno(libc::EOPNOTSUPP)),
        }
        Ok(())
    }

    fn release(
        &self,
        _ctx: &Context,
        _inode: u64,
        _flags: u32,
        handle: u64,
        _flush: bool,
        _flock_release: bool,
        _lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.lock().handles.remove(&handle);
        Ok(())
    }

    fn statfs(&self, _ctx: &Context, _inode: u64) -> io::Result<statvfs64> {
        let c = cstring(&self.root)?;
        // SAFETY: plain old data, written by statvfs64.
        let mut st: statvfs64 = unsafe { std::mem::zeroed() };
        // SAFETY: a valid C string and out pointer.
        check(unsafe { libc::statvfs64(c.as_ptr(), &raw mut st) })?;
        Ok(st)
    }

    fn opendir(
        &self,
        _ctx: &Context,
        inode: u64,
        _flags: u32,
    ) -> io::Result<(Option<u64>, FuseOpen)> {
        let rel = self.rel(inode)?;
        let file = File::open(self.full(&rel))?;
        Ok((Some(self.open_handle(rel, file)?), FuseOpen::empty()))
    }

    fn readdir(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let dir = self.full(&self.rel(inode)?);
        let mut names: Vec<(Vec<u8>, u64, u32)> = vec![
            (b".".to_vec(), inode, libc::DT_DIR.into()),
            (b"..".to_vec(), ROOT, libc::DT_DIR.into()),
        ];
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let type_ = if kind.is_dir() {
                libc::DT_DIR
            } else if kind.is_symlink() {
                libc::DT_LNK
            } else if kind.is_file() {
                libc::DT_REG
            } else {
                libc::DT_UNKNOWN
            };
            names.push((
                entry.file_name().as_bytes().to_vec(),
                entry.metadata()?.ino(),
                type_.into(),
            ));
        }
        for (i, (name, ino, type_)) in names.iter().enumerate().skip(offset as usize) {
            let added = add_entry(DirEntry {
                ino: *ino,
                offset: i as u64 + 1,
                type_: *type_,
                name,
            })?;
            if added == 0 {
                break;
            }
        }
        Ok(())
    }

    fn fsyncdir(&self, _ctx: &Context, _inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        let file = self
            .lock()
            .handles
            .get(&handle)
            .ok_or_else(|| errno(libc::EBADF))?
            .file
            .try_clone()?;
        sync(&file, datasync)
    }

    fn releasedir(&self, _ctx: &Context, _inode: u64, _flags: u32, handle: u64) -> io::Result<()> {
        self.lock().handles.remove(&handle);
        Ok(())
    }

    fn access(&self, _ctx: &Context, _inode: u64, _mask: u32) -> io::Result<()> {
        Ok(())
    }
}

/// A [`LazyFs`] mounted and served by threads of this process; unmounted
/// when dropped (or cut).
pub struct LazyMount {
    fs: Arc<LazyFs>,
    session: Option<FuseSession>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for LazyMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyMount")
            .field("root", &self.fs.root)
            .finish_non_exhaustive()
    }
}

impl LazyMount {
    /// Mounts a [`LazyFs`] over `backing` at `mountpoint` (both existing
    /// directories; root only).
    pub fn mount(backing: &Path, mountpoint: &Path) -> io::Result<Self> {
        let fs = Arc::new(LazyFs::new(backing)?);
        let mut session = FuseSession::new(mountpoint, "lazyfs", "lazyfs", false)
            .map_err(|e| io::Error::other(e.to_string()))?;
        session
            .mount()
            .map_err(|e| io::Error::other(e.to_string()))?;
        let server = Arc::new(Server::new(Arc::clone(&fs)));
        let mut threads = Vec::new();
        for n in 0..2 {
            let mut channel = session
                .new_channel()
                .map_err(|e| io::Error::other(e.to_string()))?;
            let server = Arc::clone(&server);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("lazyfs-{n}"))
                    .spawn(move || {
                        // Ends when the mount goes (no request: `None`).
                        while let Ok(Some((reader, writer))) = channel.get_request() {
                            // A reply that cannot be written (the request
                            // was interrupted) is no reason to stop.
                            let _ = server.handle_message(reader, writer.into(), None, None);
                        }
                    })?,
            );
        }
        Ok(Self {
            fs,
            session: Some(session),
            threads,
        })
    }

    /// The file system (to cut the power or fail an fsync).
    pub fn fs(&self) -> &LazyFs {
        &self.fs
    }

    /// Cuts the power: the connection is aborted (no request is served
    /// any more), every unsynced change is dropped and the mount goes
    /// away. Stop the programs using it first.
    pub fn cut(mut self) {
        if let Some(session) = &self.session {
            abort_connection(session.mountpoint());
        }
        self.fs.cut();
        self.unmount();
    }

    fn unmount(&mut self) {
        if let Some(mut session) = self.session.take() {
            if let Ok(c) = cstring(session.mountpoint()) {
                // Detached at once, also while something holds it open.
                // SAFETY: a valid C string.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
            let _ = session.umount();
            let _ = session.wake();
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Aborts the FUSE connection mounted at `mountpoint` (its requests fail
/// with ENOTCONN from now on).
fn abort_connection(mountpoint: &Path) {
    let Ok(st) = lstat(mountpoint) else { return };
    let minor = libc::minor(st.st_dev);
    let _ = std::fs::write(format!("/sys/fs/fuse/connections/{minor}/abort"), b"1");
}

impl Drop for LazyMount {
    fn drop(&mut self) {
        self.unmount();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_see_unsynced_changes_in_order() {
        let ops = vec![
            Op::Write(2, b"abcdef".to_vec()),
            Op::SetLen(5),
            Op::Grow(10),
            Op::Write(8, b"xy".to_vec()),
            Op::Zero(3, 1),
        ];
        assert_eq!(logical_size(0, &ops), 10);
        let mut window = b"0123456789".to_vec();
        // The backing file held 4 bytes: past them the window is zeros.
        window[4..].fill(0);
        overlay(&mut window, 0, &ops);
        assert_eq!(&window, b"01a\0c\0\0\0xy");
        let mut tail = vec![0u8; 4];
        overlay(&mut tail, 6, &ops);
        assert_eq!(&tail, b"\0\0xy");
        assert_eq!(logical_size(20, &[Op::Grow(5)]), 20);
    }
}
