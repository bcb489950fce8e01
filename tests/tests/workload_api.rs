//! The Workload API of a real agent, through the Rust `spiffe` crate as an independent client:
//! X509-SVIDs and bundles, JWT-SVIDs, the errors the standard names, and the metrics the calls
//! leave behind.

use std::process::Command;
use std::time::SystemTime;

use futures::StreamExt;
use hyper_util::rt::TokioIo;
use mesh_core::x509::{certificates_to_pem, verify_x509_svid};
use mesh_core::{Bundle, BundleSet, TrustDomain};
use mesh_e2e::{current_uid, metric, wait_until, Agent, EVENT_TIMEOUT, TRUST_DOMAIN};
use rustls_pki_types::CertificateDer;
use spiffe::{JwtSvid, SpiffeId, WorkloadApiClient, WorkloadApiError, X509Svid};
use tonic::transport::{Channel, Uri};
use workload_api::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use workload_api::proto::X509svidRequest;

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

fn ders<'a>(
    certs: impl IntoIterator<Item = &'a spiffe::Certificate>,
) -> Vec<CertificateDer<'static>> {
    certs
        .into_iter()
        .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
        .collect()
}

fn chain(svid: &X509Svid) -> Vec<CertificateDer<'static>> {
    ders(svid.cert_chain())
}

fn bundle_set(authorities: Vec<CertificateDer<'static>>) -> BundleSet {
    let mut bundle = Bundle::new(TrustDomain::new(TRUST_DOMAIN).unwrap());
    for cert in authorities {
        bundle.add_x509_authority(cert);
    }
    std::iter::once(bundle).collect()
}

fn trust_domain() -> spiffe::TrustDomain {
    spiffe::TrustDomain::new(TRUST_DOMAIN).unwrap()
}

/// A gRPC channel to the agent's socket with no interceptor: calls carry only the metadata the
/// test adds.
async fn raw_channel(agent: &Agent) -> Channel {
    let path = agent.socket().to_owned();
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .expect("cannot connect to the agent's socket")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x509_svid_has_the_entry_id_and_chains_to_the_served_bundle() {
    let id = "spiffe://example.org/billing/api";
    let agent = Agent::start(&one_entry(id));
    let client = client(&agent).await;

    let svid = client.fetch_x509_svid().await.expect("fetch X509-SVID");
    assert_eq!(svid.spiffe_id().to_string(), id);
    assert!(svid.hint().is_none());

    let bundles = client
        .fetch_x509_bundles()
        .await
        .expect("fetch X509 bundles");
    let bundle = bundles
        .get(&trust_domain())
        .expect("the bundle set includes the agent's own trust domain");
    let authorities = ders(bundle.authorities());
    assert!(!authorities.is_empty());

    // The project's own verifier…
    let verified = verify_x509_svid(
        &chain(&svid),
        &bundle_set(authorities.clone()),
        SystemTime::now(),
    )
    .expect("the SVID verifies against the served bundle");
    assert_eq!(verified.to_string(), id);

    // …and an unrelated one agree.
    let dir = agent.dir();
    std::fs::write(dir.join("bundle.pem"), certificates_to_pem(&authorities)).unwrap();
    std::fs::write(dir.join("svid.pem"), certificates_to_pem(&chain(&svid))).unwrap();
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

    // The X.509 context carries the same SVID and the same bundle.
    let context = client
        .fetch_x509_context()
        .await
        .expect("fetch X.509 context");
    assert_eq!(context.svids().len(), 1);
    assert_eq!(context.svids()[0].leaf(), svid.leaf());
    let context_bundle = context
        .bundle_set()
        .get(&trust_domain())
        .expect("the context's bundle set has the trust domain");
    assert_eq!(ders(context_bundle.authorities()), authorities);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_svid_validates_through_the_agent_and_locally_with_the_served_bundles() {
    let id = "spiffe://example.org/billing/api";
    let agent = Agent::start(&one_entry(id));
    let client = client(&agent).await;

    let svid = client
        .fetch_jwt_svid(["billing", "audit"], None)
        .await
        .expect("fetch JWT-SVID");
    assert_eq!(svid.spiffe_id().to_string(), id);
    let mut audience = svid.audience().to_vec();
    audience.sort();
    assert_eq!(audience, ["audit", "billing"]);
    assert!(!svid.key_id().is_empty());

    // Asking for the identity by name gives the same subject.
    let by_id = client
        .fetch_jwt_svid(["billing"], Some(&SpiffeId::new(id).unwrap()))
        .await
        .expect("fetch JWT-SVID by SPIFFE ID");
    assert_eq!(by_id.spiffe_id().to_string(), id);

    let bundles = client.fetch_jwt_bundles().await.expect("fetch JWT bundles");
    let bundle = bundles
        .get(&trust_domain())
        .expect("the JWT bundle set includes the agent's trust domain");
    assert!(bundle.find_jwt_authority(svid.key_id()).is_some());

    // Through the agent.
    let validated = client
        .validate_jwt_token("billing", svid.token())
        .await
        .expect("the agent validates its own token");
    assert_eq!(validated.spiffe_id().to_string(), id);

    // Locally, with the bundles the agent served.
    let local = JwtSvid::parse_and_validate(svid.token(), &bundles, &["audit"])
        .expect("the token validates locally against the served JWT bundle");
    assert_eq!(local.spiffe_id().to_string(), id);
    assert!(JwtSvid::parse_and_validate(svid.token(), &bundles, &["payroll"]).is_err());

    // A token for someone else is refused by the agent as an invalid argument.
    let error = client
        .validate_jwt_token("payroll", svid.token())
        .await
        .expect_err("a token without the audience is rejected");
    assert!(error.is_invalid_argument(), "{error:?}");

    // So is a token whose signature does not match.
    let mut parts: Vec<String> = svid.token().split('.').map(str::to_owned).collect();
    let sig = parts[2].clone();
    let flipped = if sig.starts_with('A') { "B" } else { "A" };
    parts[2] = format!("{flipped}{}", &sig[1..]);
    let forged = parts.join(".");
    let error = client
        .validate_jwt_token("billing", &forged)
        .await
        .expect_err("a forged token is rejected");
    assert!(error.is_invalid_argument(), "{error:?}");
    assert!(JwtSvid::parse_and_validate(&forged, &bundles, &["billing"]).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_without_an_entry_gets_no_identity_issued() {
    // Entries exist, but only for a uid nobody here runs as.
    let agent = Agent::start(
        "[[entries]]\nspiffe_id = \"spiffe://example.org/someone/else\"\n\
         selectors = [\"unix:uid:4242\"]\n",
    );
    let client = client(&agent).await;

    let error = client
        .fetch_x509_svid()
        .await
        .expect_err("no X509-SVID for an unregistered process");
    assert!(
        matches!(error, WorkloadApiError::NoIdentityIssued),
        "{error:?}"
    );

    let error = client
        .fetch_jwt_svid(["billing"], None)
        .await
        .expect_err("no JWT-SVID for an unregistered process");
    assert!(
        matches!(error, WorkloadApiError::NoIdentityIssued),
        "{error:?}"
    );

    let error = match client.stream_x509_contexts().await {
        Ok(mut stream) => stream
            .next()
            .await
            .expect("the stream yields the refusal")
            .expect_err("the stream yields no context"),
        Err(error) => error,
    };
    assert!(
        matches!(error, WorkloadApiError::NoIdentityIssued),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_without_the_security_header_is_an_invalid_argument() {
    let agent = Agent::start(&one_entry("spiffe://example.org/billing/api"));
    let mut raw = SpiffeWorkloadApiClient::new(raw_channel(&agent).await);

    let status = raw
        .fetch_x509svid(X509svidRequest {})
        .await
        .expect_err("a call without the header is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    let mut wrong = tonic::Request::new(X509svidRequest {});
    wrong
        .metadata_mut()
        .insert("workload.spiffe.io", "false".parse().unwrap());
    let status = raw
        .fetch_x509svid(wrong)
        .await
        .expect_err("a header other than `true` is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    // The same channel with the header gets an SVID: the refusals were about the header alone.
    let mut right = tonic::Request::new(X509svidRequest {});
    right
        .metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    let mut stream = raw
        .fetch_x509svid(right)
        .await
        .expect("a call with the header is served")
        .into_inner();
    let first = stream
        .message()
        .await
        .expect("the stream answers")
        .expect("the stream has a first message");
    assert_eq!(first.svids.len(), 1);
    assert_eq!(first.svids[0].spiffe_id, "spiffe://example.org/billing/api");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_calls_by_method_and_code_and_track_open_streams() {
    let agent = Agent::start(&one_entry("spiffe://example.org/billing/api"));
    assert_eq!(agent.admin_get("/live").0, 200);
    assert_eq!(agent.admin_get("/ready").0, 200);

    let client = client(&agent).await;
    client.fetch_x509_svid().await.expect("fetch X509-SVID");
    let jwt = client
        .fetch_jwt_svid(["billing"], None)
        .await
        .expect("fetch JWT-SVID");
    client
        .validate_jwt_token("payroll", jwt.token())
        .await
        .expect_err("wrong audience");

    let mut stream = client
        .stream_x509_contexts()
        .await
        .expect("open an X.509 stream");
    stream
        .next()
        .await
        .expect("a first context")
        .expect("the first context is valid");

    // The one-shot fetch above also opened a stream; the agent notices its end on its own
    // time, so wait for the count to settle on the stream still open.
    wait_until("open_streams to count the one open stream", || {
        metric(&agent.admin_get("/metrics").1, "open_streams") == Some(1.0)
    });
    let (status, text) = agent.admin_get("/metrics");
    assert_eq!(status, 200);
    assert_eq!(
        metric(
            &text,
            "workload_api_calls_total{method=\"FetchX509SVID\",code=\"OK\"}"
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "workload_api_calls_total{method=\"FetchJWTSVID\",code=\"OK\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "workload_api_calls_total{method=\"ValidateJWTSVID\",code=\"InvalidArgument\"}"
        ),
        Some(1.0),
        "{text}"
    );
    let issued = metric(&text, "svids_issued_total").expect("svids_issued_total is exported");
    assert!(issued >= 1.0, "{text}");
    assert!(text.contains("# TYPE workload_api_call_duration_seconds histogram"));

    drop(stream);
    wait_until("open_streams to drop to zero", || {
        metric(&agent.admin_get("/metrics").1, "open_streams") == Some(0.0)
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_source_mints_tokens_that_validate_against_its_own_bundles() {
    let id = "spiffe://example.org/billing/api";
    let agent = Agent::start(&one_entry(id));
    let source = tokio::time::timeout(
        EVENT_TIMEOUT,
        spiffe::JwtSource::builder()
            .endpoint(agent.endpoint())
            .build(),
    )
    .await
    .expect("the JwtSource timed out starting")
    .expect("the JwtSource starts");

    let svid = source
        .fetch_jwt_svid(["billing"])
        .await
        .expect("the source fetches a JWT-SVID");
    assert_eq!(svid.spiffe_id().to_string(), id);
    let bundles = source.bundle_set().expect("the source holds JWT bundles");
    let local = JwtSvid::parse_and_validate(svid.token(), &*bundles, &["billing"])
        .expect("the token validates against the source's bundles");
    assert_eq!(local.spiffe_id().to_string(), id);
    source.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_ttl_and_dns_names_shape_the_issued_svid() {
    use x509_parser::prelude::{FromDer, GeneralName};

    let agent = Agent::start(&format!(
        "[[entries]]\nspiffe_id = \"spiffe://example.org/db\"\nselectors = [\"unix:uid:{}\"]\n\
         ttl = \"2m\"\ndns_names = [\"db.internal\", \"db\"]\nhint = \"database\"\n",
        current_uid()
    ));
    let client = client(&agent).await;
    let before = SystemTime::now();
    let svid = client.fetch_x509_svid().await.expect("fetch");
    assert_eq!(svid.hint(), Some("database"));

    let (_, leaf) = x509_parser::certificate::X509Certificate::from_der(svid.leaf().as_bytes())
        .expect("the leaf parses");
    let not_after = u64::try_from(leaf.validity().not_after.timestamp()).unwrap();
    let now = before
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Issued at most a few seconds before the fetch, for two minutes.
    assert!(
        not_after <= now + 121 && not_after + 30 >= now + 120,
        "not_after {not_after} is not about two minutes after {now}"
    );
    let san = leaf
        .subject_alternative_name()
        .expect("the SAN parses")
        .expect("the leaf has a SAN");
    let mut dns: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(*d),
            _ => None,
        })
        .collect();
    dns.sort_unstable();
    assert_eq!(dns, ["db", "db.internal"]);
}

/// `message` with the security header set.
fn with_header<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_requests_missing_an_audience_or_a_token_are_invalid_arguments() {
    use workload_api::proto::{JwtsvidRequest, ValidateJwtsvidRequest};

    let agent = Agent::start(&one_entry("spiffe://example.org/billing/api"));
    let mut raw = SpiffeWorkloadApiClient::new(raw_channel(&agent).await);

    let status = raw
        .fetch_jwtsvid(with_header(JwtsvidRequest {
            audience: vec![],
            spiffe_id: String::new(),
        }))
        .await
        .expect_err("no audience");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    let status = raw
        .fetch_jwtsvid(with_header(JwtsvidRequest {
            audience: vec!["billing".to_owned()],
            spiffe_id: "not a spiffe id".to_owned(),
        }))
        .await
        .expect_err("a malformed SPIFFE ID");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    let status = raw
        .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
            audience: "billing".to_owned(),
            svid: String::new(),
        }))
        .await
        .expect_err("no token");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    let status = raw
        .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
            audience: String::new(),
            svid: "a.b.c".to_owned(),
        }))
        .await
        .expect_err("no audience");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    // A well-formed request on the same channel succeeds.
    let response = raw
        .fetch_jwtsvid(with_header(JwtsvidRequest {
            audience: vec!["billing".to_owned()],
            spiffe_id: String::new(),
        }))
        .await
        .expect("a JWT-SVID")
        .into_inner();
    assert_eq!(response.svids.len(), 1);
}
