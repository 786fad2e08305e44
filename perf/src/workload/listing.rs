//! Full listings of one large directory.

use std::path::PathBuf;

use super::{DirId, FileEntry, Layout, Op};
use crate::spec::WorkloadSpec;

pub(super) fn layout(spec: &WorkloadSpec) -> Layout {
    Layout {
        dirs: vec![PathBuf::from("listdir")],
        files: (0..spec.dir_entries)
            .map(|entry| FileEntry {
                rel_path: PathBuf::from(format!("listdir/entry-{entry:08}")),
                size_bytes: 0,
            })
            .collect(),
        listed_dirs: vec![PathBuf::from("listdir")],
    }
}

#[derive(Debug, Clone)]
pub struct ListingStream;

impl ListingStream {
    #[allow(clippy::unused_self)]
    pub fn next_op(&mut self) -> Op {
        Op::List { dir: DirId(0) }
    }
}
