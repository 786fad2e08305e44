//! Object tags: up to 10 key-value pairs per object, set by a PUT, a
//! CreateMultipartUpload or a CopyObject with `REPLACE` (the
//! `x-amz-tagging` header, URL-encoded), or by PutObjectTagging, read by
//! GetObjectTagging, counted in GET and HEAD answers
//! (`x-amz-tagging-count`). Kept in one extended attribute in the same
//! URL-encoded form as the header.

use s3s::dto::{Tag, Tagging};
use s3s::{S3ErrorCode, S3Result};

use super::error;

/// The attribute holding an object's tags.
pub(crate) const TAGS_XATTR: &[u8] = b"user.datenlord.s3.tags";
/// Most tags an object has (S3's rule).
pub const TAGS_MAX: usize = 10;
/// Longest tag key, in characters (S3's rule).
pub const TAG_KEY_MAX_CHARS: usize = 128;
/// Longest tag value, in characters (S3's rule).
pub const TAG_VALUE_MAX_CHARS: usize = 256;

/// An object's tags, in the order given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tags(Vec<(String, String)>);

impl Tags {
    /// No tags.
    pub(crate) const EMPTY: Self = Self(Vec::new());

    /// From an `x-amz-tagging` header (none: no tags), checked.
    pub(crate) fn from_header(header: Option<&str>) -> S3Result<Self> {
        let Some(header) = header else {
            return Ok(Self::default());
        };
        Self::checked(
            form_urlencoded::parse(header.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// From a PutObjectTagging body, checked.
    pub(crate) fn from_tagging(tagging: Tagging) -> S3Result<Self> {
        Self::checked(
            tagging
                .tag_set
                .into_iter()
                .map(|t| (t.key.unwrap_or_default(), t.value.unwrap_or_default()))
                .collect(),
        )
    }

    /// S3's rules: at most [`TAGS_MAX`], keys of 1 to
    /// [`TAG_KEY_MAX_CHARS`] characters each given once, values of at most
    /// [`TAG_VALUE_MAX_CHARS`].
    fn checked(pairs: Vec<(String, String)>) -> S3Result<Self> {
        let bad = |why: String| Err(error(S3ErrorCode::InvalidTag, why));
        if pairs.len() > TAGS_MAX {
            return bad(format!(
                "{} tags: an object has at most {TAGS_MAX}",
                pairs.len()
            ));
        }
        for (i, (key, value)) in pairs.iter().enumerate() {
            if key.is_empty() || key.chars().count() > TAG_KEY_MAX_CHARS {
                return bad(format!(
                    "tag key {key:?}: give 1 to {TAG_KEY_MAX_CHARS} characters"
                ));
            }
            if value.chars().count() > TAG_VALUE_MAX_CHARS {
                return bad(format!(
                    "the value of tag {key:?} is longer than {TAG_VALUE_MAX_CHARS} characters"
                ));
            }
            if pairs[..i].iter().any(|(k, _)| k == key) {
                return bad(format!("tag key {key:?} is given twice"));
            }
        }
        Ok(Self(pairs))
    }

    /// Whether there are none.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// As the attribute keeps them.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &self.0 {
            out.append_pair(k, v);
        }
        out.finish().into_bytes()
    }

    /// From the attribute (written by this gateway: taken as it is).
    pub(crate) fn decode(bytes: &[u8]) -> Self {
        Self(
            form_urlencoded::parse(bytes)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// As GetObjectTagging answers them.
    pub(crate) fn to_tag_set(&self) -> Vec<Tag> {
        self.0
            .iter()
            .map(|(k, v)| Tag {
                key: Some(k.clone()),
                value: Some(v.clone()),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(result: S3Result<Tags>) -> Option<String> {
        result.err().map(|e| e.code().as_str().to_string())
    }

    #[test]
    fn tags_round_trip_and_break_no_rule_of_s3() {
        let tags = Tags::from_header(Some("project=dl%20s3&team=a%26b&empty=")).expect("tags");
        assert_eq!(tags.len(), 3);
        assert_eq!(Tags::decode(&tags.encode()), tags);
        let set = tags.to_tag_set();
        assert_eq!(set[1].value.as_deref(), Some("a&b"));
        assert_eq!(set[0].value.as_deref(), Some("dl s3"));
        assert!(Tags::from_header(None).expect("none").is_empty());
        let many = (0..11)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join("&");
        assert_eq!(
            code(Tags::from_header(Some(&many))).as_deref(),
            Some("InvalidTag")
        );
        let long_key = format!("{}=v", "k".repeat(129));
        assert_eq!(
            code(Tags::from_header(Some(&long_key))).as_deref(),
            Some("InvalidTag")
        );
        let long_value = format!("k={}", "v".repeat(257));
        assert_eq!(
            code(Tags::from_header(Some(&long_value))).as_deref(),
            Some("InvalidTag")
        );
        assert_eq!(
            code(Tags::from_header(Some("a=1&a=2"))).as_deref(),
            Some("InvalidTag")
        );
        assert_eq!(
            code(Tags::from_header(Some("=1"))).as_deref(),
            Some("InvalidTag")
        );
        let body = Tagging {
            tag_set: vec![Tag {
                key: Some("k".into()),
                value: Some("v".into()),
            }],
        };
        assert_eq!(Tags::from_tagging(body).expect("tags").len(), 1);
    }
}
