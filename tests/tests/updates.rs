//! What open Workload API streams receive while the agent runs: renewed SVIDs, and the
//! identities that follow edits of the config file (polled, or on SIGHUP).

use std::pin::Pin;
use std::time::SystemTime;

use futures::{Stream, StreamExt};
use mesh_core::x509::verify_x509_svid;
use mesh_core::{Bundle, BundleSet, TrustDomain};
use mesh_e2e::{current_uid, Agent, EVENT_TIMEOUT, TRUST_DOMAIN};
use rustls_pki_types::CertificateDer;
use spiffe::{WorkloadApiClient, WorkloadApiError, X509Context, X509Source, X509Svid};
use x509_parser::prelude::FromDer;

type ContextStream = Pin<Box<dyn Stream<Item = Result<X509Context, WorkloadApiError>> + Send>>;

const FIRST: &str = "spiffe://example.org/billing/api";
const SECOND: &str = "spiffe://example.org/billing/admin";
const THIRD: &str = "spiffe://example.org/billing/batch";

/// An entry for the test process (whatever uid it runs as), with an optional hint.
fn entry(id: &str, hint: Option<&str>) -> String {
    let hint = hint.map_or_else(String::new, |h| format!("hint = \"{h}\"\n"));
    format!(
        "[[entries]]\nspiffe_id = \"{id}\"\nselectors = [\"unix:uid:{}\"]\n{hint}",
        current_uid()
    )
}

async fn open_stream(agent: &Agent) -> (WorkloadApiClient, ContextStream) {
    let client = tokio::time::timeout(
        EVENT_TIMEOUT,
        WorkloadApiClient::connect_to(agent.endpoint()),
    )
    .await
    .expect("connecting timed out")
    .expect("cannot connect to the agent");
    let stream = client
        .stream_x509_contexts()
        .await
        .expect("open an X.509 context stream");
    (client, Box::pin(stream))
}

/// The next context on `stream`, waiting at most [`EVENT_TIMEOUT`].
async fn next_context(stream: &mut ContextStream, what: &str) -> X509Context {
    tokio::time::timeout(EVENT_TIMEOUT, stream.next())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap_or_else(|| panic!("the stream ended while waiting for {what}"))
        .unwrap_or_else(|e| panic!("the stream failed while waiting for {what}: {e}"))
}

fn ids(context: &X509Context) -> Vec<String> {
    context
        .svids()
        .iter()
        .map(|s| s.spiffe_id().to_string())
        .collect()
}

fn serial(svid: &X509Svid) -> Vec<u8> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(svid.leaf().as_bytes())
        .expect("the leaf parses");
    cert.raw_serial().to_vec()
}

fn not_after(svid: &X509Svid) -> i64 {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(svid.leaf().as_bytes())
        .expect("the leaf parses");
    cert.validity().not_after.timestamp()
}

fn verifies(svid: &X509Svid, context: &X509Context) {
    let td = spiffe::TrustDomain::new(TRUST_DOMAIN).unwrap();
    let served = context
        .bundle_set()
        .get(&td)
        .expect("the context has the trust domain's bundle");
    let mut bundle = Bundle::new(TrustDomain::new(TRUST_DOMAIN).unwrap());
    for cert in served.authorities() {
        bundle.add_x509_authority(CertificateDer::from(cert.as_bytes().to_vec()));
    }
    let bundles: BundleSet = std::iter::once(bundle).collect();
    let chain: Vec<CertificateDer<'static>> = svid
        .cert_chain()
        .iter()
        .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
        .collect();
    verify_x509_svid(&chain, &bundles, SystemTime::now()).expect("the SVID verifies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_svid_reaches_open_streams_and_x509_sources() {
    let agent = Agent::start(&format!("svid_ttl = \"4s\"\n{}", entry(FIRST, None)));
    let (_client, mut stream) = open_stream(&agent).await;
    let source = tokio::time::timeout(
        EVENT_TIMEOUT,
        X509Source::builder().endpoint(agent.endpoint()).build(),
    )
    .await
    .expect("the X509Source timed out starting")
    .expect("the X509Source starts");
    let mut source_updates = source.updated();

    let first = next_context(&mut stream, "the first context").await;
    let first_svid = first.default_svid().expect("a default SVID").clone();
    let from_source = source.svid().expect("the source has an SVID");

    let renewed = loop {
        let context = next_context(&mut stream, "a renewed SVID").await;
        let svid = context.default_svid().expect("a default SVID").clone();
        if serial(&svid) != serial(&first_svid) {
            break (context, svid);
        }
    };
    let (context, svid) = renewed;
    assert_eq!(svid.spiffe_id().to_string(), FIRST);
    assert!(not_after(&svid) > not_after(&first_svid));
    verifies(&svid, &context);

    // The crate's own source follows the same renewals.
    tokio::time::timeout(EVENT_TIMEOUT, async {
        loop {
            if serial(&source.svid().expect("the source has an SVID")) != serial(&from_source) {
                break;
            }
            source_updates
                .changed()
                .await
                .expect("the source keeps running");
        }
    })
    .await
    .expect("timed out waiting for the X509Source to take up a renewed SVID");

    let renewals = mesh_e2e::wait_for_metric(&agent, "svid_renewals_total", |v| v >= 1.0);
    assert!(renewals >= 1.0);
    source.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_follow_entries_added_to_and_removed_from_the_config_file() {
    let mut agent = Agent::start(&entry(FIRST, None));
    let (client, mut stream) = open_stream(&agent).await;
    let first = next_context(&mut stream, "the first context").await;
    assert_eq!(ids(&first), [FIRST]);

    let mark = agent.log_len();
    agent.write_config(&format!(
        "{}{}",
        entry(FIRST, None),
        entry(SECOND, Some("admin"))
    ));
    let both = next_context(&mut stream, "the added identity").await;
    assert_eq!(ids(&both), [FIRST, SECOND]);
    assert_eq!(both.svids()[1].hint(), Some("admin"));
    // The identity that was there keeps its SVID.
    assert_eq!(both.svids()[0].leaf(), first.svids()[0].leaf());
    verifies(&both.svids()[1], &both);
    agent.wait_for_log(mark, "the reload to be logged", |line| {
        line["message"] == "registration entries reloaded" && line["reason"] == "file changed"
    });

    // A fresh fetch agrees with the stream.
    let fetched = client.fetch_x509_context().await.expect("fetch");
    assert_eq!(ids(&fetched), [FIRST, SECOND]);

    agent.write_config(&entry(FIRST, None));
    let one = next_context(&mut stream, "the removed identity to go").await;
    assert_eq!(ids(&one), [FIRST]);
    assert_eq!(one.svids()[0].leaf(), first.svids()[0].leaf());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_on_the_executable_path_reaches_a_stream_opened_before_it_existed() {
    // With only uid entries the agent does not look at callers' executables, so this stream
    // was attested without a path; the new entry must make the agent attest it again.
    let agent = Agent::start(&entry(FIRST, None));
    let (_client, mut stream) = open_stream(&agent).await;
    assert_eq!(
        ids(&next_context(&mut stream, "the first context").await),
        [FIRST]
    );

    let exe = std::env::current_exe().expect("the test's executable");
    agent.write_config(&format!(
        "{}[[entries]]\nspiffe_id = \"{SECOND}\"\nselectors = [\"unix:path:{}\"]\n",
        entry(FIRST, None),
        exe.display()
    ));
    let both = next_context(&mut stream, "the identity granted by executable path").await;
    assert_eq!(ids(&both), [FIRST, SECOND]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_file() {
    let mut agent = Agent::start(&entry(FIRST, None));
    let (_client, mut stream) = open_stream(&agent).await;
    assert_eq!(
        ids(&next_context(&mut stream, "the first context").await),
        [FIRST]
    );

    // A SIGHUP with nothing changed reloads (and the agent survives it).
    let mark = agent.log_len();
    agent.signal(libc::SIGHUP);
    agent.wait_for_log(mark, "a reload caused by SIGHUP", |line| {
        line["reason"] == "SIGHUP"
    });

    // A SIGHUP right after an edit applies it.
    agent.write_config(&format!(
        "{}{}",
        entry(FIRST, None),
        entry(SECOND, Some("admin"))
    ));
    agent.signal(libc::SIGHUP);
    let both = next_context(&mut stream, "the identity added before SIGHUP").await;
    assert_eq!(ids(&both), [FIRST, SECOND]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_file_keeps_the_previous_entries_in_force() {
    let mut agent = Agent::start(&entry(FIRST, None));
    let (client, mut stream) = open_stream(&agent).await;
    let first = next_context(&mut stream, "the first context").await;
    assert_eq!(ids(&first), [FIRST]);

    // An entry with a bad SPIFFE ID: the file parses but fails validation.
    let mark = agent.log_len();
    agent.write_config(&format!(
        "{}{}",
        entry(FIRST, None),
        entry("spiffe://example.org/bad path", None)
    ));
    let line = agent.config_line_of("bad path");
    let at = format!("{}:{line}:", agent.config_path().display());
    let logged = agent.wait_for_log(mark, "the rejected entry to be logged", |l| {
        l["level"] == "ERROR" && l["problem"].as_str().is_some_and(|p| p.starts_with(&at))
    });
    assert!(
        logged["problem"].as_str().unwrap().contains("bad path"),
        "{logged}"
    );

    // A file that is not even TOML.
    let mark = agent.log_len();
    agent.write_config(&format!("{}[[entries]\n", entry(FIRST, None)));
    let text = std::fs::read_to_string(agent.config_path()).unwrap();
    let broken = text
        .lines()
        .position(|l| l == "[[entries]")
        .expect("the broken header is in the file")
        + 1;
    let at = format!("{}:{broken}:", agent.config_path().display());
    agent.wait_for_log(mark, "the syntax error to be logged", |l| {
        l["level"] == "ERROR"
            && l.to_string().contains(&at)
            && l["message"]
                .as_str()
                .is_some_and(|m| m.contains("previous entries stay in force"))
    });

    // The old entries still serve new callers…
    let fetched = client
        .fetch_x509_context()
        .await
        .expect("fetch still works");
    assert_eq!(ids(&fetched), [FIRST]);
    assert_eq!(fetched.svids()[0].leaf(), first.svids()[0].leaf());

    // …and the open stream sent nothing for the bad files: its next message is the next
    // valid file.
    agent.write_config(&format!("{}{}", entry(FIRST, None), entry(THIRD, None)));
    let next = next_context(&mut stream, "the next valid file").await;
    assert_eq!(ids(&next), [FIRST, THIRD]);
}

/// The CA certificate of `context`'s bundle that signed `svid`.
fn signer(svid: &X509Svid, context: &X509Context) -> Vec<u8> {
    let td = spiffe::TrustDomain::new(TRUST_DOMAIN).unwrap();
    let served = context
        .bundle_set()
        .get(&td)
        .expect("the context has the trust domain's bundle");
    let chain: Vec<CertificateDer<'static>> = svid
        .cert_chain()
        .iter()
        .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
        .collect();
    served
        .authorities()
        .iter()
        .find(|ca| {
            let mut bundle = Bundle::new(TrustDomain::new(TRUST_DOMAIN).unwrap());
            bundle.add_x509_authority(CertificateDer::from(ca.as_bytes().to_vec()));
            let one: BundleSet = std::iter::once(bundle).collect();
            verify_x509_svid(&chain, &one, SystemTime::now()).is_ok()
        })
        .map(|ca| ca.as_bytes().to_vec())
        .expect("some CA of the served bundle signed the SVID")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_rotation_reaches_streams_with_svids_of_the_new_authority() {
    let agent = Agent::start(&format!(
        "ca_ttl = \"12s\"\nsvid_ttl = \"10s\"\njwt_ttl = \"10s\"\n{}",
        entry(FIRST, None)
    ));
    let (client, mut stream) = open_stream(&agent).await;
    let mut bundles = client
        .stream_x509_bundles()
        .await
        .expect("open an X.509 bundle stream");
    let first = next_context(&mut stream, "the first context").await;
    let first_signer = signer(first.default_svid().unwrap(), &first);

    let new_signer = loop {
        let context = next_context(&mut stream, "an SVID signed by a new CA").await;
        let svid = context.default_svid().expect("a default SVID");
        assert_eq!(svid.spiffe_id().to_string(), FIRST);
        verifies(svid, &context);
        let signer = signer(svid, &context);
        if signer != first_signer {
            break signer;
        }
    };

    // The bundle stream carries the new authority too.
    let td = spiffe::TrustDomain::new(TRUST_DOMAIN).unwrap();
    tokio::time::timeout(EVENT_TIMEOUT, async {
        loop {
            let set = bundles
                .next()
                .await
                .expect("the bundle stream stays open")
                .expect("bundle updates are valid");
            let bundle = set.get(&td).expect("the trust domain's bundle is served");
            if bundle
                .authorities()
                .iter()
                .any(|ca| ca.as_bytes() == new_signer.as_slice())
            {
                break;
            }
        }
    })
    .await
    .expect("timed out waiting for the bundle stream to carry the new CA");
}

#[test]
fn ca_with_a_six_second_ttl_hands_over_at_most_once_in_its_first_seconds() {
    // A CA that lives 6 s should prepare its successor after about 3 s and hand over after
    // about 5 s, so in the first 2 s after start the agent activates one authority: the first.
    let mut agent = Agent::start(&format!(
        "ca_ttl = \"6s\"\nsvid_ttl = \"1s\"\njwt_ttl = \"1s\"\n{}",
        entry(FIRST, None)
    ));
    std::thread::sleep(std::time::Duration::from_secs(2));
    let activated = agent
        .log_lines_since(0)
        .iter()
        .filter(|l| l["message"] == "X.509 authority activated")
        .count();
    let status = agent.stop();
    assert!(
        activated <= 2,
        "{activated} X.509 authorities were activated in about 2 s of a 6 s CA"
    );
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_ends_with_no_identity_when_the_last_entry_of_a_caller_goes() {
    let agent = Agent::start(&entry(FIRST, None));
    let (client, mut stream) = open_stream(&agent).await;
    assert_eq!(
        ids(&next_context(&mut stream, "the first context").await),
        [FIRST]
    );

    agent.write_config(
        "[[entries]]\nspiffe_id = \"spiffe://example.org/someone/else\"\n\
         selectors = [\"unix:uid:4242\"]\n",
    );
    let end = tokio::time::timeout(EVENT_TIMEOUT, stream.next())
        .await
        .expect("timed out waiting for the stream to react to the removal");
    match end {
        Some(Err(WorkloadApiError::NoIdentityIssued)) => {}
        Some(Err(other)) => panic!("the stream ended with {other:?}, not no identity issued"),
        Some(Ok(context)) => panic!("the stream still sends {:?}", ids(&context)),
        None => panic!("the stream ended with status OK"),
    }
    let error = client
        .fetch_x509_svid()
        .await
        .expect_err("no identity any more");
    assert!(
        matches!(error, WorkloadApiError::NoIdentityIssued),
        "{error:?}"
    );

    // Putting the entry back gives the caller an identity again.
    agent.write_config(&entry(FIRST, None));
    tokio::time::timeout(EVENT_TIMEOUT, async {
        loop {
            match client.fetch_x509_svid().await {
                Ok(svid) => break svid,
                Err(WorkloadApiError::NoIdentityIssued) => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(other) => panic!("unexpected error {other:?}"),
            }
        }
    })
    .await
    .expect("timed out waiting for the entry to come back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_added_by_a_reload_gets_the_ttl_it_asks_for() {
    // Started with the default SVID TTL (1 h) and no longer entry TTL.
    let agent = Agent::start(&entry(FIRST, None));
    let (_client, mut stream) = open_stream(&agent).await;
    next_context(&mut stream, "the first context").await;

    agent.write_config(&format!(
        "{}{}ttl = \"3h\"\n",
        entry(FIRST, None),
        entry(SECOND, None)
    ));
    let both = next_context(&mut stream, "the added identity").await;
    assert_eq!(ids(&both), [FIRST, SECOND]);

    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let lives = not_after(&both.svids()[1]) - i64::try_from(now).unwrap();
    assert!(
        lives > 2 * 3600 + 3000,
        "an entry added with ttl = \"3h\" got an SVID that lives {lives} s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_follow_a_switch_between_entries_and_the_uid_template() {
    let agent = Agent::start(&entry(FIRST, None));
    let (_client, mut stream) = open_stream(&agent).await;
    assert_eq!(
        ids(&next_context(&mut stream, "the first context").await),
        [FIRST]
    );
    let templated = format!("spiffe://example.org/unix/uid/{}", current_uid());

    // No `entries` key at all: every user gets the identity of its uid.
    agent.write_config("");
    let context = next_context(&mut stream, "the uid template identity").await;
    assert_eq!(ids(&context), [templated.as_str()]);
    verifies(&context.svids()[0], &context);

    agent.write_config(&entry(FIRST, None));
    let context = next_context(&mut stream, "the entry to be back").await;
    assert_eq!(ids(&context), [FIRST]);
}
