//! TLS for the lock connection, through rustls (no system library is loaded, and runs without TLS
//! never touch it). libpq's meaning of sslmode: `prefer` and `require` encrypt without verifying
//! the server's certificate.

use super::{wait_fd, ReadErr};
use crate::conninfo::{ConnParams, SslMode};
use crate::signals::Signals;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::RootCertStore;
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Instant;

pub struct TlsStream {
    conn: ClientConnection,
    pub sock: TcpStream,
}

pub enum TlsErr {
    Read(ReadErr),
    Tls(String),
    /// The TLS settings cannot be used (a missing or unreadable certificate file).
    Config(String),
}

/// Where the system's CA bundle usually is (Debian/Ubuntu, RHEL/Fedora, Alpine, SUSE, macOS).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
    "/etc/ssl/ca-bundle.pem",
];

fn load_roots(root: &str) -> Result<RootCertStore, String> {
    use rustls::pki_types::pem::PemObject;
    let path = if root == "system" {
        std::env::var("SSL_CERT_FILE")
            .ok()
            .or_else(|| {
                SYSTEM_BUNDLES
                    .iter()
                    .find(|p| std::path::Path::new(p).exists())
                    .map(|p| p.to_string())
            })
            .ok_or("sslrootcert=system: no system CA bundle found (set SSL_CERT_FILE)")?
    } else {
        root.to_string()
    };
    let mut store = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&path)
        .map_err(|e| format!("cannot read sslrootcert {path}: {e}"))?;
    for c in certs {
        let c = c.map_err(|e| format!("sslrootcert {path}: {e}"))?;
        store
            .add(c)
            .map_err(|e| format!("sslrootcert {path}: {e}"))?;
    }
    if store.is_empty() {
        return Err(format!("sslrootcert {path} holds no certificate"));
    }
    Ok(store)
}

/// Verifies the chain to the given roots but not the host name (sslmode=verify-ca).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// libpq's meaning of sslmode: prefer and require encrypt without verifying; verify-ca checks
/// the chain to sslrootcert; verify-full also checks the host name. sslcert/sslkey present a
/// client certificate.
fn client_config(params: &ConnParams) -> Result<ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let verify = matches!(params.sslmode, SslMode::VerifyCa | SslMode::VerifyFull);
    let builder = if verify {
        let root = params.tls_files.root.as_deref().ok_or_else(|| {
            format!(
                "sslmode={} needs the CA that signed the server's certificate: set sslrootcert=/path/to/ca.crt (or sslrootcert=system)",
                if params.sslmode == SslMode::VerifyCa { "verify-ca" } else { "verify-full" }
            )
        })?;
        let roots = Arc::new(load_roots(root)?);
        let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| e.to_string())?;
        if params.sslmode == SslMode::VerifyFull {
            builder.with_webpki_verifier(webpki)
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)))
        }
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
    };
    match (&params.tls_files.cert, &params.tls_files.key) {
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<Result<_, _>>())
                .map_err(|e| format!("cannot read sslcert {}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("cannot read sslkey {}: {e}", key.display()))?;
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

pub fn handshake(
    mut sock: TcpStream,
    host: &str,
    params: &ConnParams,
    deadline: Option<Instant>,
    signals: &Signals,
) -> Result<TlsStream, TlsErr> {
    let config = client_config(params).map_err(TlsErr::Config)?;
    let name = ServerName::try_from(host.to_string())
        .unwrap_or_else(|_| ServerName::try_from("localhost").expect("valid name"));
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

impl TlsStream {
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
