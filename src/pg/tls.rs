//! TLS for the lock connection, through rustls (no system library is loaded, and runs without TLS
//! never touch it). libpq's meaning of sslmode: `prefer` and `require` encrypt without verifying
//! the server's certificate.

use super::{wait_fd, ReadErr};
use crate::conninfo::ConnParams;
use crate::signals::Signals;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
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
    _params: &ConnParams,
    deadline: Option<Instant>,
    signals: &Signals,
) -> Result<TlsStream, TlsErr> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsErr::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
        .with_no_client_auth();
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
