//! One workload on several targets in one run, interleaved round by round
//! (rotating which target goes first) so that machine noise — other load,
//! thermal state, background writeback — falls on every target alike.
//! Targets may share a directory (the same files measured two ways, e.g.
//! at two queue depths): it is prepared and cleaned up once.

use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::runner::{self, Measurement, Observer, Prepared};
use crate::spec::{RunLimits, WorkloadSpec};

/// Upper bound on targets in one comparison.
pub const MAX_TARGETS: usize = 16;
pub const MAX_ROUNDS: u32 = 1000;

/// A directory to measure, named for the report (`NAME=DIR`, or just `DIR`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub name: String,
    pub dir: PathBuf,
    /// Process whose CPU time is charged to this target.
    pub pid: Option<u32>,
    /// Queue depth of this target instead of the workload's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iodepth: Option<u32>,
}

impl Target {
    /// The workload as this target runs it.
    pub fn spec(&self, spec: &WorkloadSpec) -> WorkloadSpec {
        let mut own = spec.clone();
        if let Some(iodepth) = self.iodepth {
            own.iodepth = iodepth;
        }
        own
    }
}

impl FromStr for Target {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let (name, dir) = if let Some((name, dir)) = text.split_once('=') {
            (name.to_owned(), PathBuf::from(dir))
        } else {
            let dir = PathBuf::from(text);
            let name = dir
                .file_name()
                .map_or_else(|| text.to_owned(), |n| n.to_string_lossy().into_owned());
            (name, dir)
        };
        if name.is_empty() || dir.as_os_str().is_empty() {
            return Err(Error::invalid("target", text, "expected NAME=DIR or DIR"));
        }
        Ok(Self {
            name,
            dir,
            pid: None,
            iodepth: None,
        })
    }
}

/// The order of targets in `round`: rotated by one each round.
pub fn round_order(targets: usize, round: u32) -> impl Iterator<Item = usize> {
    let shift = if targets == 0 {
        0
    } else {
        round as usize % targets
    };
    (0..targets).map(move |i| (i + shift) % targets)
}

/// The first target before `i` on the same directory as target `i`.
fn first_with_dir(targets: &[Target], i: usize) -> Option<usize> {
    targets[..i].iter().position(|t| t.dir == targets[i].dir)
}

/// Runs `spec` on every target for `rounds` rounds, each round getting
/// `limits` / `rounds`. Returns one merged measurement per target, in order.
pub fn compare(
    targets: &[Target],
    spec: &WorkloadSpec,
    limits: RunLimits,
    rounds: u32,
    keep_files: bool,
    observer: &dyn Observer,
) -> Result<Vec<Measurement>> {
    if targets.is_empty() || targets.len() > MAX_TARGETS {
        return Err(Error::Compare(format!(
            "need 1..={MAX_TARGETS} targets, got {}",
            targets.len()
        )));
    }
    if rounds == 0 || rounds > MAX_ROUNDS {
        return Err(Error::Compare(format!(
            "rounds must be 1..={MAX_ROUNDS}, got {rounds}"
        )));
    }
    for (i, target) in targets.iter().enumerate() {
        if targets[..i].iter().any(|t| t.name == target.name) {
            return Err(Error::Compare(format!(
                "target name {:?} is used twice",
                target.name
            )));
        }
    }
    let specs: Vec<WorkloadSpec> = targets.iter().map(|t| t.spec(spec)).collect();
    for (target, spec) in targets.iter().zip(&specs) {
        spec.validate()
            .map_err(|e| Error::Compare(format!("target {:?}: {e}", target.name)))?;
    }
    // A queue depth does not change the files: targets on one directory
    // share them.
    let mut prepared: Vec<Prepared> = Vec::with_capacity(targets.len());
    for (i, target) in targets.iter().enumerate() {
        let p = match first_with_dir(targets, i) {
            Some(first) => prepared[first].clone(),
            None => runner::prepare(&target.dir, &specs[i], observer)?,
        };
        prepared.push(p);
    }
    let per_round = limits.split(rounds);
    let mut totals: Vec<Measurement> = targets
        .iter()
        .map(|_| Measurement::empty())
        .collect::<Result<_>>()?;
    for round in 0..rounds {
        for index in round_order(targets.len(), round) {
            observer.phase(&format!(
                "round {}/{rounds}: {}",
                round + 1,
                targets[index].name
            ));
            let m = runner::measure(
                &prepared[index],
                &specs[index],
                per_round,
                targets[index].pid,
                observer,
            )?;
            totals[index].merge(&m)?;
        }
    }
    if !keep_files {
        for (i, p) in prepared.iter().enumerate() {
            if first_with_dir(targets, i).is_none() {
                runner::cleanup(p)?;
            }
        }
    }
    Ok(totals)
}

#[cfg(test)]
mod tests {
    use super::{round_order, Target};

    #[test]
    fn rounds_rotate_so_each_target_goes_first() {
        let firsts: Vec<usize> = (0..3)
            .map(|r| round_order(3, r).next().unwrap_or(99))
            .collect();
        assert_eq!(firsts, [0, 1, 2]);
        assert_eq!(round_order(3, 1).collect::<Vec<_>>(), [1, 2, 0]);
    }

    #[test]
    fn parses_targets() {
        let t: Target = "local=/tmp/a".parse().expect("valid");
        assert_eq!((t.name.as_str(), t.dir.to_str()), ("local", Some("/tmp/a")));
        let t: Target = "/mnt/fuse".parse().expect("valid");
        assert_eq!(t.name, "fuse");
        assert!("=x".parse::<Target>().is_err());
    }
}
