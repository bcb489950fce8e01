//! The Workload API of a real agent, through the Rust `spiffe` crate as an independent client:
//! X509-SVIDs and bundles, JWT-SVIDs, and the errors the standard names.

use std::process::Command;
use std::time::{Duration, SystemTime};

use mesh_core::x509::{certificates_to_pem, verify_x509_svid};
use mesh_core::{Bundle, BundleSet, TrustDomain};
use mesh_e2e::{current_uid, Agent, EVENT_TIMEOUT, TRUST_DOMAIN};
use rustls_pki_types::CertificateDer;
use spiffe::{SpiffeId, WorkloadApiClient, X509Svid};

/// Config granting the test process (whatever uid it runs as) one identity.
fn one_entry(id: &str) -> String {
    format!(
        "[[entries]]\nspiffe_id = \"{id}\"\nselectors = [\"unix:uid:{}\"]\n",
        current_uid()
    )
}

async fn client(agent: &Agent) -> WorkloadApiClient {
    tokio::time::timeout(
        EVENT_TIMEOUT,
        WorkloadApiClient::connect_to(agent.endpoint()),
    )
    .await
    .expect("connecting timed out")
    .expect("cannot connect to the agent")
}

fn ders(svid: &X509Svid) -> Vec<CertificateDer<'static>> {
    svid.cert_chain()
        .iter()
        .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
        .collect()
}

fn bundle_set(authorities: Vec<CertificateDer<'static>>) -> BundleSet {
    let mut bundle = Bundle::new(TrustDomain::new(TRUST_DOMAIN).unwrap());
    for cert in authorities {
        bundle.add_x509_authority(cert);
    }
    std::iter::once(bundle).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x509_svid_has_the_entry_id_and_chains_to_the_served_bundle() {
    let id = "spiffe://example.org/billing/api";
    let agent = Agent::start(&one_entry(id));
    let client = client(&agent).await;

    let svid = client.fetch_x509_svid().await.expect("fetch X509-SVID");
    assert_eq!(svid.spiffe_id().to_string(), id);

    let bundles = client.fetch_x509_bundles().await.expect("fetch X509 bundles");
    let td = spiffe::TrustDomain::new(TRUST_DOMAIN).unwrap();
    let bundle = bundles
        .get(&td)
        .expect("the bundle set includes the agent's own trust domain");
    let authorities: Vec<CertificateDer<'static>> = bundle
        .authorities()
        .iter()
        .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
        .collect();
    assert!(!authorities.is_empty());

    // The agent's own verifier…
    let verified = verify_x509_svid(
        &ders(&svid),
        &bundle_set(authorities.clone()),
        SystemTime::now(),
    )
    .expect("the SVID verifies against the served bundle");
    assert_eq!(verified.to_string(), id);

    // …and an unrelated one agree.
    let dir = agent.dir();
    std::fs::write(dir.join("bundle.pem"), certificates_to_pem(&authorities)).unwrap();
    std::fs::write(dir.join("svid.pem"), certificates_to_pem(&ders(&svid))).unwrap();
    let out = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(dir.join("bundle.pem"))
        .arg(dir.join("svid.pem"))
        .output()
        .expect("openssl is installed (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "openssl verify failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The X.509 context carries the same bundle.
    let context = client.fetch_x509_context().await.expect("fetch X.509 context");
    assert_eq!(context.svids().len(), 1);
    assert!(context.bundle_set().get(&td).is_some());
    let _ = SpiffeId::new(id).unwrap();
    let _ = Duration::ZERO;
}
