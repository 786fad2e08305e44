//! The AWS shared configuration files (`~/.aws/credentials`,
//! `~/.aws/config`), read like the AWS CLI reads them, as the fallback for
//! S3 settings not given in `AWS_*` variables: keys, region, endpoint.
//!
//! The parser is plain code over the files' text; `load` does the IO.

use std::collections::HashMap;
use std::path::PathBuf;

use super::remote::S3Settings;

/// Largest shared file read (they hold a few profiles).
const SHARED_FILE_BYTES_MAX: u64 = 1 << 20;

/// `key = value` pairs of section `[name]` of an INI text.
fn section(text: &str, name: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = header.trim() == name;
            continue;
        }
        if inside {
            if let Some((key, value)) = line.split_once('=') {
                out.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
            }
        }
    }
    out
}

/// The settings of `profile` in the credentials file text and the config
/// file text (where profiles other than `default` are `[profile NAME]`).
pub fn shared_settings(credentials: &str, config: &str, profile: &str) -> S3Settings {
    let creds = section(credentials, profile);
    let config_section = if profile == "default" {
        "default".to_owned()
    } else {
        format!("profile {profile}")
    };
    let conf = section(config, &config_section);
    let get = |key: &str| {
        creds
            .get(key)
            .or_else(|| conf.get(key))
            .filter(|v| !v.is_empty())
            .cloned()
    };
    S3Settings {
        endpoint: get("endpoint_url"),
        region: get("region"),
        access_key_id: get("aws_access_key_id"),
        secret_access_key: get("aws_secret_access_key"),
        allow_http: None,
    }
}

fn read_small(path: Option<PathBuf>) -> String {
    use std::io::Read;
    let Some(path) = path else {
        return String::new();
    };
    let mut text = String::new();
    if let Ok(file) = std::fs::File::open(&path) {
        if file
            .take(SHARED_FILE_BYTES_MAX)
            .read_to_string(&mut text)
            .is_err()
        {
            tracing::warn!(path = %path.display(), "ignoring an unreadable AWS shared file");
            text.clear();
        }
    }
    text
}

/// The settings of the current profile (`AWS_PROFILE`, else `default`)
/// from the files named by `AWS_SHARED_CREDENTIALS_FILE` and
/// `AWS_CONFIG_FILE`, else `~/.aws/credentials` and `~/.aws/config`.
/// Missing files give empty settings.
pub fn load() -> S3Settings {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let path = |var: &str, name: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".aws").join(name)))
    };
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    shared_settings(
        &read_small(path("AWS_SHARED_CREDENTIALS_FILE", "credentials")),
        &read_small(path("AWS_CONFIG_FILE", "config")),
        &profile,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREDENTIALS: &str = "
# comment
[default]
aws_access_key_id = AKIADEFAULT
aws_secret_access_key=secret-default

[prod]
aws_access_key_id = AKIAPROD
aws_secret_access_key = secret-prod
";
    const CONFIG: &str = "
[default]
region = eu-west-1
endpoint_url = http://127.0.0.1:9000

[profile prod]
region = us-west-2
[prod]
region = ignored-without-profile-prefix
";

    #[test]
    fn profiles_take_keys_from_credentials_and_region_from_config() {
        let d = shared_settings(CREDENTIALS, CONFIG, "default");
        assert_eq!(d.access_key_id.as_deref(), Some("AKIADEFAULT"));
        assert_eq!(d.secret_access_key.as_deref(), Some("secret-default"));
        assert_eq!(d.region.as_deref(), Some("eu-west-1"));
        assert_eq!(d.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        let p = shared_settings(CREDENTIALS, CONFIG, "prod");
        assert_eq!(p.access_key_id.as_deref(), Some("AKIAPROD"));
        assert_eq!(p.region.as_deref(), Some("us-west-2"));
        assert_eq!(p.endpoint, None);
    }

    #[test]
    fn missing_or_garbled_files_give_nothing() {
        let none = shared_settings("", "", "default");
        assert_eq!(none.access_key_id, None);
        let garbled = shared_settings("[default\nno equals sign\n=\n", "\u{0}[x]", "default");
        assert_eq!(garbled.access_key_id, None);
        assert_eq!(garbled.region, None);
    }
}
