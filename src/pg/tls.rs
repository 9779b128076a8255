//! TLS for the lock connection, through rustls (no system library is loaded, and runs without TLS
//! never touch it), with libpq's meaning of every setting:
//!
//! - `sslmode`: `prefer` and `require` encrypt without verifying the server's certificate, unless
//!   a root certificate file exists (libpq then verifies the chain in every mode); `verify-ca`
//!   checks the chain to `sslrootcert`; `verify-full` also checks the host name, by libpq's rules
//!   (the subjectAltName entries of the host's kind, else the subject CN), never against a
//!   substitute name.
//! - An X.509 version 1 server certificate (the docs' CA-signed recipe, which webpki refuses) is
//!   verified as OpenSSL verifies it when a root issued it directly (signature, validity, the
//!   CN), over TLS 1.3 only; refused with CRLs, under an intermediate or a name-constrained root.
//! - `sslrootcert=system`: the system's CA certificates (`SSL_CERT_FILE`, `SSL_CERT_DIR`, the usual
//!   bundle paths).
//! - `sslcrl` / `sslcrldir`: revocation lists, checked for the whole chain whenever the chain is.
//! - `sslcert` / `sslkey`: a client certificate; the key file must not be accessible by group or
//!   others (libpq's rule).
//! - [`TlsStream::tls_server_end_point`]: the channel-binding data of SCRAM-SHA-256-PLUS.
//!
//! This is the trust boundary: nothing here panics on what the server sends or what a file holds.

use super::{wait_fd, ReadErr};
use crate::pg::conninfo::{ConnParams, SslMode, TlsFiles};
use crate::signals::Signals;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, DnsName, PrivateKeyDer, ServerName,
    SubjectPublicKeyInfoDer, UnixTime,
};
use rustls::{CertificateError, ClientConfig, ClientConnection, RootCertStore};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv6Addr, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use x509_parser::asn1_rs::{Any, BitString, Class, DerParser, FromDer, SequenceIterator, Tag};
use x509_parser::certificate::X509Certificate;
use x509_parser::x509::X509Version;

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
        if let Some((addr, zone)) = host.split_once('%') {
            return match addr.parse::<Ipv6Addr>() {
                Ok(ip) if !zone.is_empty() => HostId::Ip(IpAddr::V6(ip)),
                _ => HostId::Neither,
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
        // libpq 16+: sslrootcert=system implies verify-full and refuses weaker modes (conninfo
        // already does so; this keeps a weaker mode from ever checking less with system roots).
        _ if root == Some("system") => Err(format!(
            "weak sslmode \"{}\" may not be used with sslrootcert=system (use \"verify-full\")",
            mode_name(mode)
        )),
        SslMode::VerifyCa => Ok(Check::Chain),
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
    /// The roots webpki verifies against, for an X.509 version 1 server certificate (which
    /// webpki refuses to parse; see `check_v1`).
    roots: Arc<RootCertStore>,
    /// The provider's signature algorithms, for the same.
    algs: WebPkiSupportedAlgorithms,
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
    /// have made of it: validity, a server purpose if it names purposes, and the name. Only a
    /// self-issued one: OpenSSL (without partial chains, as libpq uses it) does not stop a chain
    /// at a trusted certificate that names another issuer.
    fn check_pinned(
        &self,
        end_entity: &CertificateDer<'_>,
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let bad = || rustls::Error::InvalidCertificate(CertificateError::BadEncoding);
        let (_, cert) = X509Certificate::from_der(end_entity.as_ref()).map_err(|_| bad())?;
        if cert.issuer().as_raw() != cert.subject().as_raw() {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            ));
        }
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

    /// An X.509 version 1 server certificate (no extensions; what `openssl x509 -req` makes
    /// without `-extfile`, as in the PostgreSQL docs' CA-signed recipe), which webpki refuses.
    /// Checked as OpenSSL checks it when a root issued it directly: the issuer is a root, the
    /// root's key verifies the certificate's signature (with the provider's algorithms, as webpki
    /// would), the validity period includes `now`, and the name by libpq's rules (the CN: there
    /// is no subjectAltName). Refused, with an error saying why, where pglock cannot check as
    /// much as for a version 3 certificate: an intermediate CA between it and the root, a root
    /// with name constraints, and CRLs (its revocation).
    fn check_v1(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let bad = || rustls::Error::InvalidCertificate(CertificateError::BadEncoding);
        let parts = CertParts::v1(end_entity).ok_or_else(bad)?;
        if parts.tbs_sig_alg != parts.sig_alg {
            return Err(bad());
        }
        let anchors: Vec<_> = self
            .roots
            .roots
            .iter()
            .filter(|a| a.subject.as_ref() == parts.issuer)
            .collect();
        if anchors.is_empty() {
            let by_intermediate = intermediates
                .iter()
                .filter_map(|c| CertParts::of(c.as_ref()))
                .any(|c| c.subject == parts.issuer);
            if by_intermediate {
                return Err(refusal(
                    "the server's certificate is X.509 version 1 and issued by an intermediate CA: \
                     pglock accepts a version 1 certificate only when its issuer is in sslrootcert; \
                     reissue it as version 3 (openssl x509 -req with -extfile)",
                ));
            }
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            ));
        }
        let mut error = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let mut signed = false;
        for anchor in anchors {
            match verify_signed_by(&self.algs, anchor.subject_public_key_info.as_ref(), &parts) {
                Ok(()) if anchor.name_constraints.is_some() => {
                    return Err(refusal(
                        "the server's certificate is X.509 version 1 and its root certificate has \
                         name constraints, which pglock cannot apply to a version 1 certificate: \
                         reissue it as version 3 (openssl x509 -req with -extfile)",
                    ))
                }
                Ok(()) => {
                    signed = true;
                    break;
                }
                Err(e) => error = e,
            }
        }
        if !signed {
            return Err(error);
        }
        let secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        let validity = parts.cert.validity();
        if secs < validity.not_before.timestamp() {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidYet,
            ));
        }
        if secs > validity.not_after.timestamp() {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Expired));
        }
        // Revocation: webpki's CRL checks need a certificate it parses; refused rather than
        // checked less (as libpq's CRL_CHECK_ALL would check it).
        if self.crls {
            return Err(refusal(
                "the server's certificate is X.509 version 1, whose revocation pglock cannot check \
                 against sslcrl/sslcrldir: reissue it as version 3 (openssl x509 -req with -extfile)",
            ));
        }
        self.check_name(end_entity, server_name)
    }
}

/// An error pglock states itself, shown as its message (rustls prints an `OtherError` through
/// `Debug`).
struct Refusal(&'static str);

impl std::fmt::Debug for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Refusal {}

fn refusal(message: &'static str) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
        Refusal(message),
    ))))
}

/// webpki's `UnsupportedCertVersion`, as rustls passes it on (an `OtherError`, the webpki type
/// being private to rustls: recognised by its name).
fn is_unsupported_version(e: &rustls::Error) -> bool {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            format!("{:?}", other.0) == "UnsupportedCertVersion"
        }
        _ => false,
    }
}

/// A certificate as x509-parser reads it, with the exact bytes webpki-style matching needs
/// (read with asn1-rs, x509-parser's DER reader, where x509-parser keeps no bytes: it decodes
/// an AlgorithmIdentifier into an OID and parameters, and ignores whatever a SEQUENCE holds
/// after the fields it knows, which webpki refuses).
struct CertParts<'a> {
    cert: X509Certificate<'a>,
    /// Whether the TBSCertificate has an explicit version (v2, v3; never in a DER version 1).
    explicit_version: bool,
    /// The contents of the TBSCertificate's signature AlgorithmIdentifier.
    tbs_sig_alg: &'a [u8],
    /// The contents of the issuer and subject Names (as webpki and a trust anchor hold them).
    issuer: &'a [u8],
    subject: &'a [u8],
    /// Whether the TBSCertificate holds anything after the key (unique IDs, extensions).
    after_key: bool,
    /// The contents of the signatureAlgorithm.
    sig_alg: &'a [u8],
}

impl<'a> CertParts<'a> {
    fn of(der: &'a [u8]) -> Option<CertParts<'a>> {
        let (rest, cert) = X509Certificate::from_der(der).ok()?;
        // The signature: a BIT STRING without unused bits.
        if !rest.is_empty() || cert.signature_value.unused_bits != 0 {
            return None;
        }
        // The certificate's and the TBSCertificate's elements, each SEQUENCE whole (an error for
        // anything in it that is not an element).
        let (_, outer) = Vec::<Any<'a>>::from_der(der).ok()?;
        let [tbs, sig_alg, _signature] = <[Any<'a>; 3]>::try_from(outer).ok()?;
        let tbs = SequenceIterator::<Any<'a>, DerParser>::new(tbs.data)
            .collect::<Result<Vec<_>, _>>()
            .ok()?;
        // x509-parser took a first element tagged 0 for the version (its class checked).
        let explicit_version = tbs.first()?.tag() == Tag(0);
        let fields = tbs.get(usize::from(explicit_version)..)?;
        let [_serial, tbs_sig_alg, issuer, _validity, subject, _spki, tail @ ..] = fields else {
            return None;
        };
        Some(CertParts {
            explicit_version,
            tbs_sig_alg: tbs_sig_alg.data,
            issuer: issuer.data,
            subject: subject.data,
            after_key: !tail.is_empty(),
            sig_alg: sig_alg.data,
            cert,
        })
    }

    /// The parts of an X.509 version 1 certificate (no version field, nothing after the key);
    /// `None` for any other.
    fn v1(der: &'a CertificateDer<'_>) -> Option<CertParts<'a>> {
        CertParts::of(der.as_ref()).filter(|p| {
            let tbs = &p.cert.tbs_certificate;
            !p.explicit_version
                && !p.after_key
                && tbs.version() == X509Version::V1
                && tbs.issuer_uid.is_none()
                && tbs.subject_uid.is_none()
                && tbs.extensions().is_empty()
        })
    }
}

/// Whether the key of `issuer_spki` (the contents of a SubjectPublicKeyInfo, as a trust anchor
/// holds it) signed `cert`, with an algorithm of `algs` whose identifiers are exactly the
/// certificate's signature algorithm and the key's algorithm (webpki's rule).
fn verify_signed_by(
    algs: &WebPkiSupportedAlgorithms,
    issuer_spki: &[u8],
    cert: &CertParts<'_>,
) -> Result<(), rustls::Error> {
    let bad = || rustls::Error::InvalidCertificate(CertificateError::BadEncoding);
    // The algorithm (its contents, as webpki compares them) and the key, without the
    // SubjectPublicKeyInfo's header (which a trust anchor does not keep).
    let (rest, key_alg) = Any::from_der(issuer_spki).map_err(|_| bad())?;
    let (rest, key) = BitString::from_der(rest).map_err(|_| bad())?;
    if !rest.is_empty()
        || key_alg.class() != Class::Universal
        || key_alg.tag() != Tag::Sequence
        || !key_alg.header.is_constructed()
        || key.unused_bits != 0
    {
        return Err(bad());
    }
    let key_alg = key_alg.data;
    let mut for_signature = algs
        .all
        .iter()
        .filter(|a| a.signature_alg_id().as_ref() == cert.sig_alg)
        .peekable();
    if for_signature.peek().is_none() {
        return Err(rustls::Error::InvalidCertificate(
            CertificateError::UnsupportedSignatureAlgorithmContext {
                signature_algorithm_id: cert.sig_alg.to_vec(),
                supported_algorithms: algs.all.iter().map(|a| a.signature_alg_id()).collect(),
            },
        ));
    }
    let mut for_key = for_signature
        .filter(|a| a.public_key_alg_id().as_ref() == key_alg)
        .peekable();
    if for_key.peek().is_none() {
        return Err(rustls::Error::InvalidCertificate(
            CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext {
                signature_algorithm_id: cert.sig_alg.to_vec(),
                public_key_algorithm_id: key_alg.to_vec(),
            },
        ));
    }
    let tbs = cert.cert.tbs_certificate.as_ref();
    let signature = &cert.cert.signature_value.data;
    if for_key.any(|a| a.verify_signature(&key.data, tbs, signature).is_ok()) {
        Ok(())
    } else {
        Err(rustls::Error::InvalidCertificate(
            CertificateError::BadSignature,
        ))
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
            // An X.509 version 1 certificate (the docs' CA-signed recipe), which webpki does not
            // parse: verified as OpenSSL verifies it, directly under a root.
            Err(e) if is_unsupported_version(&e) && CertParts::v1(end_entity).is_some() => {
                self.check_v1(end_entity, intermediates, server_name, now)
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
        match self.webpki.verify_tls12_signature(m, c, d) {
            // rustls has no TLS 1.2 check of a raw public key: a version 1 certificate is
            // refused there rather than checked by code of pglock's own.
            Err(e) if is_unsupported_version(&e) && CertParts::v1(c).is_some() => Err(refusal(
                "the server's certificate is X.509 version 1, which pglock accepts only over TLS 1.3 \
                 (the server negotiated TLS 1.2): reissue the certificate as version 3 (openssl x509 \
                 -req with -extfile, e.g. a subjectAltName), or let the server use TLS 1.3",
            )),
            r => r,
        }
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match self.webpki.verify_tls13_signature(m, c, d) {
            // A version 1 certificate (accepted by `check_v1`): the signature is checked with its
            // public key, as rustls checks a raw public key.
            Err(e) if is_unsupported_version(&e) => match CertParts::v1(c) {
                Some(parts) => rustls::crypto::verify_tls13_signature_with_raw_key(
                    m,
                    &SubjectPublicKeyInfoDer::from(parts.cert.public_key().raw),
                    d,
                    &self.algs,
                ),
                None => Err(e),
            },
            r => r,
        }
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
    let store = Arc::new(roots.store);
    let mut builder = WebPkiServerVerifier::builder_with_provider(store.clone(), provider.clone());
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
        roots: store,
        algs: provider.signature_verification_algorithms,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// A directory for one test's files, removed at the end.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "pglock-tls-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).expect("create the test directory");
            TempDir(p)
        }
        fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// Certificates made with openssl in a temporary directory: CAs, the leaves they sign and
    /// their CRLs, each as `<name>.crt` / `<name>.key`.
    struct Pki {
        dir: TempDir,
        serial: AtomicUsize,
    }

    impl Pki {
        fn new() -> Pki {
            let pki = Pki {
                dir: TempDir::new(),
                serial: AtomicUsize::new(1),
            };
            pki.ca("ca");
            pki
        }
        fn path(&self, name: &str) -> PathBuf {
            self.dir.path(name)
        }
        fn run(&self, args: &[&str]) -> Vec<u8> {
            openssl(&self.dir.0, args)
        }
        fn ca(&self, name: &str) {
            let (key, crt, subj) = (
                format!("{name}.key"),
                format!("{name}.crt"),
                format!("/CN=pglock test {name}"),
            );
            self.run(&[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &crt,
                "-subj",
                &subj,
                "-days",
                "30",
            ]);
            std::fs::write(
                self.path(&format!("{name}.cnf")),
                format!(
                    "[ca]\ndefault_ca = d\n[d]\ndatabase = {name}.index\ncrlnumber = {name}.crlnumber\ndefault_md = sha256\ndefault_crl_days = 1\n"
                ),
            )
            .expect("write the CA config");
            std::fs::write(self.path(&format!("{name}.index")), "").expect("write the index");
            std::fs::write(self.path(&format!("{name}.crlnumber")), "01\n")
                .expect("write the CRL number");
        }
        /// A server certificate `name` signed by `ca`, with subject `subj` and, if given, a
        /// subjectAltName (`DNS:a,IP:1.2.3.4`).
        fn leaf(
            &self,
            ca: &str,
            name: &str,
            subj: &str,
            san: Option<&str>,
        ) -> CertificateDer<'static> {
            let (key, csr, crt, ext) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.crt"),
                format!("{name}.ext"),
            );
            let mut exts = "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n".to_string();
            if let Some(san) = san {
                exts.push_str(&format!("subjectAltName={san}\n"));
            }
            std::fs::write(self.path(&ext), exts).expect("write the extensions");
            self.run(&[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                subj,
            ]);
            let serial = self.serial.fetch_add(1, Ordering::Relaxed).to_string();
            self.run(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &format!("{ca}.crt"),
                "-CAkey",
                &format!("{ca}.key"),
                "-set_serial",
                &serial,
                "-days",
                "30",
                "-out",
                &crt,
                "-extfile",
                &ext,
            ]);
            self.der(name)
        }
        /// The PostgreSQL docs' CA-signed recipe: `name` (subject `subj`, a key made by
        /// `newkey`, e.g. `["rsa:2048"]` or `["ec", "-pkeyopt", "ec_paramgen_curve:P-256"]`)
        /// signed by `ca` without extensions, an X.509 version 1 certificate.
        fn leaf_v1(
            &self,
            ca: &str,
            name: &str,
            subj: &str,
            newkey: &[&str],
        ) -> CertificateDer<'static> {
            let (key, csr, crt) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.crt"),
            );
            let mut args = vec!["req", "-new", "-nodes", "-text", "-newkey"];
            args.extend_from_slice(newkey);
            args.extend(["-keyout", &key, "-out", &csr, "-subj", subj]);
            self.run(&args);
            let serial = self.serial.fetch_add(1, Ordering::Relaxed).to_string();
            self.run(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-text",
                "-days",
                "30",
                "-CA",
                &format!("{ca}.crt"),
                "-CAkey",
                &format!("{ca}.key"),
                "-set_serial",
                &serial,
                "-out",
                &crt,
            ]);
            self.der(name)
        }
        fn der(&self, name: &str) -> CertificateDer<'static> {
            CertificateDer::from_pem_file(self.path(&format!("{name}.crt")))
                .expect("a PEM certificate")
        }
        fn revoke(&self, ca: &str, name: &str) {
            self.run(&[
                "ca",
                "-config",
                &format!("{ca}.cnf"),
                "-keyfile",
                &format!("{ca}.key"),
                "-cert",
                &format!("{ca}.crt"),
                "-revoke",
                &format!("{name}.crt"),
            ]);
        }
        fn crl(&self, ca: &str, out: &str) -> PathBuf {
            self.run(&[
                "ca",
                "-config",
                &format!("{ca}.cnf"),
                "-keyfile",
                &format!("{ca}.key"),
                "-cert",
                &format!("{ca}.crt"),
                "-gencrl",
                "-out",
                out,
            ]);
            self.path(out)
        }
        fn files(&self, root: &str) -> TlsFiles {
            TlsFiles {
                root: Some(self.path(root).display().to_string()),
                ..TlsFiles::default()
            }
        }
    }

    fn verifier(mode: SslMode, files: &TlsFiles, host: &str) -> Arc<dyn ServerCertVerifier> {
        let check = check_for(mode, files.root.as_deref()).expect("a usable sslmode");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        server_verifier(check, mode, files, host, &HostId::of(host), &provider).expect("a verifier")
    }

    fn verify_at(
        v: &Arc<dyn ServerCertVerifier>,
        ee: &CertificateDer<'_>,
        host: &str,
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let peer = Some(IpAddr::from([127, 0, 0, 1]));
        let name = server_name(host, &HostId::of(host), Check::Chain, peer).expect("a name");
        v.verify_server_cert(ee, &[], &name, &[], now).map(|_| ())
    }

    fn verify(
        v: &Arc<dyn ServerCertVerifier>,
        ee: &CertificateDer<'_>,
        host: &str,
    ) -> Result<(), rustls::Error> {
        verify_at(v, ee, host, UnixTime::now())
    }

    fn in_days(days: u64) -> UnixTime {
        UnixTime::since_unix_epoch(
            Duration::from_secs(UnixTime::now().as_secs()) + Duration::from_secs(days * 86400),
        )
    }

    fn is_name_error(r: &Result<(), rustls::Error>) -> bool {
        matches!(
            r,
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            ))
        )
    }

    #[test]
    fn hosts_are_dns_names_ip_addresses_or_neither() {
        let dns = |h: &str| matches!(HostId::of(h), HostId::Dns(_));
        assert!(dns("db.example.com"));
        assert!(dns("localhost"));
        assert_eq!(
            HostId::of("10.1.2.3"),
            HostId::Ip(IpAddr::from([10, 1, 2, 3]))
        );
        assert_eq!(
            HostId::of("::1"),
            HostId::Ip("::1".parse().expect("an address"))
        );
        assert_eq!(
            HostId::of("fe80::1%eth0"),
            HostId::Ip("fe80::1".parse().expect("an address"))
        );
        for neither in ["127.1", "db.123", "", "fe80::1%", "10.0.0.1%eth0", "a b"] {
            assert_eq!(HostId::of(neither), HostId::Neither, "{neither:?}");
        }
    }

    #[test]
    fn verify_full_never_checks_a_substitute_name() {
        let peer = Some(IpAddr::from([192, 0, 2, 7]));
        for host in ["127.1", "db.123"] {
            let e = server_name(host, &HostId::of(host), Check::ChainAndName, peer)
                .expect_err("verify-full must refuse");
            assert_eq!(
                e,
                format!("cannot verify the server's certificate for host \"{host}\": not a DNS name or IP address")
            );
            // The modes that do not check the name use the server's address (and send no SNI).
            for check in [Check::None, Check::Chain] {
                let name = server_name(host, &HostId::of(host), check, peer).expect("a name");
                assert_eq!(
                    name,
                    ServerName::IpAddress(IpAddr::from([192, 0, 2, 7]).into())
                );
            }
        }
        let e = server_name("", &HostId::Neither, Check::ChainAndName, peer)
            .expect_err("an empty host cannot be verified");
        assert!(e.contains("host name must be specified"), "{e}");
        let name = server_name(
            "fe80::1%eth0",
            &HostId::of("fe80::1%eth0"),
            Check::ChainAndName,
            peer,
        )
        .expect("an address");
        assert_eq!(name.to_str(), "fe80::1");
        let name = server_name(
            "DB.example.com",
            &HostId::of("DB.example.com"),
            Check::ChainAndName,
            peer,
        )
        .expect("a DNS name");
        assert!(matches!(name, ServerName::DnsName(_)));
    }

    #[test]
    fn sslmode_and_root_file_decide_the_check() {
        let dir = TempDir::new();
        let root = dir.path("root.crt");
        std::fs::write(&root, "").expect("write");
        let root = root.display().to_string();
        let missing = dir.path("missing.crt").display().to_string();
        assert_eq!(
            check_for(SslMode::VerifyFull, None),
            Ok(Check::ChainAndName)
        );
        assert_eq!(
            check_for(SslMode::VerifyFull, Some("system")),
            Ok(Check::ChainAndName)
        );
        assert_eq!(
            check_for(SslMode::VerifyCa, Some(&missing)),
            Ok(Check::Chain)
        );
        // As libpq: a root certificate file that exists is used in every mode.
        assert_eq!(check_for(SslMode::Require, Some(&root)), Ok(Check::Chain));
        assert_eq!(check_for(SslMode::Prefer, Some(&root)), Ok(Check::Chain));
        assert_eq!(check_for(SslMode::Require, Some(&missing)), Ok(Check::None));
        assert_eq!(check_for(SslMode::Prefer, None), Ok(Check::None));
        for weak in [SslMode::Prefer, SslMode::Require, SslMode::VerifyCa] {
            let e = check_for(weak, Some("system")).expect_err("weak mode");
            let want = format!(
                "weak sslmode \"{}\" may not be used with sslrootcert=system (use \"verify-full\")",
                mode_name(weak)
            );
            assert_eq!(e, want);
        }
    }

    #[test]
    fn text_names_match_as_libpq_matches_them() {
        let dns = |h: &str| HostCheck::new(h, &HostId::of(h));
        assert!(text_name_matches("db.example.com", &dns("DB.Example.COM")));
        assert!(text_name_matches("*.example.com", &dns("db.example.com")));
        assert!(text_name_matches("*.EXAMPLE.com", &dns("Db.example.COM")));
        assert!(!text_name_matches(
            "*.example.com",
            &dns("a.db.example.com")
        ));
        assert!(!text_name_matches("*.example.com", &dns("example.com")));
        assert!(!text_name_matches("*.example.com", &dns(".example.com")));
        assert!(!text_name_matches(
            "db*.example.com",
            &dns("db1.example.com")
        ));
        assert!(!text_name_matches("*", &dns("db")));
        assert!(!text_name_matches(
            "db.example.com\0.evil",
            &dns("db.example.com")
        ));
        assert!(!text_name_matches(
            "other.example.com",
            &dns("db.example.com")
        ));
        // IP hosts: text equality only, never a wildcard.
        let ip = HostCheck::new("10.0.0.1", &HostId::of("10.0.0.1"));
        assert!(text_name_matches("10.0.0.1", &ip));
        assert!(!text_name_matches("*.0.0.1", &ip));
        let zoned = HostCheck::new("fe80::1%eth0", &HostId::of("fe80::1%eth0"));
        assert!(text_name_matches("FE80::1", &zoned));
    }

    #[test]
    fn verify_full_uses_san_entries_of_the_host_kind_else_the_cn() {
        let pki = Pki::new();
        let san = pki.leaf(
            "ca",
            "san",
            "/CN=cn.test",
            Some("DNS:db.test,DNS:*.wild.test"),
        );
        let cn_only = pki.leaf("ca", "cnonly", "/CN=db.test", None);
        let ip_san = pki.leaf("ca", "ipsan", "/CN=db.test", Some("IP:127.0.0.1"));
        let wild_cn = pki.leaf("ca", "wildcn", "/CN=*.test", None);
        let files = pki.files("ca.crt");
        let full = |host: &str| verifier(SslMode::VerifyFull, &files, host);

        assert!(verify(&full("db.test"), &san, "db.test").is_ok());
        assert!(verify(&full("DB.Test"), &san, "DB.Test").is_ok());
        assert!(verify(&full("a.wild.test"), &san, "a.wild.test").is_ok());
        // A dNSName entry exists: the CN does not count.
        assert!(is_name_error(&verify(&full("cn.test"), &san, "cn.test")));
        assert!(is_name_error(&verify(
            &full("x.a.wild.test"),
            &san,
            "x.a.wild.test"
        )));

        // No subjectAltName: the CN (libpq's fallback; webpki alone refuses it).
        assert!(verify(&full("db.test"), &cn_only, "db.test").is_ok());
        assert!(verify(&full("DB.TEST"), &cn_only, "DB.TEST").is_ok());
        let e = verify(&full("other.test"), &cn_only, "other.test");
        assert!(is_name_error(&e));
        assert!(format!("{:?}", e).contains("CN=db.test"), "{e:?}");
        assert!(is_name_error(&verify(
            &full("127.0.0.1"),
            &cn_only,
            "127.0.0.1"
        )));

        // Only an iPAddress entry: a DNS host is compared to the CN, an IP host to the entry.
        assert!(verify(&full("db.test"), &ip_san, "db.test").is_ok());
        assert!(verify(&full("127.0.0.1"), &ip_san, "127.0.0.1").is_ok());
        assert!(is_name_error(&verify(
            &full("127.0.0.2"),
            &ip_san,
            "127.0.0.2"
        )));

        assert!(verify(&full("a.test"), &wild_cn, "a.test").is_ok());
        assert!(is_name_error(&verify(
            &full("a.b.test"),
            &wild_cn,
            "a.b.test"
        )));

        // verify-ca: the chain only.
        let ca_only = verifier(SslMode::VerifyCa, &files, "other.test");
        assert!(verify(&ca_only, &cn_only, "other.test").is_ok());
        assert!(verify(&ca_only, &cn_only, "127.1").is_ok());
    }

    #[test]
    fn the_cn_fallback_still_checks_the_chain_and_validity() {
        let pki = Pki::new();
        pki.ca("other");
        let stranger = pki.leaf("other", "stranger", "/CN=db.test", None);
        let cn_only = pki.leaf("ca", "cnonly", "/CN=db.test", None);
        let files = pki.files("ca.crt");
        for mode in [SslMode::VerifyFull, SslMode::VerifyCa] {
            let v = verifier(mode, &files, "db.test");
            assert_eq!(
                verify(&v, &stranger, "db.test"),
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::UnknownIssuer
                ))
            );
            let late = verify_at(&v, &cn_only, "db.test", in_days(60));
            assert!(
                matches!(
                    late,
                    Err(rustls::Error::InvalidCertificate(
                        CertificateError::Expired | CertificateError::ExpiredContext { .. }
                    ))
                ),
                "{late:?}"
            );
        }
    }

    #[test]
    fn the_docs_self_signed_recipe_works_as_with_psql() {
        // https://www.postgresql.org/docs/current/ssl-tcp.html: a self-signed CA certificate with
        // only a CN, copied to the client as root.crt.
        let dir = TempDir::new();
        let selfsigned = |name: &str, cn: &str| {
            openssl(
                &dir.0,
                &[
                    "req",
                    "-new",
                    "-x509",
                    "-days",
                    "365",
                    "-nodes",
                    "-text",
                    "-out",
                    &format!("{name}.crt"),
                    "-keyout",
                    &format!("{name}.key"),
                    "-subj",
                    &format!("/CN={cn}"),
                ],
            );
            CertificateDer::from_pem_file(dir.path(&format!("{name}.crt"))).expect("a certificate")
        };
        let server = selfsigned("server", "db.test");
        let impostor = selfsigned("impostor", "db.test");
        let files = TlsFiles {
            root: Some(dir.path("server.crt").display().to_string()),
            ..TlsFiles::default()
        };
        let full = verifier(SslMode::VerifyFull, &files, "db.test");
        assert_eq!(verify(&full, &server, "db.test"), Ok(()));
        // webpki alone refuses it (a CA certificate as the server's).
        let roots = load_roots(files.root.as_deref().expect("a root")).expect("roots");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots.store), provider)
            .build()
            .expect("a verifier");
        let name = ServerName::try_from("db.test").expect("a name");
        assert!(webpki
            .verify_server_cert(&server, &[], &name, &[], UnixTime::now())
            .is_err());
        assert!(is_name_error(&verify(
            &verifier(SslMode::VerifyFull, &files, "x.test"),
            &server,
            "x.test"
        )));
        assert!(verify(&full, &impostor, "db.test").is_err());
        assert!(verify_at(&full, &server, "db.test", in_days(400)).is_err());
        let ca = verifier(SslMode::VerifyCa, &files, "x.test");
        assert_eq!(verify(&ca, &server, "x.test"), Ok(()));
        assert!(verify(&ca, &impostor, "x.test").is_err());
        // With a CRL, the pinned certificate's revocation cannot be checked: refused.
        let crl_dir = dir.path("crls");
        std::fs::create_dir(&crl_dir).expect("mkdir");
        let pki = Pki::new();
        let crl = pki.crl("ca", "ca.crl");
        std::fs::copy(&crl, crl_dir.join("ca.crl")).expect("copy");
        let with_crl = TlsFiles {
            crl_dir: Some(crl_dir),
            ..files.clone()
        };
        assert!(verify(
            &verifier(SslMode::VerifyFull, &with_crl, "db.test"),
            &server,
            "db.test"
        )
        .is_err());
    }

    #[test]
    fn a_leaf_listed_as_a_root_is_not_trusted_on_its_own() {
        // OpenSSL, as libpq uses it, does not end a chain at a trusted certificate that is not
        // self-issued: a leaf copied into sslrootcert, without its CA, is refused.
        let pki = Pki::new();
        let leaf = pki.leaf("ca", "server", "/CN=db.test", Some("DNS:db.test"));
        let files = TlsFiles {
            root: Some(pki.path("server.crt").display().to_string()),
            ..TlsFiles::default()
        };
        assert!(verify(
            &verifier(SslMode::VerifyFull, &files, "db.test"),
            &leaf,
            "db.test"
        )
        .is_err());
        assert!(verify(
            &verifier(SslMode::VerifyCa, &files, "db.test"),
            &leaf,
            "db.test"
        )
        .is_err());
        // With its CA it verifies.
        let files = TlsFiles {
            root: Some(pki.path("ca.crt").display().to_string()),
            ..TlsFiles::default()
        };
        assert_eq!(
            verify(
                &verifier(SslMode::VerifyFull, &files, "db.test"),
                &leaf,
                "db.test"
            ),
            Ok(())
        );
    }

    #[test]
    fn crls_revoke_and_a_missing_crl_refuses() {
        let pki = Pki::new();
        pki.ca("other");
        let good = pki.leaf("ca", "good", "/CN=db.test", Some("DNS:db.test"));
        let bad = pki.leaf("ca", "bad", "/CN=db.test", Some("DNS:db.test"));
        pki.revoke("ca", "bad");
        let crl = pki.crl("ca", "ca.crl");
        let other_crl = pki.crl("other", "other.crl");
        let with = |crl: Option<&Path>, dir: Option<&Path>| TlsFiles {
            crl: crl.map(Path::to_path_buf),
            crl_dir: dir.map(Path::to_path_buf),
            ..pki.files("ca.crt")
        };
        let revoked = Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        for mode in [SslMode::VerifyFull, SslMode::VerifyCa] {
            let v = verifier(mode, &with(Some(&crl), None), "db.test");
            assert_eq!(verify(&v, &good, "db.test"), Ok(()));
            assert_eq!(verify(&v, &bad, "db.test"), revoked);
            // A CRL expired (next update in a day) is refused, as OpenSSL refuses it.
            let late = verify_at(&v, &good, "db.test", in_days(2));
            assert!(
                matches!(
                    late,
                    Err(rustls::Error::InvalidCertificate(
                        CertificateError::ExpiredRevocationList
                            | CertificateError::ExpiredRevocationListContext { .. }
                    ))
                ),
                "{late:?}"
            );
        }
        // No CRL from the certificate's issuer: unknown status, refused (OpenSSL's "unable to
        // get certificate CRL" under libpq's CRL_CHECK_ALL).
        let v = verifier(
            SslMode::VerifyFull,
            &with(Some(&other_crl), None),
            "db.test",
        );
        assert_eq!(
            verify(&v, &good, "db.test"),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownRevocationStatus
            ))
        );
        // A directory: every file that holds PEM CRLs, through symlinks; other files skipped.
        let dir = pki.path("crldir");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::write(dir.join("README"), "not a CRL").expect("write");
        std::os::unix::fs::symlink(&crl, dir.join("0badc0de.r0")).expect("symlink");
        std::fs::copy(&other_crl, dir.join("other.pem")).expect("copy");
        std::fs::create_dir(dir.join("sub")).expect("mkdir");
        let v = verifier(SslMode::VerifyFull, &with(None, Some(&dir)), "db.test");
        assert_eq!(verify(&v, &good, "db.test"), Ok(()));
        assert_eq!(verify(&v, &bad, "db.test"), revoked);
        // Both, as libpq loads both.
        let v = verifier(
            SslMode::VerifyFull,
            &with(Some(&other_crl), Some(&dir)),
            "db.test",
        );
        assert_eq!(verify(&v, &bad, "db.test"), revoked);
    }

    #[test]
    fn crl_settings_that_cannot_be_used_are_errors() {
        let pki = Pki::new();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let build = |files: &TlsFiles| {
            server_verifier(
                Check::Chain,
                SslMode::VerifyCa,
                files,
                "db.test",
                &HostId::of("db.test"),
                &provider,
            )
            .map(|_| ())
        };
        let empty = pki.path("empty");
        std::fs::create_dir(&empty).expect("mkdir");
        std::fs::write(pki.path("notacrl.pem"), "hello").expect("write");
        let cases = [
            (
                Some(pki.path("missing.crl")),
                None,
                "could not read sslcrl file",
            ),
            (
                Some(pki.path("notacrl.pem")),
                None,
                "holds no certificate revocation list",
            ),
            (
                Some(pki.path("ca.crt")),
                None,
                "holds no certificate revocation list",
            ),
            (
                None,
                Some(empty.clone()),
                "holds no certificate revocation list",
            ),
            (None, Some(pki.path("missing")), "could not read sslcrldir"),
        ];
        for (crl, crl_dir, want) in cases {
            let files = TlsFiles {
                crl,
                crl_dir,
                ..pki.files("ca.crt")
            };
            let e = build(&files).expect_err("an unusable CRL setting");
            assert!(e.contains(want), "{e} (wanted {want})");
        }
        // A damaged CRL is named by its file.
        std::fs::write(
            pki.path("damaged.crl"),
            "-----BEGIN X509 CRL-----\nMAMCAQA=\n-----END X509 CRL-----\n",
        )
        .expect("write");
        let files = TlsFiles {
            crl: Some(pki.path("damaged.crl")),
            ..pki.files("ca.crt")
        };
        let e = build(&files).expect_err("a damaged CRL");
        assert!(e.contains("damaged.crl"), "{e}");
        // Root certificate files.
        let e = build(&pki.files("missing.crt")).expect_err("no root file");
        assert!(e.contains("does not exist"), "{e}");
        let e = build(&pki.files("notacrl.pem")).expect_err("no certificate");
        assert!(e.contains("holds no certificate"), "{e}");
        let e = build(&TlsFiles::default()).expect_err("no root set");
        assert!(e.contains("sslmode=verify-ca needs"), "{e}");
    }

    #[test]
    fn system_roots_read_the_bundle_and_hashed_directories() {
        let pki = Pki::new();
        pki.ca("other");
        let os = |p: PathBuf| Some(p.into_os_string());
        let store = system_roots(os(pki.path("ca.crt")), None).expect("a bundle");
        assert_eq!(store.len(), 1);
        let dir = pki.path("certs");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::copy(pki.path("ca.crt"), dir.join("0123abcd.0")).expect("copy");
        // Not a hashed name: OpenSSL never reads it, so it is not trusted.
        std::fs::copy(pki.path("other.crt"), dir.join("other.pem")).expect("copy");
        std::fs::write(pki.path("empty.pem"), "").expect("write");
        let store = system_roots(os(pki.path("empty.pem")), os(dir.clone())).expect("a directory");
        assert_eq!(store.len(), 1);
        let e = system_roots(os(pki.path("missing.pem")), None).expect_err("an unreadable bundle");
        assert!(e.contains("could not read the CA bundle"), "{e}");
        std::fs::remove_file(dir.join("0123abcd.0")).expect("rm");
        let e = system_roots(os(pki.path("empty.pem")), os(dir)).expect_err("nothing found");
        assert!(e.contains("no CA certificate found"), "{e}");
        assert!(is_hashed_name("0123abcd.0", ""));
        assert!(is_hashed_name("0123ABCD.12", ""));
        assert!(is_hashed_name("0123abcd.r0", "r"));
        for no in [
            "0123abcd",
            "0123abc.0",
            "0123abcd.",
            "0123abcd.r0",
            "ca.pem",
            "0123abcg.0",
        ] {
            assert!(!is_hashed_name(no, ""), "{no}");
        }
    }

    #[test]
    fn key_files_follow_libpq_permission_rules() {
        let refused = |uid, mode| key_file_allowed("k", true, uid, mode).is_err();
        assert!(!refused(1000, 0o100600));
        assert!(!refused(1000, 0o100400));
        assert!(refused(1000, 0o100640));
        assert!(refused(1000, 0o100604));
        assert!(refused(1000, 0o100610));
        assert!(!refused(0, 0o100600));
        assert!(!refused(0, 0o100640));
        assert!(refused(0, 0o100660));
        assert!(refused(0, 0o100650));
        assert!(refused(0, 0o100644));
        let e = key_file_allowed("/k", true, 1000, 0o100644).expect_err("0644");
        assert_eq!(
            e,
            "private key file \"/k\" has group or world access; file must have permissions u=rw (0600) or less if owned by the current user, or permissions u=rw,g=r (0640) or less if owned by root"
        );
        let e = key_file_allowed("/k", false, 1000, 0o600).expect_err("a directory");
        assert_eq!(e, "private key file \"/k\" is not a regular file");
    }

    #[test]
    fn client_keys_are_read_as_libpq_reads_them() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let pki = Pki::new();
        pki.leaf("ca", "client", "/CN=app", None);
        let key = pki.path("client.key");
        let chmod = |p: &Path, mode| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod")
        };
        chmod(&key, 0o600);
        assert!(read_client_key(&key).is_ok());
        chmod(&key, 0o644);
        let e = read_client_key(&key).expect_err("a world-readable key");
        assert!(e.contains("has group or world access"), "{e}");
        chmod(&key, 0o640);
        let root_owned = std::fs::metadata(&key).expect("stat").uid() == 0;
        assert_eq!(read_client_key(&key).is_ok(), root_owned);
        chmod(&key, 0o600);
        // DER, as libpq falls back to it.
        let der = pki.path("client.der");
        pki.run(&[
            "pkey",
            "-in",
            "client.key",
            "-outform",
            "der",
            "-out",
            "client.der",
        ]);
        chmod(&der, 0o600);
        assert!(read_client_key(&der).is_ok());
        // Not regular files: refused without waiting (a FIFO has no writer).
        let fifo = pki.path("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        let e = read_client_key(&fifo).expect_err("a FIFO");
        assert!(e.contains("is not a regular file"), "{e}");
        let e = read_client_key(&pki.path("")).expect_err("a directory");
        assert!(e.contains("is not a regular file"), "{e}");
        let e = read_client_key(&pki.path("nokey")).expect_err("missing");
        assert!(
            e.contains("certificate present, but not private key file"),
            "{e}"
        );
        std::fs::write(pki.path("junk.key"), "junk").expect("write");
        chmod(&pki.path("junk.key"), 0o600);
        let e = read_client_key(&pki.path("junk.key")).expect_err("no key");
        assert!(e.contains("could not load private key file"), "{e}");
        // The whole client configuration, with a certificate.
        let files = TlsFiles {
            cert: Some(pki.path("client.crt")),
            key: Some(key.clone()),
            ..TlsFiles::default()
        };
        let host = HostId::of("db.test");
        assert!(client_config(Check::None, SslMode::Require, &files, "db.test", &host).is_ok());
        chmod(&key, 0o666);
        let e = client_config(Check::None, SslMode::Require, &files, "db.test", &host)
            .expect_err("a world-readable key");
        assert!(e.contains("has group or world access"), "{e}");
    }

    /// `openssl x509 -outform der | openssl dgst -<alg>` of a certificate file.
    fn openssl_digest(dir: &TempDir, crt: &str, alg: &str) -> Vec<u8> {
        let der = format!("{crt}.der");
        openssl(
            &dir.0,
            &["x509", "-in", crt, "-outform", "der", "-out", &der],
        );
        openssl(&dir.0, &["dgst", &format!("-{alg}"), "-binary", &der])
    }

    #[test]
    fn tls_server_end_point_hashes_as_libpq() {
        let dir = TempDir::new();
        let make = |name: &str, args: &[&str]| {
            let crt = format!("{name}.crt");
            let key = format!("{name}.key");
            let mut all = vec![
                "req", "-x509", "-nodes", "-keyout", &key, "-out", &crt, "-subj", "/CN=t", "-days",
                "1",
            ];
            all.extend_from_slice(args);
            openssl(&dir.0, &all);
            let der = CertificateDer::from_pem_file(dir.path(&crt)).expect("a certificate");
            (crt, der)
        };
        let cases: &[(&str, &[&str], &str)] = &[
            ("rsa256", &["-newkey", "rsa:2048", "-sha256"], "sha256"),
            (
                "ec384",
                &[
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-384",
                    "-sha384",
                ],
                "sha384",
            ),
            (
                "ec512",
                &[
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-sha512",
                ],
                "sha512",
            ),
            ("rsa224", &["-newkey", "rsa:2048", "-sha224"], "sha224"),
            // SHA-1 signatures hash with SHA-256 (RFC 5929 4.1).
            ("rsa1", &["-newkey", "rsa:2048", "-sha1"], "sha256"),
            // RSASSA-PSS names its hash in its parameters.
            (
                "pss384",
                &[
                    "-newkey",
                    "rsa:2048",
                    "-sha384",
                    "-sigopt",
                    "rsa_padding_mode:pss",
                ],
                "sha384",
            ),
        ];
        for (name, args, alg) in cases {
            let (crt, der) = make(name, args);
            let got = tls_server_end_point_of(der.as_ref());
            assert_eq!(got, Some(openssl_digest(&dir, &crt, alg)), "{name}");
        }
        // Ed25519 has no hash: no channel binding, as with libpq.
        let (_, der) = make("ed", &["-newkey", "ed25519"]);
        assert_eq!(tls_server_end_point_of(der.as_ref()), None);
        assert_eq!(tls_server_end_point_of(b""), None);
        assert_eq!(
            tls_server_end_point_of(&[0x30, 0x82, 0xff, 0xff, 0x01]),
            None
        );
    }

    /// One TLS handshake against an in-process rustls server with `name.crt`/`name.key`; the
    /// client as `client_config` makes it for `host` (connecting to 127.0.0.1). Returns the
    /// client's stream or error, and the SNI the server saw.
    fn handshake_with(
        pki: &Pki,
        name: &str,
        mode: SslMode,
        host: &str,
    ) -> (Result<TlsStream, String>, Option<String>) {
        handshake_as(pki, name, name, rustls::DEFAULT_VERSIONS, mode, host)
    }

    /// `handshake_with`, the server presenting `cert.crt` with the key `key.key` (not checked to
    /// match, nor the certificate parsed: a version 1 certificate, a key that is not its own) and
    /// speaking only `versions`.
    fn handshake_as(
        pki: &Pki,
        cert: &str,
        key: &str,
        versions: &[&'static rustls::SupportedProtocolVersion],
        mode: SslMode,
        host: &str,
    ) -> (Result<TlsStream, String>, Option<String>) {
        use std::net::TcpListener;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::from_pem_file(pki.path(&format!("{key}.key"))).expect("a key");
        let key = provider
            .key_provider
            .load_private_key(key)
            .expect("a signing key");
        let certified = rustls::sign::CertifiedKey::new(vec![pki.der(cert)], key);
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("an address");
        let server = std::thread::spawn(move || {
            let (mut sock, _) = listener.accept().ok()?;
            sock.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            let mut conn = rustls::ServerConnection::new(Arc::new(server)).ok()?;
            while conn.is_handshaking() {
                if conn.complete_io(&mut sock).is_err() {
                    break;
                }
            }
            conn.server_name().map(str::to_string)
        });
        let client = (|| {
            let files = pki.files("ca.crt");
            let check = check_for(mode, files.root.as_deref())?;
            let id = HostId::of(host);
            let mut sock = TcpStream::connect(addr).map_err(|e| e.to_string())?;
            sock.set_read_timeout(Some(Duration::from_secs(5)))
                .map_err(|e| e.to_string())?;
            let peer = sock.peer_addr().ok().map(|a| a.ip());
            let name = server_name(host, &id, check, peer)?;
            let config = client_config(check, mode, &files, host, &id)?;
            let mut conn =
                ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
            while conn.is_handshaking() {
                conn.complete_io(&mut sock).map_err(|e| e.to_string())?;
            }
            Ok(TlsStream { conn, sock })
        })();
        let sni = server.join().expect("the server thread");
        (client, sni)
    }

    #[test]
    fn handshakes_send_sni_only_for_dns_names_and_bind_the_channel() {
        let pki = Pki::new();
        let der = pki.leaf("ca", "srv", "/CN=srv", Some("DNS:localhost,IP:127.0.0.1"));
        let want = sha2::Sha256::digest(der.as_ref()).to_vec();
        use sha2::Digest;

        let (client, sni) = handshake_with(&pki, "srv", SslMode::VerifyFull, "localhost");
        let stream = client.expect("verify-full by name");
        assert_eq!(sni.as_deref(), Some("localhost"));
        assert_eq!(stream.tls_server_end_point(), Some(want.clone()));

        let (client, sni) = handshake_with(&pki, "srv", SslMode::VerifyFull, "127.0.0.1");
        assert!(client.is_ok(), "verify-full by address");
        assert_eq!(sni, None);

        // A host rustls cannot name: verify-full refuses before any byte is sent; verify-ca
        // verifies the chain with the socket's address as the name, and sends no SNI.
        let (client, _) = handshake_with(&pki, "srv", SslMode::VerifyFull, "127.1");
        let e = client.err().expect("refused");
        assert!(e.contains("not a DNS name or IP address"), "{e}");
        let (client, sni) = handshake_with(&pki, "srv", SslMode::VerifyCa, "127.1");
        assert!(client.is_ok(), "verify-ca");
        assert_eq!(sni, None);

        let (client, _) = handshake_with(&pki, "srv", SslMode::VerifyFull, "other.test");
        let e = client.err().expect("wrong name");
        assert!(e.contains("certificate not valid for name"), "{e}");
    }

    fn is_refusal(r: &Result<(), rustls::Error>, want: &str) -> bool {
        match r {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(e))) => {
                format!("{:?}", e.0).contains(want)
            }
            _ => false,
        }
    }

    #[test]
    fn the_docs_ca_signed_recipe_a_version_1_certificate_verifies_under_its_root() {
        let pki = Pki::new();
        pki.ca("other");
        // The docs' recipe: an RSA root, an RSA leaf signed without extensions.
        pki.run(&[
            "req",
            "-new",
            "-x509",
            "-days",
            "30",
            "-nodes",
            "-newkey",
            "rsa:2048",
            "-keyout",
            "root.key",
            "-out",
            "root.crt",
            "-subj",
            "/CN=pglock test root",
        ]);
        let rsa = pki.leaf_v1("root", "rsa", "/CN=db.test", &["rsa:2048"]);
        let ec_args = ["ec", "-pkeyopt", "ec_paramgen_curve:P-256"];
        let ec = pki.leaf_v1("ca", "ec", "/CN=db.test", &ec_args);
        let stranger = pki.leaf_v1("other", "stranger", "/CN=db.test", &ec_args);
        for der in [&rsa, &ec] {
            let parts = CertParts::v1(der).expect("a version 1 certificate");
            assert!(!parts.explicit_version && !parts.after_key);
        }
        // A version 3 certificate (the CA's) is not taken for one.
        assert!(CertParts::v1(&pki.der("other")).is_none());
        // Both roots in one file, as a bundle: each leaf finds its own.
        let both = [
            std::fs::read(pki.path("root.crt")).expect("read"),
            std::fs::read(pki.path("ca.crt")).expect("read"),
        ]
        .concat();
        std::fs::write(pki.path("both.crt"), both).expect("write");
        let files = pki.files("both.crt");
        for (der, what) in [(&rsa, "rsa"), (&ec, "ec")] {
            let full = verifier(SslMode::VerifyFull, &files, "db.test");
            assert_eq!(verify(&full, der, "db.test"), Ok(()), "{what}");
            assert_eq!(verify(&full, der, "DB.TEST"), Ok(()), "{what}");
            let wrong = verify(
                &verifier(SslMode::VerifyFull, &files, "other.test"),
                der,
                "other.test",
            );
            assert!(is_name_error(&wrong), "{what}: {wrong:?}");
            assert!(format!("{wrong:?}").contains("CN=db.test"), "{wrong:?}");
            let ca = verifier(SslMode::VerifyCa, &files, "other.test");
            assert_eq!(verify(&ca, der, "other.test"), Ok(()), "{what}");
            // Validity: expired, not yet valid.
            for mode in [SslMode::VerifyFull, SslMode::VerifyCa] {
                let v = verifier(mode, &files, "db.test");
                assert_eq!(
                    verify_at(&v, der, "db.test", in_days(60)),
                    Err(rustls::Error::InvalidCertificate(CertificateError::Expired)),
                    "{what}"
                );
                assert_eq!(
                    verify_at(
                        &v,
                        der,
                        "db.test",
                        UnixTime::since_unix_epoch(Duration::ZERO)
                    ),
                    Err(rustls::Error::InvalidCertificate(
                        CertificateError::NotValidYet
                    )),
                    "{what}"
                );
            }
        }
        // Signed by a CA that is not in sslrootcert.
        for mode in [SslMode::VerifyFull, SslMode::VerifyCa] {
            let v = verifier(mode, &files, "db.test");
            assert_eq!(
                verify(&v, &stranger, "db.test"),
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::UnknownIssuer
                ))
            );
        }
        // A root with the issuer's name but another key: the signature does not verify.
        pki.run(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "twin.key",
            "-out",
            "twin.crt",
            "-subj",
            "/CN=pglock test ca",
            "-days",
            "30",
        ]);
        let twin = verifier(SslMode::VerifyCa, &pki.files("twin.crt"), "db.test");
        assert_eq!(
            verify(&twin, &ec, "db.test"),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::BadSignature
            ))
        );
        // A damaged signature, a changed TBSCertificate: refused.
        let mut bad_sig = ec.as_ref().to_vec();
        if let Some(last) = bad_sig.last_mut() {
            *last ^= 1;
        }
        let full = verifier(SslMode::VerifyFull, &files, "db.test");
        assert!(verify(&full, &CertificateDer::from(bad_sig), "db.test").is_err());
        let pos = ec
            .as_ref()
            .windows(7)
            .position(|w| w == b"db.test")
            .expect("the CN");
        let mut renamed = ec.as_ref().to_vec();
        renamed[pos] = b'x';
        let r = verify(&full, &CertificateDer::from(renamed), "xb.test");
        assert_eq!(
            r,
            Err(rustls::Error::InvalidCertificate(
                CertificateError::BadSignature
            ))
        );
        // With CRLs, its revocation cannot be checked: refused, even by a CRL that revokes
        // nothing.
        let crl = pki.crl("ca", "ca.crl");
        let with_crl = TlsFiles {
            crl: Some(crl),
            ..pki.files("ca.crt")
        };
        let r = verify(
            &verifier(SslMode::VerifyFull, &with_crl, "db.test"),
            &ec,
            "db.test",
        );
        assert!(is_refusal(&r, "revocation"), "{r:?}");
    }

    #[test]
    fn a_version_1_certificate_under_an_intermediate_is_refused() {
        let pki = Pki::new();
        // An intermediate CA signed by `ca`, and a version 1 leaf it signs.
        pki.run(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "inter.key",
            "-out",
            "inter.csr",
            "-subj",
            "/CN=pglock test inter",
        ]);
        std::fs::write(
            pki.path("inter.ext"),
            "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n",
        )
        .expect("write");
        pki.run(&[
            "x509",
            "-req",
            "-in",
            "inter.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-set_serial",
            "99",
            "-days",
            "30",
            "-out",
            "inter.crt",
            "-extfile",
            "inter.ext",
        ]);
        let leaf = pki.leaf_v1(
            "inter",
            "leaf",
            "/CN=db.test",
            &["ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        );
        let v = verifier(SslMode::VerifyFull, &pki.files("ca.crt"), "db.test");
        let name = ServerName::try_from("db.test").expect("a name");
        let r = v
            .verify_server_cert(&leaf, &[pki.der("inter")], &name, &[], UnixTime::now())
            .map(|_| ());
        assert!(is_refusal(&r, "intermediate CA"), "{r:?}");
        // Without the intermediate: an unknown issuer.
        assert_eq!(
            verify(&v, &leaf, "db.test"),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer
            ))
        );
    }

    #[test]
    fn version_1_parsing_refuses_what_is_not_one() {
        let pki = Pki::new();
        let v3 = pki.leaf("ca", "v3", "/CN=db.test", Some("DNS:db.test"));
        assert!(CertParts::of(v3.as_ref()).is_some_and(|p| p.explicit_version));
        assert!(CertParts::v1(&v3).is_none());
        let v1 = pki.leaf_v1(
            "ca",
            "v1",
            "/CN=db.test",
            &["ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        );
        let der = v1.as_ref();
        // Every truncation, trailing data, and every single-byte change: no panic, and a
        // truncated or extended certificate is not parsed.
        for n in 0..der.len() {
            assert!(CertParts::of(&der[..n]).is_none(), "{n}");
        }
        assert!(CertParts::of(&[der, &[0]].concat()).is_none());
        let v = verifier(SslMode::VerifyFull, &pki.files("ca.crt"), "db.test");
        for i in 0..der.len() {
            for x in [0x01, 0x80, 0xff] {
                let mut bad = der.to_vec();
                bad[i] ^= x;
                let _ = CertParts::of(&bad);
                assert!(verify(&v, &CertificateDer::from(bad), "db.test").is_err());
            }
        }
        // What x509-parser reads past (it ignores anything in a SEQUENCE after the fields it
        // knows) is refused: an element after the signature (outside what is signed), and an
        // empty extensions field in the TBSCertificate.
        use x509_parser::asn1_rs::{Sequence, ToDer};
        let seq = |parts: &[&[u8]]| Sequence::new(parts.concat().into()).to_der_vec().unwrap();
        let (_, outer) = Vec::<Any>::from_der(der).expect("the certificate's elements");
        let (tbs, alg, sig) = (&outer[0], &outer[1], &outer[2]);
        let whole = |a: &Any| a.to_der_vec().unwrap();
        let null = [0x05, 0x00];
        let after_signature = seq(&[&whole(tbs), &whole(alg), &whole(sig), &null]);
        assert!(CertParts::of(&after_signature).is_none());
        assert!(verify(&v, &CertificateDer::from(after_signature), "db.test").is_err());
        let same = seq(&[&whole(tbs), &whole(alg), &whole(sig)]);
        assert_eq!(same, der);
        let same = CertificateDer::from(same);
        assert!(CertParts::v1(&same).is_some());
        assert_eq!(verify(&v, &same, "db.test"), Ok(()));
        let empty_extensions = [0xa3, 0x02, 0x30, 0x00];
        let tbs = seq(&[tbs.data, &empty_extensions]);
        let extended = seq(&[&tbs, &whole(alg), &whole(sig)]);
        let parts = CertParts::of(&extended).expect("parsed");
        assert!(parts.after_key && parts.cert.extensions().is_empty());
        let extended = CertificateDer::from(extended);
        assert!(CertParts::v1(&extended).is_none());
        assert!(verify(&v, &extended, "db.test").is_err());
    }

    #[test]
    fn handshakes_with_a_version_1_certificate_need_tls_1_3() {
        let pki = Pki::new();
        let ec = ["ec", "-pkeyopt", "ec_paramgen_curve:P-256"];
        pki.leaf_v1("ca", "v1", "/CN=localhost", &ec);
        pki.leaf_v1("ca", "v1rsa", "/CN=localhost", &["rsa:2048"]);
        let tls13 = &[&rustls::version::TLS13];
        let tls12 = &[&rustls::version::TLS12];
        for name in ["v1", "v1rsa"] {
            for mode in [SslMode::VerifyFull, SslMode::VerifyCa] {
                let (client, sni) = handshake_as(&pki, name, name, tls13, mode, "localhost");
                let stream = client.expect("TLS 1.3 with a version 1 certificate");
                assert_eq!(sni.as_deref(), Some("localhost"));
                assert!(stream.tls_server_end_point().is_some());
            }
            let (client, _) =
                handshake_as(&pki, name, name, tls13, SslMode::VerifyFull, "other.test");
            let e = client.err().expect("wrong name");
            assert!(e.contains("certificate not valid for name"), "{e}");
            // TLS 1.2: refused, saying why.
            let (client, _) =
                handshake_as(&pki, name, name, tls12, SslMode::VerifyFull, "localhost");
            let e = client.err().expect("TLS 1.2");
            assert!(e.contains("only over TLS 1.3"), "{e}");
        }
        // The server signs the handshake with a key that is not the certificate's: refused.
        pki.leaf_v1("ca", "otherkey", "/CN=localhost", &ec);
        let (client, _) = handshake_as(
            &pki,
            "v1",
            "otherkey",
            tls13,
            SslMode::VerifyFull,
            "localhost",
        );
        let e = client.err().expect("a handshake signed with another key");
        assert!(e.contains("BadSignature"), "{e}");
    }
}
