//! Which verified peers may connect: a rule over the peer's SPIFFE ID.
//!
//! Authorization runs after the peer's chain has been verified against its trust domain's
//! bundle, so a rule only decides *who* may talk, never *whether the certificate is genuine*.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use crate::id::{SpiffeId, TrustDomain};

/// A peer was verified but the rule does not allow its SPIFFE ID.
#[derive(Debug, Clone, thiserror::Error)]
#[error("peer `{spiffe_id}` is not authorized by rule {rule}")]
pub struct AuthorizeError {
    /// The peer's SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// The rule that refused it, as [`Authorizer`]'s `Display` writes it.
    pub rule: String,
}

/// A rule deciding which peer SPIFFE IDs are allowed.
///
/// `Display` describes the rule; it is what a refused handshake logs.
#[derive(Clone)]
pub struct Authorizer(Rule);

#[derive(Clone)]
enum Rule {
    Any,
    MemberOf(TrustDomain),
    Exact(SpiffeId),
    OneOf(BTreeSet<SpiffeId>),
    Predicate {
        name: String,
        check: Arc<dyn Fn(&SpiffeId) -> bool + Send + Sync>,
    },
    Either(Vec<Authorizer>),
}

impl Authorizer {
    /// Allows any peer whose chain verifies against the bundle of its trust domain, in any
    /// trust domain the bundle set holds.
    pub fn any() -> Self {
        Self(Rule::Any)
    }

    /// Allows any workload of `trust_domain`.
    pub fn member_of(trust_domain: TrustDomain) -> Self {
        Self(Rule::MemberOf(trust_domain))
    }

    /// Allows exactly `id`.
    pub fn exact(id: SpiffeId) -> Self {
        Self(Rule::Exact(id))
    }

    /// Allows any of `ids`.
    pub fn one_of(ids: impl IntoIterator<Item = SpiffeId>) -> Self {
        Self(Rule::OneOf(ids.into_iter().collect()))
    }

    /// Allows the IDs for which `check` returns true; `name` describes the rule in logs.
    pub fn predicate(
        name: impl Into<String>,
        check: impl Fn(&SpiffeId) -> bool + Send + Sync + 'static,
    ) -> Self {
        Self(Rule::Predicate {
            name: name.into(),
            check: Arc::new(check),
        })
    }

    /// Allows an ID if any of `rules` allows it; no rules allow nothing.
    pub fn either(rules: impl IntoIterator<Item = Authorizer>) -> Self {
        Self(Rule::Either(rules.into_iter().collect()))
    }

    /// Whether the rule allows `id`.
    pub fn allows(&self, id: &SpiffeId) -> bool {
        match &self.0 {
            Rule::Any => true,
            Rule::MemberOf(td) => id.trust_domain() == td,
            Rule::Exact(expected) => id == expected,
            Rule::OneOf(set) => set.contains(id),
            Rule::Predicate { check, .. } => check(id),
            Rule::Either(rules) => rules.iter().any(|r| r.allows(id)),
        }
    }

    /// Checks `id` against the rule.
    ///
    /// # Errors
    ///
    /// [`AuthorizeError`] naming the ID and the rule when the rule does not allow it.
    pub fn authorize(&self, id: &SpiffeId) -> Result<(), AuthorizeError> {
        if self.allows(id) {
            Ok(())
        } else {
            Err(AuthorizeError {
                spiffe_id: id.clone(),
                rule: self.to_string(),
            })
        }
    }
}

impl fmt::Display for Authorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Rule::Any => f.write_str("any SPIFFE ID"),
            Rule::MemberOf(td) => write!(f, "member of trust domain `{td}`"),
            Rule::Exact(id) => write!(f, "exactly `{id}`"),
            Rule::OneOf(set) => {
                f.write_str("one of [")?;
                for (i, id) in set.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "`{id}`")?;
                }
                f.write_str("]")
            }
            Rule::Predicate { name, .. } => write!(f, "predicate `{name}`"),
            Rule::Either(rules) => {
                f.write_str("either (")?;
                for (i, rule) in rules.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" | ")?;
                    }
                    write!(f, "{rule}")?;
                }
                f.write_str(")")
            }
        }
    }
}

impl fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Authorizer({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::new(s).unwrap()
    }

    #[test]
    fn each_rule_allows_what_it_names_and_nothing_else() {
        let web = id("spiffe://example.org/web");
        let db = id("spiffe://example.org/db");
        let other = id("spiffe://other.org/web");

        assert!(Authorizer::any().allows(&other));

        let td = Authorizer::member_of(TrustDomain::new("example.org").unwrap());
        assert!(td.allows(&web) && td.allows(&db) && !td.allows(&other));

        let exact = Authorizer::exact(web.clone());
        assert!(exact.allows(&web) && !exact.allows(&db) && !exact.allows(&other));

        let set = Authorizer::one_of([web.clone(), other.clone()]);
        assert!(set.allows(&web) && set.allows(&other) && !set.allows(&db));

        let pred = Authorizer::predicate("path starts with /d", |i| i.path().starts_with("/d"));
        assert!(pred.allows(&db) && !pred.allows(&web));

        let either = Authorizer::either([exact, pred]);
        assert!(either.allows(&web) && either.allows(&db) && !either.allows(&other));
        assert!(!Authorizer::either([]).allows(&web));
    }

    #[test]
    fn refusal_names_the_peer_and_the_rule() {
        let rule = Authorizer::one_of([id("spiffe://example.org/a"), id("spiffe://example.org/b")]);
        let err = rule.authorize(&id("spiffe://example.org/c")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "peer `spiffe://example.org/c` is not authorized by rule \
             one of [`spiffe://example.org/a`, `spiffe://example.org/b`]"
        );
    }
}
