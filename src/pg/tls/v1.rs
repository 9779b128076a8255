//! X.509 version 1 server certificates (the PostgreSQL docs' CA-signed recipe), which webpki
//! refuses.

use super::verify::Verifier;
use rustls::client::danger::ServerCertVerified;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::CertificateError;
use std::sync::Arc;
use x509_parser::asn1_rs::{Any, BitString, Class, DerParser, FromDer, SequenceIterator, Tag};
use x509_parser::certificate::X509Certificate;
use x509_parser::x509::X509Version;

impl Verifier {
    /// An X.509 version 1 server certificate (no extensions; what `openssl x509 -req` makes
    /// without `-extfile`, as in the PostgreSQL docs' CA-signed recipe), which webpki refuses.
    /// Checked as OpenSSL checks it when a root issued it directly: the issuer is a root, the
    /// root's key verifies the certificate's signature (with the provider's algorithms, as webpki
    /// would), the validity period includes `now`, and the name by libpq's rules (the CN: there
    /// is no subjectAltName). Refused, with an error saying why, where pglock cannot check as
    /// much as for a version 3 certificate: an intermediate CA between it and the root, a root
    /// with name constraints, and CRLs (its revocation).
    pub(super) fn check_v1(
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
pub(super) struct Refusal(pub(super) &'static str);

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

pub(super) fn refusal(message: &'static str) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
        Refusal(message),
    ))))
}

/// webpki's `UnsupportedCertVersion`, as rustls passes it on: `CertificateError::Other` holding
/// the `webpki::Error` itself (rustls-webpki is a direct dependency at rustls's version for this
/// downcast; a version mismatch would make it `false`, which the unit tests catch).
pub(super) fn is_unsupported_version(e: &rustls::Error) -> bool {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => matches!(
            other.0.downcast_ref::<webpki::Error>(),
            Some(webpki::Error::UnsupportedCertVersion)
        ),
        _ => false,
    }
}

/// A certificate as x509-parser reads it, with the exact bytes webpki-style matching needs
/// (read with asn1-rs, x509-parser's DER reader, where x509-parser keeps no bytes: it decodes
/// an AlgorithmIdentifier into an OID and parameters, and ignores whatever a SEQUENCE holds
/// after the fields it knows, which webpki refuses).
pub(super) struct CertParts<'a> {
    pub(super) cert: X509Certificate<'a>,
    /// Whether the TBSCertificate has an explicit version (v2, v3; never in a DER version 1).
    pub(super) explicit_version: bool,
    /// The contents of the TBSCertificate's signature AlgorithmIdentifier.
    pub(super) tbs_sig_alg: &'a [u8],
    /// The contents of the issuer and subject Names (as webpki and a trust anchor hold them).
    pub(super) issuer: &'a [u8],
    pub(super) subject: &'a [u8],
    /// Whether the TBSCertificate holds anything after the key (unique IDs, extensions).
    pub(super) after_key: bool,
    /// The contents of the signatureAlgorithm.
    pub(super) sig_alg: &'a [u8],
}

impl<'a> CertParts<'a> {
    pub(super) fn of(der: &'a [u8]) -> Option<CertParts<'a>> {
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
    pub(super) fn v1(der: &'a CertificateDer<'_>) -> Option<CertParts<'a>> {
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
pub(super) fn verify_signed_by(
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
