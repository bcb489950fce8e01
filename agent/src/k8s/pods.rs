//! The kubelet's pod list (`GET /pods`, a `v1` `PodList`), read for the few fields attestation
//! needs, and the selectors of the pod container a process runs in.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::selector::{Selector, SelectorKind, SelectorSet};

/// A `v1` `PodList` as the kubelet serves it, reduced to what attestation reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct PodList {
    /// The pods bound to the node.
    #[serde(default, deserialize_with = "null_as_default")]
    pub items: Vec<Pod>,
}

/// One pod of a [`PodList`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Pod {
    /// Name, namespace, UID and labels.
    #[serde(default)]
    pub metadata: PodMetadata,
    /// The service account.
    #[serde(default, deserialize_with = "null_as_default")]
    pub spec: PodSpec,
    /// The containers that exist, with their IDs.
    #[serde(default, deserialize_with = "null_as_default")]
    pub status: PodStatus,
}

/// The parts of a pod's `metadata` attestation reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct PodMetadata {
    /// The pod's name.
    #[serde(default)]
    pub name: String,
    /// The pod's namespace.
    #[serde(default)]
    pub namespace: String,
    /// The pod's UID.
    #[serde(default)]
    pub uid: String,
    /// The pod's labels.
    #[serde(default, deserialize_with = "null_as_default")]
    pub labels: BTreeMap<String, String>,
}

/// The parts of a pod's `spec` attestation reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    /// The service account the pod runs as; admission sets `default` when a manifest names none.
    #[serde(default)]
    pub service_account_name: Option<String>,
}

/// The parts of a pod's `status` attestation reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    /// The app containers.
    #[serde(default, deserialize_with = "null_as_default")]
    pub container_statuses: Vec<ContainerStatus>,
    /// The init containers, including restartable ("sidecar") ones.
    #[serde(default, deserialize_with = "null_as_default")]
    pub init_container_statuses: Vec<ContainerStatus>,
    /// The ephemeral (debug) containers.
    #[serde(default, deserialize_with = "null_as_default")]
    pub ephemeral_container_statuses: Vec<ContainerStatus>,
}

/// One container's name and runtime ID.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ContainerStatus {
    /// The container's name in the pod spec.
    #[serde(default)]
    pub name: String,
    /// `<runtime>://<id>`, e.g. `containerd://3f1c...`; absent until the container is created.
    #[serde(rename = "containerID", default)]
    pub container_id: Option<String>,
}

/// The pod container a process runs in, as the kubelet describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodContainer {
    /// The pod's UID.
    pub pod_uid: String,
    /// The pod's name.
    pub pod_name: String,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's service account, if the kubelet reports one.
    pub service_account: Option<String>,
    /// The pod's labels.
    pub labels: BTreeMap<String, String>,
    /// The container's name.
    pub container_name: String,
    /// The container's ID, without the runtime prefix.
    pub container_id: String,
}

impl PodList {
    /// The container `container_id` of the pod `pod_uid`, if the list has it. Both are compared
    /// without regard to case; `container_id` is bare hex, without a `containerd://` prefix.
    pub fn find(&self, pod_uid: &str, container_id: &str) -> Option<PodContainer> {
        let pod = self
            .items
            .iter()
            .find(|p| p.metadata.uid.eq_ignore_ascii_case(pod_uid))?;
        let status = pod
            .status
            .container_statuses
            .iter()
            .chain(&pod.status.init_container_statuses)
            .chain(&pod.status.ephemeral_container_statuses)
            .find(|c| {
                c.container_id
                    .as_deref()
                    .and_then(bare_id)
                    .is_some_and(|id| id.eq_ignore_ascii_case(container_id))
            })?;
        Some(PodContainer {
            pod_uid: pod.metadata.uid.clone(),
            pod_name: pod.metadata.name.clone(),
            namespace: pod.metadata.namespace.clone(),
            service_account: pod
                .spec
                .service_account_name
                .clone()
                .filter(|s| !s.is_empty()),
            labels: pod.metadata.labels.clone(),
            container_name: status.name.clone(),
            container_id: container_id.to_ascii_lowercase(),
        })
    }
}

impl PodContainer {
    /// `k8s:ns`, `k8s:sa`, one `k8s:pod-label:KEY:VALUE` per label, and `k8s:container-name`.
    /// A value that cannot be written as a selector is left out (and logged at debug): it only
    /// means fewer entries can match.
    pub fn selectors(&self) -> SelectorSet {
        let mut selectors = SelectorSet::new();
        let mut push = |kind, value: &str| match Selector::new(kind, value) {
            Ok(s) => {
                selectors.insert(s);
            }
            Err(error) => tracing::debug!(%error, "skipping a selector that cannot be written"),
        };
        push(SelectorKind::K8sNamespace, &self.namespace);
        if let Some(sa) = &self.service_account {
            push(SelectorKind::K8sServiceAccount, sa);
        }
        for (key, value) in &self.labels {
            push(SelectorKind::K8sPodLabel, &format!("{key}:{value}"));
        }
        push(SelectorKind::K8sContainerName, &self.container_name);
        selectors
    }
}

/// The ID part of `<runtime>://<id>`.
fn bare_id(container_id: &str) -> Option<&str> {
    container_id
        .split_once("://")
        .map(|(_, id)| id)
        .filter(|id| !id.is_empty())
}

/// Reads `null` as the type's default, as Go's encoder writes empty slices and maps.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PodList {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/k8s")
            .join(name);
        let text = std::fs::read_to_string(&path).unwrap();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn sels(list: &[&str]) -> SelectorSet {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    const ORDERS_UID: &str = "5c2d1f8e-7a3b-4e6d-9c1a-2b3f4e5d6c7a";
    const ORDERS_APP: &str = "9a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";
    const ORDERS_PROXY: &str = "4f5e6d7c8b9a0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796";
    const ORDERS_INIT: &str = "0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d";
    const ORDERS_DEBUG: &str = "e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff00";
    const FRONTEND_UID: &str = "b7e3c2a1-4d5f-4a6b-8c9d-0e1f2a3b4c5d";

    #[test]
    fn the_node_fixture_has_every_pod() {
        let list = fixture("pods.json");
        let names: Vec<&str> = list
            .items
            .iter()
            .map(|p| p.metadata.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "orders-7d9f8b6c5-x2k4p",
                "frontend-5b8c7d6e4-q9w8e",
                "kube-apiserver-node-1",
                "reports-28981440-m3n4b"
            ]
        );
    }

    #[test]
    fn app_container_of_a_pod_becomes_its_selectors() {
        let found = fixture("pods.json").find(ORDERS_UID, ORDERS_APP).unwrap();
        assert_eq!(found.pod_name, "orders-7d9f8b6c5-x2k4p");
        assert_eq!(found.container_name, "orders");
        assert_eq!(
            found.selectors(),
            sels(&[
                "k8s:ns:shop",
                "k8s:sa:orders",
                "k8s:pod-label:app.kubernetes.io/name:orders",
                "k8s:pod-label:app.kubernetes.io/part-of:shop",
                "k8s:pod-label:pod-template-hash:7d9f8b6c5",
                "k8s:container-name:orders",
            ])
        );
    }

    #[test]
    fn sidecar_init_and_ephemeral_containers_are_found_by_their_ids() {
        let list = fixture("pods.json");
        let name = |id| list.find(ORDERS_UID, id).map(|c| c.container_name);
        assert_eq!(name(ORDERS_PROXY).as_deref(), Some("mesh-proxy"));
        assert_eq!(name(ORDERS_INIT).as_deref(), Some("migrate-db"));
        assert_eq!(name(ORDERS_DEBUG).as_deref(), Some("debugger"));
    }

    #[test]
    fn the_container_must_belong_to_the_pod_uid() {
        let list = fixture("pods.json");
        assert!(list.find(FRONTEND_UID, ORDERS_APP).is_none());
        assert!(list.find(ORDERS_UID, &"0".repeat(64)).is_none());
        let upper = list
            .find(
                &ORDERS_UID.to_ascii_uppercase(),
                &ORDERS_APP.to_ascii_uppercase(),
            )
            .unwrap();
        assert_eq!(upper.container_id, ORDERS_APP);
    }

    #[test]
    fn a_container_without_an_id_yet_matches_nothing() {
        let list = fixture("pods.json");
        let reports = list
            .items
            .iter()
            .find(|p| p.metadata.name.starts_with("reports-"))
            .unwrap();
        let statuses = &reports.status.container_statuses;
        assert!(statuses.iter().all(|c| c.container_id.is_none()));
        // Nothing with an empty or absent ID can be matched, whatever is asked for.
        assert!(list.find(&reports.metadata.uid, "").is_none());
    }

    #[test]
    fn static_pods_are_found_by_their_hash_uid() {
        let apiserver = fixture("pods.json")
            .find(
                "2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f",
                "7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f0e9d8c7b6a",
            )
            .unwrap();
        // A static pod names no service account.
        assert_eq!(apiserver.service_account, None);
        assert_eq!(
            apiserver.selectors(),
            sels(&[
                "k8s:ns:kube-system",
                "k8s:pod-label:component:kube-apiserver",
                "k8s:pod-label:tier:control-plane",
                "k8s:container-name:kube-apiserver",
            ])
        );
    }

    #[test]
    fn a_restarted_container_is_known_only_by_its_current_id() {
        let list = fixture("pods.json");
        let previous = "d4d3d2d1d0c9c8c7c6c5c4c3c2c1c0b9b8b7b6b5b4b3b2b1b0a9a8a7a6a5a4a3";
        assert!(list.find(FRONTEND_UID, previous).is_none());
        let current = "a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1";
        assert_eq!(
            list.find(FRONTEND_UID, current).unwrap().container_name,
            "frontend"
        );
    }

    #[test]
    fn values_that_cannot_be_selectors_are_skipped() {
        let found = PodContainer {
            pod_uid: ORDERS_UID.into(),
            pod_name: "p".into(),
            namespace: "shop".into(),
            service_account: None,
            labels: BTreeMap::from([
                ("ok".to_owned(), "yes".to_owned()),
                ("bad".to_owned(), "has space".to_owned()),
                ("flag".to_owned(), String::new()),
            ]),
            container_name: "app".into(),
            container_id: ORDERS_APP.into(),
        };
        assert_eq!(
            found.selectors(),
            sels(&[
                "k8s:ns:shop",
                "k8s:pod-label:ok:yes",
                "k8s:pod-label:flag:",
                "k8s:container-name:app"
            ])
        );
    }

    #[test]
    fn nulls_and_missing_fields_read_as_empty() {
        let list: PodList = serde_json::from_str(
            r#"{"kind":"PodList","apiVersion":"v1","metadata":{},"items":[
                {"metadata":{"name":"a","namespace":"n","uid":"u","labels":null},
                 "spec":{"containers":[{"name":"c","image":"i"}]},
                 "status":{"phase":"Pending","containerStatuses":null}}]}"#,
        )
        .unwrap();
        assert_eq!(list.items.len(), 1);
        assert!(list.items[0].metadata.labels.is_empty());
        assert!(list.items[0].status.container_statuses.is_empty());
        let empty: PodList = serde_json::from_str(r#"{"items":null}"#).unwrap();
        assert!(empty.items.is_empty());
    }
}
