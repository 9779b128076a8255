//! The files of the TLS settings: sslrootcert (and the system's roots), sslcrl/sslcrldir,
//! sslcert/sslkey (with libpq's key-file permission rule).

use crate::pg::conninfo::TlsFiles;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::RootCertStore;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// Where the system's CA bundle usually is (Debian/Ubuntu, RHEL/Fedora, Alpine, SUSE, macOS).
pub(super) const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
    "/etc/ssl/ca-bundle.pem",
];

/// OpenSSL's hashed certificate directories, read when no bundle file is found.
pub(super) const SYSTEM_DIRS: &[&str] = &["/etc/ssl/certs", "/etc/pki/tls/certs"];

/// The roots to verify against, and the certificates of an explicit sslrootcert file (a server
/// may present one of them itself: the PostgreSQL docs' self-signed recipe).
pub(super) struct Roots {
    pub(super) store: RootCertStore,
    pub(super) pinned: Vec<CertificateDer<'static>>,
}

pub(super) fn load_roots(root: &str) -> Result<Roots, String> {
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
/// Not rustls-native-certs: it trusts every file of a directory (OpenSSL, so libpq, only looks
/// up `<hash>.<n>` names) and made the static release binary 16,096 bytes larger.
pub(super) fn system_roots(
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
pub(super) fn is_hashed_name(name: &str, kind: &str) -> bool {
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

/// A CRL and the file it came from.
pub(super) type NamedCrl = (PathBuf, CertificateRevocationListDer<'static>);

/// The CRLs of sslcrl (a PEM file of one or more) and sslcrldir (every file of the directory
/// that holds PEM CRLs; OpenSSL looks up `<hash>.r<n>` names, but a CRL can only revoke, so
/// reading more files checks no less). A set file or directory that cannot be read, or holds no
/// CRL, is an error: libpq would then fail every verification with "unable to get certificate
/// CRL" (an empty directory) or silently check nothing (an unreadable file); pglock says so
/// before connecting.
pub(super) fn load_crls(files: &TlsFiles) -> Result<Vec<NamedCrl>, String> {
    let mut crls = Vec::new();
    if let Some(path) = &files.crl {
        let shown = path.display();
        let bytes = std::fs::read(path)
            .map_err(|e| format!("could not read sslcrl file \"{shown}\": {e}"))?;
        let found = pem_crls(&bytes, path).map_err(|e| format!("sslcrl file \"{shown}\": {e}"))?;
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
            crls.extend(pem_crls(&bytes, &path).map_err(|e| format!("{}: {e}", path.display()))?);
        }
        if crls.len() == before {
            return Err(format!(
                "sslcrldir \"{shown}\" holds no certificate revocation list (PEM \"X509 CRL\")"
            ));
        }
    }
    Ok(crls)
}

/// The PEM CRLs of a file (other sections are skipped), each with the file's name. Their DER
/// is parsed once, by the verifier builder (`server_verifier`), which names the file of a bad one.
fn pem_crls(bytes: &[u8], path: &Path) -> Result<Vec<NamedCrl>, String> {
    CertificateRevocationListDer::pem_slice_iter(bytes)
        .map(|crl| crl.map(|der| (path.to_path_buf(), der)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}

/// The client key, as libpq reads it: a regular file without group or world access (see
/// `key_file_allowed`), PEM or else DER.
pub(super) fn read_client_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
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
pub(super) fn key_file_allowed(
    shown: &str,
    is_file: bool,
    uid: u32,
    mode: u32,
) -> Result<(), String> {
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

pub(super) fn read_client_cert(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
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
