use super::*;

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
            "req", "-x509", "-nodes", "-keyout", &key, "-out", &crt, "-subj", "/CN=t", "-days", "1",
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
