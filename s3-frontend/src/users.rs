//! Who may use the gateway: access keys, each with its secret and the
//! uid/gid its requests act as (file permissions are checked as for a
//! local user of those ids).

use std::collections::BTreeMap;

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
            },
        );
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
