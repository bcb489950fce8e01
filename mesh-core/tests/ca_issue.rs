//! Issuing X509-SVIDs: the leaf profile, CSRs, caps, and loaded upstream CAs in both modes.
//! Every SVID is checked by three independent parsers: the `spiffe` crate, `openssl verify`,
//! and this crate's own verifier.

mod ca_util;

use std::time::{Duration, SystemTime};

use ca_util::{bundle_set, make_team_intermediate, make_team_root, openssl_verify, td};
use mesh_core::ca::{csr_public_key, CaError, SvidRequest, UpstreamCa, X509Issuer};
use mesh_core::x509::{verify_x509_svid, X509Svid};
use mesh_core::{KeyPair, KeyType, SpiffeId};
use rustls_pki_types::CertificateDer;
use x509_parser::extensions::{GeneralName, ParsedExtension};

fn id(path: &str) -> SpiffeId {
    td().workload_id(path).unwrap()
}

fn request(path: &str) -> SvidRequest {
    SvidRequest::new(id(path), Duration::from_secs(3600))
}

/// Checks an SVID with the spiffe crate, openssl (default, sslclient, sslserver) and
/// `verify_x509_svid`, against `roots`.
fn assert_accepted_everywhere(svid: &X509Svid, roots: &[CertificateDer<'static>]) {
    let parsed = spiffe::X509Svid::parse_from_der(&svid.chain_der(), svid.private_key_pkcs8_der())
        .unwrap_or_else(|e| panic!("spiffe crate rejects the SVID: {e}"));
    assert_eq!(parsed.spiffe_id().to_string(), svid.spiffe_id().as_str());

    let dir = tempfile::tempdir().unwrap();
    for purpose in [None, Some("sslclient"), Some("sslserver")] {
        let (ok, out) = openssl_verify(dir.path(), roots, svid.chain(), purpose, None);
        assert!(ok, "openssl verify {purpose:?} failed: {out}");
    }

    let bundles = bundle_set(&td(), roots);
    let got = verify_x509_svid(svid.chain(), &bundles, SystemTime::now()).unwrap();
    assert_eq!(&got, svid.spiffe_id());
}

#[test]
fn every_ca_and_leaf_key_type_issues_svids_that_spiffe_openssl_and_verify_accept() {
    let types = [KeyType::EcP256, KeyType::EcP384, KeyType::Rsa2048];
    for ca_type in types {
        let ca = X509Issuer::self_signed(
            &td(),
            KeyPair::generate(ca_type).unwrap(),
            SystemTime::now(),
            Duration::from_secs(24 * 3600),
        )
        .unwrap();
        let roots = vec![ca.root().clone()];
        for leaf_type in types {
            let svid = ca
                .issue_with_new_key(&request("/gen"), leaf_type, SystemTime::now())
                .unwrap();
            assert_accepted_everywhere(&svid, &roots);

            // The same through the "existing public key" path.
            let key = KeyPair::generate(leaf_type).unwrap();
            let chain = ca
                .issue_for_public_key(&request("/spki"), &key.spki_der(), SystemTime::now())
                .unwrap();
            let svid = X509Svid::new(chain, key.pkcs8_der().to_vec()).unwrap();
            assert_accepted_everywhere(&svid, &roots);
        }
    }
}

#[test]
fn leaf_and_ca_certificates_follow_the_x509_svid_profile_exactly() {
    let now = SystemTime::now();
    let ca = X509Issuer::self_signed(
        &td(),
        KeyPair::generate(KeyType::EcP256).unwrap(),
        now,
        Duration::from_secs(24 * 3600),
    )
    .unwrap();

    // The CA.
    let (_, cert) = x509_parser::parse_x509_certificate(ca.certificate()).unwrap();
    let bc = cert.basic_constraints().unwrap().unwrap();
    assert!(bc.critical && bc.value.ca);
    assert_eq!(bc.value.path_len_constraint, Some(0));
    let ku = cert.key_usage().unwrap().unwrap();
    assert!(ku.critical && ku.value.key_cert_sign() && ku.value.crl_sign());
    assert!(!ku.value.digital_signature());
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        san.value.general_names,
        vec![GeneralName::URI("spiffe://example.org")]
    );
    let ca_ski = cert
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
        .expect("CA has a subject key identifier");

    for (leaf_type, key_encipherment) in [(KeyType::EcP256, false), (KeyType::Rsa2048, true)] {
        let req = request("/billing/api")
            .with_dns_names(["api.billing.svc".to_owned(), "*.billing.svc".to_owned()]);
        let svid = ca.issue_with_new_key(&req, leaf_type, now).unwrap();
        let (_, leaf) = x509_parser::parse_x509_certificate(svid.leaf()).unwrap();

        let san = leaf.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            san.value.general_names,
            vec![
                GeneralName::URI("spiffe://example.org/billing/api"),
                GeneralName::DNSName("api.billing.svc"),
                GeneralName::DNSName("*.billing.svc"),
            ]
        );
        let bc = leaf
            .basic_constraints()
            .unwrap()
            .expect("basicConstraints present");
        assert!(!bc.value.ca);
        let ku = leaf.key_usage().unwrap().expect("keyUsage present");
        assert!(ku.critical);
        assert!(ku.value.digital_signature());
        assert_eq!(ku.value.key_encipherment(), key_encipherment);
        assert!(!ku.value.key_cert_sign() && !ku.value.crl_sign());
        let eku = leaf.extended_key_usage().unwrap().unwrap();
        assert!(eku.value.server_auth && eku.value.client_auth);

        let serial = leaf.raw_serial();
        assert!(serial.len() >= 8, "serial has {} bytes", serial.len());
        assert_eq!(serial[0] & 0x80, 0, "serial is positive");

        let nb = leaf.validity().not_before.timestamp();
        let now_secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!(
            (now_secs - 31..=now_secs - 29).contains(&nb),
            "notBefore is back-dated 30 s"
        );
        assert_eq!(leaf.validity().not_after.timestamp() - now_secs, 3600);

        let aki = leaf
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(a) => {
                    a.key_identifier.as_ref().map(|k| k.0.to_vec())
                }
                _ => None,
            })
            .expect("leaf has an authority key identifier");
        assert_eq!(aki, ca_ski);
        assert_eq!(leaf.issuer().as_raw(), cert.subject().as_raw());
    }
}

#[test]
fn two_svids_get_different_random_serials() {
    let now = SystemTime::now();
    let ca = X509Issuer::self_signed(
        &td(),
        KeyPair::generate(KeyType::EcP256).unwrap(),
        now,
        Duration::from_secs(3600 * 24),
    )
    .unwrap();
    let key = KeyPair::generate(KeyType::EcP256).unwrap();
    let a = ca
        .issue_for_public_key(&request("/a"), &key.spki_der(), now)
        .unwrap();
    let b = ca
        .issue_for_public_key(&request("/a"), &key.spki_der(), now)
        .unwrap();
    let serial = |c: &CertificateDer<'_>| {
        x509_parser::parse_x509_certificate(c)
            .unwrap()
            .1
            .raw_serial()
            .to_vec()
    };
    assert_ne!(serial(&a[0]), serial(&b[0]));
}

#[test]
fn csr_subject_sans_and_extensions_are_ignored_only_its_key_is_used() {
    let now = SystemTime::now();
    let ca = X509Issuer::self_signed(
        &td(),
        KeyPair::generate(KeyType::EcP256).unwrap(),
        now,
        Duration::from_secs(24 * 3600),
    )
    .unwrap();
    let key = KeyPair::generate(KeyType::EcP256).unwrap();

    let mut params = rcgen::CertificateParams::new(vec!["evil.example.com".to_owned()]).unwrap();
    params.subject_alt_names.push(rcgen::SanType::URI(
        "spiffe://other.org/admin".try_into().unwrap(),
    ));
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "admin");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let csr = params.serialize_request(key.rcgen()).unwrap();

    for input in [csr.pem().unwrap().into_bytes(), csr.der().to_vec()] {
        let chain = ca.issue_for_csr(&request("/web"), &input, now).unwrap();
        let svid = X509Svid::new(chain, key.pkcs8_der().to_vec()).expect("CSR key is the leaf key");
        assert_eq!(svid.spiffe_id().as_str(), "spiffe://example.org/web");
        let (_, leaf) = x509_parser::parse_x509_certificate(svid.leaf()).unwrap();
        let san = leaf.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            san.value.general_names,
            vec![GeneralName::URI("spiffe://example.org/web")]
        );
        assert!(!leaf.basic_constraints().unwrap().unwrap().value.ca);
        assert!(!leaf.key_usage().unwrap().unwrap().value.key_cert_sign());
        assert!(!leaf.subject().to_string().contains("admin"));
        assert_accepted_everywhere(&svid, &[ca.root().clone()]);
    }
}

#[test]
fn csr_with_a_bad_signature_or_garbage_is_refused() {
    let now = SystemTime::now();
    let ca = X509Issuer::self_signed(
        &td(),
        KeyPair::generate(KeyType::EcP256).unwrap(),
        now,
        Duration::from_secs(24 * 3600),
    )
    .unwrap();
    let key = KeyPair::generate(KeyType::EcP256).unwrap();
    let params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    let csr = params
        .serialize_request(key.rcgen())
        .unwrap()
        .der()
        .to_vec();
    assert!(csr_public_key(&csr).is_ok());

    // Change one byte of the signed part (the public key): the signature no longer verifies.
    let mut tampered = csr.clone();
    let spki = key.spki_der();
    let at = tampered
        .windows(spki.len())
        .position(|w| w == spki.as_slice())
        .unwrap();
    let last = at + spki.len() - 1;
    tampered[last] ^= 0x01;
    let err = ca
        .issue_for_csr(&request("/x"), &tampered, now)
        .unwrap_err();
    assert!(
        matches!(err, CaError::CsrSignature | CaError::BadCsr(_)),
        "tampered key: {err}"
    );

    // Change the last byte of the signature itself.
    let mut bad_sig = csr.clone();
    let n = bad_sig.len();
    bad_sig[n - 1] ^= 0x55;
    let err = ca.issue_for_csr(&request("/x"), &bad_sig, now).unwrap_err();
    assert!(matches!(err, CaError::CsrSignature), "bad signature: {err}");

    // A CSR whose key is someone else's: signed by key A, carrying key B.
    let other = KeyPair::generate(KeyType::EcP256).unwrap();
    let mut swapped = csr.clone();
    swapped[at..at + spki.len()].copy_from_slice(&other.spki_der());
    let err = ca.issue_for_csr(&request("/x"), &swapped, now).unwrap_err();
    assert!(matches!(err, CaError::CsrSignature), "swapped key: {err}");

    assert!(matches!(
        ca.issue_for_csr(&request("/x"), b"garbage", now),
        Err(CaError::BadCsr(_))
    ));
    assert!(matches!(
        ca.issue_for_csr(
            &request("/x"),
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            now
        ),
        Err(CaError::BadCsr(_))
    ));
}

#[test]
fn svid_lifetime_is_capped_by_the_issuer_not_after_and_the_max_ttl() {
    let now = SystemTime::now();
    let ca = X509Issuer::self_signed(
        &td(),
        KeyPair::generate(KeyType::EcP256).unwrap(),
        now,
        Duration::from_secs(3600),
    )
    .unwrap();
    let long = SvidRequest::new(id("/long"), Duration::from_secs(10 * 3600));
    let svid = ca.issue_with_new_key(&long, KeyType::EcP256, now).unwrap();
    assert_eq!(svid.not_after(), ca.not_after());

    let capped = ca.with_max_svid_ttl(Duration::from_secs(600));
    let svid = capped
        .issue_with_new_key(&long, KeyType::EcP256, now)
        .unwrap();
    let ttl = svid.not_after().duration_since(now).unwrap().as_secs();
    assert!((599..=600).contains(&ttl), "ttl {ttl}");

    // An expired issuer issues nothing.
    let later = capped.not_after() + Duration::from_secs(1);
    assert!(matches!(
        capped.issue_with_new_key(&long, KeyType::EcP256, later),
        Err(CaError::IssuerExpired { .. })
    ));
}

#[test]
fn requests_outside_the_trust_domain_or_without_path_or_with_bad_dns_are_refused() {
    let now = SystemTime::now();
    let ca = X509Issuer::self_signed(
        &td(),
        KeyPair::generate(KeyType::EcP256).unwrap(),
        now,
        Duration::from_secs(3600),
    )
    .unwrap();
    let key = KeyPair::generate(KeyType::EcP256).unwrap().spki_der();
    let other = SvidRequest::new(
        SpiffeId::new("spiffe://other.org/x").unwrap(),
        Duration::from_secs(60),
    );
    assert!(matches!(
        ca.issue_for_public_key(&other, &key, now),
        Err(CaError::WrongTrustDomain { .. })
    ));
    let root_id = SvidRequest::new(td().to_spiffe_id(), Duration::from_secs(60));
    assert!(matches!(
        ca.issue_for_public_key(&root_id, &key, now),
        Err(CaError::LeafIdWithoutPath(_))
    ));
    let bad_dns = request("/x").with_dns_names(["bad name".to_owned()]);
    assert!(matches!(
        ca.issue_for_public_key(&bad_dns, &key, now),
        Err(CaError::InvalidDnsName(_))
    ));
    assert!(matches!(
        ca.issue_for_public_key(&request("/x"), b"not a key", now),
        Err(CaError::UnsupportedPublicKey(_))
    ));
}

#[test]
fn team_ca_in_direct_mode_signs_svids_that_chain_to_the_team_root() {
    let dir = tempfile::tempdir().unwrap();
    make_team_root(dir.path(), None);
    make_team_intermediate(dir.path(), None);
    let root = std::fs::read_to_string(dir.path().join("root.pem")).unwrap();
    let roots = mesh_core::x509::certificates_from_pem(&root).unwrap();

    // The team's intermediate signs directly; the chain file gives its root.
    let upstream = UpstreamCa::from_files(
        &dir.path().join("int.pem"),
        &dir.path().join("int.key"),
        Some(&dir.path().join("root.pem")),
    )
    .unwrap();
    assert_eq!(upstream.root(), &roots[0]);
    let issuer = upstream.issuer(&td()).unwrap();
    assert_eq!(issuer.root(), &roots[0]);
    let svid = issuer
        .issue_with_new_key(&request("/db"), KeyType::EcP256, SystemTime::now())
        .unwrap();
    assert_eq!(
        svid.chain().len(),
        2,
        "leaf and the team intermediate; the root is not sent"
    );
    assert_eq!(&svid.chain()[1], upstream.certificate());
    assert_accepted_everywhere(&svid, &roots);

    // The team's root itself can sign directly too.
    let root_ca = UpstreamCa::from_files(
        &dir.path().join("root.pem"),
        &dir.path().join("root.key"),
        None,
    )
    .unwrap();
    let svid = root_ca
        .issuer(&td())
        .unwrap()
        .issue_with_new_key(&request("/db"), KeyType::EcP256, SystemTime::now())
        .unwrap();
    assert_eq!(svid.chain().len(), 1);
    assert_accepted_everywhere(&svid, &roots);
}

#[test]
fn team_root_in_intermediate_mode_gets_an_intermediate_whose_svids_chain_to_the_team_root() {
    let dir = tempfile::tempdir().unwrap();
    make_team_root(dir.path(), None);
    let roots = mesh_core::x509::certificates_from_pem(
        &std::fs::read_to_string(dir.path().join("root.pem")).unwrap(),
    )
    .unwrap();
    let upstream = UpstreamCa::from_files(
        &dir.path().join("root.pem"),
        &dir.path().join("root.key"),
        None,
    )
    .unwrap();
    let now = SystemTime::now();
    let team = upstream.issuer(&td()).unwrap();
    let intermediate = team
        .new_intermediate(
            KeyPair::generate(KeyType::EcP256).unwrap(),
            now,
            Duration::from_secs(24 * 3600),
        )
        .unwrap();
    assert_eq!(
        intermediate.root(),
        &roots[0],
        "the bundle carries the team root"
    );

    let (_, cert) = x509_parser::parse_x509_certificate(intermediate.certificate()).unwrap();
    let bc = cert.basic_constraints().unwrap().unwrap();
    assert!(bc.value.ca);
    assert_eq!(bc.value.path_len_constraint, Some(0));
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        san.value.general_names,
        vec![GeneralName::URI("spiffe://example.org")]
    );

    let svid = intermediate
        .issue_with_new_key(&request("/db"), KeyType::EcP256, now)
        .unwrap();
    assert_eq!(svid.chain().len(), 2);
    assert_accepted_everywhere(&svid, &roots);

    // Intermediate under the team's intermediate: leaf, ours, theirs.
    make_team_intermediate(dir.path(), None);
    let upstream = UpstreamCa::from_files(
        &dir.path().join("int.pem"),
        &dir.path().join("int.key"),
        Some(&dir.path().join("root.pem")),
    )
    .unwrap();
    let ours = upstream
        .issuer(&td())
        .unwrap()
        .new_intermediate(
            KeyPair::generate(KeyType::EcP256).unwrap(),
            now,
            Duration::from_secs(24 * 3600),
        )
        .unwrap();
    let svid = ours
        .issue_with_new_key(&request("/db"), KeyType::EcP256, now)
        .unwrap();
    assert_eq!(svid.chain().len(), 3);
    assert!(ours.not_after() <= upstream_not_after(&upstream));
    assert_accepted_everywhere(&svid, &roots);
}

fn upstream_not_after(upstream: &UpstreamCa) -> SystemTime {
    let (_, c) = x509_parser::parse_x509_certificate(upstream.certificate()).unwrap();
    SystemTime::UNIX_EPOCH + Duration::from_secs(c.validity().not_after.timestamp() as u64)
}

#[test]
fn unusable_team_cas_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    make_team_root(dir.path(), None);
    make_team_intermediate(dir.path(), None);
    let read = |n: &str| std::fs::read_to_string(dir.path().join(n)).unwrap();

    // The intermediate without its root: the chain is incomplete.
    let up = UpstreamCa::from_pem(&read("int.pem"), &read("int.key"), None).unwrap();
    let err = up.issuer(&td()).unwrap_err();
    assert!(err.to_string().contains("self-signed root"), "{err}");

    // The wrong key.
    let up =
        UpstreamCa::from_pem(&read("int.pem"), &read("root.key"), Some(&read("root.pem"))).unwrap();
    let err = up.issuer(&td()).unwrap_err();
    assert!(err.to_string().contains("does not belong"), "{err}");

    // A CA for another trust domain.
    let err = UpstreamCa::from_pem(&read("int.pem"), &read("int.key"), Some(&read("root.pem")))
        .unwrap()
        .issuer(&mesh_core::TrustDomain::new("other.org").unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("spiffe://example.org"), "{err}");

    // A subject with a repeated attribute type cannot be reproduced by the certificate library.
    let dc_dir = tempfile::tempdir().unwrap();
    make_team_root(
        dc_dir.path(),
        Some("[req]\ndistinguished_name = dn\nprompt = no\nx509_extensions = ext\n[dn]\nDC = com\n1.DC = example\nCN = AD Root\n[ext]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\nsubjectKeyIdentifier = hash\n"),
    );
    let up = UpstreamCa::from_files(
        &dc_dir.path().join("root.pem"),
        &dc_dir.path().join("root.key"),
        None,
    )
    .unwrap();
    let err = up.issuer(&td()).unwrap_err();
    assert!(err.to_string().contains("cannot be reproduced"), "{err}");

    // A root with pathLen 0 cannot have an intermediate under it.
    let pl_dir = tempfile::tempdir().unwrap();
    make_team_root(
        pl_dir.path(),
        Some("[req]\ndistinguished_name = dn\nprompt = no\nx509_extensions = ext\n[dn]\nCN = Tight Root\n[ext]\nbasicConstraints = critical,CA:TRUE,pathlen:0\nkeyUsage = critical,keyCertSign,cRLSign\nsubjectKeyIdentifier = hash\n"),
    );
    let up = UpstreamCa::from_files(
        &pl_dir.path().join("root.pem"),
        &pl_dir.path().join("root.key"),
        None,
    )
    .unwrap();
    let err = up
        .issuer(&td())
        .unwrap()
        .new_intermediate(
            KeyPair::generate(KeyType::EcP256).unwrap(),
            SystemTime::now(),
            Duration::from_secs(3600),
        )
        .unwrap_err();
    assert!(err.to_string().contains("pathLen 0"), "{err}");

    // Files that do not exist are named.
    let err = UpstreamCa::from_files(
        &dir.path().join("nope.pem"),
        &dir.path().join("int.key"),
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("nope.pem"), "{err}");
}

#[test]
fn csr_key_with_a_small_rsa_modulus_or_unsupported_curve_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    ca_util::openssl(
        dir.path(),
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:1024",
            "-nodes",
            "-keyout",
            "k1.pem",
            "-out",
            "small.csr",
            "-subj",
            "/CN=x",
        ],
    );
    ca_util::openssl(
        dir.path(),
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:secp256k1",
            "-nodes",
            "-keyout",
            "k2.pem",
            "-out",
            "k1.csr",
            "-subj",
            "/CN=x",
        ],
    );
    let ca = X509Issuer::self_signed(
        &td(),
        KeyPair::generate(KeyType::EcP256).unwrap(),
        SystemTime::now(),
        Duration::from_secs(3600),
    )
    .unwrap();
    for name in ["small.csr", "k1.csr"] {
        let csr = std::fs::read(dir.path().join(name)).unwrap();
        let err = ca
            .issue_for_csr(&request("/x"), &csr, SystemTime::now())
            .unwrap_err();
        assert!(
            matches!(err, CaError::UnsupportedPublicKey(_)),
            "{name}: {err}"
        );
    }
    // An openssl-made CSR with a supported key is accepted.
    ca_util::openssl(
        dir.path(),
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-nodes",
            "-keyout",
            "k3.pem",
            "-out",
            "ok.csr",
            "-subj",
            "/CN=ignored",
        ],
    );
    let csr = std::fs::read(dir.path().join("ok.csr")).unwrap();
    let chain = ca
        .issue_for_csr(&request("/x"), &csr, SystemTime::now())
        .unwrap();
    let key = std::fs::read_to_string(dir.path().join("k3.pem")).unwrap();
    let svid = X509Svid::from_pem(&mesh_core::x509::certificates_to_pem(&chain), &key).unwrap();
    assert_accepted_everywhere(&svid, &[ca.root().clone()]);
}

#[test]
fn an_old_team_root_without_key_usage_can_still_anchor_an_intermediate() {
    let dir = tempfile::tempdir().unwrap();
    make_team_root(
        dir.path(),
        Some("[req]\ndistinguished_name = dn\nprompt = no\nx509_extensions = ext\n[dn]\nO = Old Team\nCN = Old Root\n[ext]\nbasicConstraints = critical,CA:TRUE\nsubjectKeyIdentifier = hash\n"),
    );
    let roots = mesh_core::x509::certificates_from_pem(
        &std::fs::read_to_string(dir.path().join("root.pem")).unwrap(),
    )
    .unwrap();
    let upstream = UpstreamCa::from_files(
        &dir.path().join("root.pem"),
        &dir.path().join("root.key"),
        None,
    )
    .unwrap();
    let now = SystemTime::now();
    let ours = upstream
        .issuer(&td())
        .unwrap()
        .new_intermediate(
            KeyPair::generate(KeyType::EcP256).unwrap(),
            now,
            Duration::from_secs(3600),
        )
        .unwrap();
    let svid = ours
        .issue_with_new_key(&request("/legacy"), KeyType::EcP256, now)
        .unwrap();
    assert_accepted_everywhere(&svid, &roots);
}
