//! Verifying X509-SVIDs: each reason for refusal has its own error, and the `spiffe` crate
//! agrees on the profile rules it also checks.

mod ca_util;

use std::time::{Duration, SystemTime};

use ca_util::{bundle_set, td};
use mesh_core::bundle::{Bundle, BundleSet};
use mesh_core::ca::{SvidRequest, X509Issuer};
use mesh_core::x509::{verify_x509_svid, ProfileError, SvidError, VerifyError, X509Svid};
use mesh_core::{KeyPair, KeyType, TrustDomain};
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, ExtendedKeyUsagePurpose, IsCa,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;

struct Fixture {
    now: SystemTime,
    ca: X509Issuer,
    bundles: BundleSet,
}

fn fixture() -> Fixture {
    let now = SystemTime::now();
    let ca = X509Issuer::self_signed(
        &td(),
        KeyPair::generate(KeyType::EcP256).unwrap(),
        now,
        Duration::from_secs(24 * 3600),
    )
    .unwrap();
    let bundles = bundle_set(&td(), std::slice::from_ref(ca.root()));
    Fixture { now, ca, bundles }
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

/// Good leaf parameters; tests break one thing at a time.
fn leaf_params(now: SystemTime) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.not_before = (now - Duration::from_secs(60)).into();
    p.not_after = (now + Duration::from_secs(3600)).into();
    p.subject_alt_names = vec![uri("spiffe://example.org/workload")];
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.use_authority_key_identifier_extension = true;
    p
}

/// Good intermediate parameters.
fn intermediate_params(now: SystemTime) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.not_before = (now - Duration::from_secs(60)).into();
    p.not_after = (now + Duration::from_secs(7200)).into();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "test intermediate");
    p.subject_alt_names = vec![uri("spiffe://example.org")];
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.use_authority_key_identifier_extension = true;
    p
}

/// Signs `params` with the CA and returns the certificate and the leaf key.
fn sign(ca: &X509Issuer, params: &CertificateParams) -> (CertificateDer<'static>, KeyPair) {
    let key = KeyPair::generate(KeyType::EcP256).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_der(ca.certificate(), ca.key().rcgen()).unwrap();
    let cert = params.signed_by(key.rcgen(), &issuer).unwrap();
    (cert.into(), key)
}

fn leaf_with(
    f: &Fixture,
    edit: impl FnOnce(&mut CertificateParams),
) -> (CertificateDer<'static>, KeyPair) {
    let mut p = leaf_params(f.now);
    edit(&mut p);
    sign(&f.ca, &p)
}

/// Chain `leaf <- intermediate(edited) <- CA`.
fn chain_via_intermediate(
    f: &Fixture,
    edit: impl FnOnce(&mut CertificateParams),
) -> Vec<CertificateDer<'static>> {
    let mut ip = intermediate_params(f.now);
    edit(&mut ip);
    let int_key = KeyPair::generate(KeyType::EcP256).unwrap();
    let ca_issuer =
        rcgen::Issuer::from_ca_cert_der(f.ca.certificate(), f.ca.key().rcgen()).unwrap();
    let int_cert: CertificateDer<'static> =
        ip.signed_by(int_key.rcgen(), &ca_issuer).unwrap().into();
    let int_issuer = rcgen::Issuer::from_ca_cert_der(&int_cert, int_key.rcgen()).unwrap();
    let leaf_key = KeyPair::generate(KeyType::EcP256).unwrap();
    let leaf: CertificateDer<'static> = leaf_params(f.now)
        .signed_by(leaf_key.rcgen(), &int_issuer)
        .unwrap()
        .into();
    vec![leaf, int_cert]
}

fn verify(
    f: &Fixture,
    chain: &[CertificateDer<'static>],
) -> Result<mesh_core::SpiffeId, VerifyError> {
    verify_x509_svid(chain, &f.bundles, f.now)
}

fn profile_error(f: &Fixture, chain: &[CertificateDer<'static>]) -> ProfileError {
    match verify(f, chain) {
        Err(VerifyError::Profile(p)) => p,
        other => panic!("expected a profile error, got {other:?}"),
    }
}

fn spiffe_rejects(chain: &[CertificateDer<'static>], key: &KeyPair) -> bool {
    let der: Vec<u8> = chain.iter().flat_map(|c| c.iter().copied()).collect();
    spiffe::X509Svid::parse_from_der(&der, key.pkcs8_der()).is_err()
}

#[test]
fn a_good_chain_verifies_directly_and_via_an_intermediate() {
    let f = fixture();
    let (leaf, _) = leaf_with(&f, |_| {});
    assert_eq!(
        verify(&f, &[leaf]).unwrap().as_str(),
        "spiffe://example.org/workload"
    );
    let chain = chain_via_intermediate(&f, |_| {});
    assert_eq!(
        verify(&f, &chain).unwrap().as_str(),
        "spiffe://example.org/workload"
    );
}

#[test]
fn leaf_profile_violations_each_have_their_own_error_and_spiffe_agrees() {
    let f = fixture();
    type Case = (
        &'static str,
        Box<dyn Fn(&mut CertificateParams)>,
        fn(&ProfileError) -> bool,
    );
    let cases: Vec<Case> = vec![
        (
            "no URI SAN",
            Box::new(|p| {
                p.subject_alt_names = vec![SanType::DnsName("a.example".try_into().unwrap())]
            }),
            |e| matches!(e, ProfileError::NoUriSan),
        ),
        (
            "two URI SANs",
            Box::new(|p| p.subject_alt_names.push(uri("spiffe://example.org/other"))),
            |e| matches!(e, ProfileError::SeveralUriSans { count: 2 }),
        ),
        (
            "not a SPIFFE ID",
            Box::new(|p| p.subject_alt_names = vec![uri("https://example.org/x")]),
            |e| matches!(e, ProfileError::NotSpiffeId { position: 0, .. }),
        ),
        (
            "trust domain ID on a leaf",
            Box::new(|p| p.subject_alt_names = vec![uri("spiffe://example.org")]),
            |e| matches!(e, ProfileError::LeafIdWithoutPath(_)),
        ),
        (
            "leaf is a CA",
            Box::new(|p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)),
            |e| matches!(e, ProfileError::LeafIsCa(_)),
        ),
        (
            "no basicConstraints",
            Box::new(|p| p.is_ca = IsCa::NoCa),
            |e| matches!(e, ProfileError::MissingBasicConstraints { position: 0 }),
        ),
        ("no keyUsage", Box::new(|p| p.key_usages.clear()), |e| {
            matches!(e, ProfileError::MissingKeyUsage { position: 0 })
        }),
        (
            "no digitalSignature",
            Box::new(|p| p.key_usages = vec![KeyUsagePurpose::KeyEncipherment]),
            |e| matches!(e, ProfileError::NoDigitalSignature),
        ),
        (
            "keyCertSign on a leaf",
            Box::new(|p| p.key_usages.push(KeyUsagePurpose::KeyCertSign)),
            |e| matches!(e, ProfileError::KeyCertSignOnLeaf),
        ),
        (
            "cRLSign on a leaf",
            Box::new(|p| p.key_usages.push(KeyUsagePurpose::CrlSign)),
            |e| matches!(e, ProfileError::CrlSignOnLeaf),
        ),
    ];
    for (name, edit, expected) in cases {
        let (leaf, key) = leaf_with(&f, |p| edit(p));
        let err = profile_error(&f, std::slice::from_ref(&leaf));
        assert!(expected(&err), "{name}: got {err:?}");
        assert!(!err.to_string().is_empty());
        assert!(
            spiffe_rejects(std::slice::from_ref(&leaf), &key),
            "{name}: the spiffe crate accepts it"
        );
        assert!(
            matches!(
                X509Svid::new(vec![leaf], key.pkcs8_der().to_vec()),
                Err(SvidError::Profile(_))
            ),
            "{name}: X509Svid::new accepts it"
        );
    }
}

#[test]
fn a_non_critical_key_usage_on_the_leaf_is_refused() {
    let f = fixture();
    // keyUsage with digitalSignature, written as a custom extension so it can be non-critical:
    // BIT STRING, 7 unused bits, 0x80.
    let (leaf, _) = leaf_with(&f, |p| {
        p.key_usages.clear();
        let mut ext =
            CustomExtension::from_oid_content(&[2, 5, 29, 15], vec![0x03, 0x02, 0x07, 0x80]);
        ext.set_criticality(false);
        p.custom_extensions.push(ext);
    });
    assert!(matches!(
        profile_error(&f, &[leaf]),
        ProfileError::KeyUsageNotCritical
    ));
}

#[test]
fn signing_certificate_violations_each_have_their_own_error() {
    let f = fixture();
    let chain = chain_via_intermediate(&f, |p| p.is_ca = IsCa::ExplicitNoCa);
    assert!(matches!(
        profile_error(&f, &chain),
        ProfileError::SigningCertNotCa { position: 1 }
    ));

    let chain = chain_via_intermediate(&f, |p| p.key_usages = vec![KeyUsagePurpose::CrlSign]);
    assert!(matches!(
        profile_error(&f, &chain),
        ProfileError::SigningCertWithoutKeyCertSign { position: 1 }
    ));

    let chain = chain_via_intermediate(&f, |p| {
        p.subject_alt_names = vec![uri("spiffe://example.org/ca")]
    });
    assert!(matches!(
        profile_error(&f, &chain),
        ProfileError::SigningCertIdWithPath { position: 1, .. }
    ));

    let chain = chain_via_intermediate(&f, |p| p.is_ca = IsCa::NoCa);
    assert!(matches!(
        profile_error(&f, &chain),
        ProfileError::MissingBasicConstraints { position: 1 }
    ));

    let chain = chain_via_intermediate(&f, |p| p.key_usages.clear());
    assert!(matches!(
        profile_error(&f, &chain),
        ProfileError::MissingKeyUsage { position: 1 }
    ));
}

#[test]
fn a_missing_or_empty_bundle_is_reported_by_trust_domain() {
    let f = fixture();
    let (leaf, _) = leaf_with(&f, |_| {});
    let other: BundleSet =
        std::iter::once(Bundle::new(TrustDomain::new("other.org").unwrap())).collect();
    match verify_x509_svid(std::slice::from_ref(&leaf), &other, f.now) {
        Err(VerifyError::NoBundle(td)) => assert_eq!(td.name(), "example.org"),
        other => panic!("{other:?}"),
    }
    let empty: BundleSet = std::iter::once(Bundle::new(td())).collect();
    assert!(matches!(
        verify_x509_svid(&[leaf], &empty, f.now),
        Err(VerifyError::EmptyBundle(_))
    ));
}

#[test]
fn expired_and_not_yet_valid_certificates_are_reported_with_their_position() {
    let f = fixture();
    let (leaf, _) = leaf_with(&f, |_| {});
    let later = f.now + Duration::from_secs(2 * 3600);
    let err = verify_x509_svid(std::slice::from_ref(&leaf), &f.bundles, later).unwrap_err();
    assert!(
        matches!(err, VerifyError::Expired { position: 0, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("expired at"), "{err}");

    let earlier = f.now - Duration::from_secs(3600);
    let err = verify_x509_svid(&[leaf], &f.bundles, earlier).unwrap_err();
    assert!(
        matches!(err, VerifyError::NotYetValid { position: 0, .. }),
        "{err:?}"
    );

    // An intermediate that expired before its leaf.
    let chain = chain_via_intermediate(&f, |p| {
        p.not_after = (f.now - Duration::from_secs(1)).into();
    });
    assert!(matches!(
        verify(&f, &chain),
        Err(VerifyError::Expired { position: 1, .. })
    ));
}

#[test]
fn a_chain_to_another_root_is_untrusted() {
    let f = fixture();
    let other = X509Issuer::self_signed(
        &td(),
        KeyPair::generate(KeyType::EcP256).unwrap(),
        f.now,
        Duration::from_secs(3600),
    )
    .unwrap();
    let svid = other
        .issue_with_new_key(
            &SvidRequest::new(td().workload_id("/x").unwrap(), Duration::from_secs(600)),
            KeyType::EcP256,
            f.now,
        )
        .unwrap();
    match verify(&f, svid.chain()) {
        Err(VerifyError::UntrustedChain { spiffe_id, reason }) => {
            assert_eq!(spiffe_id, "spiffe://example.org/x");
            assert!(!reason.is_empty());
        }
        other => panic!("{other:?}"),
    }

    // A leaf whose intermediate was left out does not reach the root either.
    let chain = chain_via_intermediate(&f, |_| {});
    assert!(matches!(
        verify(&f, &chain[..1]),
        Err(VerifyError::UntrustedChain { .. })
    ));
}

#[test]
fn an_eku_without_tls_authentication_is_untrusted() {
    let f = fixture();
    let (leaf, _) = leaf_with(&f, |p| {
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning]
    });
    assert!(matches!(
        verify(&f, &[leaf]),
        Err(VerifyError::UntrustedChain { .. })
    ));
    // No EKU at all is allowed by the standard.
    let (leaf, _) = leaf_with(&f, |p| p.extended_key_usages.clear());
    verify(&f, &[leaf]).unwrap();
}

#[test]
fn empty_oversized_and_malformed_chains_are_refused() {
    let f = fixture();
    assert!(matches!(verify(&f, &[]), Err(VerifyError::EmptyChain)));
    let (leaf, _) = leaf_with(&f, |_| {});
    let long = vec![leaf.clone(); 17];
    assert!(matches!(
        verify(&f, &long),
        Err(VerifyError::ChainTooLong(17))
    ));
    let garbage = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
    assert!(matches!(
        verify(&f, &[leaf.clone(), garbage]),
        Err(VerifyError::MalformedCertificate { position: 1, .. })
    ));
    let mut trailing = leaf.to_vec();
    trailing.push(0);
    assert!(matches!(
        verify(&f, &[CertificateDer::from(trailing)]),
        Err(VerifyError::MalformedCertificate { position: 0, .. })
    ));
}

#[test]
fn svids_round_trip_through_der_and_pem_and_keys_must_match() {
    let f = fixture();
    let req = SvidRequest::new(td().workload_id("/rt").unwrap(), Duration::from_secs(600));
    let svid =
        f.ca.issue_with_new_key(&req, KeyType::EcP256, f.now)
            .unwrap();

    let from_der = X509Svid::from_der(&svid.chain_der(), svid.private_key_pkcs8_der()).unwrap();
    assert_eq!(from_der.chain(), svid.chain());
    assert_eq!(from_der.spiffe_id(), svid.spiffe_id());
    let from_pem = X509Svid::from_pem(&svid.chain_pem(), &svid.private_key_pem()).unwrap();
    assert_eq!(from_pem.chain(), svid.chain());
    assert_eq!(from_pem.not_after(), svid.not_after());
    assert_eq!(from_pem.leaf(), &svid.chain()[0]);
    assert!(from_pem.intermediates().is_empty());

    let other = KeyPair::generate(KeyType::EcP256).unwrap();
    assert!(matches!(
        X509Svid::from_der(&svid.chain_der(), other.pkcs8_der()),
        Err(SvidError::KeyMismatch(_))
    ));
    assert!(matches!(
        X509Svid::from_der(&[], other.pkcs8_der()),
        Err(SvidError::EmptyChain)
    ));
    assert!(matches!(
        X509Svid::from_der(&svid.chain_der(), b"not a key"),
        Err(SvidError::BadPrivateKey(_))
    ));
    assert!(matches!(
        X509Svid::from_pem("nothing", "nothing"),
        Err(SvidError::BadPem(_))
    ));

    let shown = format!("{svid:?}");
    assert!(shown.contains("redacted"));
    let key_hex: String = svid.private_key_pkcs8_der()[svid.private_key_pkcs8_der().len() - 8..]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(!shown.contains(&key_hex));
}
