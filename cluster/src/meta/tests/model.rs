//! A reference model of a POSIX namespace, written apart from the state
//! machine and as plainly as possible: every name is a full path in one
//! map, link counts are counted, moving a directory rewrites every path
//! under it. Slow (O(n) per operation) and obviously right is the point.
//!
//! It covers what the model-based property test drives: regular files,
//! directories and symlinks; create, mkdir, symlink, link, unlink, rmdir,
//! rename (with flags), truncate, chmod, block writes, punched holes, open
//! and release;
//! with rwx, sticky and setgid rules. Errors are errnos.

use std::collections::BTreeMap;

use crate::meta::{Creds, FileKind};

use libc::{EACCES, EEXIST, EINVAL, EISDIR, ELOOP, ENOENT, ENOTDIR, ENOTEMPTY, EPERM};

/// A path: its components; the root is empty.
pub(super) type Path = Vec<String>;

pub(super) const ROOT_ID: u64 = 1;
const SUID: u32 = 0o4000;
const SGID: u32 = 0o2000;
const STICKY: u32 = 0o1000;
const R: u32 = 4;
const W: u32 = 2;
const X: u32 = 1;

#[derive(Clone, Debug)]
pub(super) struct Node {
    pub kind: FileKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub blocks: BTreeMap<u64, u64>,
    pub opens: u64,
}

/// What a successful operation reports: the inode it made or touched, and
/// what it freed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Done {
    pub ino: Option<u64>,
    /// (ino, index, version), sorted.
    pub garbage: Vec<(u64, u64, u64)>,
    /// Sorted.
    pub freed: Vec<u64>,
}

pub(super) type Res = Result<Done, i32>;

/// One row of a tree listing.
pub(super) type Row = (String, FileKind, u32, u32, u32, u64, u32, u64);

#[derive(Clone, Debug)]
pub(super) struct Model {
    pub nodes: BTreeMap<u64, Node>,
    pub paths: BTreeMap<Path, u64>,
    next_id: u64,
    block_bytes: u64,
}

fn is_root(c: &Creds) -> bool {
    c.uid == 0
}

fn member(c: &Creds, gid: u32) -> bool {
    c.gid == gid || c.groups.contains(&gid)
}

fn may(node: &Node, c: &Creds, want: u32) -> bool {
    if is_root(c) {
        return want & X == 0 || node.kind == FileKind::Dir || node.mode & 0o111 != 0;
    }
    let bits = if c.uid == node.uid {
        node.mode >> 6
    } else if member(c, node.gid) {
        node.mode >> 3
    } else {
        node.mode
    };
    bits & want == want
}

fn check(ok: bool, errno: i32) -> Result<(), i32> {
    if ok {
        Ok(())
    } else {
        Err(errno)
    }
}

fn child(dir: &[String], name: &str) -> Path {
    let mut p = dir.to_vec();
    p.push(name.to_string());
    p
}

/// `path` is `prefix` or below it.
fn under(path: &[String], prefix: &[String]) -> bool {
    path.len() >= prefix.len() && path[..prefix.len()] == *prefix
}

/// Mode after a non-root write or truncate.
fn after_write(mode: u32, c: &Creds) -> u32 {
    if is_root(c) {
        return mode;
    }
    let mut mode = mode & !SUID;
    if mode & 0o010 != 0 {
        mode &= !SGID;
    }
    mode
}

impl Model {
    pub fn new(root_mode: u32, block_bytes: u64) -> Self {
        let root = Node {
            kind: FileKind::Dir,
            mode: root_mode,
            uid: 0,
            gid: 0,
            size: 0,
            blocks: BTreeMap::new(),
            opens: 0,
        };
        Self {
            nodes: BTreeMap::from([(ROOT_ID, root)]),
            paths: BTreeMap::from([(Vec::new(), ROOT_ID)]),
            next_id: ROOT_ID + 1,
            block_bytes,
        }
    }

    pub fn id(&self, path: &[String]) -> Option<u64> {
        self.paths.get(path).copied()
    }

    fn node(&self, id: u64) -> &Node {
        &self.nodes[&id]
    }

    fn children(&self, dir: &[String]) -> Vec<(Path, u64)> {
        self.paths
            .iter()
            .filter(|(p, _)| p.len() == dir.len() + 1 && under(p, dir))
            .map(|(p, &id)| (p.clone(), id))
            .collect()
    }

    pub fn nlink(&self, id: u64) -> u32 {
        let names: Vec<&Path> = self
            .paths
            .iter()
            .filter(|(_, &i)| i == id)
            .map(|(p, _)| p)
            .collect();
        if self.node(id).kind != FileKind::Dir {
            return names.len() as u32;
        }
        match names.first() {
            None => 0,
            Some(path) => {
                let subdirs = self
                    .children(path)
                    .iter()
                    .filter(|(_, c)| self.node(*c).kind == FileKind::Dir)
                    .count();
                2 + subdirs as u32
            }
        }
    }

    /// Frees `id` when no name and no handle is left.
    fn collect(&mut self, id: u64, done: &mut Done) {
        if self.nlink(id) > 0 || self.node(id).opens > 0 {
            return;
        }
        let node = self.nodes.remove(&id).expect("node");
        done.garbage
            .extend(node.blocks.iter().map(|(&i, &v)| (id, i, v)));
        done.garbage.sort_unstable();
        done.freed.push(id);
        done.freed.sort_unstable();
    }

    /// The parent directory of a new or existing entry: exists, is a
    /// directory, is searchable.
    fn parent(&self, dir: &[String], c: &Creds) -> Result<u64, i32> {
        let id = self.id(dir).ok_or(ENOENT)?;
        check(self.node(id).kind == FileKind::Dir, ENOTDIR)?;
        check(may(self.node(id), c, X), EACCES)?;
        Ok(id)
    }

    /// The sticky rule for removing `victim` from `dir`.
    fn sticky_ok(&self, dir: u64, victim: u64, c: &Creds) -> bool {
        let d = self.node(dir);
        d.mode & STICKY == 0 || is_root(c) || c.uid == d.uid || c.uid == self.node(victim).uid
    }

    /// A new inode in `dir`, with the setgid directory rules.
    fn add(&mut self, path: Path, dir: u64, kind: FileKind, mode: u32, c: &Creds) -> u64 {
        let d = self.node(dir).clone();
        let (gid, mut mode) = if d.mode & SGID != 0 {
            (d.gid, mode)
        } else {
            (c.gid, mode)
        };
        if d.mode & SGID != 0 {
            if kind == FileKind::Dir {
                mode |= SGID;
            } else if mode & (SGID | 0o010) == SGID | 0o010 && !is_root(c) && !member(c, d.gid) {
                mode &= !SGID;
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let size = u64::from(kind == FileKind::Symlink);
        self.nodes.insert(
            id,
            Node {
                kind,
                mode,
                uid: c.uid,
                gid,
                size,
                blocks: BTreeMap::new(),
                opens: 0,
            },
        );
        self.paths.insert(path, id);
        id
    }

    /// Checks of a new name; `Ok(None)` if free, `Ok(Some(id))` if taken.
    fn new_name(&self, dir: &[String], name: &str, c: &Creds) -> Result<(u64, Option<u64>), i32> {
        let d = self.parent(dir, c)?;
        Ok((d, self.id(&child(dir, name))))
    }

    pub fn mkdir(&mut self, dir: &[String], name: &str, mode: u32, c: &Creds) -> Res {
        let (d, taken) = self.new_name(dir, name, c)?;
        check(taken.is_none(), EEXIST)?;
        check(may(self.node(d), c, W | X), EACCES)?;
        let id = self.add(child(dir, name), d, FileKind::Dir, mode & 0o1777, c);
        Ok(Done {
            ino: Some(id),
            ..Done::default()
        })
    }

    pub fn symlink(&mut self, dir: &[String], name: &str, c: &Creds) -> Res {
        let (d, taken) = self.new_name(dir, name, c)?;
        check(taken.is_none(), EEXIST)?;
        check(may(self.node(d), c, W | X), EACCES)?;
        let id = self.add(child(dir, name), d, FileKind::Symlink, 0o777, c);
        Ok(Done {
            ino: Some(id),
            ..Done::default()
        })
    }

    pub fn create(
        &mut self,
        dir: &[String],
        name: &str,
        mode: u32,
        exclusive: bool,
        write: bool,
        c: &Creds,
    ) -> Res {
        let (d, taken) = self.new_name(dir, name, c)?;
        let id = if let Some(id) = taken {
            check(!exclusive, EEXIST)?;
            check(self.node(id).kind != FileKind::Dir, EISDIR)?;
            self.check_open(id, write, c)?;
            id
        } else {
            check(may(self.node(d), c, W | X), EACCES)?;
            self.add(child(dir, name), d, FileKind::File, mode & 0o7777, c)
        };
        self.nodes.get_mut(&id).expect("node").opens += 1;
        Ok(Done {
            ino: Some(id),
            ..Done::default()
        })
    }

    fn check_open(&self, id: u64, write: bool, c: &Creds) -> Result<(), i32> {
        let n = self.node(id);
        match n.kind {
            FileKind::Dir => check(!write, EISDIR)?,
            FileKind::Symlink => return Err(ELOOP),
            _ => {}
        }
        check(may(n, c, if write { R | W } else { R }), EACCES)
    }

    pub fn open(&mut self, path: &[String], write: bool, c: &Creds) -> Res {
        let id = self.id(path).expect("resolved by the caller");
        self.check_open(id, write, c)?;
        self.nodes.get_mut(&id).expect("node").opens += 1;
        Ok(Done {
            ino: Some(id),
            ..Done::default()
        })
    }

    pub fn release(&mut self, id: u64) -> Done {
        let n = self.nodes.get_mut(&id).expect("open node");
        assert!(n.opens > 0);
        n.opens -= 1;
        let mut done = Done::default();
        self.collect(id, &mut done);
        done
    }

    pub fn link(&mut self, src: &[String], dir: &[String], name: &str, c: &Creds) -> Res {
        let id = self.id(src).expect("resolved by the caller");
        let (d, taken) = self.new_name(dir, name, c)?;
        check(taken.is_none(), EEXIST)?;
        check(may(self.node(d), c, W | X), EACCES)?;
        check(self.node(id).kind != FileKind::Dir, EPERM)?;
        self.paths.insert(child(dir, name), id);
        Ok(Done {
            ino: Some(id),
            ..Done::default()
        })
    }

    /// unlink (`rmdir == false`) and rmdir.
    pub fn remove(&mut self, dir: &[String], name: &str, rmdir: bool, c: &Creds) -> Res {
        let d = self.parent(dir, c)?;
        let path = child(dir, name);
        let id = self.id(&path).ok_or(ENOENT)?;
        check(may(self.node(d), c, W | X), EACCES)?;
        check(self.sticky_ok(d, id, c), EPERM)?;
        let is_dir = self.node(id).kind == FileKind::Dir;
        if rmdir {
            check(is_dir, ENOTDIR)?;
            check(self.children(&path).is_empty(), ENOTEMPTY)?;
        } else {
            check(!is_dir, EISDIR)?;
        }
        self.paths.remove(&path);
        let mut done = Done::default();
        self.collect(id, &mut done);
        Ok(done)
    }

    #[allow(clippy::too_many_lines, clippy::fn_params_excessive_bools)]
    pub fn rename(
        &mut self,
        from: (&[String], &str),
        to: (&[String], &str),
        noreplace: bool,
        exchange: bool,
        c: &Creds,
    ) -> Res {
        check(!(noreplace && exchange), EINVAL)?;
        let od = self.id(from.0).ok_or(ENOENT)?;
        check(self.node(od).kind == FileKind::Dir, ENOTDIR)?;
        let nd = self.id(to.0).ok_or(ENOENT)?;
        check(self.node(nd).kind == FileKind::Dir, ENOTDIR)?;
        check(may(self.node(od), c, X), EACCES)?;
        check(may(self.node(nd), c, X), EACCES)?;
        let sp = child(from.0, from.1);
        let dp = child(to.0, to.1);
        let src = self.id(&sp).ok_or(ENOENT)?;
        let dst = self.id(&dp);
        check(!(noreplace && dst.is_some()), EEXIST)?;
        check(!(exchange && dst.is_none()), ENOENT)?;
        let src_dir = self.node(src).kind == FileKind::Dir;
        let dst_dir = dst.is_some_and(|dst| self.node(dst).kind == FileKind::Dir);
        check(!(src_dir && under(to.0, &sp)), EINVAL)?;
        if dst_dir && under(from.0, &dp) {
            return Err(if exchange { EINVAL } else { ENOTEMPTY });
        }
        if dst == Some(src) {
            return Ok(Done::default());
        }
        check(may(self.node(od), c, W | X), EACCES)?;
        check(self.sticky_ok(od, src, c), EPERM)?;
        match dst {
            None => check(may(self.node(nd), c, W | X), EACCES)?,
            Some(dst) => {
                check(may(self.node(nd), c, W | X), EACCES)?;
                check(self.sticky_ok(nd, dst, c), EPERM)?;
                if !exchange {
                    check(!src_dir || dst_dir, ENOTDIR)?;
                    check(src_dir || !dst_dir, EISDIR)?;
                }
            }
        }
        if from.0 != to.0 {
            check(!src_dir || may(self.node(src), c, W), EACCES)?;
            if let (true, Some(dst)) = (exchange && dst_dir, dst) {
                check(may(self.node(dst), c, W), EACCES)?;
            }
        }
        if !exchange && dst_dir {
            check(self.children(&dp).is_empty(), ENOTEMPTY)?;
        }

        // Move whole subtrees by rewriting their paths.
        let take = |paths: &mut BTreeMap<Path, u64>, prefix: &Path| -> Vec<(Path, u64)> {
            let moved: Vec<(Path, u64)> = paths
                .iter()
                .filter(|(p, _)| under(p, prefix))
                .map(|(p, &id)| (p[prefix.len()..].to_vec(), id))
                .collect();
            paths.retain(|p, _| !under(p, prefix));
            moved
        };
        let put = |paths: &mut BTreeMap<Path, u64>, prefix: &Path, moved: Vec<(Path, u64)>| {
            for (rest, id) in moved {
                let mut p = prefix.clone();
                p.extend(rest);
                paths.insert(p, id);
            }
        };
        let mut done = Done::default();
        if exchange {
            let a = take(&mut self.paths, &sp);
            let b = take(&mut self.paths, &dp);
            put(&mut self.paths, &dp, a);
            put(&mut self.paths, &sp, b);
        } else {
            if dst.is_some() {
                self.paths.remove(&dp);
            }
            let a = take(&mut self.paths, &sp);
            put(&mut self.paths, &dp, a);
            if let Some(dst) = dst {
                self.collect(dst, &mut done);
            }
        }
        Ok(done)
    }

    fn file_only(&self, id: u64) -> Result<(), i32> {
        match self.node(id).kind {
            FileKind::File => Ok(()),
            FileKind::Dir => Err(EISDIR),
            _ => Err(EINVAL),
        }
    }

    pub fn truncate(&mut self, path: &[String], size: u64, via_handle: bool, c: &Creds) -> Res {
        let id = self.id(path).expect("resolved by the caller");
        self.file_only(id)?;
        check(via_handle || may(self.node(id), c, W), EACCES)?;
        let keep = size.div_ceil(self.block_bytes);
        let n = self.nodes.get_mut(&id).expect("node");
        let mut done = Done {
            ino: Some(id),
            ..Done::default()
        };
        done.garbage = n
            .blocks
            .iter()
            .filter(|(&i, _)| i >= keep)
            .map(|(&i, &v)| (id, i, v))
            .collect();
        n.blocks.retain(|&i, _| i < keep);
        n.size = size;
        n.mode = after_write(n.mode, c);
        Ok(done)
    }

    pub fn chmod(&mut self, path: &[String], mode: u32, c: &Creds) -> Res {
        let id = self.id(path).expect("resolved by the caller");
        let n = self.nodes.get_mut(&id).expect("node");
        check(is_root(c) || c.uid == n.uid, EPERM)?;
        let mut mode = mode & 0o7777;
        if !is_root(c) && !member(c, n.gid) {
            mode &= !SGID;
        }
        n.mode = mode;
        Ok(Done {
            ino: Some(id),
            ..Done::default()
        })
    }

    pub fn write_block(
        &mut self,
        path: &[String],
        index: u64,
        version: u64,
        new_size: Option<u64>,
        c: &Creds,
    ) -> Res {
        let id = self.id(path).expect("resolved by the caller");
        self.file_only(id)?;
        let bs = self.block_bytes;
        let n = self.nodes.get_mut(&id).expect("node");
        let size = n.size.max(new_size.unwrap_or(0));
        check(index < size.div_ceil(bs), EINVAL)?;
        let mut done = Done {
            ino: Some(id),
            ..Done::default()
        };
        if let Some(old) = n.blocks.insert(index, version) {
            if old != version {
                done.garbage.push((id, index, old));
            }
        }
        n.size = size;
        n.mode = after_write(n.mode, c);
        Ok(done)
    }

    /// Punch hole: blocks `first..=last` become holes; the size stays.
    pub fn punch(&mut self, path: &[String], first: u64, last: u64, c: &Creds) -> Res {
        let id = self.id(path).expect("resolved by the caller");
        self.file_only(id)?;
        check(first <= last, EINVAL)?;
        let n = self.nodes.get_mut(&id).expect("node");
        let mut done = Done {
            ino: Some(id),
            ..Done::default()
        };
        done.garbage = n
            .blocks
            .iter()
            .filter(|(&i, _)| (first..=last).contains(&i))
            .map(|(&i, &v)| (id, i, v))
            .collect();
        n.blocks.retain(|i, _| !(first..=last).contains(i));
        n.mode = after_write(n.mode, c);
        Ok(done)
    }

    /// Every name, sorted by path.
    pub fn listing(&self) -> Vec<Row> {
        self.paths
            .iter()
            .map(|(p, &id)| {
                let n = self.node(id);
                (
                    p.join("/"),
                    n.kind,
                    n.mode,
                    n.uid,
                    n.gid,
                    n.size,
                    self.nlink(id),
                    id,
                )
            })
            .collect()
    }

    pub fn blocks_used(&self) -> u64 {
        self.nodes.values().map(|n| n.blocks.len() as u64).sum()
    }
}
