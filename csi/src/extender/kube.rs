//! The two Kubernetes API reads the extender makes for a claim: the
//! PersistentVolumeClaim (which volume it is bound to) and that
//! PersistentVolume (whether it is a DatenLord volume, and its id). In a
//! pod, the API server, its CA and the service account's token are found
//! where Kubernetes puts them; elsewhere `--kube-api` names the server.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::{Claim, Error};

/// Where Kubernetes mounts a pod's service account credentials.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// How long one API call may take (the scheduler gives the extender 5 s).
const CALL_TIMEOUT_MS: u64 = 2_000;
/// Largest API answer read (a claim or a volume is a few KiB).
const ANSWER_MAX_BYTES: usize = 1 << 20;
/// Longest Kubernetes object name (a DNS subdomain).
const OBJECT_NAME_MAX_BYTES: usize = 253;

/// Whether `name` is a Kubernetes object name (a DNS subdomain: lower-case
/// letters, digits, `-` and `.`), so it can go into an API path as it is.
pub fn is_object_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= OBJECT_NAME_MAX_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.'])
}

/// How to reach the API server.
#[derive(Clone, Debug, Default)]
pub struct KubeConfig {
    /// Its URL (`https://host:port`); default: the in-cluster address
    /// from `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT`.
    pub api: Option<String>,
    /// A bearer token file (read at every call: tokens are rotated);
    /// default in a pod: the service account's.
    pub token_file: Option<PathBuf>,
    /// The CA bundle the server's certificate is checked against; default
    /// in a pod: the service account's `ca.crt`.
    pub ca_file: Option<PathBuf>,
}

/// A client of the API server.
#[derive(Debug)]
pub struct Kube {
    client: reqwest::Client,
    api: String,
    token_file: Option<PathBuf>,
}

impl Kube {
    /// A client as `config` says, with the in-cluster defaults for what it
    /// leaves out.
    pub fn new(config: &KubeConfig) -> Result<Self, Error> {
        let in_cluster = config.api.is_none();
        let api = match &config.api {
            Some(api) => api.trim_end_matches('/').to_string(),
            None => in_cluster_api()?,
        };
        let account = Path::new(SERVICE_ACCOUNT_DIR);
        let token_file = config
            .token_file
            .clone()
            .or_else(|| in_cluster.then(|| account.join("token")));
        let ca_file = config
            .ca_file
            .clone()
            .or_else(|| in_cluster.then(|| account.join("ca.crt")));
        let mut builder =
            reqwest::Client::builder().timeout(Duration::from_millis(CALL_TIMEOUT_MS));
        if let Some(path) = &ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                Error::Config(format!(
                    "reading the Kubernetes API's CA {}: {e} (give --kube-ca-file)",
                    path.display()
                ))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                Error::Config(format!("{} holds no PEM certificate: {e}", path.display()))
            })?;
            builder = builder.tls_certs_only(certs);
        }
        let client = builder
            .build()
            .map_err(|e| Error::Config(format!("the Kubernetes API client: {e}")))?;
        Ok(Self {
            client,
            api,
            token_file,
        })
    }

    /// The DatenLord volume id `claim` is bound to; `None` when the claim
    /// is not there, not bound yet, or bound to another driver's volume.
    pub async fn volume_of(&self, claim: &Claim) -> Result<Option<String>, Error> {
        let path = format!(
            "/api/v1/namespaces/{}/persistentvolumeclaims/{}",
            claim.namespace, claim.name
        );
        let Some(pvc) = self.get(&path).await? else {
            return Ok(None);
        };
        let Some(pv_name) = pvc
            .pointer("/spec/volumeName")
            .and_then(Value::as_str)
            .filter(|name| is_object_name(name))
        else {
            return Ok(None);
        };
        let Some(pv) = self
            .get(&format!("/api/v1/persistentvolumes/{pv_name}"))
            .await?
        else {
            return Ok(None);
        };
        Ok(datenlord_volume(&pv))
    }

    /// GETs `path`: the object, or `None` when it is not there (404).
    async fn get(&self, path: &str) -> Result<Option<Value>, Error> {
        let url = format!("{}{path}", self.api);
        let mut request = self
            .client
            .get(&url)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(file) = &self.token_file {
            let token = std::fs::read_to_string(file).map_err(|e| {
                Error::Kube(format!(
                    "reading the token {}: {e} (give --kube-token-file)",
                    file.display()
                ))
            })?;
            request = request.bearer_auth(token.trim());
        }
        let answer = request
            .send()
            .await
            .map_err(|e| Error::Kube(format!("GET {url}: {e}")))?;
        let status = answer.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(Error::Kube(format!(
                "GET {url}: {status} (the extender's service account needs get on persistentvolumeclaims and persistentvolumes)"
            )));
        }
        if answer
            .content_length()
            .is_some_and(|len| len > ANSWER_MAX_BYTES as u64)
        {
            return Err(Error::Kube(format!(
                "GET {url}: an answer over {ANSWER_MAX_BYTES} bytes"
            )));
        }
        let body = answer
            .bytes()
            .await
            .map_err(|e| Error::Kube(format!("GET {url}: {e}")))?;
        if body.len() > ANSWER_MAX_BYTES {
            return Err(Error::Kube(format!(
                "GET {url}: an answer over {ANSWER_MAX_BYTES} bytes"
            )));
        }
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| Error::Kube(format!("GET {url}: not JSON: {e}")))
    }
}

/// The in-cluster API address, from the variables Kubernetes sets in every
/// pod.
fn in_cluster_api() -> Result<String, Error> {
    let host = std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| {
        Error::Config(
            "not in a Kubernetes pod (KUBERNETES_SERVICE_HOST is unset): give --kube-api URL"
                .into(),
        )
    })?;
    let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
    Ok(if host.contains(':') {
        format!("https://[{host}]:{port}")
    } else {
        format!("https://{host}:{port}")
    })
}

/// The volume id of a PersistentVolume of the DatenLord driver.
pub fn datenlord_volume(pv: &Value) -> Option<String> {
    let csi = pv.pointer("/spec/csi")?;
    if csi.get("driver").and_then(Value::as_str) != Some(crate::DRIVER_NAME) {
        return None;
    }
    csi.get("volumeHandle")
        .and_then(Value::as_str)
        .filter(|handle| !handle.is_empty())
        .map(str::to_string)
}
