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

mod files;
#[cfg(test)]
mod tests;
mod v1;
mod verify;

use files::{read_client_cert, read_client_key};
use verify::server_verifier;

use super::{wait_fd, ReadErr};
use crate::pg::conninfo::{ConnParams, SslMode, TlsFiles};
use crate::signals::Signals;
use rustls::pki_types::{DnsName, ServerName};
use rustls::{ClientConfig, ClientConnection};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv6Addr, TcpStream};
use std::os::fd::AsFd;
use std::path::Path;
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

fn check_for(mode: SslMode, root: Option<&str>) -> Result<Check, String> {
    match mode {
        SslMode::VerifyFull => Ok(Check::ChainAndName),
        // libpq 16+: sslrootcert=system implies verify-full and refuses weaker modes (conninfo
        // already does so; this keeps a weaker mode from ever checking less with system roots).
        _ if root == Some("system") => Err(format!(
            "weak sslmode \"{}\" may not be used with sslrootcert=system (use \"verify-full\")",
            mode.as_str()
        )),
        SslMode::VerifyCa => Ok(Check::Chain),
        _ => match root {
            Some(path) if Path::new(path).exists() => Ok(Check::Chain),
            _ => Ok(Check::None),
        },
    }
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
