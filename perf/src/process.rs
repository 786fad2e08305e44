//! CPU time of the process under test (the FUSE daemon, the cache node),
//! read from /proc/PID/stat before and after the measured phase.

use std::fs;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// utime + stime of `pid` in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).map_err(|e| Error::ProcStat {
        pid,
        reason: e.to_string(),
    })?;
    let ticks = parse_cpu_ticks(&text).ok_or_else(|| Error::ProcStat {
        pid,
        reason: "unexpected format".to_owned(),
    })?;
    // SAFETY: sysconf has no preconditions.
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks_per_s <= 0 {
        return Err(Error::ProcStat {
            pid,
            reason: "sysconf(_SC_CLK_TCK) failed".to_owned(),
        });
    }
    Ok(ticks as f64 / ticks_per_s as f64)
}

/// utime + stime (fields 14 and 15) in clock ticks. The command name (field
/// 2) may hold spaces and parentheses, so fields are counted after the last ')'.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CpuUsage {
    pub pid: u32,
    pub cpu_seconds: f64,
    /// CPU seconds per wall second: 1.0 = one core busy.
    pub cores_busy: f64,
    pub cpu_us_per_op: f64,
}

#[cfg(test)]
mod tests {
    use super::{cpu_seconds, parse_cpu_ticks};

    #[test]
    fn parses_fields_after_the_command() {
        let stat = "1234 (a (weird) name) S 1 2 3 4 5 6 7 8 9 10 111 222 0 0 20 0 1";
        assert_eq!(parse_cpu_ticks(stat), Some(333));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn reads_own_process() {
        assert!(cpu_seconds(std::process::id()).is_ok());
    }
}
