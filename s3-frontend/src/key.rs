//! Object keys as paths of the namespace (sans IO).
//!
//! A key is a path below its bucket's directory: `a/b/c` is file `c` in
//! directory `a/b`. Keys that cannot be such a path are refused with
//! `InvalidArgument` and a message saying why: an empty segment (`a//b`,
//! a leading `/`), a trailing `/` (S3 "folder" markers: directories exist
//! by themselves here), `.` or `..`, a NUL byte, a segment over 255 bytes,
//! and the gateway's own temporary names. A key that collides with the
//! tree (`a/b` when `a` is a file, `a` when `a/` holds keys) is refused
//! the same way when it is written.

/// Longest segment (a file name).
pub const SEGMENT_MAX_BYTES: usize = 255;
/// Longest key S3 allows.
pub const KEY_MAX_BYTES: usize = 1024;
/// The gateway's temporary files start so (a PUT writes one, then renames
/// it onto the key); no key may, and listings skip them.
pub const TEMP_PREFIX: &str = ".datenlord-s3-";

/// Why a key is no path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Empty.
    #[error("an empty key")]
    Empty,
    /// Over [`KEY_MAX_BYTES`].
    #[error("a key of more than {KEY_MAX_BYTES} bytes")]
    TooLong,
    /// Ends with `/`.
    #[error("a key ending with '/' (a folder marker): folders exist as the keys below them")]
    TrailingSlash,
    /// An empty segment.
    #[error("an empty path segment ('//' or a leading '/')")]
    EmptySegment,
    /// `.` or `..`.
    #[error("a '.' or '..' segment")]
    Dots,
    /// A NUL byte.
    #[error("a NUL byte")]
    Nul,
    /// A segment over [`SEGMENT_MAX_BYTES`].
    #[error("a segment of more than {SEGMENT_MAX_BYTES} bytes")]
    LongSegment,
    /// A reserved temporary name.
    #[error("a segment starting with {TEMP_PREFIX} (reserved)")]
    Reserved,
}

/// The path segments of `key`: directories, then the file.
pub fn segments(key: &str) -> Result<Vec<&str>, KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > KEY_MAX_BYTES {
        return Err(KeyError::TooLong);
    }
    if key.ends_with('/') {
        return Err(KeyError::TrailingSlash);
    }
    let segments: Vec<&str> = key.split('/').collect();
    for segment in &segments {
        check_segment(segment)?;
    }
    Ok(segments)
}

/// Whether `name` may be one segment of a key.
pub fn check_segment(name: &str) -> Result<(), KeyError> {
    match name {
        "" => Err(KeyError::EmptySegment),
        "." | ".." => Err(KeyError::Dots),
        _ if name.contains('\0') => Err(KeyError::Nul),
        _ if name.len() > SEGMENT_MAX_BYTES => Err(KeyError::LongSegment),
        _ if name.starts_with(TEMP_PREFIX) => Err(KeyError::Reserved),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keys_are_paths_or_refused_with_the_reason() {
        assert_eq!(segments("a"), Ok(vec!["a"]));
        assert_eq!(segments("a/b c/d.txt"), Ok(vec!["a", "b c", "d.txt"]));
        assert_eq!(segments("..a/b..").map(|s| s.len()), Ok(2));
        for (key, why) in [
            ("", KeyError::Empty),
            ("a/", KeyError::TrailingSlash),
            ("/a", KeyError::EmptySegment),
            ("a//b", KeyError::EmptySegment),
            ("a/./b", KeyError::Dots),
            ("../etc/passwd", KeyError::Dots),
            ("a\0b", KeyError::Nul),
            (".datenlord-s3-x", KeyError::Reserved),
        ] {
            assert_eq!(segments(key), Err(why), "{key:?}");
        }
        assert_eq!(segments(&"x".repeat(256)), Err(KeyError::LongSegment));
        assert_eq!(segments(&"x/".repeat(600)), Err(KeyError::TooLong));
    }

    proptest! {
        /// Whatever a client sends, the segments of an accepted key join
        /// back into it and none can leave the bucket.
        #[test]
        fn accepted_keys_are_their_segments(key in "[a-z./\\x00]{0,40}") {
            if let Ok(parts) = segments(&key) {
                prop_assert_eq!(parts.join("/"), key.clone());
                prop_assert!(parts.iter().all(|p| !p.is_empty() && *p != "." && *p != ".."));
            }
        }
    }
}
