//! A Workload API server on a Unix socket that hands every caller the same freshly generated
//! X509-SVID. For trying standard clients against this crate's server:
//!
//! ```text
//! cargo run -p workload-api --example static_agent -- /tmp/static-agent/api.sock
//! ```
//!
//! `RUST_LOG=workload_api=trace` shows each `:authority` the server had to replace.
//! It prints `ready` on stdout once the socket accepts connections, and the pid and uid of each
//! caller on stderr. JWT calls answer `Unavailable`; this is a test tool,
//! not an agent.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc};

use futures::StreamExt;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use workload_api::{
    server::bind_unix, Caller, JwtBundles, JwtSvid, Provider, ProviderError, ProviderStream,
    ValidatedJwt, WorkloadApiServer, X509Bundles, X509Context, X509Svid,
};

const TRUST_DOMAIN: &str = "spiffe://example.org";
const WORKLOAD_ID: &str = "spiffe://example.org/workload";

struct StaticProvider {
    svid: X509Svid,
}

#[tonic::async_trait]
impl Provider for StaticProvider {
    async fn watch_x509_context(
        &self,
        caller: &Caller,
    ) -> Result<ProviderStream<X509Context>, ProviderError> {
        eprintln!("FetchX509SVID pid={} uid={}", caller.pid(), caller.uid());
        let context = X509Context {
            svids: vec![self.svid.clone()],
            federated_bundles: BTreeMap::new(),
        };
        Ok(futures::stream::iter([Ok(context)])
            .chain(futures::stream::pending())
            .boxed())
    }

    async fn watch_x509_bundles(
        &self,
        caller: &Caller,
    ) -> Result<ProviderStream<X509Bundles>, ProviderError> {
        eprintln!("FetchX509Bundles pid={} uid={}", caller.pid(), caller.uid());
        let bundles = X509Bundles {
            bundles: BTreeMap::from([(TRUST_DOMAIN.to_owned(), self.svid.bundle.clone())]),
        };
        Ok(futures::stream::iter([Ok(bundles)])
            .chain(futures::stream::pending())
            .boxed())
    }

    async fn watch_jwt_bundles(
        &self,
        _caller: &Caller,
    ) -> Result<ProviderStream<JwtBundles>, ProviderError> {
        Err(ProviderError::Unavailable("no jwt support".to_owned()))
    }

    async fn fetch_jwt_svids(
        &self,
        _caller: &Caller,
        _audience: Vec<String>,
        _spiffe_id: Option<String>,
    ) -> Result<Vec<JwtSvid>, ProviderError> {
        Err(ProviderError::Unavailable("no jwt support".to_owned()))
    }

    async fn validate_jwt_svid(
        &self,
        _caller: &Caller,
        _audience: &str,
        _token: &str,
    ) -> Result<ValidatedJwt, ProviderError> {
        Err(ProviderError::Unavailable("no jwt support".to_owned()))
    }
}

fn make_svid() -> Result<X509Svid, rcgen::Error> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "static agent test ca");
    ca_params
        .subject_alt_names
        .push(SanType::URI(TRUST_DOMAIN.try_into()?));
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf_key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(Vec::<String>::new())?;
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    leaf.subject_alt_names
        .push(SanType::URI(WORKLOAD_ID.try_into()?));
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;

    Ok(X509Svid {
        spiffe_id: WORKLOAD_ID.to_owned(),
        cert_chain: leaf_cert.der().to_vec().into(),
        private_key: leaf_key.serialize_der().into(),
        bundle: ca_cert.der().to_vec().into(),
        hint: String::new(),
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let path: PathBuf = std::env::args_os()
        .nth(1)
        .ok_or("usage: static_agent SOCKET_PATH")?
        .into();
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let provider = Arc::new(StaticProvider { svid: make_svid()? });
    let listener = bind_unix(&path)?;
    println!("ready");
    WorkloadApiServer::new(provider)
        .serve(listener, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    std::fs::remove_file(&path)?;
    Ok(())
}
