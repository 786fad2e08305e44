//! Conditional requests (RFC 9110 §13.2.2, as S3 applies them to GET and
//! HEAD, and with the `x-amz-copy-source-if-*` headers to CopyObject),
//! sans IO.

use s3s::dto::{ETagCondition, Timestamp};
use s3s::{S3ErrorCode, S3Result};

use super::error;

/// The conditions on a copy's source (`x-amz-copy-source-if-*`) of a
/// CopyObject or UploadPartCopy input.
macro_rules! copy_source_conditions {
    ($input:expr) => {
        $crate::gateway::conditions::Conditions::new(
            $input.copy_source_if_match.as_ref(),
            $input.copy_source_if_unmodified_since.as_ref(),
            $input.copy_source_if_none_match.as_ref(),
            $input.copy_source_if_modified_since.as_ref(),
        )
    };
}
pub(crate) use copy_source_conditions;

/// A request's conditions.
#[derive(Debug, Default)]
pub(crate) struct Conditions<'a> {
    pub(crate) matching: Option<&'a ETagCondition>,
    pub(crate) unmodified_since: Option<&'a Timestamp>,
    pub(crate) none_matching: Option<&'a ETagCondition>,
    pub(crate) modified_since: Option<&'a Timestamp>,
}

fn matches(condition: &ETagCondition, etag: &str) -> bool {
    condition.is_any() || condition.as_etag().is_some_and(|e| e.value() == etag)
}

impl<'a> Conditions<'a> {
    /// `If-Match`, `If-Unmodified-Since`, `If-None-Match`,
    /// `If-Modified-Since` (or their copy-source forms).
    pub(crate) fn new(
        matching: Option<&'a ETagCondition>,
        unmodified_since: Option<&'a Timestamp>,
        none_matching: Option<&'a ETagCondition>,
        modified_since: Option<&'a Timestamp>,
    ) -> Self {
        Self {
            matching,
            unmodified_since,
            none_matching,
            modified_since,
        }
    }

    /// Whether the request goes on for an object of ETag `etag` last
    /// modified at `modified` (whole seconds, as HTTP dates have them):
    /// `PreconditionFailed` (412) or `NotModified` (304, `not_modified`
    /// is the code to use: CopyObject fails its `none-match` conditions
    /// with 412 too).
    pub(crate) fn check(
        &self,
        etag: &str,
        modified: &Timestamp,
        not_modified: S3ErrorCode,
    ) -> S3Result<()> {
        let failed = || {
            Err(error(
                S3ErrorCode::PreconditionFailed,
                "a condition of the request does not hold for the object",
            ))
        };
        match (self.matching, self.unmodified_since) {
            (Some(condition), _) if !matches(condition, etag) => return failed(),
            (None, Some(date)) if modified > date => return failed(),
            _ => {}
        }
        let unchanged = match (self.none_matching, self.modified_since) {
            (Some(condition), _) => matches(condition, etag),
            (None, Some(date)) => modified <= date,
            (None, None) => false,
        };
        if unchanged {
            return Err(error(not_modified, "the object is as the request has it"));
        }
        Ok(())
    }
}

/// What a write (PutObject, CompleteMultipartUpload) requires of the
/// object it replaces: S3's conditional writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum WriteCondition {
    /// Nothing: the write replaces whatever is there.
    #[default]
    Unconditional,
    /// `If-None-Match: *`: no object of that key (else 412).
    Absent,
    /// `If-Match: *`: an object of that key (else 404).
    Present,
    /// `If-Match: ETAG`: the object of that key has that ETag (404 when
    /// there is none, 412 when it has another).
    Etag(String),
}

impl WriteCondition {
    /// From a write's `If-Match` and `If-None-Match`.
    pub(crate) fn new(
        matching: Option<&ETagCondition>,
        none_matching: Option<&ETagCondition>,
    ) -> S3Result<Self> {
        match (matching, none_matching) {
            (None, None) => Ok(Self::Unconditional),
            (None, Some(c)) if c.is_any() => Ok(Self::Absent),
            (None, Some(_)) => Err(error(
                S3ErrorCode::NotImplemented,
                "If-None-Match on a write takes only *",
            )),
            (Some(c), None) if c.is_any() => Ok(Self::Present),
            (Some(c), None) => Ok(Self::Etag(
                c.as_etag()
                    .map(|e| e.value().to_string())
                    .unwrap_or_default(),
            )),
            (Some(_), Some(_)) => Err(error(
                S3ErrorCode::InvalidArgument,
                "give If-Match or If-None-Match on a write, not both",
            )),
        }
    }

    /// Whether the write goes on, the key holding an object of ETag
    /// `current` (`None`: no object).
    pub(crate) fn check(&self, current: Option<&str>) -> S3Result<()> {
        let failed = |code, message| Err(error(code, message));
        match (self, current) {
            (Self::Unconditional, _) | (Self::Absent, None) | (Self::Present, Some(_)) => Ok(()),
            (Self::Etag(want), Some(etag)) if want == etag => Ok(()),
            (Self::Absent, Some(_)) => failed(
                S3ErrorCode::PreconditionFailed,
                "an object of that key exists (If-None-Match: *)",
            ),
            (Self::Present | Self::Etag(_), None) => {
                failed(S3ErrorCode::NoSuchKey, "no object of that key (If-Match)")
            }
            (Self::Etag(_), Some(_)) => failed(
                S3ErrorCode::PreconditionFailed,
                "the object has another ETag (If-Match)",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditional_writes_decide_as_s3_does() {
        let code = |c: &WriteCondition, current: Option<&str>| {
            c.check(current)
                .err()
                .map(|e| e.code().as_str().to_string())
        };
        let w = WriteCondition::Etag("abc".into());
        assert_eq!(code(&WriteCondition::Unconditional, Some("x")), None);
        assert_eq!(code(&WriteCondition::Absent, None), None);
        assert_eq!(
            code(&WriteCondition::Absent, Some("x")).as_deref(),
            Some("PreconditionFailed")
        );
        assert_eq!(
            code(&WriteCondition::Present, None).as_deref(),
            Some("NoSuchKey")
        );
        assert_eq!(code(&WriteCondition::Present, Some("x")), None);
        assert_eq!(code(&w, Some("abc")), None);
        assert_eq!(code(&w, Some("abd")).as_deref(), Some("PreconditionFailed"));
        assert_eq!(code(&w, None).as_deref(), Some("NoSuchKey"));
        let any = ETagCondition::Any;
        assert_eq!(
            WriteCondition::new(None, Some(&any)).ok(),
            Some(WriteCondition::Absent)
        );
        assert_eq!(
            WriteCondition::new(Some(&any), None).ok(),
            Some(WriteCondition::Present)
        );
        assert!(WriteCondition::new(Some(&any), Some(&any)).is_err());
        assert_eq!(
            WriteCondition::new(None, None).ok(),
            Some(WriteCondition::Unconditional)
        );
    }

    fn at(secs: u64) -> Timestamp {
        Timestamp::from(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
    }

    fn etag(text: &str) -> ETagCondition {
        ETagCondition::parse_http_header(text.as_bytes()).expect("etag")
    }

    fn outcome(c: &Conditions<'_>) -> Option<String> {
        c.check("abc", &at(100), S3ErrorCode::NotModified)
            .err()
            .map(|e| e.code().as_str().to_string())
    }

    #[test]
    fn conditions_decide_in_rfc_order() {
        let (same, other, any) = (etag("\"abc\""), etag("\"xyz\""), etag("*"));
        let (before, now, after) = (at(50), at(100), at(150));
        let none = Conditions::default();
        assert_eq!(outcome(&none), None);
        let c = |m, u, n, s| Conditions {
            matching: m,
            unmodified_since: u,
            none_matching: n,
            modified_since: s,
        };
        assert_eq!(outcome(&c(Some(&same), None, None, None)), None);
        assert_eq!(outcome(&c(Some(&any), None, None, None)), None);
        assert_eq!(
            outcome(&c(Some(&other), None, None, None)).as_deref(),
            Some("PreconditionFailed")
        );
        assert_eq!(
            outcome(&c(None, Some(&before), None, None)).as_deref(),
            Some("PreconditionFailed")
        );
        assert_eq!(outcome(&c(None, Some(&now), None, None)), None);
        // If-Match wins over If-Unmodified-Since.
        assert_eq!(outcome(&c(Some(&same), Some(&before), None, None)), None);
        assert_eq!(
            outcome(&c(None, None, Some(&same), None)).as_deref(),
            Some("NotModified")
        );
        assert_eq!(
            outcome(&c(None, None, Some(&any), None)).as_deref(),
            Some("NotModified")
        );
        assert_eq!(outcome(&c(None, None, Some(&other), None)), None);
        assert_eq!(
            outcome(&c(None, None, None, Some(&now))).as_deref(),
            Some("NotModified")
        );
        assert_eq!(outcome(&c(None, None, None, Some(&before))), None);
        // If-None-Match wins over If-Modified-Since.
        assert_eq!(outcome(&c(None, None, Some(&other), Some(&after))), None);
        assert_eq!(
            c(None, None, Some(&same), None)
                .check("abc", &now, S3ErrorCode::PreconditionFailed)
                .err()
                .map(|e| e.code().as_str().to_string())
                .as_deref(),
            Some("PreconditionFailed")
        );
    }
}
