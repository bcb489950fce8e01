//! An HTTPS server and client that authenticate each other with SPIFFE X509-SVIDs.
//!
//! Both take their SVID and trust bundles from the Workload API through
//! [`X509Source`](workload_api::source::X509Source) and build their rustls configs with
//! [`SpiffeTls`](mesh_core::tls::SpiffeTls): every handshake presents the SVID in force at that
//! moment and verifies the peer against its trust domain's bundle, then an
//! [`Authorizer`](mesh_core::tls::Authorizer) decides whether the peer's SPIFFE ID may talk.
//! Rotated SVIDs are picked up without a restart.
//!
//! The binaries follow the contract of the cross-language matrix (`tests/matrix/README.md`):
//! [`server`] answers `GET /` with both sides' SPIFFE IDs and certificate serials, and
//! [`client`] opens a new connection per call and prints one JSON line per call.

pub mod client;
pub mod server;

use std::time::Duration;

use mesh_core::tls::Authorizer;
use mesh_core::SpiffeId;
use rustls_pki_types::CertificateDer;

/// How long a binary waits for its first SVID before giving up.
pub const SVID_WAIT: Duration = Duration::from_secs(60);

/// Why a setting is unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingError {
    /// A required variable is unset or empty.
    #[error("environment variable `{0}` is not set")]
    Missing(String),
    /// An entry of a SPIFFE ID list is not a SPIFFE ID.
    #[error("`{value}` in `{name}` is not a spiffe id: {reason}")]
    BadId {
        /// The variable.
        name: String,
        /// The entry.
        value: String,
        /// Why it is not one.
        reason: String,
    },
    /// A number is not a number.
    #[error("`{value}` in `{name}` is not a number")]
    BadNumber {
        /// The variable.
        name: String,
        /// The value.
        value: String,
    },
}

/// Parses a comma-separated list of SPIFFE IDs (spaces and empty entries ignored).
///
/// # Errors
///
/// [`SettingError::Missing`] when the list holds no ID, [`SettingError::BadId`] naming the
/// first entry that is not a SPIFFE ID.
pub fn parse_ids(name: &str, value: &str) -> Result<Vec<SpiffeId>, SettingError> {
    let ids = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            SpiffeId::new(s).map_err(|e| SettingError::BadId {
                name: name.to_owned(),
                value: s.to_owned(),
                reason: e.to_string(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if ids.is_empty() {
        return Err(SettingError::Missing(name.to_owned()));
    }
    Ok(ids)
}

/// Reads the SPIFFE ID list in environment variable `name`.
///
/// # Errors
///
/// As [`parse_ids`]; [`SettingError::Missing`] when the variable is unset.
pub fn ids_from_env(name: &str) -> Result<Vec<SpiffeId>, SettingError> {
    let value = std::env::var(name).map_err(|_| SettingError::Missing(name.to_owned()))?;
    parse_ids(name, &value)
}

/// Reads a whole number from environment variable `name`, `default` when unset or empty.
///
/// # Errors
///
/// [`SettingError::BadNumber`] when it is set but not a number.
pub fn number_from_env(name: &str, default: u64) -> Result<u64, SettingError> {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => {
            value.trim().parse().map_err(|_| SettingError::BadNumber {
                name: name.to_owned(),
                value,
            })
        }
        _ => Ok(default),
    }
}

/// Reads a number of seconds (fractions allowed) from environment variable `name`, `default`
/// when unset or empty.
///
/// # Errors
///
/// [`SettingError::BadNumber`] when it is set but not a non-negative number.
pub fn seconds_from_env(name: &str, default: Duration) -> Result<Duration, SettingError> {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .ok_or(SettingError::BadNumber {
                name: name.to_owned(),
                value,
            }),
        _ => Ok(default),
    }
}

/// The rule for a list of allowed IDs: exactly that ID when there is one, any of them
/// otherwise.
pub fn authorizer_for(ids: &[SpiffeId]) -> Authorizer {
    match ids {
        [only] => Authorizer::exact(only.clone()),
        many => Authorizer::one_of(many.iter().cloned()),
    }
}

/// The serial number of a DER certificate in lowercase hexadecimal, without leading zeros;
/// `None` if it does not parse.
pub fn serial_hex(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(parsed.tbs_certificate.serial.to_str_radix(16))
}

/// Installs the tracing subscriber of the binaries: plain lines on stderr, `RUST_LOG` to tune.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_lists_ignore_spaces_and_empty_entries() {
        let ids = parse_ids("X", " spiffe://a.org/x, ,spiffe://a.org/y,").unwrap();
        let ids: Vec<_> = ids.iter().map(SpiffeId::as_str).collect();
        assert_eq!(ids, ["spiffe://a.org/x", "spiffe://a.org/y"]);
    }

    #[test]
    fn id_list_with_a_bad_entry_or_no_entry_is_refused() {
        let error = parse_ids("ALLOWED", "spiffe://a.org/x,https://a.org/y").unwrap_err();
        assert!(
            error.to_string().contains("`https://a.org/y` in `ALLOWED`"),
            "{error}"
        );
        assert!(matches!(
            parse_ids("ALLOWED", " , "),
            Err(SettingError::Missing(_))
        ));
    }

    #[test]
    fn one_allowed_id_means_exactly_that_id() {
        let a = SpiffeId::new("spiffe://a.org/a").unwrap();
        let b = SpiffeId::new("spiffe://a.org/b").unwrap();
        let one = authorizer_for(std::slice::from_ref(&a));
        assert!(one.allows(&a) && !one.allows(&b));
        assert!(one.to_string().starts_with("exactly"));
        let two = authorizer_for(&[a.clone(), b.clone()]);
        assert!(two.allows(&a) && two.allows(&b));
        assert!(!two.allows(&SpiffeId::new("spiffe://a.org/c").unwrap()));
    }
}
