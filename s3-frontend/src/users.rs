//! Who may use the gateway: access keys, each with its secret, the
//! uid/gid (and groups) its requests act as (file permissions are checked
//! as for a local user of those ids), and optionally the buckets it is
//! bound to. One user from the environment, or several from a TOML file:
//!
//! ```toml
//! [[user]]
//! access_key = "trainer"
//! secret_key = "…"
//! uid = 1000
//! gid = 1000
//! groups = [1000, 27]         # optional
//! buckets = ["datasets"]      # optional: only these buckets
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use datenlord_fs::Creds;
use s3s::auth::{S3Auth, SecretKey};
use s3s::{S3Error, S3ErrorCode, S3Result};

/// Environment variables of the single-user configuration.
pub const ACCESS_KEY_VAR: &str = "DATENLORD_S3_ACCESS_KEY";
/// The secret of [`ACCESS_KEY_VAR`].
pub const SECRET_KEY_VAR: &str = "DATENLORD_S3_SECRET_KEY";
/// The uid (and, after a `:`, gid) its requests act as; default `0:0`.
pub const IDS_VAR: &str = "DATENLORD_S3_IDS";

/// One access key.
#[derive(Clone)]
struct User {
    secret: String,
    creds: Creds,
    /// The buckets it may use; all when `None`.
    buckets: Option<Vec<String>>,
}

/// A user as a credentials file gives it.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUser {
    access_key: String,
    secret_key: String,
    uid: u32,
    gid: u32,
    #[serde(default)]
    groups: Vec<u32>,
    #[serde(default)]
    buckets: Option<Vec<String>>,
}

/// A credentials file.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsFile {
    #[serde(rename = "user")]
    users: Vec<FileUser>,
}

/// The access keys.
#[derive(Default)]
pub struct Users(BTreeMap<String, User>);

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets.
        f.debug_list().entries(self.0.keys()).finish()
    }
}

impl Users {
    /// Adds `access_key` with `secret`, acting as `uid:gid`.
    pub fn add(&mut self, access_key: &str, secret: &str, uid: u32, gid: u32) {
        self.0.insert(
            access_key.to_string(),
            User {
                secret: secret.to_string(),
                creds: Creds {
                    uid,
                    gid,
                    groups: vec![gid],
                },
                buckets: None,
            },
        );
    }

    /// The users of a credentials file's text (see the module doc).
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let file: CredentialsFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut users = Self::default();
        for user in file.users {
            if user.access_key.is_empty() || user.secret_key.is_empty() {
                return Err("an access_key or secret_key is empty".into());
            }
            let mut groups = user.groups;
            if !groups.contains(&user.gid) {
                groups.push(user.gid);
            }
            let entry = User {
                secret: user.secret_key,
                creds: Creds {
                    uid: user.uid,
                    gid: user.gid,
                    groups,
                },
                buckets: user.buckets,
            };
            if users.0.insert(user.access_key.clone(), entry).is_some() {
                return Err(format!("access key {:?} is given twice", user.access_key));
            }
        }
        if users.0.is_empty() {
            return Err("no [[user]] in it".into());
        }
        Ok(users)
    }

    /// The users of credentials file `path`, which only its owner may read
    /// (it holds secrets).
    pub fn from_file(path: &Path) -> Result<Self, String> {
        use std::os::unix::fs::PermissionsExt as _;
        let shown = path.display();
        let meta = std::fs::metadata(path).map_err(|e| format!("{shown}: {e}"))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(format!(
                "{shown} holds secrets and others may read it: chmod 600 {shown}"
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
        Self::from_toml(&text).map_err(|e| format!("{shown}: {e}"))
    }

    /// Whether `access_key` may use `bucket`.
    pub fn may_use(&self, access_key: &str, bucket: &str) -> bool {
        self.0.get(access_key).is_some_and(|u| {
            u.buckets
                .as_ref()
                .is_none_or(|buckets| buckets.iter().any(|b| b == bucket))
        })
    }

    /// The single user of the environment ([`ACCESS_KEY_VAR`],
    /// [`SECRET_KEY_VAR`], [`IDS_VAR`]); `lookup` reads a variable.
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let (Some(access), Some(secret)) = (lookup(ACCESS_KEY_VAR), lookup(SECRET_KEY_VAR)) else {
            return Err(format!(
                "the S3 gateway needs an access key: set {ACCESS_KEY_VAR} and {SECRET_KEY_VAR} (and {IDS_VAR}=UID:GID for the user its requests act as; default 0:0)"
            ));
        };
        if access.is_empty() || secret.is_empty() {
            return Err(format!(
                "{ACCESS_KEY_VAR} and {SECRET_KEY_VAR} must not be empty"
            ));
        }
        let (uid, gid) = match lookup(IDS_VAR) {
            None => (0, 0),
            Some(ids) => parse_ids(&ids)
                .ok_or_else(|| format!("{IDS_VAR}={ids:?}: give UID:GID, e.g. 1000:1000"))?,
        };
        let mut users = Self::default();
        users.add(&access, &secret, uid, gid);
        Ok(users)
    }

    /// The credentials `access_key`'s requests act with.
    pub fn creds(&self, access_key: &str) -> Option<Creds> {
        self.0.get(access_key).map(|u| u.creds.clone())
    }
}

fn parse_ids(text: &str) -> Option<(u32, u32)> {
    let (uid, gid) = text.split_once(':')?;
    Some((uid.parse().ok()?, gid.parse().ok()?))
}

/// Requests are signed by a known key (s3s checked the signature) and
/// touch only the buckets the key is bound to.
#[async_trait::async_trait]
impl s3s::access::S3Access for Users {
    async fn check(&self, cx: &mut s3s::access::S3AccessContext<'_>) -> S3Result<()> {
        let Some(key) = cx.credentials().map(|c| c.access_key.clone()) else {
            return Err(S3Error::with_message(
                S3ErrorCode::AccessDenied,
                "anonymous access is not allowed",
            ));
        };
        let bucket = match cx.s3_path() {
            s3s::path::S3Path::Root => return Ok(()),
            s3s::path::S3Path::Bucket { bucket } | s3s::path::S3Path::Object { bucket, .. } => {
                bucket.to_string()
            }
        };
        if self.may_use(&key, &bucket) {
            Ok(())
        } else {
            Err(S3Error::with_message(
                S3ErrorCode::AccessDenied,
                format!("this access key may not use bucket {bucket}"),
            ))
        }
    }

    async fn copy_object(
        &self,
        req: &mut s3s::S3Request<s3s::dto::CopyObjectInput>,
    ) -> S3Result<()> {
        let key = req
            .credentials
            .as_ref()
            .map(|c| c.access_key.clone())
            .unwrap_or_default();
        match &req.input.copy_source {
            s3s::dto::CopySource::Bucket { bucket, .. } if !self.may_use(&key, bucket) => {
                Err(S3Error::with_message(
                    S3ErrorCode::AccessDenied,
                    format!("this access key may not use bucket {bucket}"),
                ))
            }
            _ => Ok(()),
        }
    }
}

#[async_trait::async_trait]
impl S3Auth for Users {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        self.0
            .get(access_key)
            .map(|u| SecretKey::from(u.secret.as_str()))
            .ok_or_else(|| {
                S3Error::with_message(S3ErrorCode::InvalidAccessKeyId, "unknown access key")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_files_give_users_bound_to_buckets_or_say_what_is_wrong() {
        use std::os::unix::fs::PermissionsExt as _;
        let users = Users::from_toml(
            r#"
            [[user]]
            access_key = "all"
            secret_key = "s1"
            uid = 1000
            gid = 100
            groups = [27]

            [[user]]
            access_key = "bound"
            secret_key = "s2"
            uid = 1001
            gid = 1001
            buckets = ["datasets"]
            "#,
        )
        .expect("users");
        let all = users.creds("all").expect("all");
        assert_eq!((all.uid, all.gid, all.groups), (1000, 100, vec![27, 100]));
        assert!(users.may_use("all", "anything"));
        assert!(users.may_use("bound", "datasets"));
        assert!(!users.may_use("bound", "other"));
        assert!(!users.may_use("nobody", "datasets"));
        for (text, why) in [
            ("", "user"),
            ("[[user]]\naccess_key = \"a\"\nsecret_key = \"\"\nuid = 1\ngid = 1", "empty"),
            ("[[user]]\naccess_key = \"a\"\nsecret_key = \"b\"\nuid = 1\ngid = 1\n[[user]]\naccess_key = \"a\"\nsecret_key = \"c\"\nuid = 2\ngid = 2", "twice"),
            ("[[user]]\naccess_key = \"a\"\nsecret_key = \"b\"\nuid = 1\ngid = 1\npassword = 3", "password"),
        ] {
            let err = Users::from_toml(text).expect_err(text);
            assert!(err.contains(why), "{text}: {err}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("credentials.toml");
        std::fs::write(
            &path,
            "[[user]]\naccess_key = \"a\"\nsecret_key = \"b\"\nuid = 1\ngid = 1\n",
        )
        .expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(Users::from_file(&path)
            .expect_err("readable by others")
            .contains("chmod 600"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(Users::from_file(&path)
            .expect("private")
            .creds("a")
            .is_some());
    }

    #[test]
    fn the_environment_gives_one_user_or_says_what_is_missing() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| (*v).to_string())
            }
        };
        let users = Users::from_env(env(&[(ACCESS_KEY_VAR, "ak"), (SECRET_KEY_VAR, "sk")]))
            .expect("a user");
        assert_eq!(users.creds("ak").map(|c| (c.uid, c.gid)), Some((0, 0)));
        assert!(users.creds("other").is_none());
        assert!(!format!("{users:?}").contains("sk"), "no secret in logs");
        let users = Users::from_env(env(&[
            (ACCESS_KEY_VAR, "ak"),
            (SECRET_KEY_VAR, "sk"),
            (IDS_VAR, "1000:100"),
        ]))
        .expect("a user");
        assert_eq!(users.creds("ak").map(|c| (c.uid, c.gid)), Some((1000, 100)));
        let err = Users::from_env(env(&[(ACCESS_KEY_VAR, "ak")])).expect_err("no secret");
        assert!(err.contains(SECRET_KEY_VAR), "{err}");
        let err = Users::from_env(env(&[
            (ACCESS_KEY_VAR, "ak"),
            (SECRET_KEY_VAR, "sk"),
            (IDS_VAR, "root"),
        ]))
        .expect_err("bad ids");
        assert!(err.contains("UID:GID"), "{err}");
    }
}
