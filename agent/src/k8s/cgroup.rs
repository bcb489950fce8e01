//! Which pod and container a process runs in, from its `/proc/<pid>/cgroup`.
//!
//! The kubelet puts every pod in a cgroup named after the pod's UID, and the container runtime
//! puts every container in a cgroup named after the container's ID, below the pod's. The names
//! depend on the cgroup driver:
//!
//! - cgroupfs: `/kubepods/burstable/pod<uid>/<container id>` (`crio-<id>` under CRI-O);
//! - systemd: `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/
//!   cri-containerd-<id>.scope`, where the UID's `-` are written `_` (`crio-<id>.scope` under
//!   CRI-O, `docker-<id>.scope` under Docker). Older containerd releases wrote the systemd form
//!   literally into cgroup v1 paths: `kubepods-besteffort-pod<uid>.slice:cri-containerd:<id>`.
//!
//! Guaranteed pods have no QoS level (`/kubepods/pod<uid>`, `kubepods-pod<uid>.slice`); kind
//! nodes prefix every name with `kubelet-`; and a reader in another cgroup namespace sees paths
//! relative to its own root (`/../../kubepods-besteffort-pod<uid>.slice/...`). So the pod is
//! found by the shape of one path segment, wherever it is, and the container is the segment
//! right below it (processes that made sub-cgroups of their container stay attributed to it).
//!
//! cgroup v1 lists one line per hierarchy, v2 a single `0::` line; the first line that names a
//! pod and a container decides.

use std::path::PathBuf;

/// A container of a pod, as named in a process's cgroup path.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ContainerRef {
    /// The pod's UID, lowercase, with `-` as Kubernetes writes it (or the 32 hex digits of a
    /// static pod's UID).
    pub pod_uid: String,
    /// The container's ID, 64 lowercase hex digits, without the runtime's prefix.
    pub container_id: String,
}

/// The pod container that a `/proc/<pid>/cgroup` text places the process in, or `None` if it
/// names none: a process outside any pod, a pod's own cgroup, or a runtime's helper such as
/// CRI-O's `crio-conmon-<id>.scope`.
pub fn parse_cgroup(text: &str) -> Option<ContainerRef> {
    text.lines().find_map(|line| {
        // hierarchy-ID:controller-list:cgroup-path; the path itself may contain colons.
        let mut fields = line.splitn(3, ':');
        let (_hierarchy, _controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        parse_path(path)
    })
}

/// `/proc/<pid>/cgroup` under `proc_root` (normally `/proc`).
pub fn cgroup_path(proc_root: &std::path::Path, pid: u32) -> PathBuf {
    proc_root.join(pid.to_string()).join("cgroup")
}

fn parse_path(path: &str) -> Option<ContainerRef> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    for (i, segment) in segments.iter().enumerate() {
        // `<pod slice>:<runtime prefix>:<id>`, the systemd cgroupsPath written as a path.
        if let Some((slice, rest)) = segment.split_once(':') {
            let Some(pod_uid) = systemd_pod_uid(slice) else {
                continue;
            };
            let (prefix, id) = rest.split_once(':')?;
            if !RUNTIME_PREFIXES
                .iter()
                .any(|p| p.strip_suffix('-') == Some(prefix))
            {
                return None;
            }
            return Some(ContainerRef {
                pod_uid,
                container_id: container_hex(id)?,
            });
        }
        if let Some(pod_uid) = pod_uid(segment) {
            let container_id = container_id(segments.get(i + 1)?)?;
            return Some(ContainerRef {
                pod_uid,
                container_id,
            });
        }
    }
    None
}

/// Prefixes the runtimes give container cgroups: containerd, CRI-O and Docker (through
/// cri-dockerd) with the systemd driver, and CRI-O with cgroupfs.
const RUNTIME_PREFIXES: [&str; 3] = ["cri-containerd-", "crio-", "docker-"];

/// The pod UID in a pod cgroup's name, in either driver's form.
fn pod_uid(segment: &str) -> Option<String> {
    if segment.ends_with(".slice") {
        return systemd_pod_uid(segment);
    }
    normalize_uid(segment.strip_prefix("pod")?)
}

/// `kubepods-burstable-pod<uid>.slice` (or `kubelet-kubepods-...`, or with no QoS part): the
/// last `-` separated part is `pod<uid>` with `_` for `-`.
fn systemd_pod_uid(slice: &str) -> Option<String> {
    let name = slice.strip_suffix(".slice")?;
    let (parents, last) = name.rsplit_once('-')?;
    if !parents.split('-').any(|p| p == "kubepods") {
        return None;
    }
    normalize_uid(&last.strip_prefix("pod")?.replace('_', "-"))
}

/// A pod UID: a UUID (8-4-4-4-12 hex digits), or 32 hex digits for static pods, whose UID is
/// a hash of their manifest.
fn normalize_uid(uid: &str) -> Option<String> {
    let uid = uid.to_ascii_lowercase();
    let bytes = uid.as_bytes();
    let uuid = bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    let hash = bytes.len() == 32 && bytes.iter().all(u8::is_ascii_hexdigit);
    (uuid || hash).then_some(uid)
}

/// The container ID in a container cgroup's name: `cri-containerd-<id>.scope`,
/// `crio-<id>.scope`, `docker-<id>.scope`, `crio-<id>` or a bare `<id>`.
fn container_id(segment: &str) -> Option<String> {
    let name = segment.strip_suffix(".scope").unwrap_or(segment);
    // conmon watches a CRI-O container from outside it; it is not the workload.
    if name.starts_with("crio-conmon-") {
        return None;
    }
    let id = RUNTIME_PREFIXES
        .iter()
        .find_map(|p| name.strip_prefix(p))
        .unwrap_or(name);
    container_hex(id)
}

/// Container IDs of containerd, CRI-O and Docker are 64 hex digits.
fn container_hex(id: &str) -> Option<String> {
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "8d5e4a7c-1f2b-4c3d-9e8f-0a1b2c3d4e5f";
    const UID_: &str = "8d5e4a7c_1f2b_4c3d_9e8f_0a1b2c3d4e5f";
    const ID: &str = "3f1c2a9b8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a3928170f6e5d4c";

    fn found(text: &str) -> ContainerRef {
        parse_cgroup(text).unwrap_or_else(|| panic!("no container in {text:?}"))
    }

    fn expected(uid: &str, id: &str) -> ContainerRef {
        ContainerRef {
            pod_uid: uid.to_owned(),
            container_id: id.to_owned(),
        }
    }

    #[test]
    fn cgroup_v2_systemd_containerd_burstable() {
        let text = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope\n"
        );
        assert_eq!(found(&text), expected(UID, ID));
    }

    #[test]
    fn cgroup_v2_systemd_guaranteed_pods_have_no_qos_slice() {
        let text =
            format!("0::/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope\n");
        assert_eq!(found(&text), expected(UID, ID));
    }

    #[test]
    fn cgroup_v2_systemd_crio_besteffort_and_conmon_is_not_a_container() {
        let pod = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice"
        );
        assert_eq!(
            found(&format!("{pod}/crio-{ID}.scope\n")),
            expected(UID, ID)
        );
        assert_eq!(
            parse_cgroup(&format!("{pod}/crio-conmon-{ID}.scope\n")),
            None
        );
    }

    #[test]
    fn cgroup_v2_cgroupfs_driver_with_bare_ids() {
        assert_eq!(
            found(&format!("0::/kubepods/pod{UID}/{ID}\n")),
            expected(UID, ID)
        );
        assert_eq!(
            found(&format!("0::/kubepods/besteffort/pod{UID}/crio-{ID}\n")),
            expected(UID, ID)
        );
    }

    #[test]
    fn cgroup_v1_cgroupfs_docker_file_with_every_hierarchy() {
        let p = format!("/kubepods/burstable/pod{UID}/{ID}");
        let text = format!(
            "12:rdma:/\n11:pids:{p}\n10:blkio:{p}\n9:devices:{p}\n8:cpuset:{p}\n7:freezer:{p}\n\
             6:cpu,cpuacct:{p}\n5:hugetlb:{p}\n4:net_cls,net_prio:{p}\n3:perf_event:{p}\n\
             2:memory:{p}\n1:name=systemd:{p}\n0::/\n"
        );
        assert_eq!(found(&text), expected(UID, ID));
    }

    #[test]
    fn cgroup_v1_systemd_docker_file() {
        let p = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/docker-{ID}.scope"
        );
        let text = format!(
            "13:misc:/\n12:freezer:{p}\n11:memory:{p}\n10:cpu,cpuacct:{p}\n9:pids:{p}\n\
             8:devices:{p}\n7:net_cls,net_prio:{p}\n6:blkio:{p}\n5:perf_event:{p}\n\
             4:hugetlb:{p}\n3:cpuset:{p}\n2:rdma:/\n1:name=systemd:{p}\n0::/system.slice/containerd.service\n"
        );
        assert_eq!(found(&text), expected(UID, ID));
    }

    #[test]
    fn containerd_literal_systemd_cgroups_path_in_cgroup_v1() {
        let text = format!(
            "11:perf_event:/kubepods-besteffort-pod{UID_}.slice:cri-containerd:{ID}\n\
             10:blkio:/system.slice/containerd.service/kubepods-besteffort-pod{UID_}.slice:cri-containerd:{ID}\n"
        );
        assert_eq!(found(&text), expected(UID, ID));
    }

    #[test]
    fn paths_relative_to_another_cgroup_namespace() {
        let text = format!(
            "0::/../../../kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope\n"
        );
        assert_eq!(found(&text), expected(UID, ID));
    }

    #[test]
    fn kind_nodes_prefix_slices_with_kubelet() {
        let text = format!(
            "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope\n"
        );
        assert_eq!(found(&text), expected(UID, ID));
    }

    #[test]
    fn static_pods_have_hash_uids() {
        let uid = "187bff14cccb94f179e943eacce55bb3";
        let text = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/cri-containerd-{ID}.scope\n"
        );
        assert_eq!(found(&text), expected(uid, ID));
    }

    #[test]
    fn sub_cgroups_of_a_container_belong_to_it() {
        let text = format!(
            "0::/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope/init.scope\n"
        );
        assert_eq!(found(&text), expected(UID, ID));
    }

    #[test]
    fn uppercase_hex_is_normalized() {
        let text = format!(
            "0::/kubepods/pod{}/{}\n",
            UID.to_ascii_uppercase(),
            ID.to_ascii_uppercase()
        );
        assert_eq!(found(&text), expected(UID, ID));
    }

    #[test]
    fn processes_outside_pod_containers_have_none() {
        for text in [
            String::new(),
            "0::/\n".to_owned(),
            "0::/init.scope\n".to_owned(),
            "0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-firefox-4242.scope\n".to_owned(),
            "0::/system.slice/containerd.service\n".to_owned(),
            "0::/system.slice/kubelet.service\n".to_owned(),
            // A plain Docker container, not a pod.
            format!("0::/system.slice/docker-{ID}.scope\n"),
            format!("12:memory:/docker/{ID}\n"),
            // The pod's own cgroup, and the pod with no container below it yet.
            format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice\n"),
            format!("0::/kubepods/burstable/pod{UID}\n"),
            // Not quite a pod or a container.
            format!("0::/kubepods/burstable/pod{}/{ID}\n", &UID[..35]),
            format!("0::/kubepods/burstable/pod{UID}/{}\n", &ID[..63]),
            format!("0::/kubepods/burstable/pod{UID}/runc-{ID}\n"),
            format!("0::/kube.slice/kube-pod{UID_}.slice/cri-containerd-{ID}.scope\n"),
            format!("0::/podruntime/kubelet/{ID}\n"),
            format!("11:perf_event:/kubepods-besteffort-pod{UID_}.slice:runc:{ID}\n"),
            "garbage without colons\n".to_owned(),
        ] {
            assert_eq!(parse_cgroup(&text), None, "{text:?}");
        }
    }
}
