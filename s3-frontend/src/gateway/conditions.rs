//! Conditional requests (RFC 9110 §13.2.2, as S3 applies them to GET and
//! HEAD, and with the `x-amz-copy-source-if-*` headers to CopyObject),
//! sans IO.

use s3s::dto::{ETagCondition, Timestamp};
use s3s::{S3ErrorCode, S3Result};

use super::error;

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

#[cfg(test)]
mod tests {
    use super::*;

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
