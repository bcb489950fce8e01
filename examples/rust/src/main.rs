//! `greeter`: a gRPC Greeter server and client over mTLS on SPIFFE identities.
//!
//! ```text
//! greeter demo                                   # self-contained, in-process CA
//! greeter server --listen 127.0.0.1:50051 --allow spiffe://example.org/client
//! greeter client --connect 127.0.0.1:50051 --expect spiffe://example.org/server --name you
//! ```
//!
//! `server` and `client` take their SVIDs from the Workload API at `SPIFFE_ENDPOINT_SOCKET`
//! (or `--socket`), like any workload of the mesh.

use std::net::SocketAddr;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mesh_core::tls::{Authorizer, SpiffeTls};
use mesh_core::SpiffeId;
use mesh_example_rust::{connect, serve, watch_workload_api, Demo};
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(name = "greeter", about = "gRPC over mTLS on SPIFFE identities")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a server and a client in this process with SVIDs from an in-process CA.
    Demo,
    /// Serve the Greeter, letting in the clients named by --allow.
    Server {
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: SocketAddr,
        /// SPIFFE IDs allowed to call (repeatable).
        #[arg(long, required = true)]
        allow: Vec<SpiffeId>,
        /// Workload API address; defaults to SPIFFE_ENDPOINT_SOCKET.
        #[arg(long)]
        socket: Option<String>,
    },
    /// Call the Greeter once.
    Client {
        #[arg(long, default_value = "127.0.0.1:50051")]
        connect: SocketAddr,
        /// The SPIFFE ID the server must have.
        #[arg(long)]
        expect: SpiffeId,
        #[arg(long, default_value = "world")]
        name: String,
        /// Workload API address; defaults to SPIFFE_ENDPOINT_SOCKET.
        #[arg(long)]
        socket: Option<String>,
    },
}

fn endpoint(socket: Option<&str>) -> anyhow::Result<workload_api::Endpoint> {
    Ok(match socket {
        Some(s) => workload_api::Endpoint::parse(s)?,
        None => workload_api::Endpoint::from_env()?,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    match Cli::parse().command {
        Command::Demo => demo().await,
        Command::Server {
            listen,
            allow,
            socket,
        } => {
            let source = watch_workload_api(endpoint(socket.as_deref())?).await?;
            let listener = TcpListener::bind(listen).await?;
            println!("greeter listening on {listen} (mtls), allowing {allow:?}");
            let shutdown = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            serve(
                listener,
                &SpiffeTls::new(source),
                Authorizer::one_of(allow),
                shutdown,
            )
            .await
        }
        Command::Client {
            connect: addr,
            expect,
            name,
            socket,
        } => {
            let source = watch_workload_api(endpoint(socket.as_deref())?).await?;
            let mut client =
                connect(addr, &SpiffeTls::new(source), Authorizer::exact(expect)).await?;
            let reply = client
                .say_hello(mesh_example_rust::proto::HelloRequest { name })
                .await?
                .into_inner();
            println!("{} (server saw me as {})", reply.message, reply.client_id);
            Ok(())
        }
    }
}

async fn demo() -> anyhow::Result<()> {
    let demo = Demo::new()?;
    let server_id = SpiffeId::new("spiffe://example.org/greeter/server")?;
    let client_id = SpiffeId::new("spiffe://example.org/greeter/client")?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server_tls = SpiffeTls::new(demo.identity(&server_id)?);
    let allow = Authorizer::exact(client_id.clone());
    let server =
        tokio::spawn(
            async move { serve(listener, &server_tls, allow, std::future::pending()).await },
        );

    let client_tls = SpiffeTls::new(demo.identity(&client_id)?);
    let mut client = connect(addr, &client_tls, Authorizer::exact(server_id.clone())).await?;
    let reply = client
        .say_hello(mesh_example_rust::proto::HelloRequest {
            name: "demo".into(),
        })
        .await
        .context("call failed")?
        .into_inner();
    println!("{} (server saw me as {})", reply.message, reply.client_id);

    let stranger = SpiffeTls::new(demo.identity(&SpiffeId::new("spiffe://example.org/stranger")?)?);
    let refused = async {
        let mut c = connect(addr, &stranger, Authorizer::exact(server_id)).await?;
        c.say_hello(mesh_example_rust::proto::HelloRequest { name: "x".into() })
            .await?;
        anyhow::Ok(())
    };
    match refused.await {
        Ok(()) => anyhow::bail!("a client that is not allowed got an answer"),
        Err(error) => println!("spiffe://example.org/stranger was refused: {error:#}"),
    }
    server.abort();
    Ok(())
}
