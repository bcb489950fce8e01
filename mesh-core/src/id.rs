//! SPIFFE identifiers: [`TrustDomain`] and [`SpiffeId`].
//!
//! Implements the SPIFFE ID standard (`standards/SPIFFE-ID.md`): the `spiffe` scheme, a
//! lowercase trust domain of at most 255 bytes, a path of non-empty segments drawn from
//! `[a-zA-Z0-9.-_]` without `.` or `..`, no query, fragment, user info or port, and a whole ID
//! of at most 2048 bytes. Values are checked once, when parsed; a value of these types is
//! always valid.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The URI scheme of every SPIFFE ID, with its separator.
const SCHEME_PREFIX: &str = "spiffe://";

/// Longest trust domain name the standard allows, in bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Longest SPIFFE ID, in bytes, that must be supported.
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

/// Why a string is not a valid trust domain or SPIFFE ID.
///
/// Every variant carries the offending input so that the message alone tells a user what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The input is empty.
    #[error("empty SPIFFE ID or trust domain")]
    Empty,
    /// The input does not start with `spiffe://`.
    #[error("`{0}` does not start with the scheme `spiffe://`")]
    WrongScheme(String),
    /// The trust domain part is empty.
    #[error("`{0}` has an empty trust domain")]
    EmptyTrustDomain(String),
    /// The trust domain contains a character outside `[a-z0-9.-_]`.
    #[error("trust domain of `{input}` has character {ch:?}; only lowercase letters, digits, `.`, `-` and `_` are allowed")]
    BadTrustDomainChar {
        /// The whole input.
        input: String,
        /// The first offending character.
        ch: char,
    },
    /// The trust domain carries a port, e.g. `example.org:8080`.
    #[error("`{0}` has a port; a SPIFFE ID must not")]
    Port(String),
    /// The trust domain carries user info, e.g. `user@example.org`.
    #[error("`{0}` has user info; a SPIFFE ID must not")]
    UserInfo(String),
    /// The trust domain is longer than 255 bytes.
    #[error("trust domain of `{input}` is {len} bytes long; at most 255 are allowed")]
    TrustDomainTooLong {
        /// The whole input.
        input: String,
        /// Length of the trust domain in bytes.
        len: usize,
    },
    /// The ID has a query (`?`).
    #[error("`{0}` has a query; a SPIFFE ID must not")]
    Query(String),
    /// The ID has a fragment (`#`).
    #[error("`{0}` has a fragment; a SPIFFE ID must not")]
    Fragment(String),
    /// The ID contains a percent-encoded character.
    #[error("`{0}` is percent-encoded; a SPIFFE ID must not be")]
    PercentEncoded(String),
    /// A path given to [`TrustDomain::workload_id`] does not start with `/`.
    #[error("path of `{0}` must start with `/`")]
    BadPathStart(String),
    /// The path has an empty segment (`//` or a leading `/` with nothing after it).
    #[error("`{0}` has an empty path segment")]
    EmptySegment(String),
    /// The path has a `.` or `..` segment.
    #[error("`{0}` has a `.` or `..` path segment")]
    DotSegment(String),
    /// The path ends with `/`.
    #[error("`{0}` ends with `/`")]
    TrailingSlash(String),
    /// The path contains a character outside `[a-zA-Z0-9.-_]`.
    #[error("path of `{input}` has character {ch:?}; only letters, digits, `.`, `-` and `_` are allowed")]
    BadPathChar {
        /// The whole input.
        input: String,
        /// The first offending character.
        ch: char,
    },
    /// The whole ID is longer than 2048 bytes.
    #[error("SPIFFE ID is {0} bytes long; at most 2048 are allowed")]
    TooLong(usize),
}

/// A SPIFFE trust domain name such as `example.org`.
///
/// See the SPIFFE ID standard, section 2.1 (Trust Domain).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a trust domain name, either bare (`example.org`) or as the ID of the trust domain
    /// itself (`spiffe://example.org`).
    ///
    /// # Errors
    ///
    /// Returns the [`IdError`] that names the first rule the input breaks.
    pub fn new(input: &str) -> Result<Self, IdError> {
        if input.is_empty() {
            return Err(IdError::Empty);
        }
        if input.contains("://") {
            let id = SpiffeId::parse_any(input)?;
            if !id.path().is_empty() {
                return Err(IdError::BadTrustDomainChar {
                    input: input.to_owned(),
                    ch: '/',
                });
            }
            return Ok(id.trust_domain().clone());
        }
        check_trust_domain(input, input)?;
        Ok(Self(input.to_owned()))
    }

    /// The bare name, e.g. `example.org`.
    pub fn name(&self) -> &str {
        &self.0
    }

    /// The SPIFFE ID of the trust domain itself, e.g. `spiffe://example.org`.
    pub fn id_string(&self) -> String {
        format!("{SCHEME_PREFIX}{}", self.0)
    }

    /// The SPIFFE ID of the trust domain itself, as a [`SpiffeId`] with an empty path.
    pub fn to_spiffe_id(&self) -> SpiffeId {
        SpiffeId {
            uri: self.id_string(),
            trust_domain: self.clone(),
        }
    }

    /// A workload ID in this trust domain with the given path (which must start with `/`).
    ///
    /// # Errors
    ///
    /// Returns an [`IdError`] if the path breaks a rule of the standard.
    pub fn workload_id(&self, path: &str) -> Result<SpiffeId, IdError> {
        let id = format!("{SCHEME_PREFIX}{}{path}", self.0);
        if !path.starts_with('/') {
            // Without the slash the path would silently extend the trust domain name.
            return Err(IdError::BadPathStart(id));
        }
        SpiffeId::new(&id)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A SPIFFE ID such as `spiffe://example.org/billing/api`.
///
/// See the SPIFFE ID standard, section 2. A workload's ID has a non-empty path; the ID of a
/// trust domain (used in CA certificates) has none. [`SpiffeId::new`] accepts both; use
/// [`SpiffeId::is_workload`] where only the first is allowed.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    uri: String,
    trust_domain: TrustDomain,
}

impl SpiffeId {
    /// Parses a SPIFFE ID.
    ///
    /// # Errors
    ///
    /// Returns the [`IdError`] that names the first rule the input breaks.
    pub fn new(input: &str) -> Result<Self, IdError> {
        Self::parse_any(input)
    }

    fn parse_any(input: &str) -> Result<Self, IdError> {
        if input.is_empty() {
            return Err(IdError::Empty);
        }
        if input.len() > MAX_SPIFFE_ID_LEN {
            return Err(IdError::TooLong(input.len()));
        }
        let rest = input
            .strip_prefix(SCHEME_PREFIX)
            .ok_or_else(|| IdError::WrongScheme(input.to_owned()))?;
        if rest.contains('?') {
            return Err(IdError::Query(input.to_owned()));
        }
        if rest.contains('#') {
            return Err(IdError::Fragment(input.to_owned()));
        }
        if rest.contains('%') {
            return Err(IdError::PercentEncoded(input.to_owned()));
        }

        let (domain, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        check_trust_domain(domain, input)?;
        check_path(path, input)?;

        Ok(Self {
            uri: input.to_owned(),
            trust_domain: TrustDomain(domain.to_owned()),
        })
    }

    /// The trust domain this ID belongs to.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The path, e.g. `/billing/api`; empty for the ID of a trust domain.
    pub fn path(&self) -> &str {
        &self.uri[SCHEME_PREFIX.len() + self.trust_domain.0.len()..]
    }

    /// Whether this ID names a workload (has a path) rather than a trust domain.
    pub fn is_workload(&self) -> bool {
        !self.path().is_empty()
    }

    /// The whole ID as a string.
    pub fn as_str(&self) -> &str {
        &self.uri
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.uri)
    }
}

impl FromStr for SpiffeId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl AsRef<str> for SpiffeId {
    fn as_ref(&self) -> &str {
        &self.uri
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.uri)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for TrustDomain {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TrustDomain {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

fn check_trust_domain(domain: &str, input: &str) -> Result<(), IdError> {
    if domain.is_empty() {
        return Err(IdError::EmptyTrustDomain(input.to_owned()));
    }
    if domain.contains('@') {
        return Err(IdError::UserInfo(input.to_owned()));
    }
    if domain.contains(':') {
        return Err(IdError::Port(input.to_owned()));
    }
    if let Some(ch) = domain.chars().find(|c| !is_trust_domain_char(*c)) {
        return Err(IdError::BadTrustDomainChar {
            input: input.to_owned(),
            ch,
        });
    }
    if domain.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(IdError::TrustDomainTooLong {
            input: input.to_owned(),
            len: domain.len(),
        });
    }
    Ok(())
}

fn check_path(path: &str, input: &str) -> Result<(), IdError> {
    if path.is_empty() {
        return Ok(());
    }
    if path.ends_with('/') && path.len() > 1 && !path.ends_with("//") {
        return Err(IdError::TrailingSlash(input.to_owned()));
    }
    // `path` starts with '/', so the first split element is always empty and skipped.
    for segment in path.split('/').skip(1) {
        if segment.is_empty() {
            return Err(IdError::EmptySegment(input.to_owned()));
        }
        if segment == "." || segment == ".." {
            return Err(IdError::DotSegment(input.to_owned()));
        }
        if let Some(ch) = segment.chars().find(|c| !is_path_char(*c)) {
            return Err(IdError::BadPathChar {
                input: input.to_owned(),
                ch,
            });
        }
    }
    Ok(())
}

fn is_trust_domain_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids_parse_and_round_trip() {
        for s in [
            "spiffe://example.org",
            "spiffe://example.org/billing/api",
            "spiffe://a-b_c.9/A.b-C_9/x",
            "spiffe://td/...",
            "spiffe://td/.a",
            "spiffe://td/a..",
        ] {
            let id = SpiffeId::new(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(id.as_str(), s);
            assert_eq!(id.to_string(), s);
        }
    }

    #[test]
    fn parts_are_split_correctly() {
        let id = SpiffeId::new("spiffe://example.org/ns/prod/sa/web").unwrap();
        assert_eq!(id.trust_domain().name(), "example.org");
        assert_eq!(id.path(), "/ns/prod/sa/web");
        assert!(id.is_workload());
        let td = SpiffeId::new("spiffe://example.org").unwrap();
        assert_eq!(td.path(), "");
        assert!(!td.is_workload());
    }

    #[test]
    fn each_rule_is_enforced_with_its_own_error() {
        use IdError as E;
        type Check = fn(&IdError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |e| matches!(e, E::Empty)),
            ("http://example.org/a", |e| matches!(e, E::WrongScheme(_))),
            ("SPIFFE://example.org/a", |e| matches!(e, E::WrongScheme(_))),
            ("spiffe:/example.org/a", |e| matches!(e, E::WrongScheme(_))),
            ("spiffe:///a", |e| matches!(e, E::EmptyTrustDomain(_))),
            ("spiffe://", |e| matches!(e, E::EmptyTrustDomain(_))),
            ("spiffe://Example.org/a", |e| {
                matches!(e, E::BadTrustDomainChar { ch: 'E', .. })
            }),
            ("spiffe://exa mple.org/a", |e| {
                matches!(e, E::BadTrustDomainChar { ch: ' ', .. })
            }),
            ("spiffe://example.org:8080/a", |e| matches!(e, E::Port(_))),
            ("spiffe://user@example.org/a", |e| {
                matches!(e, E::UserInfo(_))
            }),
            ("spiffe://example.org/a?x=1", |e| matches!(e, E::Query(_))),
            ("spiffe://example.org/a#frag", |e| {
                matches!(e, E::Fragment(_))
            }),
            ("spiffe://example.org/a%20b", |e| {
                matches!(e, E::PercentEncoded(_))
            }),
            ("spiffe://example.org/", |e| matches!(e, E::EmptySegment(_))),
            ("spiffe://example.org//a", |e| {
                matches!(e, E::EmptySegment(_))
            }),
            ("spiffe://example.org/a//b", |e| {
                matches!(e, E::EmptySegment(_))
            }),
            ("spiffe://example.org/a/", |e| {
                matches!(e, E::TrailingSlash(_))
            }),
            ("spiffe://example.org/.", |e| matches!(e, E::DotSegment(_))),
            ("spiffe://example.org/a/..", |e| {
                matches!(e, E::DotSegment(_))
            }),
            ("spiffe://example.org/a/./b", |e| {
                matches!(e, E::DotSegment(_))
            }),
            ("spiffe://example.org/a*b", |e| {
                matches!(e, E::BadPathChar { ch: '*', .. })
            }),
            ("spiffe://example.org/é", |e| {
                matches!(e, E::BadPathChar { ch: 'é', .. })
            }),
        ];
        for (input, check) in cases {
            let err = SpiffeId::new(input).expect_err(input);
            assert!(check(&err), "{input}: unexpected error {err:?}");
        }
    }

    #[test]
    fn errors_name_the_offending_input() {
        let err = SpiffeId::new("spiffe://Foo.org/a").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("spiffe://Foo.org/a"), "{msg}");
        assert!(msg.contains('F'), "{msg}");
    }

    #[test]
    fn trust_domain_length_limit_is_255_bytes() {
        let ok = "a".repeat(255);
        assert!(TrustDomain::new(&ok).is_ok());
        assert!(SpiffeId::new(&format!("spiffe://{ok}/x")).is_ok());
        let long = "a".repeat(256);
        assert!(matches!(
            TrustDomain::new(&long),
            Err(IdError::TrustDomainTooLong { len: 256, .. })
        ));
        assert!(matches!(
            SpiffeId::new(&format!("spiffe://{long}/x")),
            Err(IdError::TrustDomainTooLong { .. })
        ));
    }

    #[test]
    fn id_length_limit_is_2048_bytes() {
        let prefix = "spiffe://example.org/";
        let ok = format!("{prefix}{}", "a".repeat(2048 - prefix.len()));
        assert_eq!(ok.len(), 2048);
        assert!(SpiffeId::new(&ok).is_ok());
        let long = format!("{ok}a");
        assert_eq!(SpiffeId::new(&long), Err(IdError::TooLong(2049)));
    }

    #[test]
    fn trust_domain_accepts_bare_name_and_id_form() {
        assert_eq!(
            TrustDomain::new("example.org").unwrap().name(),
            "example.org"
        );
        assert_eq!(
            TrustDomain::new("spiffe://example.org").unwrap().name(),
            "example.org"
        );
        assert!(TrustDomain::new("spiffe://example.org/a").is_err());
        assert!(TrustDomain::new("Example.org").is_err());
        assert!(TrustDomain::new("").is_err());
        assert!(TrustDomain::new("example.org:443").is_err());
    }

    #[test]
    fn workload_id_builds_in_trust_domain() {
        let td = TrustDomain::new("example.org").unwrap();
        let id = td.workload_id("/ns/default/sa/web").unwrap();
        assert_eq!(id.as_str(), "spiffe://example.org/ns/default/sa/web");
        assert!(td.workload_id("/bad/").is_err());
        assert!(matches!(
            td.workload_id("web"),
            Err(IdError::BadPathStart(_))
        ));
        assert!(td.workload_id("").is_err());
        assert_eq!(td.to_spiffe_id().as_str(), "spiffe://example.org");
    }

    #[test]
    fn path_is_case_sensitive() {
        let a = SpiffeId::new("spiffe://example.org/API").unwrap();
        let b = SpiffeId::new("spiffe://example.org/api").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn serde_round_trip_validates() {
        let id: SpiffeId = serde_json::from_str("\"spiffe://example.org/a\"").unwrap();
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            "\"spiffe://example.org/a\""
        );
        assert!(serde_json::from_str::<SpiffeId>("\"spiffe://Bad/a\"").is_err());
    }

    proptest::proptest! {
        #[test]
        fn parser_never_panics(s in ".{0,300}") {
            let _ = SpiffeId::new(&s);
            let _ = TrustDomain::new(&s);
        }

        #[test]
        fn parser_never_panics_on_spiffe_prefixed(s in "spiffe://[ -~]{0,300}") {
            if let Ok(id) = SpiffeId::new(&s) {
                proptest::prop_assert_eq!(id.as_str(), s.as_str());
                proptest::prop_assert!(id.trust_domain().name().len() <= 255);
            }
        }
    }
}
