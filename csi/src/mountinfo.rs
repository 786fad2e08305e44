//! The mount table of this process (`/proc/self/mountinfo`): what is
//! mounted where, read-only or not, and which directory of which file
//! system it shows. The node service decides from it alone whether a
//! path is staged or published, so it needs no state of its own and a
//! restarted plugin finds its mounts where it left them.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt as _;
use std::path::{Path, PathBuf};

/// The file system type of a DatenLord FUSE mount.
pub const DATENLORD_FS_TYPE: &str = "fuse.datenlord";

/// Where the kernel shows the mount table.
const MOUNTINFO_PATH: &str = "/proc/self/mountinfo";

/// One line of the mount table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// The device (`major:minor`): one per FUSE connection.
    pub device: String,
    /// The directory of the file system the mount shows (`/` for a whole
    /// file system, the bound directory for a bind mount).
    pub root: PathBuf,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Whether the mount itself is read-only (`ro` in its options).
    pub read_only: bool,
    /// The file system type (`fuse.datenlord`).
    pub fs_type: String,
}

impl MountEntry {
    /// Whether this is a mount of DatenLord showing the directory `root`
    /// of the file system.
    pub fn shows(&self, root: &Path) -> bool {
        self.fs_type == DATENLORD_FS_TYPE && self.root == root
    }
}

/// Reads the mount table.
pub fn read() -> std::io::Result<Vec<MountEntry>> {
    Ok(parse(&std::fs::read(MOUNTINFO_PATH)?))
}

/// The mounts of a mount table's text (lines it cannot read are skipped).
pub fn parse(text: &[u8]) -> Vec<MountEntry> {
    text.split(|&b| b == b'\n').filter_map(parse_line).collect()
}

/// The topmost mount at `path` (the last one mounted there), if any.
pub fn top_at<'a>(entries: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    entries.iter().rev().find(|e| e.mount_point == path)
}

/// `36 35 98:0 /root /mount/point rw,noatime master:1 - fstype source rw,opts`.
fn parse_line(line: &[u8]) -> Option<MountEntry> {
    let mut fields = line.split(|&b| b == b' ');
    let _id = fields.next()?;
    let _parent = fields.next()?;
    let device = String::from_utf8(fields.next()?.to_vec()).ok()?;
    let root = unescape(fields.next()?);
    let mount_point = unescape(fields.next()?);
    let options = fields.next()?;
    // Optional fields (shared:N, master:N, ...) up to the separator.
    fields.by_ref().find(|f| *f == b"-")?;
    let fs_type = String::from_utf8(fields.next()?.to_vec()).ok()?;
    if !root.is_absolute() || !mount_point.is_absolute() {
        return None;
    }
    Some(MountEntry {
        device,
        root,
        mount_point,
        read_only: options.split(|&b| b == b',').any(|o| o == b"ro"),
        fs_type,
    })
}

/// A path field: the kernel writes space, tab, newline and backslash as
/// `\040`, `\011`, `\012` and `\134`.
fn unescape(field: &[u8]) -> PathBuf {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field
            .get(i + 1..i + 4)
            .filter(|d| field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if let Some(d) = octal {
            let value = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
            out.push(u8::try_from(value).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(field[i]);
            i += 1;
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TABLE: &[u8] = b"\
22 1 252:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:45 / /mnt/datenlord rw,nosuid,nodev,relatime shared:20 - fuse.datenlord datenlord rw,user_id=0,group_id=0,allow_other
41 22 0:45 /csi-volumes/pvc-1 /var/lib/kubelet/staging\\040dir rw,relatime shared:20 - fuse.datenlord datenlord rw
42 22 0:45 /csi-volumes/pvc-1 /var/lib/kubelet/pods/x/mount ro,relatime shared:20 - fuse.datenlord datenlord rw
43 22 0:46 / /var/lib/kubelet/pods/x/mount rw master:3 - tmpfs tmpfs rw
garbage line
";

    #[test]
    fn reads_binds_of_a_datenlord_mount() {
        let entries = parse(TABLE);
        assert_eq!(entries.len(), 5);
        let main = &entries[1];
        assert_eq!(main.mount_point, Path::new("/mnt/datenlord"));
        assert!(main.shows(Path::new("/")));
        assert_eq!(main.device, "0:45");
        let staged = &entries[2];
        assert_eq!(
            staged.mount_point,
            Path::new("/var/lib/kubelet/staging dir"),
            "\\040 is a space"
        );
        assert!(staged.shows(Path::new("/csi-volumes/pvc-1")) && !staged.read_only);
        assert!(entries[3].read_only);
        // Two mounts stacked on one path: the last is on top.
        let top = top_at(&entries, Path::new("/var/lib/kubelet/pods/x/mount"));
        assert_eq!(top.map(|e| e.fs_type.as_str()), Some("tmpfs"));
        assert!(top_at(&entries, Path::new("/nowhere")).is_none());
    }

    #[test]
    fn unescapes_octal_and_keeps_other_backslashes() {
        assert_eq!(unescape(b"/a\\040b\\011c\\134d"), Path::new("/a b\tc\\d"));
        assert_eq!(unescape(b"/a\\x\\0"), Path::new("/a\\x\\0"));
        assert_eq!(unescape(b"/a\\777"), Path::new("/a?"));
    }

    proptest! {
        #[test]
        fn any_text_parses_without_panic(text in proptest::collection::vec(any::<u8>(), 0..400)) {
            for entry in parse(&text) {
                prop_assert!(entry.mount_point.is_absolute());
            }
        }
    }
}
