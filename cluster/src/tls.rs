//! Who a cluster peer is: mutual TLS with the cluster's own CA.
//!
//! Every master, node and administrator holds a key and a certificate
//! issued by the cluster CA (`datenlord certs`, [`crate::certs`]). The
//! certificate says the holder's role and, for masters and nodes, its Raft
//! id, in a URI subject alternative name: `datenlord://master/3`,
//! `datenlord://node/7`, `datenlord://admin`. A peer's identity is that
//! certificate, nothing it says later: a connection is accepted only when
//! both sides present a certificate of the same CA (TLS 1.3, rustls with
//! the aws-lc-rs provider), and what a peer may do follows from its role
//! and id ([`Peer`]). Host names play no part: masters and nodes are
//! known by their id, and a client checks the role (and, for Raft
//! connections, the id) of the certificate it is answered with.
//!
//! A TLS directory (`--tls-dir`) holds `ca.pem` (the CA's certificate),
//! `cert.pem` and `key.pem` (this peer's).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::replica::Membership;

/// The CA's certificate in a TLS directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// This peer's certificate in a TLS directory.
pub const CERT_FILE: &str = "cert.pem";
/// This peer's private key in a TLS directory.
pub const KEY_FILE: &str = "key.pem";
/// Scheme of the URI that carries a certificate's role and id.
const IDENTITY_SCHEME: &str = "datenlord://";
/// The name a client gives rustls; certificates are checked by role and
/// id instead (see the module).
const SERVER_NAME: &str = "datenlord";

/// Errors of loading credentials or of a peer's certificate.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file of the TLS directory is missing or unreadable.
    #[error("{path}: {reason}")]
    File {
        /// Which file.
        path: PathBuf,
        /// Why, and what to do.
        reason: String,
    },
    /// rustls refused the credentials.
    #[error("TLS configuration: {0}")]
    Config(String),
    /// A certificate does not say who its holder is.
    #[error("certificate without a DatenLord identity: {0}")]
    Identity(String),
}

/// What a certificate's holder is in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// A metadata master (Raft voter).
    Master,
    /// A node: a mount with a learner copy of the metadata.
    Node,
    /// An administrator: changes the membership (`datenlord members`).
    Admin,
}

impl Role {
    /// The word used in certificates and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Master => "master",
            Self::Node => "node",
            Self::Admin => "admin",
        }
    }

    /// Whether holders of this role have a Raft id.
    pub fn has_id(self) -> bool {
        !matches!(self, Self::Admin)
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "master" => Ok(Self::Master),
            "node" => Ok(Self::Node),
            "admin" => Ok(Self::Admin),
            other => Err(format!("{other:?}: a role is master, node or admin")),
        }
    }
}

/// Who a certificate says its holder is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Its role.
    pub role: Role,
    /// Its Raft id (masters and nodes; never 0).
    pub id: Option<u64>,
    /// The certificate's serial number (lowercase hex, no separators), for
    /// logs and revocation.
    pub serial: String,
    /// Its common name (`certs issue --name`: a node's is the host's or
    /// Kubernetes node's name); empty when it has none.
    pub name: String,
}

impl Identity {
    /// The URI a certificate of `role` and `id` carries.
    pub fn uri(role: Role, id: Option<u64>) -> String {
        match id {
            Some(id) => format!("{IDENTITY_SCHEME}{}/{id}", role.as_str()),
            None => format!("{IDENTITY_SCHEME}{}", role.as_str()),
        }
    }

    /// Reads a URI written by [`Self::uri`]; `None` for anything else
    /// (a role without its id, an id where none belongs, id 0).
    pub fn parse_uri(uri: &str) -> Option<(Role, Option<u64>)> {
        let rest = uri.strip_prefix(IDENTITY_SCHEME)?;
        let (role, id) = match rest.split_once('/') {
            Some((role, id)) => (role, Some(id)),
            None => (rest, None),
        };
        let role: Role = role.parse().ok()?;
        let id = match id {
            Some(id) if role.has_id() => Some(id.parse::<u64>().ok().filter(|&id| id != 0)?),
            None if !role.has_id() => None,
            _ => return None,
        };
        Some((role, id))
    }

    /// The identity of the leaf of a peer's verified chain (rustls's
    /// `peer_certificates`); the message says what is wrong.
    pub fn of_chain(
        chain: Option<&[rustls::pki_types::CertificateDer<'static>]>,
    ) -> Result<Self, String> {
        let leaf = chain
            .and_then(<[_]>::first)
            .ok_or_else(|| "the peer showed no certificate".to_string())?;
        Self::from_cert(leaf).map_err(|e| e.to_string())
    }

    /// The identity in a DER certificate (one DatenLord URI among its
    /// subject alternative names).
    pub fn from_cert(der: &[u8]) -> Result<Self, TlsError> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| TlsError::Identity(format!("unreadable certificate: {e}")))?;
        let names = cert
            .subject_alternative_name()
            .map_err(|e| TlsError::Identity(format!("bad subject alternative names: {e}")))?
            .ok_or_else(|| TlsError::Identity("no subject alternative name".into()))?;
        let mut found = names
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::URI(uri) if uri.starts_with(IDENTITY_SCHEME) => Some(*uri),
                _ => None,
            });
        let uri = found
            .next()
            .ok_or_else(|| TlsError::Identity("no datenlord:// name".into()))?;
        if found.next().is_some() {
            return Err(TlsError::Identity("more than one datenlord:// name".into()));
        }
        let (role, id) = Self::parse_uri(uri)
            .ok_or_else(|| TlsError::Identity(format!("{uri:?} is not a role and id")))?;
        let name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_string();
        Ok(Self {
            role,
            id,
            name,
            serial: cert
                .raw_serial()
                .iter()
                .fold(String::new(), |mut hex, byte| {
                    let _ = std::fmt::Write::write_fmt(&mut hex, format_args!("{byte:02x}"));
                    hex
                }),
        })
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.id {
            Some(id) => write!(f, "{} {id}", self.role.as_str()),
            None => f.write_str(self.role.as_str()),
        }
    }
}

/// Who is on the other end of a connection, and so what it may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// Plain TCP: this process runs without certificates (loopback, or
    /// `--insecure`), and the operator trusts whoever can connect.
    Unverified,
    /// Authenticated by a certificate of the cluster CA.
    Certified(Identity),
}

impl Peer {
    /// May send Raft messages as member `from` (masters and nodes, each
    /// under its own id only).
    pub fn speaks_for(&self, from: u64) -> bool {
        match self {
            Self::Unverified => true,
            Self::Certified(who) => who.role != Role::Admin && who.id == Some(from),
        }
    }

    /// May propose metadata commands (they carry a caller's uid and gid,
    /// which only nodes, the mounts, vouch for) and read the namespace.
    pub fn may_use_namespace(&self) -> bool {
        match self {
            Self::Unverified => true,
            Self::Certified(who) => matches!(who.role, Role::Node | Role::Admin),
        }
    }

    /// What this peer is told of the group it reached: its id for an
    /// authenticated peer, 0 (nothing) for anyone else.
    pub fn told(&self, group: u64) -> u64 {
        match self {
            Self::Certified(_) => group,
            Self::Unverified => 0,
        }
    }

    /// May revoke certificates: administrators only.
    pub fn may_revoke(&self) -> bool {
        match self {
            Self::Unverified => true,
            Self::Certified(who) => who.role == Role::Admin,
        }
    }

    /// May make this membership change: an administrator any, a node only
    /// its own addition as a learner and its own removal.
    pub fn may_change(&self, change: &Membership) -> bool {
        match self {
            Self::Unverified => true,
            Self::Certified(who) => match (who.role, change) {
                (Role::Admin, _) => true,
                (Role::Node, Membership::AddLearner { id, .. } | Membership::Remove { id }) => {
                    who.id == Some(*id)
                }
                _ => false,
            },
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unverified => f.write_str("an unverified peer"),
            Self::Certified(who) => write!(f, "{who} (serial {})", who.serial),
        }
    }
}

/// A TLS directory's credentials, reloadable without a restart
/// (certificate rotation: `datenlord` reloads on SIGHUP). Connections made
/// after a reload use the new credentials; those already open keep theirs.
pub struct TlsDir {
    dir: PathBuf,
    current: std::sync::RwLock<Arc<Tls>>,
    /// Whether a serial (hex) is revoked: the replicated list, set once the
    /// local replica runs.
    revoked: std::sync::OnceLock<Revoked>,
}

/// Whether a certificate serial (hex) is revoked.
pub type Revoked = Arc<dyn Fn(&str) -> bool + Send + Sync>;

impl std::fmt::Debug for TlsDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsDir")
            .field("dir", &self.dir)
            .field("revocations", &self.revoked.get().is_some())
            .finish_non_exhaustive()
    }
}

impl TlsDir {
    /// Loads `dir` (see [`Tls::load`]).
    pub fn load(dir: &Path) -> Result<Self, TlsError> {
        Ok(Self {
            dir: dir.to_path_buf(),
            current: std::sync::RwLock::new(Arc::new(Tls::load(dir)?)),
            revoked: std::sync::OnceLock::new(),
        })
    }

    /// Consults `revoked` for every peer from now on (set once).
    pub fn check_revocations(&self, revoked: Revoked) {
        let _ = self.revoked.set(revoked);
    }

    /// Whether the certificate with `serial` was revoked.
    pub fn is_revoked(&self, serial: &str) -> bool {
        self.revoked.get().is_some_and(|revoked| revoked(serial))
    }

    /// Why `who` is refused if its certificate was revoked.
    pub fn revocation(&self, who: &Identity) -> Option<String> {
        self.is_revoked(&who.serial).then(|| {
            format!(
                "{who} presented certificate serial {}, which is revoked",
                who.serial
            )
        })
    }

    /// The credentials in use.
    pub fn current(&self) -> Arc<Tls> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Who this process is.
    pub fn identity(&self) -> Identity {
        self.current().identity().clone()
    }

    /// Loads the directory again and uses it from now on, if it is whole
    /// and names the same role and id (a renewed certificate, a new key, a
    /// CA bundle during a CA change); otherwise keeps the credentials in
    /// use and says why. Returns the new identity.
    pub fn reload(&self) -> Result<Identity, TlsError> {
        let new = Tls::load(&self.dir)?;
        let old = self.identity();
        if (new.me.role, new.me.id) != (old.role, old.id) {
            return Err(TlsError::Identity(format!(
                "{} now holds a certificate for {}, not {old}: kept the credentials in use (a peer's role and id never change)",
                self.dir.display(),
                new.me
            )));
        }
        let identity = new.me.clone();
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(new);
        Ok(identity)
    }
}

/// This process's credentials: rustls configurations for both sides of a
/// connection, and who it is.
#[derive(Debug)]
pub struct Tls {
    pub(crate) server: Arc<ServerConfig>,
    pub(crate) client: Arc<ClientConfig>,
    me: Identity,
}

impl Tls {
    /// Loads `ca.pem`, `cert.pem` and `key.pem` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, TlsError> {
        let file = |name: &str| dir.join(name);
        let ca = read_certs(file(CA_CERT_FILE))?;
        let chain = read_certs(file(CERT_FILE))?;
        let key_path = file(KEY_FILE);
        let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| TlsError::File {
            path: key_path,
            reason: format!("{e} (make it with `datenlord certs issue`)"),
        })?;
        let me = Identity::from_cert(&chain[0])?;
        Self::build(&ca, chain, key, me)
    }

    fn build(
        ca: &[CertificateDer<'static>],
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        me: Identity,
    ) -> Result<Self, TlsError> {
        let config = |e: rustls::Error| TlsError::Config(e.to_string());
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = RootCertStore::empty();
        for cert in ca {
            roots.add(cert.clone()).map_err(config)?;
        }
        let roots = Arc::new(roots);
        let clients =
            WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config)?
            .with_client_cert_verifier(clients)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(config)?;
        // Peers never resume sessions: no tickets to send (a Raft sender
        // never reads its connection after the handshake).
        server.send_tls13_tickets = 0;
        let servers = Arc::new(CaVerifier {
            roots,
            algorithms: provider.signature_verification_algorithms,
        });
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config)?
            .dangerous()
            .with_custom_certificate_verifier(servers)
            .with_client_auth_cert(chain, key)
            .map_err(config)?;
        Ok(Self {
            server: Arc::new(server),
            client: Arc::new(client),
            me,
        })
    }

    /// Who this process is.
    pub fn identity(&self) -> &Identity {
        &self.me
    }

    /// The name given to rustls when connecting (never checked).
    pub(crate) fn server_name() -> ServerName<'static> {
        ServerName::try_from(SERVER_NAME).expect("a valid DNS name")
    }
}

/// The certificates of PEM file `path` (at least one).
fn read_certs(path: PathBuf) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(&path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| TlsError::File {
            path: path.clone(),
            reason: format!("{e} (make it with `datenlord certs`)"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::File {
            path,
            reason: "holds no certificate (make it with `datenlord certs`)".into(),
        });
    }
    Ok(certs)
}

/// The host names and IP addresses the certificate of TLS directory `dir`
/// is valid for (`datenlord certs issue --host`): what clients that check
/// host names (S3 clients of a gateway) may connect by.
pub fn host_names(dir: &Path) -> Result<Vec<String>, TlsError> {
    use x509_parser::extensions::GeneralName;
    let chain = read_certs(dir.join(CERT_FILE))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&chain[0])
        .map_err(|e| TlsError::Identity(format!("unreadable certificate: {e}")))?;
    let names = cert
        .subject_alternative_name()
        .map_err(|e| TlsError::Identity(format!("bad subject alternative names: {e}")))?;
    Ok(names
        .map(|n| &n.value.general_names)
        .into_iter()
        .flatten()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some((*dns).to_string()),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => <[u8; 4]>::try_from(*bytes)
                    .ok()
                    .map(|b| std::net::IpAddr::from(b).to_string()),
                16 => <[u8; 16]>::try_from(*bytes)
                    .ok()
                    .map(|b| std::net::IpAddr::from(b).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect())
}

/// Checks that a server's certificate chains to the cluster CA; its role
/// and id are checked by the caller (host names mean nothing here).
#[derive(Debug)]
struct CaVerifier {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for CaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_uris_roundtrip_and_malformed_ones_are_refused() {
        for (role, id) in [
            (Role::Master, Some(3)),
            (Role::Node, Some(u64::MAX)),
            (Role::Admin, None),
        ] {
            assert_eq!(
                Identity::parse_uri(&Identity::uri(role, id)),
                Some((role, id))
            );
        }
        for bad in [
            "datenlord://master",
            "datenlord://master/0",
            "datenlord://master/x",
            "datenlord://node/",
            "datenlord://admin/1",
            "datenlord://root/1",
            "https://master/1",
            "datenlord://master/1/2",
        ] {
            assert_eq!(Identity::parse_uri(bad), None, "{bad}");
        }
    }

    fn certified(role: Role, id: Option<u64>) -> Peer {
        Peer::Certified(Identity {
            role,
            id,
            serial: "01".into(),
            name: "test".into(),
        })
    }

    #[test]
    fn roles_decide_what_a_peer_may_do() {
        let master = certified(Role::Master, Some(1));
        let node = certified(Role::Node, Some(7));
        let admin = certified(Role::Admin, None);
        assert!(master.speaks_for(1) && !master.speaks_for(2));
        assert!(node.speaks_for(7) && !node.speaks_for(1));
        assert!(!admin.speaks_for(0) && !admin.speaks_for(1));
        assert!(!master.may_use_namespace());
        assert!(node.may_use_namespace() && admin.may_use_namespace());
        let add = |id| Membership::AddLearner {
            id,
            addr: "h:1".into(),
        };
        let voter = Membership::AddVoter {
            id: 7,
            addr: "h:1".into(),
        };
        assert!(node.may_change(&add(7)) && node.may_change(&Membership::Remove { id: 7 }));
        assert!(!node.may_change(&add(8)) && !node.may_change(&Membership::Remove { id: 1 }));
        assert!(!node.may_change(&voter));
        assert!(!master.may_change(&add(1)) && !master.may_change(&Membership::Remove { id: 1 }));
        assert!(admin.may_change(&voter) && admin.may_change(&Membership::Remove { id: 1 }));
        assert!(Peer::Unverified.may_change(&voter) && Peer::Unverified.speaks_for(9));
    }
}
