//! What the bench's clients look at: fetching on a fresh connection, the CA that signed an
//! SVID, and the agent's log.

use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

use anyhow::{bail, Context};
use workload_api::{ClientError, Endpoint, WorkloadApiClient, X509Context};
use x509_parser::extensions::ParsedExtension;

/// Message the CA logs when a new X.509 authority starts signing.
pub const ACTIVATED_MESSAGE: &str = "X.509 authority activated";

/// Connects to `endpoint` (a new connection with its own HTTP/2 handshake) and returns the
/// first `FetchX509SVID` message.
///
/// # Errors
///
/// When the connection or the call fails.
pub async fn fetch_fresh(endpoint: &Endpoint) -> Result<X509Context, ClientError> {
    let mut client = WorkloadApiClient::connect(endpoint).await?;
    client.fetch_x509_context().await
}

/// The authority key identifier of the leaf (first certificate) of the context's first SVID:
/// the key ID of the CA that signed it.
///
/// # Errors
///
/// When the context has no SVID, or the leaf does not parse or has no key identifier.
pub fn signer_key_id(context: &X509Context) -> anyhow::Result<Vec<u8>> {
    let svid = context
        .svids
        .first()
        .context("the response holds no SVID")?;
    leaf_authority_key_id(&svid.cert_chain)
}

fn leaf_authority_key_id(chain: &[u8]) -> anyhow::Result<Vec<u8>> {
    let (_, leaf) = x509_parser::parse_x509_certificate(chain)
        .map_err(|e| anyhow::anyhow!("the SVID's leaf certificate does not parse: {e}"))?;
    for extension in leaf.extensions() {
        if let ParsedExtension::AuthorityKeyIdentifier(aki) = extension.parsed_extension() {
            if let Some(id) = &aki.key_identifier {
                return Ok(id.0.to_vec());
            }
        }
    }
    bail!("the SVID's leaf certificate has no authority key identifier")
}

/// Tells whether an SVID was signed by a given CA, remembering the last chain it looked at:
/// every stream of one caller receives the same bytes, so the parse happens about once per
/// distinct SVID rather than once per stream.
#[derive(Debug)]
pub struct SignerCheck {
    old_key_id: Vec<u8>,
    last: Mutex<Option<(Vec<u8>, bool)>>,
}

impl SignerCheck {
    /// A check against the CA whose key ID is `old_key_id`.
    pub fn new(old_key_id: Vec<u8>) -> Self {
        Self {
            old_key_id,
            last: Mutex::new(None),
        }
    }

    /// Whether the context's first SVID was signed by a CA other than the old one.
    ///
    /// # Errors
    ///
    /// See [`signer_key_id`].
    pub fn is_new(&self, context: &X509Context) -> anyhow::Result<bool> {
        let chain = &context
            .svids
            .first()
            .context("the response holds no SVID")?
            .cert_chain;
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((seen, answer)) = last.as_ref() {
            if seen == chain {
                return Ok(*answer);
            }
        }
        let answer = leaf_authority_key_id(chain)? != self.old_key_id;
        *last = Some((chain.to_vec(), answer));
        Ok(answer)
    }
}

/// The wall-clock times at which the agent logged `message` (JSON log lines with a
/// top-level `timestamp` and `message`).
///
/// # Errors
///
/// When the log cannot be read or a matching line has no parsable timestamp.
pub fn logged_times(log: &Path, message: &str) -> anyhow::Result<Vec<SystemTime>> {
    let text =
        std::fs::read_to_string(log).with_context(|| format!("cannot read {}", log.display()))?;
    times_in(&text, message)
}

fn times_in(text: &str, message: &str) -> anyhow::Result<Vec<SystemTime>> {
    let mut times = Vec::new();
    for line in text.lines() {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if value.get("message").and_then(|m| m.as_str()) != Some(message) {
            continue;
        }
        let stamp = value
            .get("timestamp")
            .and_then(|t| t.as_str())
            .with_context(|| format!("log line without timestamp: {line}"))?;
        let parsed =
            time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339)
                .with_context(|| format!("log timestamp `{stamp}` is not RFC 3339"))?;
        times.push(SystemTime::from(parsed));
    }
    Ok(times)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

    use super::*;

    fn context_signed_by(ca_key: &KeyPair) -> (X509Context, Vec<u8>) {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_identifier_method = rcgen::KeyIdMethod::Sha256;
        let ca_cert = ca_params.self_signed(ca_key).unwrap();
        let issuer = rcgen::Issuer::from_params(&ca_params, ca_key);
        let mut leaf_params = CertificateParams::new(vec!["leaf.test".to_owned()]).unwrap();
        leaf_params.use_authority_key_identifier_extension = true;
        let leaf = leaf_params
            .signed_by(&KeyPair::generate().unwrap(), &issuer)
            .unwrap();
        let context = X509Context {
            svids: vec![workload_api::X509Svid {
                spiffe_id: "spiffe://bench.test/bench".to_owned(),
                cert_chain: leaf.der().to_vec().into(),
                private_key: Default::default(),
                bundle: ca_cert.der().to_vec().into(),
                hint: String::new(),
            }],
            federated_bundles: std::collections::BTreeMap::new(),
        };
        let (_, parsed_ca) = x509_parser::parse_x509_certificate(ca_cert.der()).unwrap();
        let ski = parsed_ca
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                _ => None,
            })
            .unwrap();
        (context, ski)
    }

    #[test]
    fn signer_key_id_is_the_ca_subject_key_id_and_a_new_ca_is_noticed() {
        let old_ca = KeyPair::generate().unwrap();
        let new_ca = KeyPair::generate().unwrap();
        let (old_context, old_ski) = context_signed_by(&old_ca);
        let (new_context, new_ski) = context_signed_by(&new_ca);
        assert_eq!(signer_key_id(&old_context).unwrap(), old_ski);
        assert_ne!(old_ski, new_ski);

        let check = SignerCheck::new(old_ski);
        assert!(!check.is_new(&old_context).unwrap());
        assert!(check.is_new(&new_context).unwrap());
        // Answered from the memo the second time; still right.
        assert!(check.is_new(&new_context).unwrap());
        assert!(!check.is_new(&old_context).unwrap());
    }

    #[test]
    fn activation_times_come_from_matching_json_lines_only() {
        let log = concat!(
            "{\"timestamp\":\"2025-01-02T03:04:05.250000Z\",\"level\":\"INFO\",\"message\":\"X.509 authority activated\",\"id\":2}\n",
            "{\"timestamp\":\"2025-01-02T03:04:06Z\",\"level\":\"INFO\",\"message\":\"X.509 authority prepared\"}\n",
            "not json\n",
        );
        let times = times_in(log, ACTIVATED_MESSAGE).unwrap();
        let expected = UNIX_EPOCH + Duration::from_millis(1_735_787_045_250);
        assert_eq!(times, vec![expected]);
        let bad = "{\"timestamp\":\"yesterday\",\"message\":\"X.509 authority activated\"}";
        assert!(times_in(bad, ACTIVATED_MESSAGE)
            .unwrap_err()
            .to_string()
            .contains("yesterday"));
    }
}
