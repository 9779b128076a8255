use super::*;

fn is_refusal(r: &Result<(), rustls::Error>, want: &str) -> bool {
    match r {
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(e))) => {
            matches!(e.0.downcast_ref::<Refusal>(), Some(Refusal(m)) if m.contains(want))
        }
        _ => false,
    }
}

#[test]
fn the_docs_ca_signed_recipe_a_version_1_certificate_verifies_under_its_root() {
    let pki = Pki::new();
    pki.ca("other");
    // The docs' recipe: an RSA root, an RSA leaf signed without extensions.
    pki.run(&[
        "req",
        "-new",
        "-x509",
        "-days",
        "30",
        "-nodes",
        "-newkey",
        "rsa:2048",
        "-keyout",
        "root.key",
        "-out",
        "root.crt",
        "-subj",
        "/CN=pglock test root",
    ]);
    let rsa = pki.leaf_v1("root", "rsa", "/CN=db.test", &["rsa:2048"]);
    let ec_args = ["ec", "-pkeyopt", "ec_paramgen_curve:P-256"];
    let ec = pki.leaf_v1("ca", "ec", "/CN=db.test", &ec_args);
    let stranger = pki.leaf_v1("other", "stranger", "/CN=db.test", &ec_args);
    for der in [&rsa, &ec] {
        let parts = CertParts::v1(der).expect("a version 1 certificate");
        assert!(!parts.explicit_version && !parts.after_key);
    }
    // A version 3 certificate (the CA's) is not taken for one.
    assert!(CertParts::v1(&pki.der("other")).is_none());
    // Both roots in one file, as a bundle: each leaf finds its own.
    let both = [
        std::fs::read(pki.path("root.crt")).expect("read"),
        std::fs::read(pki.path("ca.crt")).expect("read"),
    ]
    .concat();
    std::fs::write(pki.path("both.crt"), both).expect("write");
    let files = pki.files("both.crt");
    for (der, what) in [(&rsa, "rsa"), (&ec, "ec")] {
        let full = verifier(SslMode::VerifyFull, &files, "db.test");
        assert_eq!(verify(&full, der, "db.test"), Ok(()), "{what}");
        assert_eq!(verify(&full, der, "DB.TEST"), Ok(()), "{what}");
        let wrong = verify(
            &verifier(SslMode::VerifyFull, &files, "other.test"),
            der,
            "other.test",
        );
        assert!(is_name_error(&wrong), "{what}: {wrong:?}");
        assert!(format!("{wrong:?}").contains("CN=db.test"), "{wrong:?}");
        let ca = verifier(SslMode::VerifyCa, &files, "other.test");
        assert_eq!(verify(&ca, der, "other.test"), Ok(()), "{what}");
        // Validity: expired, not yet valid.
        for mode in [SslMode::VerifyFull, SslMode::VerifyCa] {
            let v = verifier(mode, &files, "db.test");
            assert_eq!(
                verify_at(&v, der, "db.test", in_days(60)),
                Err(rustls::Error::InvalidCertificate(CertificateError::Expired)),
                "{what}"
            );
            assert_eq!(
                verify_at(
                    &v,
                    der,
                    "db.test",
                    UnixTime::since_unix_epoch(Duration::ZERO)
                ),
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidYet
                )),
                "{what}"
            );
        }
    }
    // Signed by a CA that is not in sslrootcert.
    for mode in [SslMode::VerifyFull, SslMode::VerifyCa] {
        let v = verifier(mode, &files, "db.test");
        assert_eq!(
            verify(&v, &stranger, "db.test"),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer
            ))
        );
    }
    // A root with the issuer's name but another key: the signature does not verify.
    pki.self_signed("twin", "/CN=pglock test ca");
    let twin = verifier(SslMode::VerifyCa, &pki.files("twin.crt"), "db.test");
    assert_eq!(
        verify(&twin, &ec, "db.test"),
        Err(rustls::Error::InvalidCertificate(
            CertificateError::BadSignature
        ))
    );
    // A damaged signature, a changed TBSCertificate: refused.
    let mut bad_sig = ec.as_ref().to_vec();
    if let Some(last) = bad_sig.last_mut() {
        *last ^= 1;
    }
    let full = verifier(SslMode::VerifyFull, &files, "db.test");
    assert!(verify(&full, &CertificateDer::from(bad_sig), "db.test").is_err());
    let pos = ec
        .as_ref()
        .windows(7)
        .position(|w| w == b"db.test")
        .expect("the CN");
    let mut renamed = ec.as_ref().to_vec();
    renamed[pos] = b'x';
    let r = verify(&full, &CertificateDer::from(renamed), "xb.test");
    assert_eq!(
        r,
        Err(rustls::Error::InvalidCertificate(
            CertificateError::BadSignature
        ))
    );
    // With CRLs, its revocation cannot be checked: refused, even by a CRL that revokes
    // nothing.
    let crl = pki.crl("ca", "ca.crl");
    let with_crl = TlsFiles {
        crl: Some(crl),
        ..pki.files("ca.crt")
    };
    let r = verify(
        &verifier(SslMode::VerifyFull, &with_crl, "db.test"),
        &ec,
        "db.test",
    );
    assert!(is_refusal(&r, "revocation"), "{r:?}");
}

#[test]
fn a_version_1_certificate_under_an_intermediate_is_refused() {
    let pki = Pki::new();
    // An intermediate CA signed by `ca`, and a version 1 leaf it signs.
    pki.csr("inter", "/CN=pglock test inter");
    std::fs::write(
        pki.path("inter.ext"),
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n",
    )
    .expect("write");
    pki.run(&[
        "x509",
        "-req",
        "-in",
        "inter.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-set_serial",
        "99",
        "-days",
        "30",
        "-out",
        "inter.crt",
        "-extfile",
        "inter.ext",
    ]);
    let leaf = pki.leaf_v1(
        "inter",
        "leaf",
        "/CN=db.test",
        &["ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let v = verifier(SslMode::VerifyFull, &pki.files("ca.crt"), "db.test");
    let name = ServerName::try_from("db.test").expect("a name");
    let r = v
        .verify_server_cert(&leaf, &[pki.der("inter")], &name, &[], UnixTime::now())
        .map(|_| ());
    assert!(is_refusal(&r, "intermediate CA"), "{r:?}");
    // Without the intermediate: an unknown issuer.
    assert_eq!(
        verify(&v, &leaf, "db.test"),
        Err(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer
        ))
    );
}

#[test]
fn version_1_parsing_refuses_what_is_not_one() {
    let pki = Pki::new();
    let v3 = pki.leaf("ca", "v3", "/CN=db.test", Some("DNS:db.test"));
    assert!(CertParts::of(v3.as_ref()).is_some_and(|p| p.explicit_version));
    assert!(CertParts::v1(&v3).is_none());
    let v1 = pki.leaf_v1(
        "ca",
        "v1",
        "/CN=db.test",
        &["ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let der = v1.as_ref();
    // Every truncation, trailing data, and every single-byte change: no panic, and a
    // truncated or extended certificate is not parsed.
    for n in 0..der.len() {
        assert!(CertParts::of(&der[..n]).is_none(), "{n}");
    }
    assert!(CertParts::of(&[der, &[0]].concat()).is_none());
    let v = verifier(SslMode::VerifyFull, &pki.files("ca.crt"), "db.test");
    for i in 0..der.len() {
        for x in [0x01, 0x80, 0xff] {
            let mut bad = der.to_vec();
            bad[i] ^= x;
            let _ = CertParts::of(&bad);
            assert!(verify(&v, &CertificateDer::from(bad), "db.test").is_err());
        }
    }
    // What x509-parser reads past (it ignores anything in a SEQUENCE after the fields it
    // knows) is refused: an element after the signature (outside what is signed), and an
    // empty extensions field in the TBSCertificate.
    use x509_parser::asn1_rs::{Sequence, ToDer};
    let seq = |parts: &[&[u8]]| Sequence::new(parts.concat().into()).to_der_vec().unwrap();
    let (_, outer) = Vec::<Any>::from_der(der).expect("the certificate's elements");
    let (tbs, alg, sig) = (&outer[0], &outer[1], &outer[2]);
    let whole = |a: &Any| a.to_der_vec().unwrap();
    let null = [0x05, 0x00];
    let after_signature = seq(&[&whole(tbs), &whole(alg), &whole(sig), &null]);
    assert!(CertParts::of(&after_signature).is_none());
    assert!(verify(&v, &CertificateDer::from(after_signature), "db.test").is_err());
    let same = seq(&[&whole(tbs), &whole(alg), &whole(sig)]);
    assert_eq!(same, der);
    let same = CertificateDer::from(same);
    assert!(CertParts::v1(&same).is_some());
    assert_eq!(verify(&v, &same, "db.test"), Ok(()));
    let empty_extensions = [0xa3, 0x02, 0x30, 0x00];
    let tbs = seq(&[tbs.data, &empty_extensions]);
    let extended = seq(&[&tbs, &whole(alg), &whole(sig)]);
    let parts = CertParts::of(&extended).expect("parsed");
    assert!(parts.after_key && parts.cert.extensions().is_empty());
    let extended = CertificateDer::from(extended);
    assert!(CertParts::v1(&extended).is_none());
    assert!(verify(&v, &extended, "db.test").is_err());
}

#[test]
fn handshakes_with_a_version_1_certificate_need_tls_1_3() {
    let pki = Pki::new();
    let ec = ["ec", "-pkeyopt", "ec_paramgen_curve:P-256"];
    pki.leaf_v1("ca", "v1", "/CN=localhost", &ec);
    pki.leaf_v1("ca", "v1rsa", "/CN=localhost", &["rsa:2048"]);
    let tls13 = &[&rustls::version::TLS13];
    let tls12 = &[&rustls::version::TLS12];
    for name in ["v1", "v1rsa"] {
        for mode in [SslMode::VerifyFull, SslMode::VerifyCa] {
            let (client, sni) = handshake_as(&pki, name, name, tls13, mode, "localhost");
            let stream = client.expect("TLS 1.3 with a version 1 certificate");
            assert_eq!(sni.as_deref(), Some("localhost"));
            assert!(stream.tls_server_end_point().is_some());
        }
        let (client, _) = handshake_as(&pki, name, name, tls13, SslMode::VerifyFull, "other.test");
        let e = client.err().expect("wrong name");
        assert!(e.contains("certificate not valid for name"), "{e}");
        // TLS 1.2: refused, saying why.
        let (client, _) = handshake_as(&pki, name, name, tls12, SslMode::VerifyFull, "localhost");
        let e = client.err().expect("TLS 1.2");
        assert!(e.contains("only over TLS 1.3"), "{e}");
    }
    // The server signs the handshake with a key that is not the certificate's: refused.
    pki.leaf_v1("ca", "otherkey", "/CN=localhost", &ec);
    let (client, _) = handshake_as(
        &pki,
        "v1",
        "otherkey",
        tls13,
        SslMode::VerifyFull,
        "localhost",
    );
    let e = client.err().expect("a handshake signed with another key");
    assert!(e.contains("BadSignature"), "{e}");
}
