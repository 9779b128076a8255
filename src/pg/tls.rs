//! TLS for the lock connection, through rustls (no system library is loaded, and runs without TLS
//! never touch it), with libpq's meaning of every setting:
//!
//! - `sslmode`: `prefer` and `require` encrypt without verifying the server's certificate, unless
//!   a root certificate file exists (libpq then verifies the chain in every mode); `verify-ca`
//!   checks the chain to `sslrootcert`; `verify-full` also checks the host name, by libpq's rules
//!   (the subjectAltName entries of the host's kind, else the subject CN), never against a
//!   substitute name.
//! - `sslrootcert=system`: the system's CA certificates (`SSL_CERT_FILE`, `SSL_CERT_DIR`, the usual
//!   bundle paths).
//! - `sslcrl` / `sslcrldir`: revocation lists, checked for the whole chain whenever the chain is.
//! - `sslcert` / `sslkey`: a client certificate; the key file must not be accessible by group or
//!   others (libpq's rule).
//! - [`TlsStream::tls_server_end_point`]: the channel-binding data of SCRAM-SHA-256-PLUS.
//!
//! This is the trust boundary: nothing here panics on what the server sends or what a file holds.

use super::{wait_fd, ReadErr};
use crate::conninfo::{ConnParams, SslMode, TlsFiles};
use crate::signals::Signals;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, DnsName, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::{CertificateError, ClientConfig, ClientConnection, RootCertStore};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv6Addr, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

pub struct TlsStream {
    conn: ClientConnection,
    pub sock: TcpStream,
}

pub enum TlsErr {
    Read(ReadErr),
    Tls(String),
    /// The TLS settings cannot be used (a missing or unreadable certificate file, a key file
    /// others can read, a host that no certificate can name under verify-full).
    Config(String),
}

/// What the host of the connection string names, for the certificate check and SNI.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostId {
    /// An IP address literal. An IPv6 zone (`fe80::1%eth0`) is dropped: it names no certificate.
    Ip(IpAddr),
    Dns(DnsName<'static>),
    /// Neither (`127.1`, a numeric last label, an empty host): no certificate can name it.
    Neither,
}

impl HostId {
    fn of(host: &str) -> HostId {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return HostId::Ip(ip);
        }
        if let Some((addr, _zone)) = host.split_once('%') {
            return match addr.parse::<Ipv6Addr>() {
                Ok(ip) => HostId::Ip(IpAddr::V6(ip)),
                Err(_) => HostId::Neither,
            };
        }
        match DnsName::try_from(host.to_string()) {
            Ok(name) => HostId::Dns(name),
            Err(_) => HostId::Neither,
        }
    }
}

/// The name rustls verifies and sends as SNI. Never a substitute: a host that is neither a DNS
/// name nor an IP address cannot be verified (verify-full fails); the modes that do not check the
/// name use the server's socket address, which also sends no SNI, as libpq sends none for
/// addresses.
fn server_name(
    host: &str,
    id: &HostId,
    check: Check,
    peer: Option<IpAddr>,
) -> Result<ServerName<'static>, String> {
    match id {
        HostId::Ip(ip) => Ok(ServerName::IpAddress((*ip).into())),
        HostId::Dns(name) => Ok(ServerName::DnsName(name.clone())),
        HostId::Neither if check == Check::ChainAndName => Err(if host.is_empty() {
            "host name must be specified for a verified SSL connection (sslmode=verify-full)".into()
        } else {
            format!(
                "cannot verify the server's certificate for host \"{host}\": not a DNS name or IP address"
            )
        }),
        HostId::Neither => peer
            .map(|ip| ServerName::IpAddress(ip.into()))
            .ok_or_else(|| "cannot get the server's address for TLS".to_string()),
    }
}

/// What the certificate check covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Encryption only (sslmode prefer/require without a root certificate file).
    None,
    /// The chain to the roots, its validity and revocation (verify-ca; prefer/require when a root
    /// certificate file exists, as libpq loads it and verifies the chain in every mode).
    Chain,
    /// The chain and the host name (verify-full).
    ChainAndName,
}

fn mode_name(mode: SslMode) -> &'static str {
    match mode {
        SslMode::Disable => "disable",
        SslMode::Allow => "allow",
        SslMode::Prefer => "prefer",
        SslMode::Require => "require",
        SslMode::VerifyCa => "verify-ca",
        SslMode::VerifyFull => "verify-full",
    }
}

fn check_for(mode: SslMode, root: Option<&str>) -> Result<Check, String> {
    match mode {
        SslMode::VerifyFull => Ok(Check::ChainAndName),
        SslMode::VerifyCa => Ok(Check::Chain),
        // libpq 16+: sslrootcert=system implies verify-full and refuses weaker modes (conninfo
        // already does so; this keeps a weaker mode from ever checking less with system roots).
        _ if root == Some("system") => Err(format!(
            "weak sslmode \"{}\" may not be used with sslrootcert=system (use \"verify-full\")",
            mode_name(mode)
        )),
        _ => match root {
            Some(path) if Path::new(path).exists() => Ok(Check::Chain),
            _ => Ok(Check::None),
        },
    }
}

/// Where the system's CA bundle usually is (Debian/Ubuntu, RHEL/Fedora, Alpine, SUSE, macOS).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
    "/etc/ssl/ca-bundle.pem",
];

/// OpenSSL's hashed certificate directories, read when no bundle file is found.
const SYSTEM_DIRS: &[&str] = &["/etc/ssl/certs", "/etc/pki/tls/certs"];

/// The roots to verify against, and the certificates of an explicit sslrootcert file (a server
/// may present one of them itself: the PostgreSQL docs' self-signed recipe).
struct Roots {
    store: RootCertStore,
    pinned: Vec<CertificateDer<'static>>,
}

fn load_roots(root: &str) -> Result<Roots, String> {
    if root == "system" {
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        return Ok(Roots {
            store: system_roots(env("SSL_CERT_FILE"), env("SSL_CERT_DIR"))?,
            pinned: Vec::new(),
        });
    }
    let bytes = std::fs::read(root).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => format!(
            "root certificate file \"{root}\" does not exist: provide it, use sslrootcert=system, or choose an sslmode that does not verify the server's certificate"
        ),
        _ => format!("could not read root certificate file \"{root}\": {e}"),
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("could not read root certificate file \"{root}\": {e}"))?;
    let mut store = RootCertStore::empty();
    for c in &certs {
        store
            .add(c.clone())
            .map_err(|e| format!("root certificate file \"{root}\": {e}"))?;
    }
    if store.is_empty() {
        return Err(format!(
            "root certificate file \"{root}\" holds no certificate"
        ));
    }
    Ok(Roots {
        store,
        pinned: certs,
    })
}

/// sslrootcert=system, as OpenSSL's default paths: the file `SSL_CERT_FILE` (else the first
/// system bundle found) and the hashed directories of `SSL_CERT_DIR` (a `:` list; else, when no
/// bundle was found, the usual directories). Unlike OpenSSL, the default directory is not added
/// beside an `SSL_CERT_FILE`: setting it narrows the trust to that file, as one would expect.
fn system_roots(
    cert_file: Option<std::ffi::OsString>,
    cert_dir: Option<std::ffi::OsString>,
) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    let file = match cert_file {
        Some(f) => Some(PathBuf::from(f)),
        None => SYSTEM_BUNDLES
            .iter()
            .map(Path::new)
            .find(|p| p.is_file())
            .map(Path::to_path_buf),
    };
    if let Some(f) = &file {
        let bytes = std::fs::read(f).map_err(|e| {
            format!(
                "sslrootcert=system: could not read the CA bundle {}: {e}",
                f.display()
            )
        })?;
        // A section this parser cannot use (an unusual root) is skipped, as TLS libraries do
        // with system bundles.
        store.add_parsable_certificates(CertificateDer::pem_slice_iter(&bytes).flatten());
    }
    let dirs: Vec<PathBuf> = match cert_dir {
        Some(d) => std::env::split_paths(&d).collect(),
        None if file.is_none() => SYSTEM_DIRS.iter().map(PathBuf::from).collect(),
        None => Vec::new(),
    };
    for dir in &dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            // Only OpenSSL's `<subject hash>.<n>` names, as OpenSSL looks nothing else up there:
            // another file in the directory is not trusted by libpq either.
            let name = entry.file_name();
            if !is_hashed_name(&name.to_string_lossy(), "") {
                continue;
            }
            if let Ok(bytes) = std::fs::read(entry.path()) {
                store.add_parsable_certificates(CertificateDer::pem_slice_iter(&bytes).flatten());
            }
        }
    }
    if store.is_empty() {
        let looked: Vec<String> = file
            .iter()
            .chain(dirs.iter())
            .map(|p| p.display().to_string())
            .collect();
        return Err(format!(
            "sslrootcert=system: no CA certificate found{}; set SSL_CERT_FILE or SSL_CERT_DIR",
            if looked.is_empty() {
                String::new()
            } else {
                format!(" (looked in {})", looked.join(", "))
            }
        ));
    }
    Ok(store)
}

/// OpenSSL's hashed directory names: eight hex digits, a dot, `kind` (`""` for certificates,
/// `"r"` for CRLs) and a number.
fn is_hashed_name(name: &str, kind: &str) -> bool {
    let Some((hash, rest)) = name.split_once('.') else {
        return false;
    };
    let Some(n) = rest.strip_prefix(kind) else {
        return false;
    };
    hash.len() == 8
        && hash.bytes().all(|b| b.is_ascii_hexdigit())
        && !n.is_empty()
        && n.bytes().all(|b| b.is_ascii_digit())
}

/// The CRLs of sslcrl (a PEM file of one or more) and sslcrldir (every file of the directory
/// that holds PEM CRLs; OpenSSL looks up `<hash>.r<n>` names, but a CRL can only revoke, so
/// reading more files checks no less). A set file or directory that cannot be read, or holds no
/// CRL, is an error: libpq would then fail every verification with "unable to get certificate
/// CRL" (an empty directory) or silently check nothing (an unreadable file); pglock says so
/// before connecting.
fn load_crls(files: &TlsFiles) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let mut crls = Vec::new();
    if let Some(path) = &files.crl {
        let shown = path.display();
        let bytes = std::fs::read(path)
            .map_err(|e| format!("could not read sslcrl file \"{shown}\": {e}"))?;
        let found = pem_crls(&bytes).map_err(|e| format!("sslcrl file \"{shown}\": {e}"))?;
        if found.is_empty() {
            return Err(format!(
                "sslcrl file \"{shown}\" holds no certificate revocation list (PEM \"X509 CRL\")"
            ));
        }
        crls.extend(found);
    }
    if let Some(dir) = &files.crl_dir {
        let shown = dir.display();
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| format!("could not read sslcrldir \"{shown}\": {e}"))?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("could not read sslcrldir \"{shown}\": {e}"))?;
        paths.sort();
        let before = crls.len();
        for path in paths {
            // Through symlinks (c_rehash makes them); subdirectories and the like are skipped.
            if !std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
                continue;
            }
            let bytes = std::fs::read(&path)
                .map_err(|e| format!("could not read CRL file \"{}\": {e}", path.display()))?;
            crls.extend(pem_crls(&bytes).map_err(|e| format!("{}: {e}", path.display()))?);
        }
        if crls.len() == before {
            return Err(format!(
                "sslcrldir \"{shown}\" holds no certificate revocation list (PEM \"X509 CRL\")"
            ));
        }
    }
    Ok(crls)
}

/// The PEM CRLs of a file (other sections are skipped), each checked to parse, so that a bad one
/// is named by its file.
fn pem_crls(bytes: &[u8]) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let crls = CertificateRevocationListDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    for crl in &crls {
        x509_parser::parse_x509_crl(crl.as_ref())
            .map_err(|e| format!("invalid certificate revocation list: {e}"))?;
    }
    Ok(crls)
}

/// The chain check (webpki: chain to the roots, validity, key usage, revocation) with libpq's
/// host-name rules on top. webpki checks the name last, after the chain and revocation
/// (`WebPkiServerVerifier::verify_server_cert`), so its `NotValidForName` means that everything
/// else passed: only then are libpq's rules applied (or, for verify-ca, nothing).
#[derive(Debug)]
struct Verifier {
    webpki: Arc<WebPkiServerVerifier>,
    /// The certificates of an explicit sslrootcert file: a server that presents one of them is
    /// trusted as OpenSSL trusts it (webpki refuses a CA certificate as the server's, which the
    /// docs' self-signed recipe makes).
    pinned: Vec<CertificateDer<'static>>,
    crls: bool,
    /// verify-full: the host as libpq compares it. `None`: verify-ca, the chain only.
    name: Option<HostCheck>,
}

/// The host of the connection string, as libpq compares it to a certificate's names.
#[derive(Debug, Clone)]
struct HostCheck {
    /// As given (an IPv6 zone dropped).
    host: String,
    ip: Option<IpAddr>,
}

impl HostCheck {
    fn new(host: &str, id: &HostId) -> HostCheck {
        match id {
            HostId::Ip(ip) => HostCheck {
                host: host.split('%').next().unwrap_or(host).to_string(),
                ip: Some(*ip),
            },
            _ => HostCheck {
                host: host.to_string(),
                ip: None,
            },
        }
    }
}

impl Verifier {
    fn name_error(server_name: &ServerName<'_>, presented: Vec<String>) -> rustls::Error {
        rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            expected: server_name.to_owned(),
            presented,
        })
    }

    /// libpq's name check (fe-secure-openssl.c, `pgtls_verify_peer_name_matches_certificate_guts`).
    fn check_name(
        &self,
        end_entity: &CertificateDer<'_>,
        server_name: &ServerName<'_>,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(host) = &self.name else {
            return Ok(ServerCertVerified::assertion());
        };
        match libpq_name_match(end_entity.as_ref(), host) {
            NameMatch::Yes => Ok(ServerCertVerified::assertion()),
            NameMatch::No(presented) => Err(Self::name_error(server_name, presented)),
        }
    }

    /// A server certificate that is itself one of the sslrootcert certificates (the docs'
    /// self-signed recipe): trusted as such, as OpenSSL trusts it, after the checks webpki would
    /// have made of it: validity, a server purpose if it names purposes, and the name.
    fn check_pinned(
        &self,
        end_entity: &CertificateDer<'_>,
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use x509_parser::prelude::FromDer;
        let bad = || rustls::Error::InvalidCertificate(CertificateError::BadEncoding);
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(end_entity.as_ref())
            .map_err(|_| bad())?;
        let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        let validity = cert.validity();
        if now < validity.not_before.timestamp() {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidYet,
            ));
        }
        if now > validity.not_after.timestamp() {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Expired));
        }
        match cert.extended_key_usage() {
            Ok(None) => {}
            Ok(Some(eku)) if eku.value.any || eku.value.server_auth => {}
            Ok(Some(_)) => {
                return Err(rustls::Error::InvalidCertificate(
                    CertificateError::InvalidPurpose,
                ))
            }
            Err(_) => return Err(bad()),
        }
        self.check_name(end_entity, server_name)
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Ok(ok) => Ok(ok),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => self.check_name(end_entity, server_name),
            // With CRLs, a pinned certificate would need a CRL it issued about itself (OpenSSL's
            // CRL_CHECK_ALL covers it); webpki cannot check one outside a chain: keep its error.
            Err(_)
                if !self.crls
                    && self
                        .pinned
                        .iter()
                        .any(|p| p.as_ref() == end_entity.as_ref()) =>
            {
                self.check_pinned(end_entity, server_name, now)
            }
            Err(e) => Err(e),
        }
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

enum NameMatch {
    Yes,
    /// The names examined, for the error.
    No(Vec<String>),
}

/// libpq's rules: the subjectAltName dNSName and iPAddress entries are compared to the host
/// (dNSName as text, iPAddress to the host's address); the subject's first CN is compared only
/// when the certificate has no subjectAltName entry of the host's kind (an iPAddress entry for an
/// IP host, a dNSName entry otherwise). Text compares ignore ASCII case; a leading `*.` matches
/// exactly one label, and never an IP host (libpq would let `*.0.0.1` match `10.0.0.1` through
/// the CN; pglock does not). A certificate that cannot be parsed, a malformed subjectAltName or a
/// name with an embedded NUL matches nothing.
fn libpq_name_match(der: &[u8], host: &HostCheck) -> NameMatch {
    use x509_parser::extensions::GeneralName;
    let mut examined = Vec::new();
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return NameMatch::No(examined);
    };
    let mut check_cn = true;
    match cert.subject_alternative_name() {
        Err(_) => return NameMatch::No(examined),
        Ok(None) => {}
        Ok(Some(san)) => {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(n) => {
                        if host.ip.is_none() {
                            check_cn = false;
                        }
                        examined.push(n.to_string());
                        if text_name_matches(n, host) {
                            return NameMatch::Yes;
                        }
                    }
                    GeneralName::IPAddress(bytes) => {
                        if host.ip.is_some() {
                            check_cn = false;
                        }
                        let addr = match bytes.len() {
                            4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                            16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                            // libpq: an address of another length is an error, not a mismatch.
                            _ => return NameMatch::No(examined),
                        };
                        if let Some(addr) = addr {
                            examined.push(addr.to_string());
                            if host.ip == Some(addr) {
                                return NameMatch::Yes;
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    if check_cn {
        if let Some(cn) = cert.subject().iter_common_name().next() {
            match cn.as_str() {
                Ok(cn) => {
                    examined.push(format!("CN={cn}"));
                    if text_name_matches(cn, host) {
                        return NameMatch::Yes;
                    }
                }
                Err(_) => examined.push("CN (not text)".into()),
            }
        }
    }
    NameMatch::No(examined)
}

/// libpq's `pq_verify_peer_name_matches_certificate_name`: equal ignoring ASCII case, or a
/// `*.rest` pattern whose `*` stands for exactly one label of a host name.
fn text_name_matches(name: &str, host: &HostCheck) -> bool {
    if name.contains('\0') {
        return false;
    }
    if name.eq_ignore_ascii_case(&host.host) {
        return true;
    }
    if host.ip.is_some() {
        return false;
    }
    let (name, h) = (name.as_bytes(), host.host.as_bytes());
    if name.len() < 3 || !name.starts_with(b"*.") || name.len() > h.len() {
        return false;
    }
    // `h` ends with the pattern less its `*` (".rest"), and the label the `*` stands for has no dot.
    let start = h.len() - (name.len() - 1);
    let (label, rest) = h.split_at(start);
    rest.eq_ignore_ascii_case(&name[1..]) && !label.is_empty() && !label.contains(&b'.')
}

/// The certificate check for `check`; `host`/`id` are used by verify-full only.
fn server_verifier(
    check: Check,
    mode: SslMode,
    files: &TlsFiles,
    host: &str,
    id: &HostId,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, String> {
    if check == Check::None {
        return Ok(Arc::new(NoVerify(provider.clone())));
    }
    let root = files.root.as_deref().ok_or_else(|| {
        format!(
            "sslmode={} needs the CA that signed the server's certificate: set sslrootcert=/path/to/ca.crt (or sslrootcert=system)",
            mode_name(mode)
        )
    })?;
    let roots = load_roots(root)?;
    let crls = load_crls(files)?;
    // Revocation as libpq sets it up (X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL): every
    // certificate of the chain is checked (webpki's default depth; the trust anchor itself is not,
    // which OpenSSL checks against the CRL the same root issued), a certificate whose issuer has
    // no CRL is refused (OpenSSL's "unable to get certificate CRL"; webpki's default unknown
    // status policy), and an expired CRL is refused (OpenSSL's "CRL has expired"). libpq ignores
    // CRLs with sslrootcert=system; pglock applies them there too, as they were asked for.
    let mut builder =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots.store), provider.clone());
    let have_crls = !crls.is_empty();
    if have_crls {
        builder = builder.with_crls(crls).enforce_revocation_expiration();
    }
    let webpki = builder
        .build()
        .map_err(|e| format!("sslrootcert/sslcrl: {e}"))?;
    Ok(Arc::new(Verifier {
        webpki,
        pinned: roots.pinned,
        crls: have_crls,
        name: (check == Check::ChainAndName).then(|| HostCheck::new(host, id)),
    }))
}

/// The client key, as libpq reads it: a regular file without group or world access (see
/// `key_file_allowed`), PEM or else DER.
fn read_client_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let shown = path.display();
    // Opened without blocking (a FIFO would wait for a writer) and checked through the open
    // descriptor, so that the file checked is the file read.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => {
                format!("certificate present, but not private key file \"{shown}\"")
            }
            _ => format!("could not open private key file \"{shown}\": {e}"),
        })?;
    let meta = file
        .metadata()
        .map_err(|e| format!("could not stat private key file \"{shown}\": {e}"))?;
    key_file_allowed(&shown.to_string(), meta.is_file(), meta.uid(), meta.mode())?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| format!("could not read private key file \"{shown}\": {e}"))?;
    match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(key) => Ok(key),
        Err(rustls::pki_types::pem::Error::NoItemsFound) => PrivateKeyDer::try_from(bytes)
            .map_err(|_| {
                format!(
                    "could not load private key file \"{shown}\": no PEM or DER private key found (an encrypted key is not supported)"
                )
            }),
        Err(e) => Err(format!("could not load private key file \"{shown}\": {e}")),
    }
}

/// libpq's key file rule: a regular file; owned by root, mode 0640 or less (group members may
/// read a system-wide key); owned by anyone else, 0600 or less (whoever can read such a file
/// owns it, or is root).
fn key_file_allowed(shown: &str, is_file: bool, uid: u32, mode: u32) -> Result<(), String> {
    if !is_file {
        return Err(format!(
            "private key file \"{shown}\" is not a regular file"
        ));
    }
    let forbidden = if uid == 0 { 0o037 } else { 0o077 };
    if mode & forbidden != 0 {
        return Err(format!(
            "private key file \"{shown}\" has group or world access; file must have permissions u=rw (0600) or less if owned by the current user, or permissions u=rw,g=r (0640) or less if owned by root"
        ));
    }
    Ok(())
}

fn read_client_cert(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    let bytes = std::fs::read(path)
        .map_err(|e| format!("could not open certificate file \"{shown}\": {e}"))?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("could not read certificate file \"{shown}\": {e}"))?;
    if chain.is_empty() {
        return Err(format!(
            "could not read certificate file \"{shown}\": no PEM certificate found"
        ));
    }
    Ok(chain)
}

/// The rustls configuration for `check`; sslcert/sslkey present a client certificate.
fn client_config(
    check: Check,
    mode: SslMode,
    files: &TlsFiles,
    host: &str,
    id: &HostId,
) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = server_verifier(check, mode, files, host, id, &provider)?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => {
            let chain = read_client_cert(cert)?;
            let key = read_client_key(key)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("sslcert/sslkey: {e}"))
        }
        (Some(_), None) => Err("sslcert is set but sslkey is not".into()),
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// Accepts any certificate (sslmode prefer/require) but still checks the handshake signatures.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// TLS over `sock` (the server has answered `S` to SSLRequest). `host` is the connection
/// string's host (not `hostaddr`): the name verify-full checks and SNI sends.
pub fn handshake(
    mut sock: TcpStream,
    host: &str,
    params: &ConnParams,
    deadline: Option<Instant>,
    signals: &Signals,
) -> Result<TlsStream, TlsErr> {
    let files = &params.tls_files;
    let check = check_for(params.sslmode, files.root.as_deref()).map_err(TlsErr::Config)?;
    let id = HostId::of(host);
    let peer = sock.peer_addr().ok().map(|a| a.ip());
    let name = server_name(host, &id, check, peer).map_err(TlsErr::Config)?;
    let config = client_config(check, params.sslmode, files, host, &id).map_err(TlsErr::Config)?;
    let mut conn =
        ClientConnection::new(Arc::new(config), name).map_err(|e| TlsErr::Tls(e.to_string()))?;
    loop {
        while conn.wants_write() {
            conn.write_tls(&mut sock)
                .map_err(|e| TlsErr::Read(ReadErr::Closed(e.to_string())))?;
        }
        if !conn.is_handshaking() {
            break;
        }
        wait_fd(sock.as_fd(), false, deadline, signals).map_err(TlsErr::Read)?;
        match conn.read_tls(&mut sock) {
            Ok(0) => {
                return Err(TlsErr::Read(ReadErr::Closed(
                    "the server closed the connection during the TLS handshake".into(),
                )))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(TlsErr::Read(ReadErr::Closed(e.to_string()))),
        }
        conn.process_new_packets()
            .map_err(|e| TlsErr::Tls(e.to_string()))?;
    }
    Ok(TlsStream { conn, sock })
}

/// The hash RFC 5929's `tls-server-end-point` uses for a certificate: that of its signature
/// algorithm, SHA-256 for MD5 and SHA-1 (as libpq's `pgtls_get_peer_certificate_hash`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndPointHash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

/// The hash for a signature algorithm (or, for RSASSA-PSS, hash algorithm) OID; `None` for an
/// algorithm without one (Ed25519, Ed448) or that pglock cannot compute (SHA-3).
fn end_point_hash_for(oid: &str) -> Option<EndPointHash> {
    use EndPointHash::*;
    Some(match oid {
        // md5WithRSAEncryption, sha1WithRSAEncryption (PKCS #1 and OIW), ecdsa-with-SHA1,
        // dsa-with-sha1; MD5 and SHA-1 as hash algorithms (RSASSA-PSS parameters).
        "1.2.840.113549.1.1.4"
        | "1.2.840.113549.1.1.5"
        | "1.3.14.3.2.29"
        | "1.2.840.10045.4.1"
        | "1.2.840.10040.4.3"
        | "1.2.840.113549.2.5"
        | "1.3.14.3.2.26" => Sha256,
        // sha224WithRSAEncryption, ecdsa-with-SHA224, dsa-with-sha224, SHA-224.
        "1.2.840.113549.1.1.14"
        | "1.2.840.10045.4.3.1"
        | "2.16.840.1.101.3.4.3.1"
        | "2.16.840.1.101.3.4.2.4" => Sha224,
        // sha256WithRSAEncryption, ecdsa-with-SHA256, dsa-with-sha256, SHA-256.
        "1.2.840.113549.1.1.11"
        | "1.2.840.10045.4.3.2"
        | "2.16.840.1.101.3.4.3.2"
        | "2.16.840.1.101.3.4.2.1" => Sha256,
        // sha384WithRSAEncryption, ecdsa-with-SHA384, SHA-384.
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" | "2.16.840.1.101.3.4.2.2" => Sha384,
        // sha512WithRSAEncryption, ecdsa-with-SHA512, SHA-512.
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" | "2.16.840.1.101.3.4.2.3" => Sha512,
        _ => return None,
    })
}

/// RFC 5929 `tls-server-end-point` data for a DER certificate.
fn tls_server_end_point_of(der: &[u8]) -> Option<Vec<u8>> {
    use sha2::Digest;
    use x509_parser::signature_algorithm::SignatureAlgorithm;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let alg = &cert.signature_algorithm;
    let oid = match SignatureAlgorithm::try_from(alg) {
        // RSASSA-PSS names its hash in its parameters (SHA-1 when absent), as OpenSSL's
        // X509_get_signature_info reads it.
        Ok(SignatureAlgorithm::RSASSA_PSS(params)) => params.hash_algorithm_oid().to_id_string(),
        _ => alg.algorithm.to_id_string(),
    };
    Some(match end_point_hash_for(&oid)? {
        EndPointHash::Sha224 => sha2::Sha224::digest(der).to_vec(),
        EndPointHash::Sha256 => sha2::Sha256::digest(der).to_vec(),
        EndPointHash::Sha384 => sha2::Sha384::digest(der).to_vec(),
        EndPointHash::Sha512 => sha2::Sha512::digest(der).to_vec(),
    })
}

impl TlsStream {
    /// RFC 5929 `tls-server-end-point` channel-binding data (for SCRAM-SHA-256-PLUS): the hash
    /// of the server's certificate, by the hash of its signature algorithm (SHA-256 for MD5 and
    /// SHA-1). `None` when the server sent no certificate or its algorithm has no such hash
    /// (Ed25519): channel binding is then impossible, as with libpq.
    pub fn tls_server_end_point(&self) -> Option<Vec<u8>> {
        let end_entity = self.conn.peer_certificates()?.first()?;
        tls_server_end_point_of(end_entity.as_ref())
    }

    /// One read from the socket (which poll found readable); appends the decrypted bytes to
    /// `out` and returns how many. `Ok(0)`: records arrived but no application data.
    pub fn read_into(&mut self, out: &mut Vec<u8>) -> io::Result<usize> {
        match self.conn.read_tls(&mut self.sock)? {
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                ))
            }
            _ => {
                self.conn
                    .process_new_packets()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            }
        }
        let before = out.len();
        let mut tmp = [0u8; 8192];
        loop {
            match self.conn.reader().read(&mut tmp) {
                Ok(0) => {
                    if out.len() == before {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the server closed the TLS session",
                        ));
                    }
                    break;
                }
                Ok(n) => out.extend_from_slice(&tmp[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        // Answer whatever the records asked for (key updates).
        while self.conn.wants_write() {
            self.conn.write_tls(&mut self.sock)?;
        }
        Ok(out.len() - before)
    }

    pub fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.conn.writer().write_all(data)?;
        while self.conn.wants_write() {
            self.conn.write_tls(&mut self.sock)?;
        }
        Ok(())
    }

    pub fn close_notify(&mut self) {
        self.conn.send_close_notify();
        while self.conn.wants_write() {
            if self.conn.write_tls(&mut self.sock).is_err() {
                break;
            }
        }
    }
}
