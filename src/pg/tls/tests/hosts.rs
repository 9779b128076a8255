use super::*;

#[test]
fn hosts_are_dns_names_ip_addresses_or_neither() {
    let dns = |h: &str| matches!(HostId::of(h), HostId::Dns(_));
    assert!(dns("db.example.com"));
    assert!(dns("localhost"));
    assert_eq!(
        HostId::of("10.1.2.3"),
        HostId::Ip(IpAddr::from([10, 1, 2, 3]))
    );
    assert_eq!(
        HostId::of("::1"),
        HostId::Ip("::1".parse().expect("an address"))
    );
    assert_eq!(
        HostId::of("fe80::1%eth0"),
        HostId::Ip("fe80::1".parse().expect("an address"))
    );
    for neither in ["127.1", "db.123", "", "fe80::1%", "10.0.0.1%eth0", "a b"] {
        assert_eq!(HostId::of(neither), HostId::Neither, "{neither:?}");
    }
}

#[test]
fn verify_full_never_checks_a_substitute_name() {
    let peer = Some(IpAddr::from([192, 0, 2, 7]));
    for host in ["127.1", "db.123"] {
        let e = server_name(host, &HostId::of(host), Check::ChainAndName, peer)
            .expect_err("verify-full must refuse");
        assert_eq!(
            e,
            format!("cannot verify the server's certificate for host \"{host}\": not a DNS name or IP address")
        );
        // The modes that do not check the name use the server's address (and send no SNI).
        for check in [Check::None, Check::Chain] {
            let name = server_name(host, &HostId::of(host), check, peer).expect("a name");
            assert_eq!(
                name,
                ServerName::IpAddress(IpAddr::from([192, 0, 2, 7]).into())
            );
        }
    }
    let e = server_name("", &HostId::Neither, Check::ChainAndName, peer)
        .expect_err("an empty host cannot be verified");
    assert!(e.contains("host name must be specified"), "{e}");
    let name = server_name(
        "fe80::1%eth0",
        &HostId::of("fe80::1%eth0"),
        Check::ChainAndName,
        peer,
    )
    .expect("an address");
    assert_eq!(name.to_str(), "fe80::1");
    let name = server_name(
        "DB.example.com",
        &HostId::of("DB.example.com"),
        Check::ChainAndName,
        peer,
    )
    .expect("a DNS name");
    assert!(matches!(name, ServerName::DnsName(_)));
}

#[test]
fn sslmode_and_root_file_decide_the_check() {
    let dir = TempDir::new();
    let root = dir.path("root.crt");
    std::fs::write(&root, "").expect("write");
    let root = root.display().to_string();
    let missing = dir.path("missing.crt").display().to_string();
    assert_eq!(
        check_for(SslMode::VerifyFull, None),
        Ok(Check::ChainAndName)
    );
    assert_eq!(
        check_for(SslMode::VerifyFull, Some("system")),
        Ok(Check::ChainAndName)
    );
    assert_eq!(
        check_for(SslMode::VerifyCa, Some(&missing)),
        Ok(Check::Chain)
    );
    // As libpq: a root certificate file that exists is used in every mode.
    assert_eq!(check_for(SslMode::Require, Some(&root)), Ok(Check::Chain));
    assert_eq!(check_for(SslMode::Prefer, Some(&root)), Ok(Check::Chain));
    assert_eq!(check_for(SslMode::Require, Some(&missing)), Ok(Check::None));
    assert_eq!(check_for(SslMode::Prefer, None), Ok(Check::None));
    for weak in [SslMode::Prefer, SslMode::Require, SslMode::VerifyCa] {
        let e = check_for(weak, Some("system")).expect_err("weak mode");
        let want = format!(
            "weak sslmode \"{}\" may not be used with sslrootcert=system (use \"verify-full\")",
            weak.as_str()
        );
        assert_eq!(e, want);
    }
}
