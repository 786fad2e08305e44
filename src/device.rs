//! `--cache-device`: a raw block device (an NVMe namespace) as the NVMe
//! tier. A device that holds a file system, a partition table or swap is
//! refused unless `--force-device` (its data would be overwritten), and a
//! mounted one always; one that holds a DatenLord cache is taken as is.

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use anyhow::{bail, Context};

/// Bytes read from the start of a device to look for signatures.
const PROBE_BYTES: usize = 128 << 10;

/// Known signatures: (offset, bytes, what).
const SIGNATURES: &[(usize, &[u8], &str)] = &[
    (1080, &[0x53, 0xef], "an ext2/3/4 file system"),
    (0, b"XFSB", "an XFS file system"),
    (65600, b"_BHRfS_M", "a btrfs file system"),
    (4086, b"SWAPSPACE2", "swap space"),
    (4086, b"SWAP-SPACE", "swap space"),
    (0, b"LUKS\xba\xbe", "a LUKS volume"),
    (512, b"EFI PART", "a GPT partition table"),
    (3, b"NTFS    ", "an NTFS file system"),
    (54, b"FAT", "a FAT file system"),
    (82, b"FAT32", "a FAT32 file system"),
];

/// What the first bytes of a device say it holds, if it is something
/// other than empty space or a DatenLord cache.
pub fn signature(head: &[u8]) -> Option<&'static str> {
    if datenlord_engine::layout::Superblock::decode(head).is_some() {
        return None;
    }
    let found = SIGNATURES
        .iter()
        .find(|(at, magic, _)| head.get(*at..at + magic.len()) == Some(*magic))
        .map(|(_, _, what)| *what);
    found
        .or_else(|| (head.get(510..512) == Some(&[0x55, 0xaa])).then_some("an MBR partition table"))
}

/// Checks that `path` may become the cache device.
pub fn check(path: &Path, force: bool) -> anyhow::Result<()> {
    let meta = std::fs::metadata(path).with_context(|| {
        format!(
            "--cache-device {}: give an existing block device",
            path.display()
        )
    })?;
    if !meta.file_type().is_block_device() {
        bail!(
            "--cache-device {} is not a block device: give a device such as /dev/nvme0n1, or use --cache-dir for a cache file",
            path.display()
        );
    }
    if let Some(at) = mounted_at(meta.rdev())? {
        bail!(
            "--cache-device {} is mounted at {at}: unmount it first (its file system would be overwritten)",
            path.display()
        );
    }
    let mut head = vec![0u8; PROBE_BYTES];
    let n = std::fs::File::open(path)
        .and_then(|mut f| read_up_to(&mut f, &mut head))
        .with_context(|| format!("reading {}", path.display()))?;
    head.truncate(n);
    if let Some(what) = signature(&head) {
        if !force {
            bail!(
                "--cache-device {} holds {what}: the cache would overwrite it; wipe it (wipefs -a) or pass --force-device",
                path.display()
            );
        }
        tracing::warn!(device = %path.display(), what, "--force-device: overwriting it with the cache");
    }
    Ok(())
}

fn read_up_to(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            m => n += m,
        }
    }
    Ok(n)
}

/// Where a device with this number is mounted, per /proc/self/mountinfo.
fn mounted_at(rdev: u64) -> anyhow::Result<Option<String>> {
    let info =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    // SAFETY: major/minor only compute on the number.
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    let wanted = format!("{major}:{minor}");
    Ok(info.lines().find_map(|line| {
        let mut fields = line.split(' ');
        let dev = fields.nth(2)?;
        let at = fields.nth(1)?;
        (dev == wanted).then(|| at.to_string())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(at: usize, bytes: &[u8]) -> Vec<u8> {
        let mut head = vec![0u8; PROBE_BYTES];
        head[at..at + bytes.len()].copy_from_slice(bytes);
        head
    }

    #[test]
    fn file_systems_and_partition_tables_are_recognised_and_empty_space_is_not() {
        assert_eq!(signature(&vec![0u8; PROBE_BYTES]), None);
        assert_eq!(
            signature(&with(1080, &[0x53, 0xef])),
            Some("an ext2/3/4 file system")
        );
        assert_eq!(signature(&with(0, b"XFSB")), Some("an XFS file system"));
        assert_eq!(
            signature(&with(65600, b"_BHRfS_M")),
            Some("a btrfs file system")
        );
        assert_eq!(
            signature(&with(510, &[0x55, 0xaa])),
            Some("an MBR partition table")
        );
        assert_eq!(signature(&with(4086, b"SWAPSPACE2")), Some("swap space"));
        // A short device is read as far as it goes.
        assert_eq!(signature(&[0u8; 100]), None);
    }

    #[test]
    fn a_regular_file_is_not_a_device() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("img");
        std::fs::write(&file, [0u8; 4096]).expect("write");
        let err = check(&file, false).expect_err("a file");
        assert!(err.to_string().contains("not a block device"), "{err}");
        assert!(check(&dir.path().join("none"), false).is_err());
    }
}
