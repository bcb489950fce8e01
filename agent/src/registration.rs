//! Registration entries and the registry that maps a workload's selectors to its identities.
//!
//! An [`Entry`] grants one SPIFFE ID to every workload that has all of the entry's selectors.
//! The [`Registry`] keeps entries in configuration order: the first matching entry is the
//! workload's default identity (`svids[0]` of the Workload API).
//!
//! When a configuration has no `entries` key at all, the registry instead holds the *uid
//! template*: every local user N gets `spiffe://<trust domain>/unix/uid/<N>`, selected by
//! `unix:uid:<N>`. That makes a freshly started agent useful with no configuration, and it
//! never applies alongside explicit entries.
//!
//! On Kubernetes the *pod template* takes its place: every pod gets
//! `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`, selected by `k8s:ns` and
//! `k8s:sa`, so every container of a pod shares the identity of its service account.

use std::borrow::Cow;
use std::collections::HashSet;
use std::time::Duration;

use mesh_core::id::{SpiffeId, TrustDomain};
use serde::Serialize;

use crate::attest::Needs;
use crate::selector::{Selector, SelectorKind, SelectorSet};

/// Longest hint the Workload API allows, in bytes.
pub const MAX_HINT_LEN: usize = 1024;

/// Path prefix of the identities the uid template grants.
pub const UID_TEMPLATE_PATH: &str = "/unix/uid/";

/// The identity pattern of the pod template, after the trust domain.
pub const POD_TEMPLATE_PATTERN: &str = "/ns/<namespace>/sa/<service account>";

/// One registration entry: the identity that workloads with all of `selectors` receive.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Entry {
    /// The identity granted.
    pub spiffe_id: SpiffeId,
    /// Every selector a workload must have for this entry to match; never empty in a
    /// validated configuration.
    pub selectors: SelectorSet,
    /// Lifetime of the X509-SVIDs issued for this entry; `None` means the agent's default.
    pub ttl: Option<Duration>,
    /// DNS names to add as SANs to the X509-SVID.
    pub dns_names: Vec<String>,
    /// A hint telling a workload with several identities what this one is for.
    pub hint: Option<String>,
}

impl Entry {
    /// An entry with no TTL override, DNS names or hint.
    pub fn new(spiffe_id: SpiffeId, selectors: SelectorSet) -> Self {
        Self {
            spiffe_id,
            selectors,
            ttl: None,
            dns_names: Vec::new(),
            hint: None,
        }
    }

    /// Whether a workload with `selectors` receives this entry's identity.
    pub fn matches(&self, selectors: &SelectorSet) -> bool {
        self.selectors.is_subset(selectors)
    }

    /// The entry's selectors that `selectors` lacks.
    pub fn missing(&self, selectors: &SelectorSet) -> Vec<Selector> {
        self.selectors.difference(selectors).cloned().collect()
    }
}

/// The set of registration entries in force.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Registry {
    entries: Vec<Entry>,
    template: Option<Template>,
    needs: Needs,
}

/// A rule that makes an entry for each workload instead of listing entries.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Template {
    /// `spiffe://<td>/unix/uid/<uid>`.
    Uid(TrustDomain),
    /// `spiffe://<td>/ns/<ns>/sa/<sa>`.
    Pod(TrustDomain),
}

impl Registry {
    /// A registry of explicit entries, kept in the given order.
    pub fn new(entries: Vec<Entry>) -> Self {
        let needs = Needs::for_kinds(|kind| {
            entries
                .iter()
                .any(|e| e.selectors.iter().any(|s| s.kind() == kind))
        });
        Self {
            entries,
            template: None,
            needs,
        }
    }

    /// A registry with no entries that grants every local user N the identity
    /// `spiffe://<trust_domain>/unix/uid/<N>`.
    pub fn uid_template(trust_domain: TrustDomain) -> Self {
        Self {
            entries: Vec::new(),
            template: Some(Template::Uid(trust_domain)),
            needs: Needs::default(),
        }
    }

    /// A registry with no entries that grants every pod the identity
    /// `spiffe://<trust_domain>/ns/<namespace>/sa/<service account>`.
    pub fn pod_template(trust_domain: TrustDomain) -> Self {
        Self {
            entries: Vec::new(),
            template: Some(Template::Pod(trust_domain)),
            needs: Needs {
                kubernetes: true,
                ..Needs::default()
            },
        }
    }

    /// The explicit entries, in configuration order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The optional attestation parts that matching against this registry needs: a caller
    /// attested without them lacks only selectors no entry asks for.
    pub fn needs(&self) -> Needs {
        self.needs
    }

    /// The trust domain of the uid template, if the template is in force.
    pub fn uid_template_domain(&self) -> Option<&TrustDomain> {
        match &self.template {
            Some(Template::Uid(td)) => Some(td),
            _ => None,
        }
    }

    /// The trust domain of the pod template, if the template is in force.
    pub fn pod_template_domain(&self) -> Option<&TrustDomain> {
        match &self.template {
            Some(Template::Pod(td)) => Some(td),
            _ => None,
        }
    }

    /// Whether this registry grants `entry`: it is one of the explicit entries, or the entry
    /// the template in force makes for a workload with the entry's selectors. A cache keeps
    /// the SVIDs of exactly these entries.
    pub fn grants(&self, entry: &Entry) -> bool {
        self.entries.contains(entry)
            || self
                .template_entry(&entry.selectors)
                .is_some_and(|made| &made == entry)
    }

    /// The entries that match a workload with `selectors`, in configuration order; the first is
    /// the workload's default identity. Entries made from the uid template are owned, explicit
    /// entries borrowed.
    pub fn matching(&self, selectors: &SelectorSet) -> Vec<Cow<'_, Entry>> {
        let mut out: Vec<Cow<'_, Entry>> = self
            .entries
            .iter()
            .filter(|e| e.matches(selectors))
            .map(Cow::Borrowed)
            .collect();
        if let Some(entry) = self.template_entry(selectors) {
            out.push(Cow::Owned(entry));
        }
        out
    }

    /// Why a workload with `selectors` gets the identities it gets: every entry, matched or
    /// not, with the selectors it lacks.
    pub fn explain(&self, selectors: &SelectorSet) -> Explanation {
        let mut verdicts: Vec<Verdict> = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let missing: Vec<String> =
                    e.missing(selectors).iter().map(|s| s.to_string()).collect();
                Verdict {
                    source: RuleSource::Entry { index: i },
                    spiffe_id: Some(e.spiffe_id.clone()),
                    hint: e.hint.clone(),
                    matched: missing.is_empty(),
                    missing,
                    default: false,
                }
            })
            .collect();
        if let Some(template) = &self.template {
            let entry = self.template_entry(selectors);
            let (source, needed): (_, &[&str]) = match template {
                Template::Uid(_) => (RuleSource::UidTemplate, &["unix:uid:<any>"]),
                Template::Pod(_) => (RuleSource::PodTemplate, &["k8s:ns:<any>", "k8s:sa:<any>"]),
            };
            verdicts.push(Verdict {
                source,
                spiffe_id: entry.as_ref().map(|e| e.spiffe_id.clone()),
                hint: None,
                matched: entry.is_some(),
                missing: if entry.is_some() {
                    Vec::new()
                } else {
                    needed.iter().map(|s| (*s).to_owned()).collect()
                },
                default: false,
            });
        }
        if let Some(first) = verdicts.iter_mut().find(|v| v.matched) {
            first.default = true;
        }
        Explanation {
            selectors: selectors.iter().map(|s| s.to_string()).collect(),
            uid_template: self
                .uid_template_domain()
                .map(|td| format!("spiffe://{}{UID_TEMPLATE_PATH}<uid>", td.name())),
            pod_template: self
                .pod_template_domain()
                .map(|td| format!("spiffe://{}{POD_TEMPLATE_PATTERN}", td.name())),
            entries: verdicts,
        }
    }

    fn template_entry(&self, selectors: &SelectorSet) -> Option<Entry> {
        let of_kind = |kind| selectors.iter().find(|s| s.kind() == kind);
        match self.template.as_ref()? {
            Template::Uid(td) => {
                let uid = of_kind(SelectorKind::UnixUid)?;
                // A uid selector holds a canonical decimal number, which is a valid path
                // segment.
                let id = td
                    .workload_id(&format!("{UID_TEMPLATE_PATH}{}", uid.value()))
                    .ok()?;
                Some(Entry::new(id, SelectorSet::from([uid.clone()])))
            }
            Template::Pod(td) => {
                let ns = of_kind(SelectorKind::K8sNamespace)?;
                let sa = of_kind(SelectorKind::K8sServiceAccount)?;
                // Kubernetes names are DNS labels or subdomains, valid path segments; anything
                // else is refused by `workload_id` and gets no identity.
                let id = td
                    .workload_id(&format!("/ns/{}/sa/{}", ns.value(), sa.value()))
                    .ok()?;
                Some(Entry::new(id, SelectorSet::from([ns.clone(), sa.clone()])))
            }
        }
    }
}

/// The answer of [`Registry::explain`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// The workload's selectors, sorted by kind, then value.
    pub selectors: Vec<String>,
    /// The identity pattern of the uid template, if it is in force.
    pub uid_template: Option<String>,
    /// The identity pattern of the pod template, if it is in force.
    pub pod_template: Option<String>,
    /// One verdict per entry (and one for the uid template), in configuration order.
    pub entries: Vec<Verdict>,
}

impl Explanation {
    /// The identities the workload receives, default first.
    pub fn granted(&self) -> Vec<&SpiffeId> {
        self.entries
            .iter()
            .filter(|v| v.matched)
            .filter_map(|v| v.spiffe_id.as_ref())
            .collect()
    }
}

/// Whether one entry matched, and if not, what the workload lacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Which rule this verdict is about.
    pub source: RuleSource,
    /// The identity the rule grants; `None` for a template that does not match.
    pub spiffe_id: Option<SpiffeId>,
    /// The entry's hint.
    pub hint: Option<String>,
    /// Whether the workload receives this identity.
    pub matched: bool,
    /// The selectors the entry requires that the workload lacks.
    pub missing: Vec<String>,
    /// Whether this is the workload's default identity (the first match).
    pub default: bool,
}

/// The rule a [`Verdict`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RuleSource {
    /// The explicit entry at this index of the configuration (0-based).
    Entry {
        /// Position in the configuration's `entries` list.
        index: usize,
    },
    /// The uid template that applies when no entries are configured.
    UidTemplate,
    /// The pod template that applies on Kubernetes when no entries are configured.
    PodTemplate,
}

/// The part of an entry a [`EntryProblem`] is about, so that callers can point at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryField {
    /// The entry as a whole.
    Entry,
    /// `spiffe_id`.
    SpiffeId,
    /// `selectors`.
    Selectors,
    /// `ttl`.
    Ttl,
    /// `dns_names`.
    DnsNames,
    /// `hint`.
    Hint,
}

/// A rule that a list of entries breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryProblem {
    /// Index of the offending entry.
    pub index: usize,
    /// The field at fault.
    pub field: EntryField,
    /// What is wrong, naming the bad value.
    pub message: String,
    /// Another entry the problem involves (the earlier duplicate), if any.
    pub related: Option<usize>,
}

/// Checks `entries` against every rule that does not depend on where they came from: IDs are
/// workload IDs in `trust_domain`; each entry has selectors that some workload can hold all of;
/// no two entries share an ID and a selector set; TTLs are positive; DNS names are valid; hints
/// are at most 1024 bytes and differ between entries that can match the same workload.
pub fn check_entries(entries: &[Entry], trust_domain: &TrustDomain) -> Vec<EntryProblem> {
    let mut problems = Vec::new();
    let mut problem = |index, field, message: String, related| {
        problems.push(EntryProblem {
            index,
            field,
            message,
            related,
        });
    };

    for (i, e) in entries.iter().enumerate() {
        if e.spiffe_id.trust_domain() != trust_domain {
            problem(
                i,
                EntryField::SpiffeId,
                format!(
                    "`{}` is not in the trust domain `{}`",
                    e.spiffe_id,
                    trust_domain.name()
                ),
                None,
            );
        } else if !e.spiffe_id.is_workload() {
            problem(
                i,
                EntryField::SpiffeId,
                format!("`{}` has no path; a workload ID needs one", e.spiffe_id),
                None,
            );
        }
        if e.selectors.is_empty() {
            problem(
                i,
                EntryField::Selectors,
                "entry has no selectors; it would match every workload".to_owned(),
                None,
            );
        }
        if let Some((a, b)) = contradiction(&e.selectors, &e.selectors) {
            problem(
                i,
                EntryField::Selectors,
                format!("entry can never match: no workload has both `{a}` and `{b}`"),
                None,
            );
        }
        if e.ttl == Some(Duration::ZERO) {
            problem(i, EntryField::Ttl, "ttl must be positive".to_owned(), None);
        }
        for name in &e.dns_names {
            if let Err(reason) = check_dns_name(name) {
                problem(
                    i,
                    EntryField::DnsNames,
                    format!("DNS name `{name}` is invalid: {reason}"),
                    None,
                );
            }
        }
        if let Some(hint) = &e.hint {
            if hint.len() > MAX_HINT_LEN {
                problem(
                    i,
                    EntryField::Hint,
                    format!(
                        "hint is {} bytes long; at most {MAX_HINT_LEN} are allowed",
                        hint.len()
                    ),
                    None,
                );
            }
        }
    }

    let mut seen = HashSet::new();
    for (j, b) in entries.iter().enumerate() {
        if !seen.insert((&b.spiffe_id, &b.selectors)) {
            let i = entries[..j]
                .iter()
                .position(|a| a.spiffe_id == b.spiffe_id && a.selectors == b.selectors);
            problem(
                j,
                EntryField::Entry,
                format!(
                    "duplicate entry: `{}` with the same selectors is already registered",
                    b.spiffe_id
                ),
                i,
            );
        }
    }

    for (j, b) in entries.iter().enumerate() {
        let Some(hint) = b.hint.as_deref().filter(|h| !h.is_empty()) else {
            continue;
        };
        let clash = entries[..j].iter().position(|a| {
            a.hint.as_deref() == Some(hint)
                && a.spiffe_id != b.spiffe_id
                && contradiction(&a.selectors, &b.selectors).is_none()
        });
        if let Some(i) = clash {
            problem(
                j,
                EntryField::Hint,
                format!(
                    "hint `{hint}` is also used by another entry that can match the same \
                     workload; hints must be unique among a workload's identities"
                ),
                Some(i),
            );
        }
    }
    problems
}

/// Two selectors, one from `a` and one from `b`, that no single workload can hold together,
/// e.g. two different uids.
fn contradiction<'s>(
    a: &'s SelectorSet,
    b: &'s SelectorSet,
) -> Option<(&'s Selector, &'s Selector)> {
    for x in a {
        let Some(kx) = x.exclusive_key() else {
            continue;
        };
        for y in b {
            if y.exclusive_key() == Some(kx) && x.value() != y.value() {
                return Some((x, y));
            }
        }
    }
    None
}

/// Checks a DNS name for an X.509 SAN: labels of letters, digits and `-`, not starting or
/// ending with `-`, at most 63 bytes each and 253 in all; a leading `*.` wildcard is allowed.
fn check_dns_name(name: &str) -> Result<(), &'static str> {
    let rest = name.strip_prefix("*.").unwrap_or(name);
    if rest.is_empty() {
        return Err("it is empty");
    }
    if name.len() > 253 {
        return Err("it is longer than 253 bytes");
    }
    for label in rest.split('.') {
        if label.is_empty() {
            return Err("it has an empty label");
        }
        if label.len() > 63 {
            return Err("a label is longer than 63 bytes");
        }
        if !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err("only letters, digits, `-` and `.` are allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label starts or ends with `-`");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sels(list: &[&str]) -> SelectorSet {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn entry(id: &str, list: &[&str]) -> Entry {
        Entry::new(SpiffeId::new(id).unwrap(), sels(list))
    }

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    #[test]
    fn entry_matches_only_when_all_its_selectors_are_present() {
        let e = entry("spiffe://example.org/a", &["unix:uid:1000", "unix:gid:50"]);
        assert!(e.matches(&sels(&["unix:uid:1000", "unix:gid:50", "unix:gid:51"])));
        assert!(!e.matches(&sels(&["unix:uid:1000"])));
        assert_eq!(
            e.missing(&sels(&["unix:uid:1000"])),
            vec!["unix:gid:50".parse::<Selector>().unwrap()]
        );
    }

    #[test]
    fn matching_keeps_configuration_order() {
        let reg = Registry::new(vec![
            entry("spiffe://example.org/z-first", &["unix:uid:1"]),
            entry("spiffe://example.org/other", &["unix:uid:2"]),
            entry("spiffe://example.org/a-second", &["unix:gid:7"]),
        ]);
        let ids: Vec<String> = reg
            .matching(&sels(&["unix:uid:1", "unix:gid:7"]))
            .iter()
            .map(|e| e.spiffe_id.to_string())
            .collect();
        assert_eq!(
            ids,
            [
                "spiffe://example.org/z-first",
                "spiffe://example.org/a-second"
            ]
        );
    }

    #[test]
    fn needs_ask_only_for_the_attestation_parts_some_entry_uses() {
        let uid_only = Registry::new(vec![entry("spiffe://example.org/a", &["unix:uid:1"])]);
        assert_eq!(uid_only.needs(), Needs::default());
        assert_eq!(Registry::uid_template(td()).needs(), Needs::default());

        let mixed =
            Registry::new(vec![
            entry("spiffe://example.org/a", &["unix:uid:1"]),
            entry("spiffe://example.org/b", &["unix:uid:2", "unix:group:staff"]),
            entry(
                "spiffe://example.org/c",
                &["unix:sha256:0000000000000000000000000000000000000000000000000000000000000000"],
            ),
        ]);
        let needs = mixed.needs();
        assert!(needs.names && needs.digest && !needs.path, "{needs:?}");
    }

    #[test]
    fn uid_template_grants_each_uid_its_own_id() {
        let reg = Registry::uid_template(td());
        let got = reg.matching(&sels(&["unix:uid:1000", "unix:gid:1000"]));
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].spiffe_id.as_str(),
            "spiffe://example.org/unix/uid/1000"
        );
        assert_eq!(got[0].selectors, sels(&["unix:uid:1000"]));
        assert!(reg.matching(&sels(&["k8s:ns:prod"])).is_empty());
    }

    #[test]
    fn pod_template_grants_each_service_account_its_own_id() {
        let reg = Registry::pod_template(td());
        assert!(reg.needs().kubernetes, "the template needs k8s selectors");
        let got = reg.matching(&sels(&[
            "unix:uid:1000",
            "k8s:ns:shop",
            "k8s:sa:orders",
            "k8s:container-name:mesh-proxy",
            "k8s:pod-label:app:orders",
        ]));
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].spiffe_id.as_str(),
            "spiffe://example.org/ns/shop/sa/orders"
        );
        assert_eq!(got[0].selectors, sels(&["k8s:ns:shop", "k8s:sa:orders"]));
        assert!(reg.grants(&got[0]));
        // Outside a pod, or in a pod with no service account, there is no identity.
        assert!(reg.matching(&sels(&["unix:uid:1000"])).is_empty());
        assert!(reg.matching(&sels(&["k8s:ns:kube-system"])).is_empty());
        assert_eq!(reg.uid_template_domain(), None);
        assert_eq!(reg.pod_template_domain(), Some(&td()));
    }

    #[test]
    fn grants_covers_explicit_and_template_made_entries_only() {
        let explicit = entry("spiffe://example.org/a", &["unix:uid:1"]);
        let listed = Registry::new(vec![explicit.clone()]);
        assert!(listed.grants(&explicit));
        let uid = Registry::uid_template(td());
        assert!(!uid.grants(&explicit));
        let made = uid.matching(&sels(&["unix:uid:1"]))[0].clone().into_owned();
        assert!(uid.grants(&made));
        assert!(!Registry::pod_template(td()).grants(&made));
        let forged = entry("spiffe://example.org/ns/x/sa/y", &["k8s:ns:x", "k8s:sa:z"]);
        assert!(!Registry::pod_template(td()).grants(&forged));
    }

    #[test]
    fn explain_covers_the_pod_template() {
        let reg = Registry::pod_template(td());
        let ex = reg.explain(&sels(&["k8s:ns:shop", "k8s:sa:orders"]));
        assert_eq!(ex.entries[0].source, RuleSource::PodTemplate);
        assert!(ex.entries[0].matched && ex.entries[0].default);
        assert_eq!(
            ex.pod_template.as_deref(),
            Some("spiffe://example.org/ns/<namespace>/sa/<service account>")
        );
        assert_eq!(ex.uid_template, None);
        let none = reg.explain(&sels(&["unix:uid:0"]));
        assert_eq!(none.entries[0].missing, ["k8s:ns:<any>", "k8s:sa:<any>"]);
    }

    #[test]
    fn entries_with_k8s_selectors_need_kubernetes_attestation() {
        let reg = Registry::new(vec![entry(
            "spiffe://example.org/a",
            &["k8s:ns:shop", "k8s:container-name:mesh-proxy"],
        )]);
        assert!(reg.needs().kubernetes);
        assert!(
            !Registry::new(vec![entry("spiffe://example.org/a", &["unix:uid:1"])])
                .needs()
                .kubernetes
        );
    }

    #[test]
    fn explicit_entries_never_use_the_template() {
        let reg = Registry::new(vec![entry("spiffe://example.org/a", &["unix:uid:1"])]);
        assert!(reg.matching(&sels(&["unix:uid:2"])).is_empty());
        assert!(Registry::new(Vec::new())
            .matching(&sels(&["unix:uid:2"]))
            .is_empty());
    }

    #[test]
    fn explain_lists_missing_selectors_and_the_default() {
        let reg = Registry::new(vec![
            entry(
                "spiffe://example.org/web",
                &["unix:uid:1", "unix:path:/bin/web"],
            ),
            entry("spiffe://example.org/any1", &["unix:uid:1"]),
            entry("spiffe://example.org/grp", &["unix:gid:9"]),
        ]);
        let ex = reg.explain(&sels(&["unix:uid:1", "unix:gid:9"]));
        assert_eq!(ex.selectors, ["unix:uid:1", "unix:gid:9"]);
        assert!(!ex.entries[0].matched);
        assert_eq!(ex.entries[0].missing, ["unix:path:/bin/web"]);
        assert!(ex.entries[1].matched && ex.entries[1].default);
        assert!(ex.entries[2].matched && !ex.entries[2].default);
        let granted: Vec<&str> = ex.granted().iter().map(|i| i.as_str()).collect();
        assert_eq!(
            granted,
            ["spiffe://example.org/any1", "spiffe://example.org/grp"]
        );
    }

    #[test]
    fn explain_covers_the_uid_template() {
        let reg = Registry::uid_template(td());
        let ex = reg.explain(&sels(&["unix:uid:5"]));
        assert_eq!(ex.entries.len(), 1);
        assert_eq!(ex.entries[0].source, RuleSource::UidTemplate);
        assert!(ex.entries[0].default);
        assert_eq!(
            ex.uid_template.as_deref(),
            Some("spiffe://example.org/unix/uid/<uid>")
        );
        let none = reg.explain(&sels(&["k8s:ns:x"]));
        assert!(!none.entries[0].matched);
        assert_eq!(none.entries[0].missing, ["unix:uid:<any>"]);
    }

    #[test]
    fn check_accepts_a_sound_list() {
        let mut a = entry("spiffe://example.org/a", &["unix:uid:1"]);
        a.hint = Some("internal".into());
        let mut b = entry("spiffe://example.org/b", &["unix:uid:2"]);
        b.hint = Some("internal".into());
        b.dns_names = vec!["api.example.org".into(), "*.svc.local".into()];
        assert_eq!(check_entries(&[a, b], &td()), []);
    }

    #[test]
    fn check_rejects_foreign_trust_domain_and_bare_domain_ids() {
        let problems = check_entries(
            &[
                entry("spiffe://other.org/a", &["unix:uid:1"]),
                entry("spiffe://example.org", &["unix:uid:1"]),
            ],
            &td(),
        );
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].message.contains("other.org"));
        assert_eq!(problems[1].index, 1);
        assert!(problems[1].message.contains("no path"));
    }

    #[test]
    fn check_rejects_duplicates_naming_the_earlier_entry() {
        let problems = check_entries(
            &[
                entry("spiffe://example.org/a", &["unix:uid:1", "unix:gid:2"]),
                entry("spiffe://example.org/a", &["unix:uid:1"]),
                entry("spiffe://example.org/a", &["unix:gid:2", "unix:uid:1"]),
            ],
            &td(),
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!((problems[0].index, problems[0].related), (2, Some(0)));
        assert!(problems[0].message.contains("duplicate"));
    }

    #[test]
    fn check_rejects_entries_that_can_never_match() {
        let problems = check_entries(
            &[
                entry("spiffe://example.org/a", &["unix:uid:1", "unix:uid:2"]),
                entry("spiffe://example.org/b", &[]),
            ],
            &td(),
        );
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].message.contains("never match"));
        assert!(problems[1].message.contains("no selectors"));
    }

    #[test]
    fn check_rejects_shared_hints_only_when_entries_can_overlap() {
        let with_hint = |id: &str, list: &[&str]| {
            let mut e = entry(id, list);
            e.hint = Some("db".into());
            e
        };
        let problems = check_entries(
            &[
                with_hint("spiffe://example.org/a", &["unix:uid:1"]),
                with_hint("spiffe://example.org/b", &["unix:gid:5"]),
                with_hint("spiffe://example.org/c", &["unix:uid:2"]),
            ],
            &td(),
        );
        // b can match a uid-1 workload in group 5, as can a; c can overlap with b only.
        let pairs: Vec<_> = problems.iter().map(|p| (p.index, p.related)).collect();
        assert_eq!(pairs, [(1, Some(0)), (2, Some(1))], "{problems:?}");
        assert!(problems.iter().all(|p| p.field == EntryField::Hint));
    }

    #[test]
    fn check_rejects_long_hints_bad_dns_names_and_zero_ttl() {
        let mut e = entry("spiffe://example.org/a", &["unix:uid:1"]);
        e.hint = Some("h".repeat(MAX_HINT_LEN + 1));
        e.dns_names = vec!["bad_name.example".into(), "-x.org".into(), "ok.org".into()];
        e.ttl = Some(Duration::ZERO);
        let problems = check_entries(&[e], &td());
        let fields: Vec<EntryField> = problems.iter().map(|p| p.field).collect();
        assert_eq!(
            fields,
            [
                EntryField::Ttl,
                EntryField::DnsNames,
                EntryField::DnsNames,
                EntryField::Hint
            ]
        );
        assert!(problems[1].message.contains("bad_name.example"));
    }
}
