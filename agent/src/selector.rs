//! Selectors: the attested facts about a workload, such as `unix:uid:1000`.
//!
//! A selector is written `TYPE:KIND:VALUE`. The type names the attestor that produces it
//! (`unix`, `k8s`), the kind names the property, and the value is everything after the second
//! colon (so it may itself contain colons, as in `k8s:pod-label:app:web`). Only known types and
//! kinds parse, so a typo in a registration entry is an error rather than an entry that never
//! matches.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A set of selectors, ordered so that it displays and compares deterministically.
///
/// Kept as a sorted vector: sets hold a handful of selectors, and every registration entry and
/// open stream holds one, where a B-tree's node (room for eleven) would cost several times the
/// selectors it holds.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SelectorSet(Vec<Selector>);

impl SelectorSet {
    /// An empty set.
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Adds `selector`; false if it was already present.
    pub fn insert(&mut self, selector: Selector) -> bool {
        match self.0.binary_search(&selector) {
            Ok(_) => false,
            Err(at) => {
                self.0.insert(at, selector);
                true
            }
        }
    }

    /// Removes `selector`; false if it was not present.
    pub fn remove(&mut self, selector: &Selector) -> bool {
        match self.0.binary_search(selector) {
            Ok(at) => {
                self.0.remove(at);
                true
            }
            Err(_) => false,
        }
    }

    /// Whether `selector` is in the set.
    pub fn contains(&self, selector: &Selector) -> bool {
        self.0.binary_search(selector).is_ok()
    }

    /// Whether every selector of `self` is in `other`.
    pub fn is_subset(&self, other: &SelectorSet) -> bool {
        if self.0.len() > other.0.len() {
            return false;
        }
        let mut theirs = other.0.iter();
        self.0
            .iter()
            .all(|mine| theirs.by_ref().any(|candidate| candidate == mine))
    }

    /// The selectors of `self` that `other` lacks, in order.
    pub fn difference<'a>(&'a self, other: &'a SelectorSet) -> impl Iterator<Item = &'a Selector> {
        self.0.iter().filter(move |s| !other.contains(s))
    }

    /// The selectors in order.
    pub fn iter(&self) -> std::slice::Iter<'_, Selector> {
        self.0.iter()
    }

    /// How many selectors the set holds.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Gives back the spare capacity of a set that is complete and will be kept.
    pub fn shrink_to_fit(&mut self) {
        self.0.shrink_to_fit();
    }
}

impl fmt::Debug for SelectorSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(&self.0).finish()
    }
}

impl FromIterator<Selector> for SelectorSet {
    fn from_iter<I: IntoIterator<Item = Selector>>(iter: I) -> Self {
        let mut selectors: Vec<Selector> = iter.into_iter().collect();
        selectors.sort_unstable();
        selectors.dedup();
        selectors.shrink_to_fit();
        Self(selectors)
    }
}

impl Extend<Selector> for SelectorSet {
    fn extend<I: IntoIterator<Item = Selector>>(&mut self, iter: I) {
        for selector in iter {
            self.insert(selector);
        }
    }
}

impl<const N: usize> From<[Selector; N]> for SelectorSet {
    fn from(selectors: [Selector; N]) -> Self {
        selectors.into_iter().collect()
    }
}

impl IntoIterator for SelectorSet {
    type Item = Selector;
    type IntoIter = std::vec::IntoIter<Selector>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a SelectorSet {
    type Item = &'a Selector;
    type IntoIter = std::slice::Iter<'a, Selector>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl Serialize for SelectorSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(&self.0)
    }
}

/// The property a selector describes, with the attestor type it belongs to.
///
/// The Kubernetes kinds are produced by [`KubernetesAttestor`](crate::k8s::KubernetesAttestor)
/// for callers in a pod container, when the agent has a `[kubernetes]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum SelectorKind {
    /// `unix:uid:N`: the caller's effective user ID.
    UnixUid,
    /// `unix:gid:N`: the caller's primary or one of its supplementary group IDs.
    UnixGid,
    /// `unix:user:NAME`: the name of the caller's user.
    UnixUser,
    /// `unix:group:NAME`: the name of one of the caller's groups.
    UnixGroup,
    /// `unix:path:/abs/exe`: the absolute path of the caller's executable.
    UnixPath,
    /// `unix:sha256:HEX`: the SHA-256 digest of the caller's executable, lowercase hex.
    UnixSha256,
    /// `k8s:ns:NAME`: the pod's namespace.
    K8sNamespace,
    /// `k8s:sa:NAME`: the pod's service account.
    K8sServiceAccount,
    /// `k8s:pod-label:KEY:VALUE`: one label of the pod.
    K8sPodLabel,
    /// `k8s:container-name:NAME`: the name of the caller's container in the pod.
    K8sContainerName,
}

impl SelectorKind {
    /// Every kind, in display order.
    pub const ALL: [SelectorKind; 10] = [
        SelectorKind::UnixUid,
        SelectorKind::UnixGid,
        SelectorKind::UnixUser,
        SelectorKind::UnixGroup,
        SelectorKind::UnixPath,
        SelectorKind::UnixSha256,
        SelectorKind::K8sNamespace,
        SelectorKind::K8sServiceAccount,
        SelectorKind::K8sPodLabel,
        SelectorKind::K8sContainerName,
    ];

    /// The attestor type, e.g. `unix`.
    pub fn attestor(self) -> &'static str {
        match self {
            Self::UnixUid
            | Self::UnixGid
            | Self::UnixUser
            | Self::UnixGroup
            | Self::UnixPath
            | Self::UnixSha256 => "unix",
            Self::K8sNamespace
            | Self::K8sServiceAccount
            | Self::K8sPodLabel
            | Self::K8sContainerName => "k8s",
        }
    }

    /// The kind's name within its type, e.g. `uid`.
    pub fn name(self) -> &'static str {
        match self {
            Self::UnixUid => "uid",
            Self::UnixGid => "gid",
            Self::UnixUser => "user",
            Self::UnixGroup => "group",
            Self::UnixPath => "path",
            Self::UnixSha256 => "sha256",
            Self::K8sNamespace => "ns",
            Self::K8sServiceAccount => "sa",
            Self::K8sPodLabel => "pod-label",
            Self::K8sContainerName => "container-name",
        }
    }

    /// Whether a caller has at most one selector of this kind.
    ///
    /// A process has one uid, one executable and (on Kubernetes) one namespace, service account
    /// and container, but many groups. Pod labels are single-valued per key, which
    /// [`Selector::exclusive_key`] accounts for.
    pub fn is_single_valued(self) -> bool {
        !matches!(self, Self::UnixGid | Self::UnixGroup)
    }

    fn lookup(attestor: &str, name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.attestor() == attestor && k.name() == name)
    }
}

impl fmt::Display for SelectorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.attestor(), self.name())
    }
}

/// One attested property of a workload, e.g. `unix:uid:1000`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    kind: SelectorKind,
    value: String,
}

/// Why a string is not a valid selector.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SelectorError {
    /// The string is not of the form `TYPE:KIND:VALUE`.
    #[error("selector `{0}` is not of the form TYPE:KIND:VALUE, e.g. `unix:uid:1000`")]
    Malformed(String),
    /// The type is not one this agent knows.
    #[error("selector `{input}` has unknown type `{attestor}`; known types are `unix` and `k8s`")]
    UnknownType {
        /// The whole selector.
        input: String,
        /// The unknown type.
        attestor: String,
    },
    /// The kind is not one the type has.
    #[error("selector `{input}` has unknown kind `{kind}`; known {attestor} kinds are {known}")]
    UnknownKind {
        /// The whole selector.
        input: String,
        /// The selector type.
        attestor: String,
        /// The unknown kind.
        kind: String,
        /// The known kinds of this type, comma separated.
        known: String,
    },
    /// The value is empty.
    #[error("selector `{0}` has an empty value")]
    EmptyValue(String),
    /// The value has whitespace or a control character.
    #[error("selector `{0}` has whitespace or a control character in its value")]
    BadCharacter(String),
    /// The value does not fit the kind.
    #[error("selector `{input}`: {reason}")]
    BadValue {
        /// The whole selector.
        input: String,
        /// What the kind requires.
        reason: &'static str,
    },
}

impl Selector {
    /// A selector of `kind` with `value`, checked as [`Selector::from_str`] would.
    ///
    /// # Errors
    ///
    /// Returns a [`SelectorError`] if the value does not fit the kind.
    pub fn new(kind: SelectorKind, value: &str) -> Result<Self, SelectorError> {
        let input = || format!("{kind}:{value}");
        if value.is_empty() {
            return Err(SelectorError::EmptyValue(input()));
        }
        if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(SelectorError::BadCharacter(input()));
        }
        let bad = |reason| SelectorError::BadValue {
            input: input(),
            reason,
        };
        let value = match kind {
            SelectorKind::UnixUid | SelectorKind::UnixGid => {
                let n: u32 = value
                    .parse()
                    .map_err(|_| bad("the value must be a decimal number below 2^32"))?;
                // Canonical form, so that `unix:uid:01000` and `unix:uid:1000` are one selector.
                n.to_string()
            }
            SelectorKind::UnixPath => {
                if !value.starts_with('/') {
                    return Err(bad("the path must be absolute"));
                }
                value.to_owned()
            }
            SelectorKind::UnixSha256 => {
                if value.len() != 64 || !value.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(bad("the value must be 64 hexadecimal digits"));
                }
                value.to_ascii_lowercase()
            }
            SelectorKind::K8sPodLabel => match value.split_once(':') {
                Some((key, _)) if !key.is_empty() => value.to_owned(),
                _ => return Err(bad("the value must be KEY:VALUE with a non-empty key")),
            },
            SelectorKind::UnixUser
            | SelectorKind::UnixGroup
            | SelectorKind::K8sNamespace
            | SelectorKind::K8sServiceAccount
            | SelectorKind::K8sContainerName => value.to_owned(),
        };
        Ok(Self { kind, value })
    }

    /// `unix:uid:N`.
    pub fn uid(uid: u32) -> Self {
        Self {
            kind: SelectorKind::UnixUid,
            value: uid.to_string(),
        }
    }

    /// `unix:gid:N`.
    pub fn gid(gid: u32) -> Self {
        Self {
            kind: SelectorKind::UnixGid,
            value: gid.to_string(),
        }
    }

    /// The kind, e.g. [`SelectorKind::UnixUid`].
    pub fn kind(&self) -> SelectorKind {
        self.kind
    }

    /// The value, e.g. `1000`.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// For a selector of which a caller can have only one, the key that must not differ
    /// between two selectors both held by one caller: the kind, plus the label key for pod
    /// labels. `None` for kinds a caller can have many of (groups).
    pub fn exclusive_key(&self) -> Option<(SelectorKind, &str)> {
        match self.kind {
            SelectorKind::K8sPodLabel => {
                let key = self.value.split_once(':').map_or("", |(k, _)| k);
                Some((self.kind, key))
            }
            k if k.is_single_valued() => Some((k, "")),
            _ => None,
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.splitn(3, ':');
        let (Some(attestor), Some(kind), Some(value)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(SelectorError::Malformed(s.to_owned()));
        };
        if !SelectorKind::ALL.iter().any(|k| k.attestor() == attestor) {
            return Err(SelectorError::UnknownType {
                input: s.to_owned(),
                attestor: attestor.to_owned(),
            });
        }
        let Some(kind) = SelectorKind::lookup(attestor, kind) else {
            let known = SelectorKind::ALL
                .iter()
                .filter(|k| k.attestor() == attestor)
                .map(|k| format!("`{}`", k.name()))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(SelectorError::UnknownKind {
                input: s.to_owned(),
                attestor: attestor.to_owned(),
                kind: kind.to_owned(),
                known,
            });
        };
        Self::new(kind, value)
    }
}

impl Serialize for Selector {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(list: &[&str]) -> SelectorSet {
        list.iter()
            .map(|s| s.parse::<Selector>().unwrap())
            .collect()
    }

    #[test]
    fn selector_sets_stay_sorted_without_duplicates() {
        let mut s = set(&["unix:uid:2", "unix:gid:1", "unix:uid:2"]);
        assert_eq!(s.len(), 2);
        assert!(s.insert("unix:group:staff".parse().unwrap()));
        assert!(!s.insert("unix:gid:1".parse().unwrap()));
        let shown: Vec<String> = s.iter().map(ToString::to_string).collect();
        let mut sorted = shown.clone();
        sorted.sort();
        assert_eq!(shown.len(), 3);
        assert_eq!(s, set(&["unix:group:staff", "unix:uid:2", "unix:gid:1"]));
        assert!(s.contains(&"unix:group:staff".parse().unwrap()));
        assert!(!s.contains(&"unix:uid:3".parse().unwrap()));
    }

    #[test]
    fn subset_and_difference_follow_set_semantics() {
        let caller = set(&["unix:uid:1", "unix:gid:1", "unix:gid:5", "unix:user:ann"]);
        assert!(set(&[]).is_subset(&caller));
        assert!(set(&["unix:gid:5", "unix:uid:1"]).is_subset(&caller));
        assert!(!set(&["unix:gid:5", "unix:uid:2"]).is_subset(&caller));
        assert!(!set(&["unix:gid:9"]).is_subset(&caller));
        let wanted = set(&["unix:uid:1", "unix:gid:9", "unix:user:bob"]);
        let missing: Vec<String> = wanted
            .difference(&caller)
            .map(ToString::to_string)
            .collect();
        assert_eq!(missing.len(), 2);
        assert!(missing.contains(&"unix:gid:9".to_owned()));
        assert!(missing.contains(&"unix:user:bob".to_owned()));
    }

    #[test]
    fn every_kind_parses_and_displays_back() {
        for s in [
            "unix:uid:1000",
            "unix:gid:0",
            "unix:user:alice",
            "unix:group:wheel",
            "unix:path:/usr/bin/java",
            "unix:sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "k8s:ns:prod",
            "k8s:sa:billing",
            "k8s:pod-label:app:web",
            "k8s:container-name:api",
        ] {
            let sel: Selector = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(sel.to_string(), s);
        }
    }

    #[test]
    fn value_keeps_colons_after_the_kind() {
        let sel: Selector = "k8s:pod-label:app.kubernetes.io/name:web".parse().unwrap();
        assert_eq!(sel.kind(), SelectorKind::K8sPodLabel);
        assert_eq!(sel.value(), "app.kubernetes.io/name:web");
        assert_eq!(
            sel.exclusive_key(),
            Some((SelectorKind::K8sPodLabel, "app.kubernetes.io/name"))
        );
    }

    #[test]
    fn numeric_and_hex_values_are_canonicalized() {
        let a: Selector = "unix:uid:01000".parse().unwrap();
        assert_eq!(a, Selector::uid(1000));
        let upper = "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855";
        let h: Selector = format!("unix:sha256:{upper}").parse().unwrap();
        assert_eq!(h.value(), upper.to_ascii_lowercase());
    }

    #[test]
    fn bad_selectors_are_rejected_with_their_own_error() {
        use SelectorError as E;
        type Check = fn(&SelectorError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("unix", |e| matches!(e, E::Malformed(_))),
            ("unix:uid", |e| matches!(e, E::Malformed(_))),
            ("docker:label:x", |e| matches!(e, E::UnknownType { .. })),
            ("unix:pid:1", |e| matches!(e, E::UnknownKind { .. })),
            ("k8s:namespace:x", |e| matches!(e, E::UnknownKind { .. })),
            ("unix:uid:", |e| matches!(e, E::EmptyValue(_))),
            ("unix:user:a b", |e| matches!(e, E::BadCharacter(_))),
            ("unix:uid:-1", |e| matches!(e, E::BadValue { .. })),
            ("unix:uid:4294967296", |e| matches!(e, E::BadValue { .. })),
            ("unix:path:bin/sh", |e| matches!(e, E::BadValue { .. })),
            ("unix:sha256:abc", |e| matches!(e, E::BadValue { .. })),
            ("k8s:pod-label:novalue", |e| matches!(e, E::BadValue { .. })),
            ("k8s:pod-label::v", |e| matches!(e, E::BadValue { .. })),
        ];
        for (input, check) in cases {
            let err = input.parse::<Selector>().expect_err(input);
            assert!(check(&err), "{input}: unexpected error {err:?}");
            assert!(
                err.to_string().contains(input.trim_end_matches(':')),
                "{err}"
            );
        }
    }

    #[test]
    fn unknown_kind_error_lists_the_known_kinds() {
        let err = "unix:pid:1".parse::<Selector>().unwrap_err().to_string();
        assert!(err.contains("`uid`") && err.contains("`sha256`"), "{err}");
    }

    #[test]
    fn groups_are_multi_valued_and_uids_are_not() {
        assert_eq!(Selector::gid(5).exclusive_key(), None);
        assert_eq!(
            Selector::uid(5).exclusive_key(),
            Some((SelectorKind::UnixUid, ""))
        );
    }

    #[test]
    fn serde_uses_the_string_form() {
        let sel: Selector = serde_json::from_str("\"unix:uid:7\"").unwrap();
        assert_eq!(sel, Selector::uid(7));
        assert_eq!(serde_json::to_string(&sel).unwrap(), "\"unix:uid:7\"");
        assert!(serde_json::from_str::<Selector>("\"unix:nope:7\"").is_err());
    }
}
