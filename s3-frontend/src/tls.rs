//! HTTPS for the gateway: a certificate chain and its key from PEM files
//! (`--s3-tls-cert`/`--s3-tls-key`, or the node's cluster certificate),
//! reloaded when the files change (a renewal by cert-manager or an
//! operator needs no restart: new connections get the new certificate;
//! a renewal that does not load keeps the old one and says why).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The gateway's TLS configuration.
pub use rustls::ServerConfig;

/// How often a handshake looks at the files' modification times.
const RECHECK: Duration = Duration::from_secs(1);
/// How long a client has for the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the gateway's certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or parsed.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The key does not fit the certificate, or rustls refused them.
    #[error("the S3 gateway's certificate and key: {0}")]
    Config(String),
}

/// The certificate's files.
#[derive(Clone, Debug)]
pub struct CertFiles {
    /// The chain, leaf first (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

impl CertFiles {
    fn load(&self) -> Result<Arc<CertifiedKey>, TlsError> {
        let file = |path: &Path, reason: String| TlsError::File {
            path: path.to_path_buf(),
            reason,
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .map_err(|e| file(&self.cert, e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| file(&self.cert, e.to_string()))?;
        if chain.is_empty() {
            return Err(file(&self.cert, "holds no certificate".into()));
        }
        let key =
            PrivateKeyDer::from_pem_file(&self.key).map_err(|e| file(&self.key, e.to_string()))?;
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let certified = CertifiedKey::from_der(chain, key, &provider)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(Arc::new(certified))
    }

    fn modified(&self) -> Option<(SystemTime, SystemTime)> {
        let time = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        Some((time(&self.cert)?, time(&self.key)?))
    }
}

/// The certificate in use, and when its files were last looked at.
#[derive(Debug)]
struct Current {
    key: Arc<CertifiedKey>,
    modified: Option<(SystemTime, SystemTime)>,
    checked: Instant,
}

/// Serves the certificate of `files`, reloading it when they change.
#[derive(Debug)]
struct Reloading {
    files: CertFiles,
    current: Mutex<Current>,
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if current.checked.elapsed() >= RECHECK {
            current.checked = Instant::now();
            let modified = self.files.modified();
            if modified.is_some() && modified != current.modified {
                match self.files.load() {
                    Ok(key) => {
                        tracing::info!(cert = %self.files.cert.display(), "the S3 gateway's certificate was reloaded");
                        current.key = key;
                        current.modified = modified;
                    }
                    Err(e) => {
                        tracing::warn!(%e, "the S3 gateway's new certificate does not load: keeping the old one");
                        current.modified = modified;
                    }
                }
            }
        }
        Some(Arc::clone(&current.key))
    }
}

/// The gateway's TLS configuration over `files` (loaded now: an error
/// says which file is wrong), HTTP/1.1, no client certificates (S3
/// clients authenticate with SigV4).
pub fn server_config(files: CertFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let current = Current {
        key: files.load()?,
        modified: files.modified(),
        checked: Instant::now(),
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Reloading {
            files,
            current: Mutex::new(current),
        }));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
