//! The cluster's own certificate authority (`datenlord certs`): a CA made
//! once per cluster, and certificates that carry each peer's role and
//! Raft id (see [`crate::tls`]).
//!
//! A CA directory holds `ca.pem` and `ca-key.pem` (0600: whoever reads it
//! can make masters). `issue` writes a TLS directory, usable as is as a
//! `--tls-dir`: `ca.pem`, `cert.pem`, `key.pem` (0600).

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

use crate::tls::{Identity, Role, CA_CERT_FILE, CERT_FILE, KEY_FILE};

/// The CA's private key in a CA directory.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// How long a CA is valid unless told otherwise.
pub const CA_DAYS_DEFAULT: u32 = 3650;
/// How long a peer's certificate is valid unless told otherwise.
pub const CERT_DAYS_DEFAULT: u32 = 365;
/// Longest name a certificate takes (its common name).
pub const NAME_BYTES_MAX: usize = 64;
/// Bytes of a certificate's random serial number.
const SERIAL_BYTES: usize = 16;

/// Errors of making a CA or a certificate; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A request that cannot be honored.
    #[error("{0}")]
    Invalid(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// Which file.
        path: PathBuf,
        /// The system's error.
        source: std::io::Error,
    },
    /// The CA files could not be used.
    #[error("the CA in {dir}: {reason}")]
    Ca {
        /// The CA directory.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
    /// rcgen failed.
    #[error("making the certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// What to put in a peer's certificate.
#[derive(Clone, Debug)]
pub struct CertRequest {
    /// A name for people: the certificate's common name (host or role).
    pub name: String,
    /// The holder's role.
    pub role: Role,
    /// Its Raft id: required for masters and nodes, refused for admins.
    pub id: Option<u64>,
    /// Days of validity from now.
    pub days: u32,
    /// Host names and IP addresses the certificate is also valid for, for
    /// clients that check the name they connect by (an S3 client of the
    /// gateway); cluster peers check the role and id instead.
    pub hosts: Vec<String>,
}

/// Makes a new CA in `dir` (created 0700 if missing). Refuses a directory
/// that already has one: a second CA would lock every peer out.
pub fn init_ca(dir: &Path, days: u32) -> Result<(), CertError> {
    if days == 0 {
        return Err(CertError::Invalid(
            "a CA valid for 0 days: give --days 1 or more".into(),
        ));
    }
    make_private_dir(dir)?;
    for name in [CA_CERT_FILE, CA_KEY_FILE] {
        if dir.join(name).exists() {
            return Err(CertError::Invalid(format!(
                "{} exists: {} already holds a CA (nothing was changed; use another directory for a new CA)",
                dir.join(name).display(),
                dir.display()
            )));
        }
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, "DatenLord cluster CA");
    params.distinguished_name = subject;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(random_serial());
    validity(&mut params, days);
    let cert = params.self_signed(&key)?;
    write_private(&dir.join(CA_KEY_FILE), key.serialize_pem().as_bytes())?;
    write_private(&dir.join(CA_CERT_FILE), cert.pem().as_bytes())?;
    Ok(())
}

/// Issues a certificate for `request` with the CA in `ca_dir` and writes
/// a TLS directory to `out` (created 0700; refused if it already holds a
/// certificate). Returns the identity the certificate carries.
pub fn issue(ca_dir: &Path, out: &Path, request: &CertRequest) -> Result<Identity, CertError> {
    check(request)?;
    let ca_error = |reason: String| CertError::Ca {
        dir: ca_dir.to_path_buf(),
        reason,
    };
    let read = |name: &str| {
        let path = ca_dir.join(name);
        std::fs::read_to_string(&path).map_err(|source| CertError::Io { path, source })
    };
    let ca_pem = read(CA_CERT_FILE)?;
    let ca_key = KeyPair::from_pem(&read(CA_KEY_FILE)?)
        .map_err(|e| ca_error(format!("{CA_KEY_FILE}: {e}")))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)
        .map_err(|e| ca_error(format!("{CA_CERT_FILE}: {e}")))?;
    if out.join(CERT_FILE).exists() || out.join(KEY_FILE).exists() {
        return Err(CertError::Invalid(format!(
            "{} already holds a certificate (nothing was changed; issue into a new directory)",
            out.display()
        )));
    }

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, request.name.as_str());
    params.distinguished_name = subject;
    let uri = Identity::uri(request.role, request.id);
    params.subject_alt_names = vec![SanType::URI(uri.try_into()?)];
    for host in &request.hosts {
        params
            .subject_alt_names
            .push(match host.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(host.as_str().try_into().map_err(|e| {
                    CertError::Invalid(format!(
                        "--host {host}: not a host name or an IP address ({e})"
                    ))
                })?),
            });
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Masters and nodes both connect and accept; admins only connect, but
    // one kind of certificate keeps the checks in one place.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, request.days);
    let cert = params.signed_by(&key, &issuer)?;

    make_private_dir(out)?;
    write_private(&out.join(KEY_FILE), key.serialize_pem().as_bytes())?;
    write_private(&out.join(CERT_FILE), cert.pem().as_bytes())?;
    write_private(&out.join(CA_CERT_FILE), ca_pem.as_bytes())?;
    Identity::from_cert(cert.der()).map_err(|e| CertError::Invalid(e.to_string()))
}

fn check(request: &CertRequest) -> Result<(), CertError> {
    let name = &request.name;
    if name.is_empty()
        || name.len() > NAME_BYTES_MAX
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    {
        return Err(CertError::Invalid(format!(
            "--name {name:?}: use 1 to {NAME_BYTES_MAX} letters, digits, '-', '.' or '_' (e.g. the host name)"
        )));
    }
    if request.days == 0 {
        return Err(CertError::Invalid(
            "a certificate valid for 0 days: give --days 1 or more".into(),
        ));
    }
    match (request.role.has_id(), request.id) {
        (true, None) => Err(CertError::Invalid(format!(
            "a {} certificate carries its Raft id: give --id (the --id of the master, the --node-id of the node)",
            request.role.as_str()
        ))),
        (true, Some(0)) => Err(CertError::Invalid(
            "id 0 is reserved: masters and nodes are numbered from 1".into(),
        )),
        (false, Some(_)) => Err(CertError::Invalid(format!(
            "an {} certificate carries no id: leave out --id",
            request.role.as_str()
        ))),
        _ => Ok(()),
    }
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    // A little slack for peers whose clocks run behind.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; SERIAL_BYTES];
    let random = rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut bytes);
    if random.is_err() {
        // Never reached with aws-lc; a serial from the clock and the
        // process still differs between certificates.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes.copy_from_slice(&(nanos ^ u128::from(std::process::id())).to_be_bytes());
    }
    // A positive, non-zero DER integer.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn make_private_dir(dir: &Path) -> Result<(), CertError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| CertError::Io {
            path: dir.to_path_buf(),
            source,
        })
}

/// Writes a new file readable by its owner only, synced.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
}

/// A throwaway CA for tests in this crate.
#[cfg(test)]
pub(crate) mod testing {
    use super::{init_ca, issue, CertRequest};
    use crate::link::Security;
    use crate::tls::Role;

    /// A CA in a temporary directory, and certificates issued by it.
    pub(crate) struct TestCa {
        root: tempfile::TempDir,
    }

    impl TestCa {
        pub(crate) fn new() -> Self {
            let root = tempfile::tempdir().expect("tempdir");
            init_ca(&root.path().join("ca"), 1).expect("init");
            Self { root }
        }

        /// Credentials of a new certificate for `role` and `id`.
        pub(crate) fn security(&self, role: Role, id: Option<u64>) -> Security {
            let out = tempfile::tempdir_in(self.root.path()).expect("tempdir");
            let dir = out.path().join("tls");
            let request = CertRequest {
                name: "test".into(),
                role,
                id,
                days: 1,
                hosts: Vec::new(),
            };
            issue(&self.root.path().join("ca"), &dir, &request).expect("issue");
            Security::from_dir(Some(&dir)).expect("load")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(role: Role, id: Option<u64>) -> CertRequest {
        CertRequest {
            name: "host-1".into(),
            role,
            id,
            days: 30,
            hosts: Vec::new(),
        }
    }

    #[test]
    fn issued_certificates_carry_role_and_id_and_load_as_tls_dirs() {
        let root = tempfile::tempdir().expect("tempdir");
        let ca = root.path().join("ca");
        init_ca(&ca, 10).expect("init");
        let err = init_ca(&ca, 10).expect_err("a second CA in one directory");
        assert!(err.to_string().contains("already holds a CA"), "{err}");
        for (role, id) in [
            (Role::Master, Some(1)),
            (Role::Node, Some(9)),
            (Role::Admin, None),
        ] {
            let out = root.path().join(role.as_str());
            let identity = issue(&ca, &out, &request(role, id)).expect("issue");
            assert_eq!((identity.role, identity.id), (role, id));
            assert_eq!(
                identity.name, "host-1",
                "the common name is the peer's name"
            );
            let tls = crate::tls::Tls::load(&out).expect("load");
            assert_eq!(tls.identity(), &identity);
            for name in [KEY_FILE, CERT_FILE] {
                let mode = std::fs::metadata(out.join(name)).expect("stat");
                assert_eq!(
                    std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
                    0o600
                );
            }
            let again = issue(&ca, &out, &request(role, id)).expect_err("overwrite");
            assert!(again.to_string().contains("already holds"), "{again}");
        }
        let key = std::fs::metadata(ca.join(CA_KEY_FILE)).expect("stat");
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&key.permissions()) & 0o777,
            0o600
        );
    }

    #[test]
    fn host_names_go_into_the_certificate_for_clients_that_check_them() {
        let root = tempfile::tempdir().expect("tempdir");
        let ca = root.path().join("ca");
        init_ca(&ca, 10).expect("init");
        let hosts = CertRequest {
            hosts: vec!["s3.example.com".into(), "10.0.0.5".into(), "::1".into()],
            ..request(Role::Node, Some(4))
        };
        issue(&ca, &root.path().join("gw"), &hosts).expect("issue");
        assert_eq!(
            crate::tls::host_names(&root.path().join("gw")).expect("names"),
            ["s3.example.com", "10.0.0.5", "::1"]
        );
        issue(
            &ca,
            &root.path().join("plain"),
            &request(Role::Node, Some(5)),
        )
        .expect("issue");
        assert!(crate::tls::host_names(&root.path().join("plain"))
            .expect("names")
            .is_empty());
        let bad = CertRequest {
            hosts: vec!["bücher".into()],
            ..request(Role::Node, Some(6))
        };
        let err = issue(&ca, &root.path().join("bad"), &bad).expect_err("not a host name");
        assert!(err.to_string().contains("--host"), "{err}");
    }

    #[test]
    fn bad_requests_say_what_to_give() {
        let root = tempfile::tempdir().expect("tempdir");
        let ca = root.path().join("ca");
        init_ca(&ca, 10).expect("init");
        let out = root.path().join("out");
        let cases = [
            (request(Role::Master, None), "give --id"),
            (request(Role::Node, Some(0)), "id 0 is reserved"),
            (request(Role::Admin, Some(1)), "leave out --id"),
            (
                CertRequest {
                    name: "a/b".into(),
                    ..request(Role::Admin, None)
                },
                "--name",
            ),
            (
                CertRequest {
                    days: 0,
                    hosts: Vec::new(),
                    ..request(Role::Admin, None)
                },
                "0 days",
            ),
        ];
        for (bad, expected) in cases {
            let err = issue(&ca, &out, &bad).expect_err("refused").to_string();
            assert!(err.contains(expected), "{err}");
        }
        assert!(!out.exists(), "nothing written for a refused request");
        let err = issue(&root.path().join("none"), &out, &request(Role::Admin, None))
            .expect_err("no CA")
            .to_string();
        assert!(err.contains(CA_CERT_FILE), "{err}");
    }
}
