//! Starting, stopping and restarting a real agent: the CA survives restarts, a second agent
//! cannot steal the socket, and shutdown ends streams in a way clients retry.

use std::time::SystemTime;

use futures::StreamExt;
use mesh_core::x509::verify_x509_svid;
use mesh_core::{Bundle, BundleSet, TrustDomain};
use mesh_e2e::{current_uid, output_within, Agent, EVENT_TIMEOUT, TRUST_DOMAIN};
use rustls_pki_types::CertificateDer;
use spiffe::transport::{GrpcStatusCode, TransportError};
use spiffe::{WorkloadApiClient, WorkloadApiError};

const ID: &str = "spiffe://example.org/billing/api";

fn one_entry() -> String {
    format!(
        "[[entries]]\nspiffe_id = \"{ID}\"\nselectors = [\"unix:uid:{}\"]\n",
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

/// The DER certificates of the trust domain's X.509 bundle, as the agent serves it.
async fn served_authorities(client: &WorkloadApiClient) -> Vec<Vec<u8>> {
    let bundles = client.fetch_x509_bundles().await.expect("fetch bundles");
    let td = spiffe::TrustDomain::new(TRUST_DOMAIN).unwrap();
    bundles
        .get(&td)
        .expect("the trust domain's bundle is served")
        .authorities()
        .iter()
        .map(|c| c.as_bytes().to_vec())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_the_ca_so_earlier_svids_still_verify() {
    let mut agent = Agent::start(&one_entry());
    let before = client(&agent).await;
    let svid = before
        .fetch_x509_svid()
        .await
        .expect("fetch before restart");
    let authorities_before = served_authorities(&before).await;
    drop(before);

    let status = agent.stop();
    assert!(
        status.success(),
        "SIGTERM should stop the agent cleanly: {status}"
    );
    assert!(
        !agent.socket().exists(),
        "the agent removes its socket when it stops"
    );

    agent.spawn();
    let after = client(&agent).await;
    let authorities_after = served_authorities(&after).await;
    assert_eq!(
        authorities_after, authorities_before,
        "the CA certificate is byte-identical after a restart"
    );

    let mut bundle = Bundle::new(TrustDomain::new(TRUST_DOMAIN).unwrap());
    for der in authorities_after {
        bundle.add_x509_authority(CertificateDer::from(der));
    }
    let bundles: BundleSet = std::iter::once(bundle).collect();
    let chain: Vec<CertificateDer<'static>> = svid
        .cert_chain()
        .iter()
        .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
        .collect();
    let verified = verify_x509_svid(&chain, &bundles, SystemTime::now())
        .expect("an SVID issued before the restart verifies against the bundle served after it");
    assert_eq!(verified.to_string(), ID);

    let again = after.fetch_x509_svid().await.expect("fetch after restart");
    assert_eq!(again.spiffe_id().to_string(), ID);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_agent_on_the_same_socket_refuses_to_start() {
    let agent = Agent::start(&one_entry());

    let out = output_within(agent.run_command(), EVENT_TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the second agent must fail: {stderr}"
    );
    assert!(
        stderr.contains(&agent.socket().display().to_string()),
        "the message names the socket: {stderr}"
    );
    assert!(
        stderr.contains("already"),
        "the message says another agent is serving it: {stderr}"
    );

    // The first agent was not disturbed.
    assert!(agent.socket().exists());
    let svid = client(&agent)
        .await
        .fetch_x509_svid()
        .await
        .expect("the first agent still serves");
    assert_eq!(svid.spiffe_id().to_string(), ID);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams_with_unavailable() {
    let mut agent = Agent::start(&one_entry());
    let client = client(&agent).await;
    let mut stream = client
        .stream_x509_contexts()
        .await
        .expect("open an X.509 context stream");
    tokio::time::timeout(EVENT_TIMEOUT, stream.next())
        .await
        .expect("timed out waiting for the first context")
        .expect("a first context")
        .expect("the first context is valid");

    agent.signal(libc::SIGTERM);
    let end = tokio::time::timeout(EVENT_TIMEOUT, stream.next())
        .await
        .expect("timed out waiting for the stream to end");
    match end {
        Some(Err(WorkloadApiError::Transport(TransportError::Status(status)))) => {
            assert_eq!(status.code(), GrpcStatusCode::Unavailable, "{status}");
        }
        Some(Err(other)) => panic!("the stream ended with {other:?}, not Unavailable"),
        Some(Ok(_)) => panic!("the stream sent a context instead of ending"),
        None => panic!("the stream ended with status OK; clients would stop watching"),
    }
    let status = agent.stop();
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_reports_ready_while_the_agent_runs() {
    let mut agent = Agent::start(&one_entry());
    let admin = agent.admin_addr().to_string();
    let healthcheck = |agent: &Agent| {
        let mut cmd = mesh_e2e::mesh_agent();
        cmd.arg("healthcheck")
            .arg("--config")
            .arg(agent.config_path())
            .args(["--admin-addr", &admin]);
        output_within(cmd, EVENT_TIMEOUT)
    };

    let out = healthcheck(&agent);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ready");

    assert!(agent.stop().success());
    let out = healthcheck(&agent);
    assert!(
        !out.status.success(),
        "a stopped agent is not healthy: {out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_starts_over_the_socket_left_by_a_killed_agent() {
    let mut agent = Agent::start(&one_entry());
    agent.signal(libc::SIGKILL);
    agent.stop();
    assert!(
        agent.socket().exists(),
        "a killed agent cannot remove its socket; this test needs it left behind"
    );

    agent.spawn();
    let svid = client(&agent)
        .await
        .fetch_x509_svid()
        .await
        .expect("the restarted agent serves on the old path");
    assert_eq!(svid.spiffe_id().to_string(), ID);
}

#[test]
fn agent_refuses_an_invalid_config_file_naming_the_line() {
    let agent = Agent::create(
        "svid_ttl = \"soon\"\n[[entries]]\nspiffe_id = \"spiffe://example.org/a\"\n\
         selectors = [\"unix:uid:0\"]\n",
    );
    let line = agent.config_line_of("svid_ttl");

    let out = output_within(agent.run_command(), EVENT_TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the agent started with a bad config");
    assert!(
        stderr.contains(&format!("{}:{line}:", agent.config_path().display())),
        "the error names the file and line: {stderr}"
    );
    assert!(
        stderr.contains("soon"),
        "the error quotes the value: {stderr}"
    );
    assert!(!agent.socket().exists(), "nothing was served");

    let mut check = mesh_e2e::mesh_agent();
    check.arg("check-config").arg(agent.config_path());
    let out = output_within(check, EVENT_TIMEOUT);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!(":{line}:")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x509_source_picks_up_the_restarted_agent_on_its_own() {
    let mut agent = Agent::start(&one_entry());
    let source = tokio::time::timeout(
        EVENT_TIMEOUT,
        spiffe::X509Source::builder()
            .endpoint(agent.endpoint())
            .build(),
    )
    .await
    .expect("the X509Source timed out starting")
    .expect("the X509Source starts");
    let mut updates = source.updated();
    let before = source.svid().expect("an SVID").leaf().as_bytes().to_vec();

    assert!(agent.stop().success());
    agent.spawn();

    // The new agent issues new SVIDs; the source reconnects by itself and takes them up.
    tokio::time::timeout(EVENT_TIMEOUT, async {
        loop {
            let now = source.svid().expect("the source keeps its last SVID");
            if now.leaf().as_bytes() != before.as_slice() {
                assert_eq!(now.spiffe_id().to_string(), ID);
                break;
            }
            updates.changed().await.expect("the source keeps running");
        }
    })
    .await
    .expect("timed out waiting for the X509Source to reconnect after the restart");
    source.shutdown().await;
}
