use super::*;

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
