//! Kubernetes workload attestation: the pod and container a calling process runs in, as
//! `k8s:ns`, `k8s:sa`, `k8s:pod-label` and `k8s:container-name` selectors.
//!
//! The process's `/proc/<pid>/cgroup` names its pod's UID and its container's ID
//! ([`cgroup`]); the kubelet's pod list says which pod and container those are ([`kubelet`],
//! [`pods`]). Reading other pods' `/proc` entries needs the agent in the host's PID namespace
//! (`hostPID: true`).
//!
//! A process that is in no pod container simply has no `k8s:` selectors. The caller must check
//! afterwards that the process still exists (as the Workload API provider does with the pidfd
//! taken at accept time): otherwise the cgroup read could belong to a process that reused the
//! pid.

pub mod cgroup;
pub mod kubelet;
pub mod pods;

use std::io;
use std::path::PathBuf;

use crate::config::KubernetesConfig;

pub use cgroup::{parse_cgroup, ContainerRef};
pub use kubelet::{KubeletClient, KubeletError, KubeletOptions, KubeletUrl};
pub use pods::{PodContainer, PodList};

/// Why a process could not be attested as a pod container.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KubernetesError {
    /// The kubelet's address could not be worked out from the environment.
    #[error("{0}")]
    KubeletUrl(String),
    /// The process does not exist (any more).
    #[error("process {pid} is gone")]
    ProcessGone {
        /// The pid.
        pid: u32,
    },
    /// The process's cgroup file could not be read.
    #[error("cannot read `{}` of process {pid}: {source}", path.display())]
    Cgroup {
        /// The pid.
        pid: u32,
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The kubelet could not be asked, or does not know the container.
    #[error(transparent)]
    Kubelet(#[from] KubeletError),
}

/// Attests processes as pod containers; holds the kubelet client and its pod list cache, so
/// keep one per agent.
#[derive(Debug)]
pub struct KubernetesAttestor {
    kubelet: KubeletClient,
    proc_root: PathBuf,
}

impl KubernetesAttestor {
    /// An attestor for the `[kubernetes]` table of the agent's configuration. Without a
    /// `kubelet_url`, the kubelet is found from the `KUBELET_HOST` or `NODE_NAME` environment
    /// variables (see [`KubeletUrl::from_env`]).
    ///
    /// # Errors
    ///
    /// [`KubernetesError::KubeletUrl`] if the environment names no usable host, and
    /// [`KubeletError::Ca`] (wrapped) if the CA file cannot be used.
    pub fn from_config(config: &KubernetesConfig) -> Result<Self, KubernetesError> {
        Self::from_config_with_env(config, |name| std::env::var(name).ok())
    }

    /// As [`KubernetesAttestor::from_config`], with `lookup` mapping environment variable
    /// names to values.
    ///
    /// # Errors
    ///
    /// As [`KubernetesAttestor::from_config`].
    pub fn from_config_with_env(
        config: &KubernetesConfig,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, KubernetesError> {
        let url = match &config.kubelet_url {
            Some(url) => url.clone(),
            None => KubeletUrl::from_env(lookup).map_err(KubernetesError::KubeletUrl)?,
        };
        let mut options = KubeletOptions::new(url);
        options.token_path.clone_from(&config.token_path);
        options.ca_path.clone_from(&config.ca_path);
        options.skip_verification = config.skip_kubelet_verification;
        Ok(Self::new(KubeletClient::new(options)?))
    }

    /// An attestor asking `kubelet`, reading processes under `/proc`.
    pub fn new(kubelet: KubeletClient) -> Self {
        Self {
            kubelet,
            proc_root: PathBuf::from("/proc"),
        }
    }

    /// Reads processes under `root` instead of `/proc`; for tests.
    #[must_use]
    pub fn with_proc_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.proc_root = root.into();
        self
    }

    /// The kubelet client.
    pub fn kubelet(&self) -> &KubeletClient {
        &self.kubelet
    }

    /// The pod container process `pid` runs in, according to its cgroup file; `None` if it
    /// runs in none.
    ///
    /// # Errors
    ///
    /// [`KubernetesError::ProcessGone`] if there is no such process,
    /// [`KubernetesError::Cgroup`] if its cgroup file cannot be read.
    pub fn container_of(&self, pid: u32) -> Result<Option<ContainerRef>, KubernetesError> {
        let path = cgroup::cgroup_path(&self.proc_root, pid);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(parse_cgroup(&text)),
            Err(e)
                if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) =>
            {
                Err(KubernetesError::ProcessGone { pid })
            }
            Err(source) => Err(KubernetesError::Cgroup { pid, path, source }),
        }
    }

    /// The pod container process `pid` runs in, as the kubelet describes it; `None` if the
    /// process runs in no pod container. [`PodContainer::selectors`] gives its selectors.
    ///
    /// # Errors
    ///
    /// As [`KubernetesAttestor::container_of`], and the [`KubeletError`]s, among them
    /// [`KubeletError::ContainerNotFound`] when the kubelet does not know the container.
    pub async fn attest(&self, pid: u32) -> Result<Option<PodContainer>, KubernetesError> {
        let Some(container) = self.container_of(pid)? else {
            return Ok(None);
        };
        let found = self
            .kubelet
            .find(&container.pod_uid, &container.container_id)
            .await?;
        tracing::debug!(
            pid,
            namespace = %found.namespace,
            pod = %found.pod_name,
            container = %found.container_name,
            "attested a pod container"
        );
        Ok(Some(found))
    }
}

#[cfg(test)]
mod tests;
