//! Real rustls handshakes between SPIFFE workloads over the configs of `mesh_core::tls`, driven
//! in memory: renewal and CA rotation under long-lived connections, refusals by ID, expiry and
//! trust domain.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mesh_core::ca::{AuthorityKind, AuthorityState, Ca, CaConfig, SvidRequest};
use mesh_core::clock::ManualClock;
use mesh_core::tls::SvidSource;
use mesh_core::tls::{peer_spiffe_id, AuthorizeError, Authorizer, MemorySource, SpiffeTls};
use mesh_core::{KeyType, SpiffeId, TrustDomain};
use rustls::{CertificateError, ClientConfig, ClientConnection, Connection, ServerConfig};
use rustls::{Error, ServerConnection};
use tempfile::TempDir;

const SVID_TTL: Duration = Duration::from_secs(3600);

fn id(s: &str) -> SpiffeId {
    SpiffeId::new(s).unwrap()
}

/// A CA on a clock the test moves.
struct World {
    _dir: TempDir,
    clock: ManualClock,
    ca: Ca,
}

impl World {
    fn new(trust_domain: &str) -> Self {
        Self::with_clock(trust_domain, ManualClock::new(SystemTime::now()))
    }

    fn with_clock(trust_domain: &str, clock: ManualClock) -> Self {
        let dir = TempDir::new().unwrap();
        let config = CaConfig::new(TrustDomain::new(trust_domain).unwrap(), dir.path());
        let ca = Ca::open(config, Arc::new(clock.clone())).unwrap();
        Self {
            _dir: dir,
            clock,
            ca,
        }
    }

    fn advance(&self, by: Duration) {
        self.clock.advance(by);
        self.ca.tick().unwrap();
    }

    /// A workload with a fresh SVID for `path` and this CA's bundle.
    fn workload(&self, path: &str) -> Workload {
        let spiffe_id = self
            .ca
            .trust_domain()
            .workload_id(&format!("/{path}"))
            .unwrap();
        let source = Arc::new(MemorySource::new());
        let tls = SpiffeTls::new(source.clone()).with_clock(Arc::new(self.clock.clone()));
        let w = Workload {
            spiffe_id,
            source,
            tls,
        };
        w.renew(self);
        w
    }

    fn x509_authorities(&self, state: AuthorityState) -> usize {
        self.ca
            .authorities()
            .iter()
            .filter(|a| a.kind == AuthorityKind::X509 && a.state == state)
            .count()
    }
}

struct Workload {
    spiffe_id: SpiffeId,
    source: Arc<MemorySource>,
    tls: SpiffeTls,
}

impl Workload {
    fn renew(&self, world: &World) {
        self.renew_with_ttl(world, SVID_TTL);
    }

    fn renew_with_ttl(&self, world: &World, ttl: Duration) {
        let request = SvidRequest::new(self.spiffe_id.clone(), ttl);
        self.source
            .renew_from_ca(&world.ca, &request, KeyType::EcP256)
            .unwrap();
    }

    fn server(&self, authorizer: Authorizer) -> Arc<ServerConfig> {
        Arc::new(self.tls.server_config(authorizer).unwrap())
    }

    fn client(&self, authorizer: Authorizer) -> Arc<ClientConfig> {
        Arc::new(self.tls.client_config(authorizer).unwrap())
    }

    fn leaf(&self) -> Vec<u8> {
        self.source.svid().unwrap().leaf().to_vec()
    }
}

/// The errors each end reported when a handshake failed.
#[derive(Debug, Default)]
struct Failure {
    client: Option<Error>,
    server: Option<Error>,
}

impl Failure {
    fn server_certificate_error(&self) -> &CertificateError {
        match &self.server {
            Some(Error::InvalidCertificate(e)) => e,
            other => panic!("server did not refuse the client certificate: {other:?} ({self:?})"),
        }
    }

    fn client_certificate_error(&self) -> &CertificateError {
        match &self.client {
            Some(Error::InvalidCertificate(e)) => e,
            other => panic!("client did not refuse the server certificate: {other:?} ({self:?})"),
        }
    }
}

fn authorize_error(e: &CertificateError) -> &AuthorizeError {
    match e {
        CertificateError::Other(other) => other
            .0
            .downcast_ref::<AuthorizeError>()
            .unwrap_or_else(|| panic!("not an authorization refusal: {e:?}")),
        _ => panic!("not an authorization refusal: {e:?}"),
    }
}

/// An established connection, both ends in memory.
struct Pair {
    client: Connection,
    server: Connection,
    exchanges: u32,
}

impl Pair {
    /// Sends a message each way and checks it arrives intact.
    fn exchange(&mut self) {
        self.exchanges += 1;
        let ping = format!("ping {}", self.exchanges);
        let pong = format!("pong {}", self.exchanges);
        self.client.writer().write_all(ping.as_bytes()).unwrap();
        pump(&mut self.client, &mut self.server).unwrap();
        assert_eq!(read_all(&mut self.server), ping.as_bytes());
        self.server.writer().write_all(pong.as_bytes()).unwrap();
        pump(&mut self.client, &mut self.server).unwrap();
        assert_eq!(read_all(&mut self.client), pong.as_bytes());
    }

    /// The SPIFFE IDs each end verified: (the server as seen by the client, the client as
    /// seen by the server).
    fn peer_ids(&self) -> (SpiffeId, SpiffeId) {
        (
            peer_spiffe_id(self.client.peer_certificates().unwrap()).unwrap(),
            peer_spiffe_id(self.server.peer_certificates().unwrap()).unwrap(),
        )
    }

    fn server_leaf_seen_by_client(&self) -> Vec<u8> {
        self.client.peer_certificates().unwrap()[0].to_vec()
    }

    fn client_leaf_seen_by_server(&self) -> Vec<u8> {
        self.server.peer_certificates().unwrap()[0].to_vec()
    }
}

fn read_all(conn: &mut Connection) -> Vec<u8> {
    let mut out = vec![0; 4096];
    let n = conn.reader().read(&mut out).unwrap();
    out.truncate(n);
    out
}

fn handshake(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>) -> Result<Pair, Box<Failure>> {
    let name = "api.example.org".try_into().unwrap();
    let mut client = Connection::Client(ClientConnection::new(Arc::clone(client), name).unwrap());
    let mut server = Connection::Server(ServerConnection::new(Arc::clone(server)).unwrap());
    pump(&mut client, &mut server)?;
    assert!(!client.is_handshaking() && !server.is_handshaking());
    Ok(Pair {
        client,
        server,
        exchanges: 0,
    })
}

/// Moves TLS records between the two ends until neither has anything to send. An end that
/// fails still sends its alert, so the other end's view of the failure is captured too.
fn pump(client: &mut Connection, server: &mut Connection) -> Result<(), Box<Failure>> {
    let mut failure = Failure::default();
    for _ in 0..64 {
        let to_server = deliver(client, server, &mut failure.server);
        let to_client = deliver(server, client, &mut failure.client);
        if !to_server && !to_client {
            break;
        }
    }
    if failure.client.is_none() && failure.server.is_none() {
        Ok(())
    } else {
        Err(Box::new(failure))
    }
}

fn deliver(from: &mut Connection, to: &mut Connection, to_error: &mut Option<Error>) -> bool {
    let mut moved = false;
    while from.wants_write() {
        let mut buf = Vec::new();
        if from.write_tls(&mut buf).unwrap() == 0 {
            break;
        }
        moved = true;
        let mut rest = &buf[..];
        while !rest.is_empty() && to_error.is_none() {
            to.read_tls(&mut rest).unwrap();
            if let Err(e) = to.process_new_packets() {
                *to_error = Some(e);
            }
        }
    }
    moved
}

#[test]
fn mutual_handshake_gives_each_side_the_verified_peer_id() {
    let world = World::new("example.org");
    let web = world.workload("web");
    let api = world.workload("api");

    let mut pair = handshake(
        &web.client(Authorizer::exact(api.spiffe_id.clone())),
        &api.server(Authorizer::exact(web.spiffe_id.clone())),
    )
    .unwrap();
    pair.exchange();

    assert_eq!(
        pair.peer_ids(),
        (
            id("spiffe://example.org/api"),
            id("spiffe://example.org/web")
        )
    );
    assert_eq!(pair.server_leaf_seen_by_client(), api.leaf());
    assert_eq!(pair.client_leaf_seen_by_server(), web.leaf());
}

#[test]
fn every_authorizer_kind_lets_in_what_it_names() {
    let world = World::new("example.org");
    let web = world.workload("web");
    let api = world.workload("api");
    let client = web.client(Authorizer::any());

    let rules = [
        Authorizer::any(),
        Authorizer::member_of(TrustDomain::new("example.org").unwrap()),
        Authorizer::exact(web.spiffe_id.clone()),
        Authorizer::one_of([id("spiffe://example.org/x"), web.spiffe_id.clone()]),
        Authorizer::predicate("path is /web", |i| i.path() == "/web"),
    ];
    for rule in rules {
        let described = rule.to_string();
        let pair = handshake(&client, &api.server(rule));
        assert!(
            pair.is_ok(),
            "rule {described} refused web: {:?}",
            pair.err()
        );
    }
}

#[test]
fn server_refuses_a_client_whose_id_is_not_allowed() {
    let world = World::new("example.org");
    let web = world.workload("web");
    let intruder = world.workload("batch/intruder");
    let api = world.workload("api");
    let server = api.server(Authorizer::one_of([
        web.spiffe_id.clone(),
        id("spiffe://example.org/admin"),
    ]));

    let failure = handshake(&intruder.client(Authorizer::any()), &server)
        .err()
        .expect("the intruder got in");

    let refusal = authorize_error(failure.server_certificate_error());
    assert_eq!(refusal.spiffe_id, intruder.spiffe_id);
    assert!(
        refusal.rule.contains("spiffe://example.org/web"),
        "{refusal}"
    );
    assert!(
        matches!(failure.client, Some(Error::AlertReceived(_))),
        "{failure:?}"
    );
    assert!(handshake(&web.client(Authorizer::any()), &server).is_ok());
}

#[test]
fn client_refuses_a_server_with_an_unexpected_id() {
    let world = World::new("example.org");
    let web = world.workload("web");
    let impostor = world.workload("impostor");
    let client = web.client(Authorizer::exact(id("spiffe://example.org/billing")));

    let failure = handshake(&client, &impostor.server(Authorizer::any()))
        .err()
        .expect("the client accepted the wrong server");

    let refusal = authorize_error(failure.client_certificate_error());
    assert_eq!(refusal.spiffe_id, impostor.spiffe_id);
    assert_eq!(refusal.rule, "exactly `spiffe://example.org/billing`");
}

#[test]
fn expired_client_svid_is_refused() {
    let world = World::new("example.org");
    let web = world.workload("web");
    web.renew_with_ttl(&world, Duration::from_secs(300));
    let api = world.workload("api");
    let server = api.server(Authorizer::any());
    assert!(handshake(&web.client(Authorizer::any()), &server).is_ok());

    world.advance(Duration::from_secs(301));
    let failure = handshake(&web.client(Authorizer::any()), &server)
        .err()
        .expect("an expired client SVID was accepted");

    assert_eq!(
        failure.server_certificate_error(),
        &CertificateError::Expired
    );
}

#[test]
fn expired_server_svid_is_refused() {
    let world = World::new("example.org");
    let web = world.workload("web");
    let api = world.workload("api");
    api.renew_with_ttl(&world, Duration::from_secs(120));

    world.advance(Duration::from_secs(180));
    let failure = handshake(
        &web.client(Authorizer::any()),
        &api.server(Authorizer::any()),
    )
    .err()
    .expect("an expired server SVID was accepted");

    assert_eq!(
        failure.client_certificate_error(),
        &CertificateError::Expired
    );
}

#[test]
fn peer_of_another_trust_domain_needs_its_bundle_and_a_rule_that_allows_it() {
    let ours = World::new("example.org");
    let theirs = World::with_clock("partner.net", ours.clock.clone());
    let api = ours.workload("api");
    let partner = theirs.workload("client");
    // The partner trusts us; we do not know the partner's trust domain yet.
    partner.source.set_bundle(ours.ca.current_bundle());
    let client = partner.client(Authorizer::exact(api.spiffe_id.clone()));

    let failure = handshake(&client, &api.server(Authorizer::any()))
        .err()
        .expect("a peer of an unknown trust domain was accepted");
    assert_eq!(
        failure.server_certificate_error(),
        &CertificateError::UnknownIssuer
    );

    api.source.set_bundle(theirs.ca.current_bundle());
    let ours_only = Authorizer::member_of(TrustDomain::new("example.org").unwrap());
    let failure = handshake(&client, &api.server(ours_only))
        .err()
        .expect("the trust domain rule let a partner in");
    let refusal = authorize_error(failure.server_certificate_error());
    assert_eq!(refusal.spiffe_id, id("spiffe://partner.net/client"));

    let partners = Authorizer::member_of(TrustDomain::new("partner.net").unwrap());
    let pair = handshake(&client, &api.server(partners)).unwrap();
    assert_eq!(pair.peer_ids().1, id("spiffe://partner.net/client"));
}

#[test]
fn svid_from_a_foreign_ca_claiming_our_trust_domain_is_refused() {
    let ours = World::new("example.org");
    let rogue = World::with_clock("example.org", ours.clock.clone());
    let api = ours.workload("api");
    let forged = rogue.workload("web");
    forged.source.set_bundle(ours.ca.current_bundle());

    let failure = handshake(
        &forged.client(Authorizer::any()),
        &api.server(Authorizer::any()),
    )
    .err()
    .expect("an SVID of a foreign CA was accepted");

    assert_eq!(
        failure.server_certificate_error(),
        &CertificateError::UnknownIssuer
    );
}

#[test]
fn handshake_fails_while_the_server_has_no_svid() {
    let world = World::new("example.org");
    let web = world.workload("web");
    let empty = Arc::new(MemorySource::new());
    empty.set_bundle(world.ca.current_bundle());
    let server = Arc::new(
        SpiffeTls::new(empty.clone())
            .server_config(Authorizer::any())
            .unwrap(),
    );

    let failure = handshake(&web.client(Authorizer::any()), &server)
        .err()
        .expect("a server without an SVID completed a handshake");
    assert!(failure.server.is_some(), "{failure:?}");

    // The same config works as soon as the source gets an SVID.
    let request = SvidRequest::new(id("spiffe://example.org/late"), SVID_TTL);
    empty
        .renew_from_ca(&world.ca, &request, KeyType::EcP256)
        .unwrap();
    let pair = handshake(&web.client(Authorizer::any()), &server).unwrap();
    assert_eq!(pair.peer_ids().0, id("spiffe://example.org/late"));
}

#[test]
fn renewal_and_ca_rotation_keep_long_lived_connections_and_reach_new_handshakes() {
    let world = World::new("example.org");
    let web = world.workload("web");
    let api = world.workload("api");
    let client = web.client(Authorizer::exact(api.spiffe_id.clone()));
    let server = api.server(Authorizer::exact(web.spiffe_id.clone()));
    let first_issuer = world.ca.x509_issuer().certificate().to_vec();

    let mut long_lived = handshake(&client, &server).unwrap();
    long_lived.exchange();
    let first_client_leaf = web.leaf();

    // Two days in half-hour steps: each workload renews at its SVID's half-life, and the CA
    // prepares, activates and drops authorities (24 h lifetime) on its schedule.
    let mut issuers = vec![first_issuer.clone()];
    for step in 1..=96 {
        world.advance(Duration::from_secs(1800));
        web.renew(&world);
        api.renew(&world);
        let issuer = world.ca.x509_issuer().certificate().to_vec();
        if issuers.last() != Some(&issuer) {
            issuers.push(issuer);
        }

        long_lived.exchange();
        let fresh = handshake(&client, &server)
            .unwrap_or_else(|f| panic!("new handshake failed at step {step}: {f:?}"));
        assert_eq!(
            fresh.server_leaf_seen_by_client(),
            api.leaf(),
            "step {step}"
        );
        assert_eq!(
            fresh.client_leaf_seen_by_server(),
            web.leaf(),
            "step {step}"
        );
    }

    assert!(
        issuers.len() >= 3,
        "expected at least two CA rotations in two days, saw {} issuers",
        issuers.len()
    );
    assert!(!world
        .ca
        .current_bundle()
        .x509_authorities()
        .iter()
        .any(|c| c.as_ref() == first_issuer.as_slice()));
    // The long-lived connection still carries the identity it was opened with.
    assert_eq!(long_lived.client_leaf_seen_by_server(), first_client_leaf);
    long_lived.exchange();
}

#[test]
fn old_and_new_authorities_are_both_trusted_during_a_rotation() {
    let world = World::new("example.org");
    let web = world.workload("web");
    let api = world.workload("api");
    let old_issuer = world.ca.x509_issuer();

    // Until the successor takes over, both renew from the old authority; the server's last
    // bundle refresh happens while the successor is only prepared.
    while world.x509_authorities(AuthorityState::Retired) == 0 {
        web.renew(&world);
        api.renew(&world);
        world.advance(Duration::from_secs(600));
    }
    let new_issuer = world.ca.x509_issuer();
    assert_ne!(old_issuer.certificate(), new_issuer.certificate());
    assert_eq!(world.ca.current_bundle().x509_authorities().len(), 2);

    // The client now holds an SVID of the new authority; the server still one of the old.
    web.renew(&world);
    let pair = handshake(
        &web.client(Authorizer::any()),
        &api.server(Authorizer::any()),
    )
    .unwrap();
    assert_eq!(pair.client_leaf_seen_by_server(), web.leaf());
    let pair = handshake(
        &api.client(Authorizer::any()),
        &web.server(Authorizer::any()),
    )
    .unwrap();
    assert_eq!(pair.server_leaf_seen_by_client(), web.leaf());

    // Once the old authority leaves the bundle, what it signs is no longer trusted.
    while world.ca.current_bundle().x509_authorities().len() > 1 {
        world.advance(Duration::from_secs(600));
    }
    api.renew(&world);
    let request = SvidRequest::new(id("spiffe://example.org/web"), Duration::from_secs(600));
    let stale = old_issuer
        .issue_with_new_key(&request, KeyType::EcP256, world.clock_now())
        .unwrap();
    web.source.set_svid(stale);
    let failure = handshake(
        &web.client(Authorizer::any()),
        &api.server(Authorizer::any()),
    )
    .err()
    .expect("an SVID of a dropped authority was accepted");
    assert_eq!(
        failure.server_certificate_error(),
        &CertificateError::UnknownIssuer
    );
}

impl World {
    fn clock_now(&self) -> SystemTime {
        use mesh_core::clock::Clock;
        self.clock.now()
    }
}
