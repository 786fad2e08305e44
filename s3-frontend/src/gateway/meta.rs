//! What an object keeps besides its bytes: the HTTP headers a PUT (or the
//! CreateMultipartUpload, or a CopyObject with `REPLACE`) gave it and its
//! user metadata (`x-amz-meta-*`), in one extended attribute as JSON;
//! GET and HEAD answer them back.

use std::collections::BTreeMap;

use s3s::{S3ErrorCode, S3Result};
use serde_json::{json, Map, Value};

use super::error;

/// The metadata a request (PUT, CreateMultipartUpload, CopyObject) gives:
/// its five header fields and `metadata`.
macro_rules! requested_meta {
    ($input:expr) => {
        $crate::gateway::meta::ObjectMeta::new(
            [
                $input.content_type.as_ref(),
                $input.content_encoding.as_ref(),
                $input.content_disposition.as_ref(),
                $input.content_language.as_ref(),
                $input.cache_control.as_ref(),
            ],
            $input.metadata.as_ref(),
        )
    };
}
pub(crate) use requested_meta;

/// The attribute holding an object's metadata.
pub(crate) const META_XATTR: &[u8] = b"user.datenlord.s3.meta";
/// Most bytes of user metadata (keys and values), as S3 allows.
pub(crate) const USER_META_MAX_BYTES: usize = 2048;

/// An object's headers and user metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ObjectMeta {
    pub(crate) content_type: Option<String>,
    pub(crate) content_encoding: Option<String>,
    pub(crate) content_disposition: Option<String>,
    pub(crate) content_language: Option<String>,
    pub(crate) cache_control: Option<String>,
    pub(crate) user: BTreeMap<String, String>,
}

/// The headers of an object by their JSON names.
const HEADERS: [&str; 5] = [
    "content-type",
    "content-encoding",
    "content-disposition",
    "content-language",
    "cache-control",
];

impl ObjectMeta {
    /// No headers, no user metadata.
    pub(crate) const EMPTY: Self = Self {
        content_type: None,
        content_encoding: None,
        content_disposition: None,
        content_language: None,
        cache_control: None,
        user: BTreeMap::new(),
    };

    /// From a request's fields; refused when the user metadata is larger
    /// than S3 allows.
    pub(crate) fn new(
        headers: [Option<&String>; 5],
        user: Option<&std::collections::HashMap<String, String>>,
    ) -> S3Result<Self> {
        let [content_type, content_encoding, content_disposition, content_language, cache_control] =
            headers.map(Option::<&String>::cloned);
        let user: BTreeMap<String, String> = user
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let size: usize = user.iter().map(|(k, v)| k.len() + v.len()).sum();
        if size > USER_META_MAX_BYTES {
            return Err(error(
                S3ErrorCode::MetadataTooLarge,
                format!("{size} bytes of user metadata (at most {USER_META_MAX_BYTES})"),
            ));
        }
        Ok(Self {
            content_type,
            content_encoding,
            content_disposition,
            content_language,
            cache_control,
            user,
        })
    }

    fn headers(&self) -> [&Option<String>; 5] {
        [
            &self.content_type,
            &self.content_encoding,
            &self.content_disposition,
            &self.content_language,
            &self.cache_control,
        ]
    }

    /// Nothing to keep.
    pub(crate) fn is_empty(&self) -> bool {
        self.user.is_empty() && self.headers().iter().all(|h| h.is_none())
    }

    /// The attribute's value.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut object = Map::new();
        for (name, value) in HEADERS.iter().zip(self.headers()) {
            if let Some(value) = value {
                object.insert((*name).to_string(), Value::String(value.clone()));
            }
        }
        object.insert("user".into(), json!(self.user));
        Value::Object(object).to_string().into_bytes()
    }

    /// From the attribute's value; what does not decode is left out (the
    /// object is still served, without it).
    pub(crate) fn decode(bytes: &[u8]) -> Self {
        let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(bytes) else {
            return Self::default();
        };
        let text = |name: &str| object.get(name).and_then(Value::as_str).map(str::to_string);
        let user = object
            .get("user")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            content_type: text(HEADERS[0]),
            content_encoding: text(HEADERS[1]),
            content_disposition: text(HEADERS[2]),
            content_language: text(HEADERS[3]),
            cache_control: text(HEADERS[4]),
            user,
        }
    }

    /// The user metadata as s3s answers it (none when empty).
    pub(crate) fn user_map(&self) -> Option<std::collections::HashMap<String, String>> {
        (!self.user.is_empty()).then(|| self.user.clone().into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_roundtrips_and_is_bounded() {
        let user = std::collections::HashMap::from([("owner".to_string(), "ml-team".to_string())]);
        let content_type = "application/json".to_string();
        let meta = ObjectMeta::new([Some(&content_type), None, None, None, None], Some(&user))
            .expect("meta");
        assert!(!meta.is_empty());
        assert_eq!(ObjectMeta::decode(&meta.encode()), meta);
        assert_eq!(ObjectMeta::decode(b"not json"), ObjectMeta::default());
        assert_eq!(
            ObjectMeta::decode(br#"{"user": 5, "content-type": 7}"#),
            ObjectMeta::default()
        );
        assert!(ObjectMeta::default().is_empty());
        let big =
            std::collections::HashMap::from([("k".to_string(), "v".repeat(USER_META_MAX_BYTES))]);
        let err = ObjectMeta::new([None; 5], Some(&big)).expect_err("too large");
        assert_eq!(err.code().as_str(), "MetadataTooLarge");
    }
}
