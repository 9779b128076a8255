//! The server's certificate, checked as libpq checks it for each sslmode.

use super::files::{load_crls, load_roots};
use super::v1::{is_unsupported_version, refusal, CertParts};
use super::{Check, HostId};
use crate::pg::conninfo::{SslMode, TlsFiles};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::VerifierBuilderError;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use rustls::{CertificateError, RootCertStore};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::net::IpAddr;
use std::sync::Arc;
use x509_parser::asn1_rs::FromDer;
use x509_parser::certificate::X509Certificate;

/// The chain check (webpki: chain to the roots, validity, key usage, revocation) with libpq's
/// host-name rules on top. webpki checks the name last, after the chain and revocation
/// (`WebPkiServerVerifier::verify_server_cert`), so its `NotValidForName` means that everything
/// else passed: only then are libpq's rules applied (or, for verify-ca, nothing).
#[derive(Debug)]
pub(super) struct Verifier {
    pub(super) webpki: Arc<WebPkiServerVerifier>,
    /// The certificates of an explicit sslrootcert file: a server that presents one of them is
    /// trusted as OpenSSL trusts it (webpki refuses a CA certificate as the server's, which the
    /// docs' self-signed recipe makes).
    pub(super) pinned: Vec<CertificateDer<'static>>,
    /// The roots webpki verifies against, for an X.509 version 1 server certificate (which
    /// webpki refuses to parse; see `check_v1`).
    pub(super) roots: Arc<RootCertStore>,
    /// The provider's signature algorithms, for the same.
    pub(super) algs: WebPkiSupportedAlgorithms,
    pub(super) crls: bool,
    /// verify-full: the host as libpq compares it. `None`: verify-ca, the chain only.
    pub(super) name: Option<HostCheck>,
}

/// The host of the connection string, as libpq compares it to a certificate's names.
#[derive(Debug, Clone)]
pub(super) struct HostCheck {
    /// As given (an IPv6 zone dropped).
    pub(super) host: String,
    pub(super) ip: Option<IpAddr>,
}

impl HostCheck {
    pub(super) fn new(host: &str, id: &HostId) -> HostCheck {
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
    pub(super) fn name_error(
        server_name: &ServerName<'_>,
        presented: Vec<String>,
    ) -> rustls::Error {
        rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            expected: server_name.to_owned(),
            presented,
        })
    }

    /// libpq's name check (fe-secure-openssl.c, `pgtls_verify_peer_name_matches_certificate_guts`).
    pub(super) fn check_name(
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
    pub(super) fn check_pinned(
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

pub(super) enum NameMatch {
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
pub(super) fn libpq_name_match(der: &[u8], host: &HostCheck) -> NameMatch {
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
pub(super) fn text_name_matches(name: &str, host: &HostCheck) -> bool {
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
pub(super) fn server_verifier(
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
            mode.as_str()
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
        let ders = crls.iter().map(|(_, der)| der.clone());
        builder = builder.with_crls(ders).enforce_revocation_expiration();
    }
    let webpki = builder.build().map_err(|e| {
        // The builder parses the CRLs (webpki) and names none: the file of the first one webpki
        // refuses is found by parsing them again, on this error path only.
        let bad = crls.iter().find_map(|(path, der)| {
            webpki::BorrowedCertRevocationList::from_der(der.as_ref())
                .err()
                .map(|e| (path, e))
        });
        match (e, bad) {
            (VerifierBuilderError::InvalidCrl(_), Some((path, e))) => format!(
                "{}: invalid certificate revocation list: {e}",
                path.display()
            ),
            (e, _) => format!("sslrootcert/sslcrl: {e}"),
        }
    })?;
    Ok(Arc::new(Verifier {
        webpki,
        pinned: roots.pinned,
        roots: store,
        algs: provider.signature_verification_algorithms,
        crls: have_crls,
        name: (check == Check::ChainAndName).then(|| HostCheck::new(host, id)),
    }))
}

/// Accepts any certificate (sslmode prefer/require) but still checks the handshake signatures.
#[derive(Debug)]
pub(super) struct NoVerify(Arc<CryptoProvider>);

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
