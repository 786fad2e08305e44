//! [`FuseFs`]: the fuse-backend-rs `FileSystem` over [`Fs`]. Every op
//! becomes one `Fs` call (awaited with `block_on` on the request loop's
//! thread); every error is the `Fs` error's errno. FUSE inode numbers are
//! the metadata's (the root is 1 in both), so `forget` has nothing to do.

use std::ffi::CStr;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use datenlord_fs::{
    Attr, AttrChanges, CreateMode, Creds, FileKind, FlockKind, Fs, FsError, Ino, LockKind,
    LockRange, RenameFlags, SetTime, Timespec, XattrFlags,
};
use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileLock, FileSystem, FsOptions, GetxattrReply, ListxattrReply,
    OpenOptions, SetattrValid, ZeroCopyReader, ZeroCopyWriter,
};
use futures::executor::block_on;
use tracing::{debug, debug_span, warn};

use crate::lock_wait::LockWait;
use crate::passthrough::{OpenMode, Passthrough, FOPEN_PASSTHROUGH};

/// How long the kernel may cache attributes and entries unless `-o`
/// says otherwise (`attr_timeout`, `entry_timeout`, `negative_timeout`):
/// other writers' changes (nodes of a master group) show within it.
pub const TTL_DEFAULT: Duration = Duration::from_secs(1);
/// The same for a mount that is its file system's only writer (the
/// embedded group: its data directory is locked to the mount's process).
/// Every change then comes through this kernel, which drops what its own
/// requests change, so what it caches stays true however long it keeps it.
pub const TTL_SOLE_WRITER: Duration = Duration::from_secs(24 * 60 * 60);
/// Entries one readdir round trip to the metadata asks for.
const READDIR_BATCH_ENTRIES: usize = 256;
/// `FUSE_LK_FLOCK` in `lk_flags`: the lock request is `flock(2)`.
const FUSE_LK_FLOCK: u32 = 1;
/// Cookies of `.` and `..`; the metadata's entries start above them.
const DOT_COOKIE: u64 = 1;
const DOTDOT_COOKIE: u64 = 2;

/// Adapter options taken from the mount options.
#[derive(Clone, Copy, Debug)]
pub struct AdapterOptions {
    /// `FOPEN_DIRECT_IO` on every open.
    pub direct_io: bool,
    /// Negotiate `FUSE_WRITEBACK_CACHE`.
    pub writeback_cache: bool,
    /// How long the kernel may cache attributes.
    pub attr_timeout: Duration,
    /// How long the kernel may cache a name's entry.
    pub entry_timeout: Duration,
    /// How long the kernel may cache that a name does not exist.
    pub negative_timeout: Duration,
    /// POSIX ACLs: negotiate `FUSE_POSIX_ACL` (the kernel checks and caches
    /// ACLs) and `FUSE_DONT_MASK` (the umask comes with the request and the
    /// metadata applies it, or inherits the parent's default ACL instead).
    /// Off (`-o noacl`): the ACL attributes are `EOPNOTSUPP` and the kernel
    /// applies the umask.
    pub acl: bool,
}

impl Default for AdapterOptions {
    fn default() -> Self {
        Self {
            direct_io: false,
            writeback_cache: false,
            attr_timeout: TTL_DEFAULT,
            entry_timeout: TTL_DEFAULT,
            negative_timeout: TTL_DEFAULT,
            acl: true,
        }
    }
}

/// Names of the POSIX ACL attributes (`system.posix_acl_access`, `_default`).
const ACL_XATTR_PREFIX: &[u8] = b"system.posix_acl_";

/// `FUSE_NOTIFY_INVAL_INODE`, the `error` of a notification's out header.
const NOTIFY_INVAL_INODE: i32 = 2;
/// `FUSE_NOTIFY_INVAL_ENTRY`.
const NOTIFY_INVAL_ENTRY: i32 = 3;

/// What the kernel keeps of an inode that the file system may change
/// without the kernel's asking: the mode (set-user-ID/set-group-ID cleared
/// by a non-root write), times and allocated bytes (set when written blocks
/// are flushed). Not the size: the kernel knows what its writes did to it.
type KernelView = (u32, Timespec, Timespec, u64);

/// The FUSE file system.
#[derive(Debug)]
pub struct FuseFs {
    fs: Arc<Fs>,
    options: AdapterOptions,
    /// The session's /dev/fuse, for notifications to the kernel.
    notifier: Option<std::fs::File>,
    /// Opens on local copies (`-o passthrough`).
    passthrough: Arc<Passthrough>,
    /// Whether POSIX ACLs are on: asked for and granted at INIT.
    acl: AtomicBool,
}

impl FuseFs {
    /// An adapter over `fs`.
    pub fn new(fs: Arc<Fs>, options: AdapterOptions) -> Self {
        Self {
            fs,
            options,
            notifier: None,
            passthrough: Arc::new(Passthrough::new(None)),
            acl: AtomicBool::new(false),
        }
    }

    /// Whether the kernel and this mount agreed on POSIX ACLs.
    fn acl(&self) -> bool {
        self.acl.load(Ordering::Relaxed)
    }

    /// The mode of a new inode: with ACLs the umask travels to the
    /// metadata, which applies it unless the parent's default ACL replaces
    /// it; without, it is applied here (the kernel did so already).
    fn create_mode(&self, mode: u32, umask: u32) -> CreateMode {
        if self.acl() {
            CreateMode::with_umask(mode, umask)
        } else {
            CreateMode::masked(mode & !umask)
        }
    }

    /// `EOPNOTSUPP` for the ACL attributes when ACLs are off (`-o noacl`).
    fn check_xattr_name(&self, name: &[u8]) -> io::Result<()> {
        if !self.acl() && name.starts_with(ACL_XATTR_PREFIX) {
            return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
        }
        Ok(())
    }

    /// Answers opens of files with a local copy on the copy once the
    /// kernel agrees at INIT (`passthrough`, sharing the session's
    /// /dev/fuse).
    #[must_use]
    pub(crate) fn with_passthrough(mut self, passthrough: Arc<Passthrough>) -> Self {
        self.passthrough = passthrough;
        self
    }

    /// The open flags and backing id of a reply for `mode`.
    fn open_reply(
        &self,
        mode: OpenMode,
        keep_cache: bool,
        write: bool,
    ) -> (OpenOptions, Option<u32>) {
        match mode {
            OpenMode::Passthrough { backing } => {
                let mut bits = FOPEN_PASSTHROUGH;
                if write {
                    // Reads and writes come here (and are written into the
                    // copy); only mmap goes to the copy.
                    bits |= OpenOptions::DIRECT_IO.bits();
                }
                // SAFETY: bitflags 1 keeps unknown bits as given; the kernel
                // reads them from the reply (FOPEN_PASSTHROUGH is not in
                // fuse-backend-rs's table).
                let options = unsafe { OpenOptions::from_bits_unchecked(bits) };
                (options, u32::try_from(backing).ok())
            }
            OpenMode::Cached if self.options.direct_io => (OpenOptions::DIRECT_IO, None),
            OpenMode::Cached if keep_cache => (OpenOptions::KEEP_CACHE, None),
            OpenMode::Cached => (OpenOptions::empty(), None),
        }
    }

    /// Sends notifications to the kernel on `device` (the session's
    /// /dev/fuse), also for the files a background commit of the file
    /// system made visible in the metadata: the commit changes their
    /// allocated size (and may clear set-user-ID) after the close that
    /// published them returned.
    #[must_use]
    pub fn with_notifier(mut self, device: std::fs::File) -> Self {
        match device.try_clone() {
            Ok(committed) => self.fs.on_commit(Arc::new(move |ino: Ino| {
                invalidate_attributes(&committed, ino.0);
            })),
            Err(e) => {
                warn!(error = %e, "no attribute invalidation after background commits: cannot clone the FUSE device");
            }
        }
        self.notifier = Some(device);
        self
    }

    /// What the kernel keeps of `ino` that a flush may change.
    fn kernel_view(&self, ino: u64) -> Option<KernelView> {
        self.fs
            .getattr(Ino(ino))
            .ok()
            .map(|a| (a.mode, a.mtime, a.ctime, a.allocated_bytes))
    }

    /// [`Self::kernel_view`] for a write: only when `ino` has
    /// set-user-ID or set-group-ID. After a write reply the kernel drops
    /// the times itself (a flush the write made set them before that), not
    /// the mode.
    fn kernel_view_for_write(&self, ino: u64) -> Option<KernelView> {
        self.kernel_view(ino)
            .filter(|(mode, ..)| mode & 0o6000 != 0)
    }

    /// After a request that may have flushed written blocks (write,
    /// flush, fsync, release): if the file system changed what the kernel
    /// keeps of `ino` since `before`, tells the kernel to drop its
    /// attributes. Nothing else would: write and flush replies carry no
    /// attributes, the kernel drops only size and times after a write
    /// (before the flush sets them), and the embedded mount lets it keep
    /// attributes for a day.
    fn notify_if_changed(&self, ino: u64, before: Option<KernelView>) {
        let Some(before) = before else { return };
        if self.kernel_view(ino) == Some(before) {
            return;
        }
        let Some(device) = &self.notifier else { return };
        invalidate_attributes(device, ino);
    }

    fn entry(&self, attr: &Attr) -> Entry {
        Entry {
            inode: attr.ino.0,
            generation: attr.generation,
            attr: stat(attr),
            attr_flags: 0,
            attr_timeout: self.options.attr_timeout,
            entry_timeout: self.options.entry_timeout,
        }
    }
}

fn err(e: &FsError) -> io::Error {
    io::Error::from_raw_os_error(e.errno())
}

/// The xattr size protocol for a value of `len` bytes and a caller's
/// buffer of `size`: `Some(len)` when the caller asks for the length only
/// (`size` 0), `None` when the value fits, ERANGE when it does not.
fn xattr_fit(len: usize, size: u32) -> io::Result<Option<u32>> {
    if size == 0 {
        return Ok(Some(u32::try_from(len).unwrap_or(u32::MAX)));
    }
    if len > size as usize {
        return Err(io::Error::from_raw_os_error(libc::ERANGE));
    }
    Ok(None)
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

pub(crate) fn creds(ctx: &Context) -> Creds {
    let groups = if ctx.uid == 0 {
        Vec::new()
    } else {
        crate::groups::supplementary_groups(ctx.pid, ctx.uid, ctx.gid)
    };
    Creds {
        uid: ctx.uid,
        gid: ctx.gid,
        groups,
    }
}

fn stat(attr: &Attr) -> stat64 {
    // SAFETY: stat64 is plain old data; all zeros is a valid value.
    let mut st: stat64 = unsafe { std::mem::zeroed() };
    st.st_ino = attr.ino.0;
    st.st_mode = attr.st_mode();
    st.st_nlink = u64::from(attr.nlink);
    st.st_uid = attr.uid;
    st.st_gid = attr.gid;
    st.st_rdev = u64::from(attr.rdev);
    st.st_size = i64::try_from(attr.size).unwrap_or(i64::MAX);
    st.st_blksize = i64::from(attr.blksize);
    st.st_blocks = i64::try_from(attr.allocated_bytes / 512).unwrap_or(i64::MAX);
    st.st_atime = attr.atime.sec;
    st.st_atime_nsec = i64::from(attr.atime.nsec);
    st.st_mtime = attr.mtime.sec;
    st.st_mtime_nsec = i64::from(attr.mtime.nsec);
    st.st_ctime = attr.ctime.sec;
    st.st_ctime_nsec = i64::from(attr.ctime.nsec);
    st
}

fn time(sec: i64, nsec: i64) -> SetTime {
    SetTime::At(Timespec {
        sec,
        nsec: u32::try_from(nsec).unwrap_or(0).min(999_999_999),
    })
}

fn lock_kind(lock_type: u32) -> Result<Option<LockKind>, io::Error> {
    match i32::try_from(lock_type).map_err(|_| einval())? {
        libc::F_RDLCK => Ok(Some(LockKind::Read)),
        libc::F_WRLCK => Ok(Some(LockKind::Write)),
        libc::F_UNLCK => Ok(None),
        _ => Err(einval()),
    }
}

impl FileSystem for FuseFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        let mut want = FsOptions::ASYNC_READ
            | FsOptions::PARALLEL_DIROPS
            | FsOptions::BIG_WRITES
            | FsOptions::MAX_PAGES
            | FsOptions::DO_READDIRPLUS
            | FsOptions::READDIRPLUS_AUTO
            // Not ATOMIC_O_TRUNC: with it the kernel passes O_TRUNC to
            // `open` before its own checks, so `open(O_RDONLY|O_TRUNC)` of
            // a running executable truncated it here and then failed with
            // ETXTBSY (the process then crashed). Without it the kernel
            // truncates with a SETATTR once its checks passed.
            | FsOptions::EXPORT_SUPPORT
            | FsOptions::HANDLE_KILLPRIV_V2;
        if self.options.writeback_cache {
            want |= FsOptions::WRITEBACK_CACHE;
        }
        // Cluster-wide locks in the metadata; blocking requests are taken
        // out of the request loops (`lock_wait`).
        want |= FsOptions::POSIX_LOCKS | FsOptions::FLOCK_LOCKS;
        // POSIX ACLs, both flags or neither: with FUSE_POSIX_ACL alone the
        // kernel would apply the umask even where a default ACL replaces it.
        let acl = FsOptions::POSIX_ACL | FsOptions::DONT_MASK;
        let acl_on = self.options.acl && capable.contains(acl);
        if acl_on {
            want |= acl;
        }
        self.acl.store(acl_on, Ordering::Relaxed);
        debug!(acl = acl_on, "POSIX ACLs");
        Ok(capable & want)
    }

    fn lookup(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        let _span = debug_span!("lookup", ino = parent).entered();
        let parent = Ino(parent);
        let found = match name.to_bytes() {
            // EXPORT_SUPPORT: the kernel looks up `.` and `..` itself.
            b"." => self.fs.getattr(parent),
            b".." => self.fs.parent(parent).and_then(|p| self.fs.getattr(p)),
            name => self.fs.lookup(parent, name, &creds(ctx)),
        };
        match found {
            Ok(attr) => Ok(self.entry(&attr)),
            // A negative entry the kernel may cache for the negative
            // timeout (it drops it itself when this node creates the name).
            Err(e) if e.errno() == libc::ENOENT && !self.options.negative_timeout.is_zero() => {
                Ok(Entry {
                    inode: 0,
                    generation: 0,
                    // SAFETY: stat64 is plain old data; zeros are valid.
                    attr: unsafe { std::mem::zeroed() },
                    attr_flags: 0,
                    attr_timeout: self.options.negative_timeout,
                    entry_timeout: self.options.negative_timeout,
                })
            }
            Err(e) => Err(err(&e)),
        }
    }

    fn forget(&self, _ctx: &Context, _inode: u64, _count: u64) {}

    fn batch_forget(&self, _ctx: &Context, _requests: Vec<(u64, u64)>) {}

    fn getattr(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        let _span = debug_span!("getattr", ino = inode).entered();
        let attr = self.fs.getattr(Ino(inode)).map_err(|e| err(&e))?;
        Ok((stat(&attr), self.options.attr_timeout))
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: u64,
        attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        let _span = debug_span!("setattr", ino = inode).entered();
        let mut changes = AttrChanges::default();
        if valid.contains(SetattrValid::MODE) {
            changes.mode = Some(attr.st_mode & 0o7777);
        }
        if valid.contains(SetattrValid::UID) {
            changes.uid = Some(attr.st_uid);
        }
        if valid.contains(SetattrValid::GID) {
            changes.gid = Some(attr.st_gid);
        }
        if valid.contains(SetattrValid::SIZE) {
            changes.size = Some(u64::try_from(attr.st_size).map_err(|_| einval())?);
        }
        if valid.contains(SetattrValid::ATIME_NOW) {
            changes.atime = Some(SetTime::Now);
        } else if valid.contains(SetattrValid::ATIME) {
            changes.atime = Some(time(attr.st_atime, attr.st_atime_nsec));
        }
        if valid.contains(SetattrValid::MTIME_NOW) {
            changes.mtime = Some(SetTime::Now);
        } else if valid.contains(SetattrValid::MTIME) {
            changes.mtime = Some(time(attr.st_mtime, attr.st_mtime_nsec));
        }
        let attr = if changes.is_empty() {
            self.fs.getattr(Ino(inode))
        } else {
            block_on(self.fs.setattr(Ino(inode), changes, handle, &creds(ctx)))
        }
        .map_err(|e| err(&e))?;
        Ok((stat(&attr), self.options.attr_timeout))
    }

    fn readlink(&self, _ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        self.fs.readlink(Ino(inode)).map_err(|e| err(&e))
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        let _span = debug_span!("symlink", ino = parent).entered();
        block_on(self.fs.symlink(
            Ino(parent),
            name.to_bytes(),
            linkname.to_bytes(),
            &creds(ctx),
        ))
        .map(|a| self.entry(&a))
        .map_err(|e| err(&e))
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let _span = debug_span!("mknod", ino = parent).entered();
        let kind = FileKind::from_mode(mode).unwrap_or(FileKind::File);
        block_on(self.fs.mknod(
            Ino(parent),
            name.to_bytes(),
            kind,
            self.create_mode(mode, umask),
            rdev,
            &creds(ctx),
        ))
        .map(|a| self.entry(&a))
        .map_err(|e| err(&e))
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let _span = debug_span!("mkdir", ino = parent).entered();
        block_on(self.fs.mkdir(
            Ino(parent),
            name.to_bytes(),
            self.create_mode(mode, umask),
            &creds(ctx),
        ))
        .map(|a| self.entry(&a))
        .map_err(|e| err(&e))
    }

    fn unlink(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        let _span = debug_span!("unlink", ino = parent).entered();
        block_on(self.fs.unlink(Ino(parent), name.to_bytes(), &creds(ctx))).map_err(|e| err(&e))
    }

    fn rmdir(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        let _span = debug_span!("rmdir", ino = parent).entered();
        block_on(self.fs.rmdir(Ino(parent), name.to_bytes(), &creds(ctx))).map_err(|e| err(&e))
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        let _span = debug_span!("rename", ino = olddir).entered();
        let known = libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE;
        if flags & !known != 0 {
            return Err(einval());
        }
        let flags = RenameFlags {
            noreplace: flags & libc::RENAME_NOREPLACE != 0,
            exchange: flags & libc::RENAME_EXCHANGE != 0,
        };
        block_on(self.fs.rename(
            Ino(olddir),
            oldname.to_bytes(),
            Ino(newdir),
            newname.to_bytes(),
            flags,
            &creds(ctx),
        ))
        .map_err(|e| err(&e))
    }

    fn link(&self, ctx: &Context, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        let _span = debug_span!("link", ino = inode).entered();
        block_on(
            self.fs
                .link(Ino(inode), Ino(newparent), newname.to_bytes(), &creds(ctx)),
        )
        .map(|a| self.entry(&a))
        .map_err(|e| err(&e))
    }

    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        let _span = debug_span!("open", ino = inode).entered();
        let flags = self.open_flags(flags)?;
        let opened = block_on(self.fs.open(Ino(inode), flags, &creds(ctx))).map_err(|e| err(&e))?;
        let write = writes(flags);
        let mode = self
            .passthrough
            .opened(&self.fs, &opened.attr, opened.fh, write);
        let (options, backing) = self.open_reply(mode, opened.keep_cache, write);
        Ok((Some(opened.fh), options, backing))
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        let _span = debug_span!("create", ino = parent).entered();
        let flags = self.open_flags(args.flags)?;
        let mode = self.create_mode(args.mode, args.umask);
        let opened = block_on(self.fs.create(
            Ino(parent),
            name.to_bytes(),
            mode,
            flags | libc::O_CREAT,
            &creds(ctx),
        ))
        .map_err(|e| err(&e))?;
        // An existing file (no O_EXCL) may be open on its copy already.
        let write = writes(flags);
        let mode = self
            .passthrough
            .opened(&self.fs, &opened.attr, opened.fh, write);
        let (options, backing) = self.open_reply(mode, false, write);
        Ok((self.entry(&opened.attr), Some(opened.fh), options, backing))
    }

    fn read(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _flags: u32,
    ) -> io::Result<usize> {
        let _span = debug_span!("read", ino = inode, offset, size).entered();
        let data = block_on(self.fs.read(Ino(inode), offset, size)).map_err(|e| err(&e))?;
        w.write_all(&data)?;
        Ok(data.len())
    }

    fn write(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _delayed_write: bool,
        _flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<usize> {
        let _span = debug_span!("write", ino = inode, offset, size).entered();
        let mut data = vec![0u8; size as usize];
        r.read_exact(&mut data)?;
        let before = self.kernel_view_for_write(inode);
        let written = block_on(
            self.fs
                .write(Ino(inode), handle, offset, &data, &creds(ctx)),
        )
        .map_err(|e| err(&e));
        self.notify_if_changed(inode, before);
        written
    }

    fn flush(&self, _ctx: &Context, inode: u64, _handle: u64, lock_owner: u64) -> io::Result<()> {
        let _span = debug_span!("flush", ino = inode).entered();
        let before = self.kernel_view(inode);
        let flushed = block_on(self.fs.flush(Ino(inode)));
        self.notify_if_changed(inode, before);
        // With POSIX_LOCKS the kernel keeps no record of the locks: closing a
        // file must drop its owner's locks here.
        let unlocked = block_on(self.fs.unlock_owner(Ino(inode), lock_owner));
        flushed.and(unlocked).map_err(|e| err(&e))
    }

    fn fsync(&self, _ctx: &Context, inode: u64, _datasync: bool, _handle: u64) -> io::Result<()> {
        let _span = debug_span!("fsync", ino = inode).entered();
        let before = self.kernel_view(inode);
        let synced = block_on(self.fs.fsync(Ino(inode))).map_err(|e| err(&e));
        self.notify_if_changed(inode, before);
        synced
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        let _span = debug_span!("fallocate", ino = inode).entered();
        let mode = i32::try_from(mode).map_err(|_| einval())?;
        block_on(
            self.fs
                .fallocate(Ino(inode), handle, mode, offset, length, &creds(ctx)),
        )
        .map_err(|e| err(&e))
    }

    fn release(
        &self,
        _ctx: &Context,
        inode: u64,
        _flags: u32,
        handle: u64,
        _flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        let _span = debug_span!("release", ino = inode).entered();
        let flock_owner = if flock_release { lock_owner } else { None };
        let before = self.kernel_view(inode);
        let released =
            block_on(self.fs.release(Ino(inode), handle, flock_owner)).map_err(|e| err(&e));
        self.passthrough.released(&self.fs, handle);
        self.notify_if_changed(inode, before);
        released
    }

    fn statfs(&self, _ctx: &Context, inode: u64) -> io::Result<statvfs64> {
        let s = self.fs.statfs(Ino(inode)).map_err(|e| err(&e))?;
        // SAFETY: statvfs64 is plain old data; all zeros is a valid value.
        let mut st: statvfs64 = unsafe { std::mem::zeroed() };
        st.f_bsize = u64::from(s.block_size);
        st.f_frsize = u64::from(s.block_size);
        st.f_blocks = s.blocks_total;
        st.f_bfree = s.blocks_free;
        st.f_bavail = s.blocks_free;
        st.f_files = s.files_total;
        st.f_ffree = s.files_free;
        st.f_favail = s.files_free;
        st.f_namemax = u64::from(s.name_max_bytes);
        st.f_fsid = u64::from_le_bytes([
            s.uuid[0], s.uuid[1], s.uuid[2], s.uuid[3], s.uuid[4], s.uuid[5], s.uuid[6], s.uuid[7],
        ]);
        Ok(st)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        let _span = debug_span!("setxattr", ino = inode).entered();
        self.check_xattr_name(name.to_bytes())?;
        let flags = i32::try_from(flags).map_err(|_| einval())?;
        let flags = XattrFlags {
            create: flags & libc::XATTR_CREATE != 0,
            replace: flags & libc::XATTR_REPLACE != 0,
        };
        block_on(
            self.fs
                .setxattr(Ino(inode), name.to_bytes(), value, flags, &creds(ctx)),
        )
        .map_err(|e| err(&e))
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        self.check_xattr_name(name.to_bytes())?;
        let value = self
            .fs
            .getxattr(Ino(inode), name.to_bytes(), &creds(ctx))
            .map_err(|e| err(&e))?;
        Ok(match xattr_fit(value.len(), size)? {
            Some(len) => GetxattrReply::Count(len),
            None => GetxattrReply::Value(value),
        })
    }

    fn listxattr(&self, ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        let names = self
            .fs
            .listxattr(Ino(inode), &creds(ctx))
            .map_err(|e| err(&e))?;
        let mut out = Vec::new();
        let acl = self.acl();
        for name in names {
            if !acl && name.starts_with(ACL_XATTR_PREFIX) {
                continue;
            }
            out.extend_from_slice(&name);
            out.push(0);
        }
        Ok(match xattr_fit(out.len(), size)? {
            Some(len) => ListxattrReply::Count(len),
            None => ListxattrReply::Names(out),
        })
    }

    fn removexattr(&self, ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        let _span = debug_span!("removexattr", ino = inode).entered();
        self.check_xattr_name(name.to_bytes())?;
        block_on(
            self.fs
                .removexattr(Ino(inode), name.to_bytes(), &creds(ctx)),
        )
        .map_err(|e| err(&e))
    }

    fn opendir(
        &self,
        _ctx: &Context,
        inode: u64,
        _flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        let attr = self.fs.getattr(Ino(inode)).map_err(|e| err(&e))?;
        if attr.kind != datenlord_fs::FileKind::Dir {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        Ok((None, OpenOptions::empty()))
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: u64,
        _handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let _span = debug_span!("readdir", ino = inode, offset).entered();
        self.list(ctx, inode, offset, false, &mut |dirent, _| {
            add_entry(dirent)
        })
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: u64,
        _handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let _span = debug_span!("readdirplus", ino = inode, offset).entered();
        self.list(ctx, inode, offset, true, &mut |dirent, attr| {
            let e = attr.map_or_else(
                || Entry {
                    inode: 0,
                    generation: 0,
                    // SAFETY: stat64 is plain old data.
                    attr: unsafe { std::mem::zeroed() },
                    attr_flags: 0,
                    attr_timeout: Duration::ZERO,
                    entry_timeout: Duration::ZERO,
                },
                |a| self.entry(&a),
            );
            add_entry(dirent, e)
        })
    }

    fn fsyncdir(
        &self,
        _ctx: &Context,
        inode: u64,
        _datasync: bool,
        _handle: u64,
    ) -> io::Result<()> {
        let _span = debug_span!("fsyncdir", ino = inode).entered();
        block_on(self.fs.fsyncdir()).map_err(|e| err(&e))
    }

    fn releasedir(&self, _ctx: &Context, _inode: u64, _flags: u32, _handle: u64) -> io::Result<()> {
        Ok(())
    }

    fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        self.fs
            .access(Ino(inode), mask, &creds(ctx))
            .map_err(|e| err(&e))
    }

    fn lseek(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        let _span = debug_span!("lseek", ino = inode, offset).entered();
        let whence = i32::try_from(whence).map_err(|_| einval())?;
        block_on(self.fs.lseek(Ino(inode), offset, whence)).map_err(|e| err(&e))
    }

    fn getlk(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: u64,
        owner: u64,
        lock: FileLock,
        _flags: u32,
    ) -> io::Result<FileLock> {
        let Some(kind) = lock_kind(lock.lock_type)? else {
            return Err(einval());
        };
        let range = LockRange::new(lock.start, lock.end);
        let conflict = self
            .fs
            .getlk(Ino(inode), owner, range, kind)
            .map_err(|e| err(&e))?;
        Ok(match conflict {
            Some(c) => FileLock {
                start: c.range.start,
                end: c.range.end,
                lock_type: match c.kind {
                    LockKind::Read => libc::F_RDLCK as u32,
                    LockKind::Write => libc::F_WRLCK as u32,
                },
                pid: 0,
            },
            None => FileLock {
                lock_type: libc::F_UNLCK as u32,
                ..lock
            },
        })
    }

    fn setlk(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: u64,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        let _span = debug_span!("setlk", ino = inode).entered();
        let request = LockWait {
            unique: 0,
            ino: inode,
            owner,
            start: lock.start,
            end: lock.end,
            lock_type: lock.lock_type,
            lk_flags: flags,
        };
        block_on(lock_request(&self.fs, &request)).map_err(|e| err(&e))
    }
}

/// Takes or releases a record lock or (`FUSE_LK_FLOCK`) an flock, without
/// blocking: a conflict is `EAGAIN`.
pub(crate) async fn lock_request(fs: &Fs, request: &LockWait) -> Result<(), FsError> {
    let kind = match i32::try_from(request.lock_type) {
        Ok(libc::F_RDLCK) => Some(LockKind::Read),
        Ok(libc::F_WRLCK) => Some(LockKind::Write),
        Ok(libc::F_UNLCK) => None,
        _ => {
            return Err(FsError::Invalid(
                "lock type other than F_RDLCK, F_WRLCK, F_UNLCK",
            ))
        }
    };
    let ino = Ino(request.ino);
    if request.lk_flags & FUSE_LK_FLOCK != 0 {
        let kind = kind.map(|k| match k {
            LockKind::Read => FlockKind::Shared,
            LockKind::Write => FlockKind::Exclusive,
        });
        return fs.flock(ino, request.owner, kind).await;
    }
    if request.start > request.end {
        return Err(FsError::Invalid("lock range ends before it starts"));
    }
    fs.setlk(
        ino,
        request.owner,
        LockRange::new(request.start, request.end),
        kind,
    )
    .await
}

impl FuseFs {
    /// The `open(2)` flags to hand to `Fs`. With the writeback cache the
    /// kernel handles `O_APPEND` itself and writes back whole pages at their
    /// own offsets, so the file system must not redirect writes to the end.
    fn open_flags(&self, flags: u32) -> io::Result<i32> {
        let flags = i32::try_from(flags).map_err(|_| einval())?;
        Ok(if self.options.writeback_cache {
            flags & !libc::O_APPEND
        } else {
            flags
        })
    }

    /// Lists directory `inode` from `offset` (a cookie: 0 is the start, 1
    /// and 2 are `.` and `..`), until `add` reports a full buffer (0).
    fn list(
        &self,
        ctx: &Context,
        inode: u64,
        offset: u64,
        plus: bool,
        add: &mut dyn FnMut(DirEntry, Option<Attr>) -> io::Result<usize>,
    ) -> io::Result<()> {
        let ino = Ino(inode);
        let attr = |ino: Ino| {
            if plus {
                self.fs.getattr(ino).ok()
            } else {
                None
            }
        };
        let creds = creds(ctx);
        // Read permission is checked by the first metadata query, before
        // `.` is emitted.
        let mut batch = self
            .fs
            .readdir(
                ino,
                offset.max(DOTDOT_COOKIE),
                READDIR_BATCH_ENTRIES,
                &creds,
            )
            .map_err(|e| err(&e))?;
        if offset < DOT_COOKIE {
            let dirent = DirEntry {
                ino: inode,
                offset: DOT_COOKIE,
                type_: u32::from(libc::DT_DIR),
                name: b".",
            };
            if add(dirent, attr(ino))? == 0 {
                return Ok(());
            }
        }
        if offset < DOTDOT_COOKIE {
            let parent = self.fs.parent(ino).map_err(|e| err(&e))?;
            let dirent = DirEntry {
                ino: parent.0,
                offset: DOTDOT_COOKIE,
                type_: u32::from(libc::DT_DIR),
                name: b"..",
            };
            if add(dirent, attr(parent))? == 0 {
                return Ok(());
            }
        }
        loop {
            let Some(last) = batch.last().map(|e| e.cookie) else {
                return Ok(());
            };
            for e in &batch {
                let dirent = DirEntry {
                    ino: e.ino.0,
                    offset: e.cookie,
                    type_: u32::from(e.kind.dirent_type()),
                    name: &e.name,
                };
                if add(dirent, attr(e.ino))? == 0 {
                    return Ok(());
                }
            }
            batch = self
                .fs
                .readdir(ino, last, READDIR_BATCH_ENTRIES, &creds)
                .map_err(|e| err(&e))?;
        }
    }
}

/// Whether an open with `open(2)` flags `flags` may change the file.
fn writes(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

/// Tells the kernel of a mount that names and files changed behind it:
/// another front end of the same file system in this process (the S3
/// gateway) changed them, and the kernel would keep its entries and
/// attributes for as long as the mount's timeouts (a day on an embedded
/// mount).
#[derive(Debug)]
pub struct Notifier(std::fs::File);

impl Notifier {
    pub(crate) fn new(device: std::fs::File) -> Self {
        Self(device)
    }

    /// Drops the kernel's entry of `name` in directory `parent` (a
    /// negative one too).
    pub fn forget_entry(&self, parent: u64, name: &[u8]) {
        // fuse_out_header {len, error, unique 0}, then
        // fuse_notify_inval_entry_out {parent, namelen, flags 0}, the name
        // and a NUL.
        let Ok(namelen) = u32::try_from(name.len()) else {
            return;
        };
        let len = 32 + name.len() + 1;
        let Ok(len32) = u32::try_from(len) else {
            return;
        };
        let mut message = vec![0u8; len];
        message[0..4].copy_from_slice(&len32.to_le_bytes());
        message[4..8].copy_from_slice(&NOTIFY_INVAL_ENTRY.to_le_bytes());
        message[16..24].copy_from_slice(&parent.to_le_bytes());
        message[24..28].copy_from_slice(&namelen.to_le_bytes());
        message[32..32 + name.len()].copy_from_slice(name);
        if let Err(e) = std::io::Write::write_all(&mut &self.0, &message) {
            // ENOENT: the kernel has no such entry; nothing to drop.
            debug!(parent, error = %e, "FUSE_NOTIFY_INVAL_ENTRY");
        }
    }

    /// Drops the kernel's attributes and cached pages of `ino`.
    pub fn forget_inode(&self, ino: u64) {
        invalidate_inode(&self.0, ino, 0);
    }
}

/// Tells the kernel to drop its attributes of `ino` (not its page cache).
fn invalidate_attributes(device: &std::fs::File, ino: u64) {
    invalidate_inode(device, ino, -1);
}

/// `FUSE_NOTIFY_INVAL_INODE` of `ino`: its attributes, and its cached
/// pages from `offset` on unless `offset` is negative.
fn invalidate_inode(device: &std::fs::File, ino: u64, offset: i64) {
    // fuse_out_header {len, error, unique 0}, then
    // fuse_notify_inval_inode_out {ino, off, len 0 (to the end)}.
    let mut message = [0u8; 40];
    message[0..4].copy_from_slice(&40u32.to_le_bytes());
    message[4..8].copy_from_slice(&NOTIFY_INVAL_INODE.to_le_bytes());
    message[16..24].copy_from_slice(&ino.to_le_bytes());
    message[24..32].copy_from_slice(&offset.to_le_bytes());
    if let Err(e) = std::io::Write::write_all(&mut &*device, &message) {
        // ENOENT: the kernel no longer has the inode; nothing to drop.
        debug!(ino, error = %e, "FUSE_NOTIFY_INVAL_INODE");
    }
}
