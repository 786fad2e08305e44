//! Mount options: the [`MountOptions`] a mount is made with and the fstab
//! style `-o` string parser.

use std::path::PathBuf;
use std::time::Duration;

use datenlord_fs::AtimePolicy;

use crate::error::FuseError;

/// How to mount. The flags mirror `-o` words one to one, so they stay bools.
#[allow(clippy::struct_excessive_bools)]
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// An existing, empty directory.
    pub mountpoint: PathBuf,
    /// Source name shown by `mount` and `df`.
    pub fsname: String,
    /// Type shown by `mount`, `findmnt` and `df -T` as `fuse.SUBTYPE`
    /// (`datenlord` by default; the CSI plugin looks for `fuse.datenlord`).
    pub subtype: String,
    /// Mount read-only.
    pub read_only: bool,
    /// Let users other than the mounter use the mount (non-root mounters
    /// need `user_allow_other` in /etc/fuse.conf).
    pub allow_other: bool,
    /// Bypass the page cache (`FOPEN_DIRECT_IO` on every open).
    pub direct_io: bool,
    /// Let the kernel buffer writes (`FUSE_WRITEBACK_CACHE`).
    pub writeback_cache: bool,
    /// Request loops (one per core, each with its own /dev/fuse fd); 0
    /// means one per engine shard.
    pub threads: usize,
    /// How long the kernel caches attributes (`attr_timeout=SECS`).
    pub attr_timeout: Duration,
    /// How long the kernel caches names (`entry_timeout=SECS`).
    pub entry_timeout: Duration,
    /// How long the kernel caches missing names (`negative_timeout=SECS`;
    /// 0: not at all).
    pub negative_timeout: Duration,
    /// Whether requests come over FUSE-over-io_uring queues (`uring`,
    /// `no_uring`; by default when the kernel has it enabled).
    pub uring: UringMode,
    /// How long idle CPUs spin after each request (`idle_poll=MICROS`;
    /// zero, the default: not at all). See `idle_poll.rs`.
    pub idle_poll: Duration,
    /// Answer opens of files with a local copy on the copy (FUSE
    /// passthrough; the file system needs `FsConfig::local_copies`).
    pub passthrough: bool,
    /// POSIX ACLs (`acl`, the default; `noacl` turns them off).
    pub acl: bool,
    /// Options accepted for fstab compatibility that change nothing here
    /// (`defaults`, `_netdev`, `nofail`, ...).
    pub extra: Vec<String>,
}

/// The transport between kernel and daemon.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UringMode {
    /// FUSE over io_uring when `/sys/module/fuse/parameters/enable_uring`
    /// is `Y` and the kernel offers it at INIT, else /dev/fuse reads.
    #[default]
    Auto,
    /// FUSE over io_uring or no mount (`-o uring`).
    On,
    /// /dev/fuse reads only (`-o no_uring`).
    Off,
}

impl MountOptions {
    /// Defaults for `mountpoint`.
    pub fn new(mountpoint: impl Into<PathBuf>) -> Self {
        Self {
            mountpoint: mountpoint.into(),
            fsname: "datenlord".into(),
            subtype: SUBTYPE_DEFAULT.into(),
            read_only: false,
            allow_other: false,
            direct_io: false,
            writeback_cache: false,
            threads: 0,
            attr_timeout: crate::adapter::TTL_DEFAULT,
            entry_timeout: crate::adapter::TTL_DEFAULT,
            negative_timeout: crate::adapter::TTL_DEFAULT,
            uring: UringMode::Auto,
            idle_poll: Duration::ZERO,
            passthrough: false,
            acl: true,
            extra: Vec::new(),
        }
    }

    /// Kernel caching for a mount that is its file system's only writer:
    /// names, attributes and missing names for [`TTL_SOLE_WRITER`]
    /// (`-o` timeouts still override).
    ///
    /// [`TTL_SOLE_WRITER`]: crate::TTL_SOLE_WRITER
    #[must_use]
    pub fn sole_writer(mut self) -> Self {
        self.attr_timeout = crate::adapter::TTL_SOLE_WRITER;
        self.entry_timeout = crate::adapter::TTL_SOLE_WRITER;
        self.negative_timeout = crate::adapter::TTL_SOLE_WRITER;
        self
    }
}

/// What an `-o` string asked for; `apply` it to [`MountOptions`], and give
/// `atime` to the file system's config.
#[allow(clippy::struct_excessive_bools)]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParsedOptions {
    /// `ro` / `rw`.
    pub read_only: Option<bool>,
    /// `allow_other` / `no_allow_other`.
    pub allow_other: Option<bool>,
    /// `direct_io`.
    pub direct_io: bool,
    /// `writeback_cache`.
    pub writeback_cache: bool,
    /// `noatime`, `relatime`, `strictatime`.
    pub atime: Option<AtimePolicy>,
    /// `fsname=NAME`.
    pub fsname: Option<String>,
    /// `subtype=NAME`.
    pub subtype: Option<String>,
    /// `threads=N`.
    pub threads: Option<usize>,
    /// `attr_timeout=SECS`.
    pub attr_timeout: Option<Duration>,
    /// `entry_timeout=SECS`.
    pub entry_timeout: Option<Duration>,
    /// `negative_timeout=SECS`.
    pub negative_timeout: Option<Duration>,
    /// `uring` / `no_uring`.
    pub uring: Option<UringMode>,
    /// `idle_poll=MICROS`.
    pub idle_poll: Option<Duration>,
    /// `passthrough`.
    pub passthrough: bool,
    /// `acl` / `noacl`.
    pub acl: Option<bool>,
    /// Accepted fstab options without effect.
    pub extra: Vec<String>,
}

impl ParsedOptions {
    /// Sets the mount options this string asked for.
    pub fn apply(&self, opts: &mut MountOptions) {
        if let Some(ro) = self.read_only {
            opts.read_only = ro;
        }
        if let Some(allow) = self.allow_other {
            opts.allow_other = allow;
        }
        opts.direct_io |= self.direct_io;
        opts.writeback_cache |= self.writeback_cache;
        opts.passthrough |= self.passthrough;
        if let Some(acl) = self.acl {
            opts.acl = acl;
        }
        if let Some(name) = &self.fsname {
            opts.fsname.clone_from(name);
        }
        if let Some(name) = &self.subtype {
            opts.subtype.clone_from(name);
        }
        if let Some(threads) = self.threads {
            opts.threads = threads;
        }
        if let Some(t) = self.attr_timeout {
            opts.attr_timeout = t;
        }
        if let Some(t) = self.entry_timeout {
            opts.entry_timeout = t;
        }
        if let Some(t) = self.negative_timeout {
            opts.negative_timeout = t;
        }
        if let Some(window) = self.idle_poll {
            opts.idle_poll = window;
        }
        if let Some(mode) = self.uring {
            opts.uring = mode;
        }
        opts.extra.extend(self.extra.iter().cloned());
    }
}

/// Options accepted without effect: fstab and mount(8) words, and what the
/// mount always does (`nosuid`, `nodev`, `default_permissions`).
const ACCEPTED_WITHOUT_EFFECT: &[&str] = &[
    "defaults",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "_netdev",
    "nofail",
    "nosuid",
    "nodev",
    "exec",
    "noexec",
    "async",
    "default_permissions",
];

/// Parses `-o ro,allow_other,direct_io,noatime,...`.
pub fn parse_mount_options(text: &str) -> Result<ParsedOptions, FuseError> {
    let mut parsed = ParsedOptions::default();
    for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        match word {
            "ro" => parsed.read_only = Some(true),
            "rw" => parsed.read_only = Some(false),
            "allow_other" => parsed.allow_other = Some(true),
            "no_allow_other" => parsed.allow_other = Some(false),
            "direct_io" => parsed.direct_io = true,
            "writeback_cache" => parsed.writeback_cache = true,
            "passthrough" => parsed.passthrough = true,
            "noatime" => parsed.atime = Some(AtimePolicy::Noatime),
            "relatime" | "atime" => parsed.atime = Some(AtimePolicy::Relatime),
            "strictatime" => parsed.atime = Some(AtimePolicy::Strictatime),
            "uring" => parsed.uring = Some(UringMode::On),
            "no_uring" => parsed.uring = Some(UringMode::Off),
            "acl" => parsed.acl = Some(true),
            "noacl" => parsed.acl = Some(false),
            w if ACCEPTED_WITHOUT_EFFECT.contains(&w) => parsed.extra.push(w.to_string()),
            w => {
                if let Some(name) = w.strip_prefix("fsname=") {
                    parsed.fsname = Some(shown_name("fsname", name, FSNAME_MAX_BYTES)?);
                } else if let Some(name) = w.strip_prefix("subtype=") {
                    parsed.subtype = Some(shown_name("subtype", name, SUBTYPE_MAX_BYTES)?);
                } else if let Some(n) = w.strip_prefix("threads=") {
                    let n = n.parse::<usize>().map_err(|_| {
                        FuseError::Options(format!("threads={n}: give a number of threads"))
                    })?;
                    parsed.threads = Some(n);
                } else if let Some(us) = w.strip_prefix("idle_poll=") {
                    let max_us = crate::idle_poll::IDLE_POLL_MAX.as_micros();
                    let window = us
                        .parse::<u64>()
                        .ok()
                        .map(Duration::from_micros)
                        .filter(|d| *d <= crate::idle_poll::IDLE_POLL_MAX)
                        .ok_or_else(|| {
                            FuseError::Options(format!(
                                "idle_poll={us}: give microseconds from 0 (off) to {max_us} (e.g. idle_poll=200)"
                            ))
                        })?;
                    parsed.idle_poll = Some(window);
                } else if let Some((key, value)) = w.split_once('=').filter(|(k, _)| {
                    matches!(*k, "attr_timeout" | "entry_timeout" | "negative_timeout")
                }) {
                    let t = parse_timeout(key, value)?;
                    match key {
                        "attr_timeout" => parsed.attr_timeout = Some(t),
                        "entry_timeout" => parsed.entry_timeout = Some(t),
                        _ => parsed.negative_timeout = Some(t),
                    }
                } else {
                    return Err(FuseError::Options(format!(
                        "unknown mount option {w:?}; known options: ro, rw, allow_other, no_allow_other, direct_io, \
                         writeback_cache, passthrough, noatime, relatime, strictatime, uring, no_uring, acl, noacl, fsname=NAME, subtype=NAME, \
                         threads=N, attr_timeout=SECS, entry_timeout=SECS, negative_timeout=SECS, \
                         idle_poll=MICROS, {}",
                        ACCEPTED_WITHOUT_EFFECT.join(", ")
                    )));
                }
            }
        }
    }
    Ok(parsed)
}

/// The subtype of a mount unless `subtype=` says otherwise: the mount
/// table shows `fuse.datenlord`.
pub const SUBTYPE_DEFAULT: &str = "datenlord";
/// Longest `fsname=` (a store URL fits; the kernel keeps the source of a
/// mount in a page).
pub const FSNAME_MAX_BYTES: usize = 1024;
/// Longest `subtype=` (a file system type name).
pub const SUBTYPE_MAX_BYTES: usize = 64;

/// The value of `fsname=` or `subtype=`: shown in the mount table, so
/// non-empty, at most `max_bytes`, and without whitespace (the mount table
/// separates fields with it) or a comma (which would split the option
/// string `fusermount3` is given). A subtype is also a type name: letters,
/// digits, `.`, `_` and `-` only.
fn shown_name(key: &str, value: &str, max_bytes: usize) -> Result<String, FuseError> {
    let subtype_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let fits = !value.is_empty()
        && value.len() <= max_bytes
        && !value.contains(|c: char| c.is_whitespace() || c.is_control() || c == ',')
        && (key != "subtype" || value.chars().all(subtype_char));
    if fits {
        Ok(value.to_string())
    } else if key == "subtype" {
        Err(FuseError::Options(format!(
            "subtype={value:?}: give 1 to {max_bytes} letters, digits, '.', '_' or '-' (the mount table shows fuse.SUBTYPE)"
        )))
    } else {
        Err(FuseError::Options(format!(
            "{key}={value:?}: give a name of 1 to {max_bytes} bytes without spaces or commas"
        )))
    }
}

/// Longest cache timeout accepted (a day): the kernel keeps what a longer
/// one would promise anyway only until memory pressure.
const TIMEOUT_MAX_SECS: f64 = 86_400.0;

/// `SECS` of a `*_timeout=SECS` option: a non-negative decimal number.
fn parse_timeout(key: &str, value: &str) -> Result<Duration, FuseError> {
    value
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && (0.0..=TIMEOUT_MAX_SECS).contains(s))
        .map(Duration::from_secs_f64)
        .ok_or_else(|| {
            FuseError::Options(format!(
                "{key}={value}: give seconds between 0 and {TIMEOUT_MAX_SECS} (e.g. {key}=1.5)"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_unknown_ones_are_refused() {
        let parsed = parse_mount_options("ro,allow_other,direct_io,noatime,fsname=vol1,_netdev")
            .expect("parse");
        assert_eq!(parsed.read_only, Some(true));
        assert_eq!(parsed.allow_other, Some(true));
        assert!(parsed.direct_io && !parsed.writeback_cache);
        assert_eq!(parsed.atime, Some(AtimePolicy::Noatime));
        assert_eq!(parsed.fsname.as_deref(), Some("vol1"));
        assert_eq!(parsed.extra, vec!["_netdev".to_string()]);
        let mut opts = MountOptions::new("/mnt");
        parsed.apply(&mut opts);
        assert!(opts.read_only && opts.allow_other && opts.direct_io);
        assert_eq!(opts.fsname, "vol1");
        assert_eq!(
            parse_mount_options("").expect("empty"),
            ParsedOptions::default()
        );
        let err = parse_mount_options("rw,bogus")
            .expect_err("unknown")
            .to_string();
        assert!(
            err.contains("\"bogus\"") && err.contains("known options"),
            "{err}"
        );
        assert!(parse_mount_options("threads=x").is_err());
        let timeouts = parse_mount_options("attr_timeout=30,entry_timeout=0.5,negative_timeout=0")
            .expect("timeouts");
        assert_eq!(timeouts.attr_timeout, Some(Duration::from_secs(30)));
        assert_eq!(timeouts.entry_timeout, Some(Duration::from_millis(500)));
        assert_eq!(timeouts.negative_timeout, Some(Duration::ZERO));
        let mut opts = MountOptions::new("/mnt");
        timeouts.apply(&mut opts);
        assert_eq!(opts.attr_timeout, Duration::from_secs(30));
        for bad in [
            "attr_timeout=-1",
            "entry_timeout=x",
            "attr_timeout=1e9",
            "negative_timeout=NaN",
        ] {
            let err = parse_mount_options(bad).expect_err(bad).to_string();
            assert!(err.contains("give seconds"), "{err}");
        }
        assert_eq!(
            parse_mount_options("threads=3").expect("threads").threads,
            Some(3)
        );
        let mut opts = MountOptions::new("/mnt");
        assert_eq!(opts.idle_poll, Duration::ZERO, "off by default");
        parse_mount_options("idle_poll=200")
            .expect("idle_poll")
            .apply(&mut opts);
        assert_eq!(opts.idle_poll, Duration::from_micros(200));
        for bad in [
            "idle_poll=x",
            "idle_poll=-1",
            "idle_poll=10001",
            "idle_poll=1.5",
        ] {
            let err = parse_mount_options(bad).expect_err(bad).to_string();
            assert!(err.contains("give microseconds"), "{err}");
        }
        let mut opts = MountOptions::new("/mnt");
        assert_eq!(opts.uring, UringMode::Auto);
        parse_mount_options("uring")
            .expect("uring")
            .apply(&mut opts);
        assert_eq!(opts.uring, UringMode::On);
        parse_mount_options("rw,no_uring")
            .expect("no_uring")
            .apply(&mut opts);
        assert_eq!(opts.uring, UringMode::Off);
        parse_mount_options("ro").expect("ro").apply(&mut opts);
        assert_eq!(opts.uring, UringMode::Off, "unchanged when not named");
        let mut opts = MountOptions::new("/mnt");
        assert!(opts.acl, "ACLs on by default");
        parse_mount_options("noacl")
            .expect("noacl")
            .apply(&mut opts);
        assert!(!opts.acl);
        parse_mount_options("rw").expect("rw").apply(&mut opts);
        assert!(!opts.acl, "unchanged when not named");
        parse_mount_options("acl").expect("acl").apply(&mut opts);
        assert!(opts.acl);
    }

    /// What `mount.fuse.datenlord` relies on: `fsname=` and `subtype=`
    /// name the mount in the mount table, and `no_allow_other` undoes an
    /// `allow_other` given earlier in the list.
    #[test]
    fn fsname_subtype_and_no_allow_other() {
        let mut opts = MountOptions::new("/mnt");
        assert_eq!(
            (opts.fsname.as_str(), opts.subtype.as_str()),
            ("datenlord", "datenlord")
        );
        parse_mount_options("fsname=s3://bucket/vol,subtype=datenlord.v2,allow_other")
            .expect("names")
            .apply(&mut opts);
        assert_eq!(opts.fsname, "s3://bucket/vol");
        assert_eq!(opts.subtype, "datenlord.v2");
        assert!(opts.allow_other);
        parse_mount_options("allow_other,no_allow_other")
            .expect("the last one wins")
            .apply(&mut opts);
        assert!(!opts.allow_other);
        parse_mount_options("rw").expect("rw").apply(&mut opts);
        assert!(!opts.allow_other, "unchanged when not named");
        let long = format!("fsname={}", "x".repeat(FSNAME_MAX_BYTES + 1));
        let long_subtype = format!("subtype={}", "x".repeat(SUBTYPE_MAX_BYTES + 1));
        for bad in [
            "fsname=",
            "fsname=a\tb",
            long.as_str(),
            "subtype=",
            "subtype=a/b",
            "subtype=fuse:x",
            long_subtype.as_str(),
        ] {
            let err = parse_mount_options(bad).expect_err(bad).to_string();
            assert!(err.contains("give"), "{bad}: {err}");
        }
        let err = parse_mount_options("nonsense")
            .expect_err("unknown")
            .to_string();
        assert!(
            err.contains("subtype=NAME") && err.contains("no_allow_other"),
            "{err}"
        );
    }
}
