//! Checks of the fields every request carries: required strings and
//! paths, and the volume capabilities this driver supports (file system
//! volumes in every access mode: a DatenLord volume is a directory of a
//! shared namespace, readable and writable from any number of nodes).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::proto::volume_capability::access_mode::Mode;
use crate::proto::volume_capability::AccessType;
use crate::proto::VolumeCapability;

/// The longest path a request may name.
pub const MAX_PATH_BYTES: usize = 4096;

/// `value`, or INVALID_ARGUMENT naming `field` when it is empty.
pub fn required<'a>(field: &str, value: &'a str) -> Result<&'a str> {
    if value.is_empty() {
        return Err(Error::InvalidArgument(format!("{field} is required")));
    }
    Ok(value)
}

/// A required absolute path of the request (no NUL, not too long).
pub fn required_path(field: &str, value: &str) -> Result<PathBuf> {
    let text = required(field, value)?;
    if text.len() > MAX_PATH_BYTES || text.contains('\0') || !text.starts_with('/') {
        return Err(Error::InvalidArgument(format!(
            "{field} {text:?} is not an absolute path"
        )));
    }
    Ok(Path::new(text).to_path_buf())
}

/// Why this driver cannot serve a volume with `capability`, if it cannot.
pub fn unsupported(capability: &VolumeCapability) -> Option<String> {
    let mode = capability
        .access_mode
        .map(|m| Mode::try_from(m.mode).unwrap_or(Mode::Unknown));
    match mode {
        None => return Some("volume_capability.access_mode is required".into()),
        Some(Mode::Unknown) => return Some("the access mode is unknown".into()),
        Some(_) => {}
    }
    match &capability.access_type {
        None => Some("volume_capability.access_type is required (mount)".into()),
        Some(AccessType::Block(_)) => {
            Some("block volumes are not supported: a DatenLord volume is a file system".into())
        }
        Some(AccessType::Mount(_)) => None,
    }
}

/// INVALID_ARGUMENT unless the capability is given and supported.
pub fn check(field: &str, capability: Option<&VolumeCapability>) -> Result<()> {
    let capability =
        capability.ok_or_else(|| Error::InvalidArgument(format!("{field} is required")))?;
    match unsupported(capability) {
        Some(why) => Err(Error::InvalidArgument(format!("{field}: {why}"))),
        None => Ok(()),
    }
}

/// INVALID_ARGUMENT unless at least one capability is given and all are
/// supported.
pub fn check_all(capabilities: &[VolumeCapability]) -> Result<()> {
    if capabilities.is_empty() {
        return Err(Error::InvalidArgument(
            "volume_capabilities is required".into(),
        ));
    }
    capabilities
        .iter()
        .try_for_each(|c| check("volume_capabilities", Some(c)))
}

/// Whether a publish with `capability` is read-only by its access mode.
pub fn read_only_mode(capability: Option<&VolumeCapability>) -> bool {
    capability.and_then(|c| c.access_mode).is_some_and(|m| {
        matches!(
            Mode::try_from(m.mode),
            Ok(Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::volume_capability::{AccessMode, BlockVolume, MountVolume};

    fn capability(mode: Option<Mode>, access_type: Option<AccessType>) -> VolumeCapability {
        VolumeCapability {
            access_mode: mode.map(|m| AccessMode { mode: m as i32 }),
            access_type,
        }
    }

    fn mount() -> AccessType {
        AccessType::Mount(MountVolume::default())
    }

    #[test]
    fn file_system_volumes_in_every_mode_are_supported() {
        for mode in [
            Mode::SingleNodeWriter,
            Mode::SingleNodeReaderOnly,
            Mode::MultiNodeReaderOnly,
            Mode::MultiNodeSingleWriter,
            Mode::MultiNodeMultiWriter,
        ] {
            assert_eq!(unsupported(&capability(Some(mode), Some(mount()))), None);
        }
    }

    #[test]
    fn block_volumes_and_missing_fields_are_refused() {
        let block = Some(AccessType::Block(BlockVolume {}));
        assert!(unsupported(&capability(Some(Mode::SingleNodeWriter), block)).is_some());
        assert!(unsupported(&capability(None, Some(mount()))).is_some());
        assert!(unsupported(&capability(Some(Mode::Unknown), Some(mount()))).is_some());
        assert!(unsupported(&capability(Some(Mode::SingleNodeWriter), None)).is_some());
        let unknown = VolumeCapability {
            access_mode: Some(AccessMode { mode: 99 }),
            access_type: Some(mount()),
        };
        assert!(unsupported(&unknown).is_some());
        assert!(matches!(check_all(&[]), Err(Error::InvalidArgument(_))));
        assert!(matches!(check("c", None), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn required_fields_and_paths() {
        assert!(
            matches!(required("volume_id", ""), Err(Error::InvalidArgument(m)) if m.contains("volume_id"))
        );
        assert_eq!(required("volume_id", "v").ok(), Some("v"));
        assert!(required_path("target_path", "relative/x").is_err());
        assert!(required_path("target_path", "/a\0b").is_err());
        assert!(required_path("target_path", &format!("/{}", "x".repeat(MAX_PATH_BYTES))).is_err());
        assert_eq!(
            required_path("target_path", "/var/lib/kubelet/x").ok(),
            Some(PathBuf::from("/var/lib/kubelet/x"))
        );
    }

    #[test]
    fn reader_modes_publish_read_only() {
        assert!(read_only_mode(Some(&capability(
            Some(Mode::MultiNodeReaderOnly),
            Some(mount())
        ))));
        assert!(!read_only_mode(Some(&capability(
            Some(Mode::MultiNodeMultiWriter),
            Some(mount())
        ))));
        assert!(!read_only_mode(None));
    }
}
