//! The `--store` value: where the volume's persistent copy lives.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use super::StoreError;

const ACCEPTED_FORMS: &str =
    "use file:///absolute/path, s3://bucket[/prefix] (endpoint and credentials from AWS_* variables) or memory://";

/// Where a store lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreUrl {
    /// A process-local in-memory store (tests).
    Memory,
    /// A local directory.
    File(PathBuf),
    /// An S3 bucket and a key prefix inside it (empty for the bucket's root).
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix without leading or trailing `/`.
        prefix: String,
    },
}

impl StoreUrl {
    /// The key prefix inside the store (S3 only; empty otherwise).
    pub fn prefix(&self) -> &str {
        match self {
            Self::S3 { prefix, .. } => prefix,
            Self::Memory | Self::File(_) => "",
        }
    }
}

fn invalid(input: &str, why: &str) -> StoreError {
    StoreError::Config(format!(
        "invalid --store value `{input}`: {why}; {ACCEPTED_FORMS}"
    ))
}

impl FromStr for StoreUrl {
    type Err = StoreError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let Some((scheme, rest)) = input.split_once("://") else {
            return Err(invalid(input, "no scheme"));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "memory" => {
                if rest.is_empty() {
                    Ok(Self::Memory)
                } else {
                    Err(invalid(input, "memory:// takes no path"))
                }
            }
            "file" => {
                if !rest.starts_with('/') {
                    return Err(invalid(input, "the path of file:// must be absolute"));
                }
                let trimmed = rest.trim_end_matches('/');
                let path = if trimmed.is_empty() { "/" } else { trimmed };
                if path.split('/').any(|c| c == "..") {
                    return Err(invalid(input, "the path must not contain `..`"));
                }
                Ok(Self::File(PathBuf::from(path)))
            }
            "s3" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if !valid_bucket(bucket) {
                    return Err(invalid(
                        input,
                        "the bucket name must be 3-63 characters of a-z, 0-9, `.` and `-`",
                    ));
                }
                let prefix = prefix.trim_matches('/');
                if prefix
                    .split('/')
                    .any(|c| c.is_empty() && !prefix.is_empty())
                    || prefix.split('/').any(|c| c == "." || c == "..")
                {
                    return Err(invalid(
                        input,
                        "the prefix must not contain empty, `.` or `..` parts",
                    ));
                }
                Ok(Self::S3 {
                    bucket: bucket.to_owned(),
                    prefix: prefix.to_owned(),
                })
            }
            other => Err(invalid(input, &format!("unknown scheme `{other}`"))),
        }
    }
}

fn valid_bucket(bucket: &str) -> bool {
    (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Memory => write!(f, "memory://"),
            Self::File(path) => write!(f, "file://{}", path.display()),
            Self::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Self::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Result<&str, &str>) {
        match (input.parse::<StoreUrl>(), expected) {
            (Ok(url), Ok(shown)) => assert_eq!(url.to_string(), shown, "{input}"),
            (Err(e), Err(fragment)) => {
                let msg = e.to_string();
                assert!(msg.contains(fragment), "{input}: {msg}");
                assert!(msg.contains("s3://bucket[/prefix]"), "{input}: {msg}");
            }
            (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn parsing() {
        check("memory://", Ok("memory://"));
        check("file:///var/lib/dl", Ok("file:///var/lib/dl"));
        check("file:///var/lib/dl/", Ok("file:///var/lib/dl"));
        check("s3://my-bucket", Ok("s3://my-bucket"));
        check("s3://my-bucket/", Ok("s3://my-bucket"));
        check("s3://my-bucket/a/b/", Ok("s3://my-bucket/a/b"));
        check("S3://my-bucket/vol", Ok("s3://my-bucket/vol"));
        check("/var/lib", Err("no scheme"));
        check("file://relative/x", Err("absolute"));
        check("file:///a/../b", Err(".."));
        check("s3://", Err("bucket name"));
        check("s3://Upper/x", Err("bucket name"));
        check("s3://b/x", Err("bucket name"));
        check("s3://bucket/a//b", Err("prefix"));
        check("gs://bucket", Err("unknown scheme `gs`"));
        check("memory://x", Err("no path"));
    }

    #[test]
    fn prefix() {
        let url: StoreUrl = "s3://bucket/a/b".parse().expect("url");
        assert_eq!(url.prefix(), "a/b");
        assert_eq!(StoreUrl::Memory.prefix(), "");
    }
}
