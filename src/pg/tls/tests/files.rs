use super::*;

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
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
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
