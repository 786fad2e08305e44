//! Small-file cycles: create, write, fsync, stat, read back, unlink.

use std::path::PathBuf;

use super::{Layout, Op, SmallFile};
use crate::spec::WorkloadSpec;

pub(super) fn layout(spec: &WorkloadSpec) -> Layout {
    let mut dirs = vec![PathBuf::from("small")];
    dirs.extend((0..spec.threads).map(|thread| PathBuf::from(format!("small/t{thread}"))));
    Layout {
        dirs,
        files: Vec::new(),
        listed_dirs: Vec::new(),
    }
}

/// Steps of one cycle, in order.
const CYCLE_STEPS: u8 = 6;

#[derive(Debug, Clone)]
pub struct SmallFileStream {
    thread: u32,
    len_bytes: u64,
    seq: u64,
    step: u8,
}

impl SmallFileStream {
    pub(super) fn new(spec: &WorkloadSpec, thread: u32) -> Self {
        Self {
            thread,
            len_bytes: spec.small_file_bytes,
            seq: 0,
            step: 0,
        }
    }

    pub fn next_op(&mut self) -> Op {
        let file = SmallFile {
            thread: self.thread,
            seq: self.seq,
        };
        let op = match self.step {
            0 => Op::Create { file },
            1 => Op::WriteSmall {
                file,
                len_bytes: self.len_bytes,
            },
            2 => Op::Fsync { file },
            3 => Op::Stat { file },
            4 => Op::ReadSmall {
                file,
                len_bytes: self.len_bytes,
            },
            _ => Op::Unlink { file },
        };
        self.step += 1;
        if self.step == CYCLE_STEPS {
            self.step = 0;
            self.seq += 1;
        }
        op
    }
}

#[cfg(test)]
mod tests {
    use crate::spec::OpKind::{Create, Fsync, Read, Stat, Unlink, Write};
    use crate::spec::{OpKind, WorkloadKind, WorkloadSpec};
    use crate::workload::OpStream;

    #[test]
    fn cycle_order() {
        let spec = WorkloadSpec::new(WorkloadKind::SmallFiles);
        let mut stream = OpStream::new(&spec, 0);
        let kinds: Vec<OpKind> = (0..7).map(|_| stream.next_op().kind()).collect();
        assert_eq!(kinds, [Create, Write, Fsync, Stat, Read, Unlink, Create]);
    }
}
