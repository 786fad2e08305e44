//! What a volume is, without IO: its name (which is also its id and its
//! directory's name) and its capacity, from the CSI capacity ranges.

use crate::error::{Error, Result};
use crate::proto::CapacityRange;

/// The longest volume name (the CSI spec's limit for names and ids).
pub const MAX_VOLUME_NAME_BYTES: usize = 128;

/// The capacity of a volume whose request gives no size.
pub const DEFAULT_CAPACITY_BYTES: u64 = 1 << 30;

/// A volume's name: its CSI volume id and the name of its directory
/// under the volumes directory. 1 to 128 bytes of ASCII letters, digits,
/// `-`, `_` and `.`, starting with a letter or a digit: never `.`, `..`,
/// a hidden name (the driver's own `.creating` and `.trash`) or a path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VolumeName(String);

impl VolumeName {
    /// Checks `text` as a volume name; the error says why it is not one.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        if text.is_empty() {
            return Err("the volume name is empty".into());
        }
        if text.len() > MAX_VOLUME_NAME_BYTES {
            return Err(format!(
                "the volume name is {} bytes long; at most {MAX_VOLUME_NAME_BYTES}",
                text.len()
            ));
        }
        if !text.as_bytes()[0].is_ascii_alphanumeric() {
            return Err(format!(
                "volume name {text:?}: start it with a letter or a digit"
            ));
        }
        if let Some(c) = text
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(format!(
                "volume name {text:?}: {c:?} is not allowed (letters, digits, '-', '_' and '.')"
            ));
        }
        Ok(Self(text.to_string()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for VolumeName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A checked capacity range: at least `required_bytes`, at most
/// `limit_bytes` when there is a limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// The smallest acceptable size (0: any).
    pub required_bytes: u64,
    /// The largest acceptable size.
    pub limit_bytes: Option<u64>,
}

impl Capacity {
    /// Checks a request's range: no negative sizes, a limit not below what
    /// is required. No range is any size.
    pub fn from_range(range: Option<&CapacityRange>) -> Result<Self> {
        let Some(range) = range else {
            return Ok(Self {
                required_bytes: 0,
                limit_bytes: None,
            });
        };
        let required_bytes = u64::try_from(range.required_bytes).map_err(|_| {
            Error::InvalidArgument(format!(
                "capacity_range.required_bytes is negative ({})",
                range.required_bytes
            ))
        })?;
        let limit = u64::try_from(range.limit_bytes).map_err(|_| {
            Error::InvalidArgument(format!(
                "capacity_range.limit_bytes is negative ({})",
                range.limit_bytes
            ))
        })?;
        let limit_bytes = (limit > 0).then_some(limit);
        if let Some(limit) = limit_bytes {
            if limit < required_bytes {
                return Err(Error::OutOfRange(format!(
                    "capacity_range.limit_bytes {limit} is below required_bytes {required_bytes}"
                )));
            }
        }
        Ok(Self {
            required_bytes,
            limit_bytes,
        })
    }

    /// Whether a range was given at all (expansion needs one).
    pub fn is_given(&self) -> bool {
        self.required_bytes > 0 || self.limit_bytes.is_some()
    }

    /// The size of a new volume: what is required, else the default kept
    /// under the limit.
    pub fn for_new_volume(&self) -> u64 {
        if self.required_bytes > 0 {
            self.required_bytes
        } else {
            self.limit_bytes.map_or(DEFAULT_CAPACITY_BYTES, |limit| {
                limit.min(DEFAULT_CAPACITY_BYTES)
            })
        }
    }

    /// Whether an existing volume of `bytes` satisfies this range (a
    /// repeated CreateVolume is then the same volume).
    pub fn admits(&self, bytes: u64) -> bool {
        bytes >= self.required_bytes && self.limit_bytes.is_none_or(|limit| bytes <= limit)
    }

    /// The size of a volume of `current_bytes` expanded to this range:
    /// never smaller than it was (volumes do not shrink).
    pub fn expanded(&self, current_bytes: u64) -> Result<u64> {
        if !self.is_given() {
            return Err(Error::InvalidArgument(
                "capacity_range is required: give required_bytes or limit_bytes".into(),
            ));
        }
        let bytes = self.required_bytes.max(current_bytes);
        match self.limit_bytes {
            Some(limit) if bytes > limit => Err(Error::OutOfRange(format!(
                "the volume has {current_bytes} bytes, more than limit_bytes {limit}: volumes do not shrink"
            ))),
            _ => Ok(bytes),
        }
    }
}

/// A byte count as the CSI messages carry it.
pub fn bytes_i64(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(required_bytes: i64, limit_bytes: i64) -> Capacity {
        Capacity::from_range(Some(&CapacityRange {
            required_bytes,
            limit_bytes,
        }))
        .expect("a valid range")
    }

    #[test]
    fn names_are_plain_directory_names() {
        for good in [
            "pvc-0f3a",
            "a",
            "A.b_c-9",
            &"x".repeat(MAX_VOLUME_NAME_BYTES),
        ] {
            assert_eq!(VolumeName::parse(good).map(|n| n.0), Ok(good.to_string()));
        }
        for bad in [
            "",
            ".",
            "..",
            ".trash",
            "-x",
            "a/b",
            "../etc",
            "a b",
            "é",
            "a\0",
            &"x".repeat(MAX_VOLUME_NAME_BYTES + 1),
        ] {
            assert!(VolumeName::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn ranges_are_checked() {
        assert!(Capacity::from_range(None).is_ok_and(|c| !c.is_given()));
        let negative = Capacity::from_range(Some(&CapacityRange {
            required_bytes: -1,
            limit_bytes: 0,
        }));
        assert!(matches!(negative, Err(Error::InvalidArgument(_))));
        let inverted = Capacity::from_range(Some(&CapacityRange {
            required_bytes: 10,
            limit_bytes: 5,
        }));
        assert!(matches!(inverted, Err(Error::OutOfRange(_))));
    }

    #[test]
    fn new_volumes_get_the_required_size_or_the_default_under_the_limit() {
        assert_eq!(range(0, 0).for_new_volume(), DEFAULT_CAPACITY_BYTES);
        assert_eq!(range(5 << 20, 0).for_new_volume(), 5 << 20);
        assert_eq!(range(0, 1 << 20).for_new_volume(), 1 << 20);
        assert_eq!(range(0, 4 << 30).for_new_volume(), DEFAULT_CAPACITY_BYTES);
    }

    #[test]
    fn an_existing_volume_is_the_same_volume_when_its_size_fits_the_range() {
        let r = range(1 << 30, 1 << 30);
        assert!(r.admits(1 << 30));
        assert!(!r.admits(2 << 30));
        assert!(!range(2 << 30, 2 << 30).admits(1 << 30));
        assert!(range(0, 0).admits(7));
    }

    #[test]
    fn expansion_grows_never_shrinks_and_keeps_under_the_limit() {
        assert_eq!(range(2 << 30, 0).expanded(1 << 30).ok(), Some(2 << 30));
        assert_eq!(range(1 << 20, 0).expanded(1 << 30).ok(), Some(1 << 30));
        assert!(matches!(
            range(1 << 20, 1 << 20).expanded(1 << 30),
            Err(Error::OutOfRange(_))
        ));
        assert!(matches!(
            range(0, 0).expanded(1),
            Err(Error::InvalidArgument(_))
        ));
    }
}
