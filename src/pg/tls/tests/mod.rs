//! Unit tests of TLS, with certificates made by openssl.

mod files;
mod handshake;
mod hosts;
mod names;
mod v1;

use super::files::*;
use super::v1::*;
use super::verify::*;
use super::*;
pub(super) use rustls::client::danger::ServerCertVerifier;
pub(super) use rustls::client::WebPkiServerVerifier;
pub(super) use rustls::pki_types::pem::PemObject;
pub(super) use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
pub(super) use rustls::CertificateError;
pub(super) use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
pub(super) use x509_parser::asn1_rs::{Any, FromDer};

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
    /// `openssl req` with a new P-256 key in `{name}.key`, writing `{name}.{out}`: a self-signed
    /// certificate (`how` = `-x509`, 30 days) or a signing request (`-new`).
    fn req(&self, how: &str, name: &str, out: &str, subj: &str) {
        let (key, out) = (format!("{name}.key"), format!("{name}.{out}"));
        let days: &[&str] = if how == "-x509" {
            &["-days", "30"]
        } else {
            &[]
        };
        let args = [
            &[
                "req",
                how,
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
            ][..],
            &["-keyout", &key, "-out", &out, "-subj", subj],
            days,
        ];
        self.run(&args.concat());
    }
    /// A self-signed root `{name}.crt` with subject `subj` and its key.
    fn self_signed(&self, name: &str, subj: &str) {
        self.req("-x509", name, "crt", subj);
    }
    /// A signing request `{name}.csr` with subject `subj` and its key.
    fn csr(&self, name: &str, subj: &str) {
        self.req("-new", name, "csr", subj);
    }
    fn ca(&self, name: &str) {
        self.self_signed(name, &format!("/CN=pglock test {name}"));
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
    fn leaf(&self, ca: &str, name: &str, subj: &str, san: Option<&str>) -> CertificateDer<'static> {
        let (csr, crt, ext) = (
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.ext"),
        );
        let mut exts = "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n".to_string();
        if let Some(san) = san {
            exts.push_str(&format!("subjectAltName={san}\n"));
        }
        std::fs::write(self.path(&ext), exts).expect("write the extensions");
        self.csr(name, subj);
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
        CertificateDer::from_pem_file(self.path(&format!("{name}.crt"))).expect("a PEM certificate")
    }
    /// `openssl ca` as CA `ca` (see `ca`), then `rest`.
    fn as_ca(&self, ca: &str, rest: &[&str]) {
        let (cnf, key, crt) = (
            format!("{ca}.cnf"),
            format!("{ca}.key"),
            format!("{ca}.crt"),
        );
        let head = ["ca", "-config", &cnf, "-keyfile", &key, "-cert", &crt];
        self.run(&[&head[..], rest].concat());
    }
    fn revoke(&self, ca: &str, name: &str) {
        self.as_ca(ca, &["-revoke", &format!("{name}.crt")]);
    }
    fn crl(&self, ca: &str, out: &str) -> PathBuf {
        self.as_ca(ca, &["-gencrl", "-out", out]);
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
        let mut conn = ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).map_err(|e| e.to_string())?;
        }
        Ok(TlsStream { conn, sock })
    })();
    let sni = server.join().expect("the server thread");
    (client, sni)
}
