//! The Greeter over mTLS with SVIDs from an in-process CA: the server sees the client's SPIFFE
//! ID; unlisted clients and unexpected servers are refused.

use mesh_core::tls::{Authorizer, SpiffeTls};
use mesh_core::SpiffeId;
use mesh_example_rust::proto::HelloRequest;
use mesh_example_rust::{connect, serve, Demo};
use tokio::net::TcpListener;

fn id(s: &str) -> SpiffeId {
    SpiffeId::new(s).unwrap()
}

async fn start_server(demo: &Demo, allow: Authorizer) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = SpiffeTls::new(demo.identity(&id("spiffe://example.org/server")).unwrap());
    tokio::spawn(async move { serve(listener, &tls, allow, std::future::pending()).await });
    addr
}

#[tokio::test]
async fn server_answers_with_the_client_spiffe_id() {
    let demo = Demo::new().unwrap();
    let addr = start_server(&demo, Authorizer::exact(id("spiffe://example.org/client"))).await;
    let tls = SpiffeTls::new(demo.identity(&id("spiffe://example.org/client")).unwrap());
    let mut client = connect(
        addr,
        &tls,
        Authorizer::exact(id("spiffe://example.org/server")),
    )
    .await
    .unwrap();
    let reply = client
        .say_hello(HelloRequest { name: "ana".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.message, "hello ana");
    assert_eq!(reply.client_id, "spiffe://example.org/client");
}

#[tokio::test]
async fn client_not_allowed_by_the_server_gets_no_answer() {
    let demo = Demo::new().unwrap();
    let addr = start_server(&demo, Authorizer::exact(id("spiffe://example.org/client"))).await;
    let tls = SpiffeTls::new(demo.identity(&id("spiffe://example.org/other")).unwrap());
    let result = async {
        let mut c = connect(addr, &tls, Authorizer::any()).await?;
        c.say_hello(HelloRequest { name: "x".into() }).await?;
        anyhow::Ok(())
    }
    .await;
    assert!(result.is_err(), "an unlisted client got an answer");
}

#[tokio::test]
async fn client_refuses_a_server_with_an_unexpected_id() {
    let demo = Demo::new().unwrap();
    let addr = start_server(&demo, Authorizer::any()).await;
    let tls = SpiffeTls::new(demo.identity(&id("spiffe://example.org/client")).unwrap());
    let err = connect(
        addr,
        &tls,
        Authorizer::exact(id("spiffe://example.org/billing")),
    )
    .await
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("spiffe://example.org/server"),
        "{err:#}"
    );
}
