//! Kubernetes names for both ends of a flow.
//!
//! - **Local end, no API server needed:** the socket owner's cgroup ([`cgroup_ids`]) names the
//!   pod (`k8s.pod.uid`) and the container (`container.id`) ([`cgroup_path`]).
//! - **With the API server** ([`api`]): the local pod's name, namespace, node and workload; the
//!   peer's pod, workload and Service by address; every ClusterIP becomes a NAT-reversal
//!   destination, so flows to a Service are attributed to the backend pod.
//!
//! hostNetwork pods share their node's address: a peer at such an address gets no pod
//! attributes (it could be the node or any of its hostNetwork pods), only the Service if the
//! address is one of its endpoints.
pub mod api;
pub mod cgroup_ids;
pub mod cgroup_path;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::flows::{FlowKey, FlowPair};
use crate::names;
use api::{ApiIndex, KubeApi, PodInfo};

/// `[kubernetes]` in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesSection {
    /// Attribute flows to pods: "off", "auto" (on when running in a pod, i.e.
    /// KUBERNETES_SERVICE_HOST is set), or "on".
    pub enabled: Toggle,
    /// The API server: "auto" (in-cluster service account when in a pod), "off" (cgroup-derived
    /// attributes only), or a URL such as "http://127.0.0.1:8001" (kubectl proxy).
    pub api_server: String,
    /// This node's name, for the node-scoped pod watch; empty: $NODE_NAME (the DaemonSet sets it
    /// from the downward API), else the host name.
    pub node_name: String,
    /// "pair" (a series per flow pair, with pod attributes) or "workload" (pairs with known
    /// workloads on both ends summed into one series per workload pair, no addresses).
    pub rollup: Rollup,
}

impl Default for KubernetesSection {
    fn default() -> Self {
        Self {
            enabled: Toggle::Auto,
            api_server: "auto".into(),
            node_name: String::new(),
            rollup: Rollup::Pair,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Toggle {
    Off,
    Auto,
    On,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rollup {
    Pair,
    Workload,
}

#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    #[error("kubernetes.api_server = {value} is not \"auto\", \"off\" or a URL: {reason}")]
    ApiServer { value: String, reason: String },
    #[error("the in-cluster Kubernetes configuration cannot be read ({0}); set kubernetes.api_server = \"off\" to run without names from the API server")]
    InCluster(String),
}

impl KubernetesSection {
    /// Whether pods are attributed here: "auto" means running in a pod.
    pub fn is_enabled(&self, env: impl Fn(&str) -> Option<String>) -> bool {
        match self.enabled {
            Toggle::On => true,
            Toggle::Off => false,
            Toggle::Auto => env("KUBERNETES_SERVICE_HOST").is_some(),
        }
    }

    /// The API client configuration, or `None` when the API server is not to be used.
    pub fn client_config(&self, env: impl Fn(&str) -> Option<String>) -> Result<Option<kube::Config>, KubernetesError> {
        match self.api_server.as_str() {
            "off" => Ok(None),
            "auto" if env("KUBERNETES_SERVICE_HOST").is_none() => Ok(None),
            "auto" => kube::Config::incluster()
                .map(Some)
                .map_err(|e| KubernetesError::InCluster(e.to_string())),
            url => {
                let uri = url
                    .parse()
                    .map_err(|e: http::uri::InvalidUri| KubernetesError::ApiServer {
                        value: url.to_string(),
                        reason: e.to_string(),
                    })?;
                Ok(Some(kube::Config::new(uri)))
            }
        }
    }

    pub fn node(&self, env: impl Fn(&str) -> Option<String>) -> Option<String> {
        if !self.node_name.is_empty() {
            return Some(self.node_name.clone());
        }
        env("NODE_NAME").filter(|n| !n.is_empty()).or_else(super::host_name)
    }
}

/// The Kubernetes attributes of one pair. Empty fields are not exported.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PodAttributes {
    pub pod_uid: Option<Arc<str>>,
    pub container_id: Option<Arc<str>>,
    pub pod_name: Option<Arc<str>>,
    pub namespace: Option<Arc<str>>,
    pub node_name: Option<Arc<str>>,
    pub workload_kind: Option<Arc<str>>,
    pub workload_name: Option<Arc<str>>,
    pub peer_namespace: Option<Arc<str>>,
    pub peer_pod_name: Option<Arc<str>>,
    pub peer_workload_kind: Option<Arc<str>>,
    pub peer_workload_name: Option<Arc<str>>,
    pub peer_service_name: Option<Arc<str>>,
}

impl PodAttributes {
    /// (attribute name, value) for those known, in a stable order.
    pub fn attributes(&self) -> Vec<(&'static str, &str)> {
        let local_workload = self.workload_kind.as_deref().and_then(workload_attribute);
        [
            (names::K8S_POD_UID, &self.pod_uid),
            (names::CONTAINER_ID, &self.container_id),
            (names::K8S_POD_NAME, &self.pod_name),
            (names::K8S_NAMESPACE_NAME, &self.namespace),
            (names::K8S_NODE_NAME, &self.node_name),
            (local_workload.unwrap_or(""), &self.workload_name),
            (names::PEER_K8S_NAMESPACE_NAME, &self.peer_namespace),
            (names::PEER_K8S_POD_NAME, &self.peer_pod_name),
            (names::PEER_K8S_WORKLOAD_NAME, &self.peer_workload_name),
            (names::PEER_K8S_WORKLOAD_KIND, &self.peer_workload_kind),
            (names::PEER_K8S_SERVICE_NAME, &self.peer_service_name),
        ]
        .into_iter()
        .filter(|(name, _)| !name.is_empty())
        .filter_map(|(name, value)| value.as_deref().map(|v| (name, v)))
        .collect()
    }

    /// The workload pair a series rolls up to: both ends' workloads (or the peer's Service).
    pub fn rollup_key(&self, key: &FlowKey) -> Option<WorkloadPair> {
        let local = (
            self.namespace.clone()?,
            self.workload_kind.clone()?,
            self.workload_name.clone()?,
        );
        let peer = match (
            &self.peer_workload_kind,
            &self.peer_workload_name,
            &self.peer_service_name,
        ) {
            (Some(kind), Some(name), _) => (self.peer_namespace.clone()?, Arc::clone(kind), Arc::clone(name)),
            (_, _, Some(service)) => (self.peer_namespace.clone()?, Arc::from("Service"), Arc::clone(service)),
            _ => return None,
        };
        Some(WorkloadPair {
            local,
            peer,
            service_port: key.service_port,
            role: key.role,
        })
    }
}

/// The semantic-convention attribute for a local workload of `kind`.
fn workload_attribute(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "Deployment" => names::K8S_DEPLOYMENT_NAME,
        "StatefulSet" => names::K8S_STATEFULSET_NAME,
        "DaemonSet" => names::K8S_DAEMONSET_NAME,
        "Job" => names::K8S_JOB_NAME,
        "CronJob" => names::K8S_CRONJOB_NAME,
        "ReplicaSet" => names::K8S_REPLICASET_NAME,
        _ => return None,
    })
}

/// A series key under `rollup = "workload"`: (namespace, kind, name) of each end.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WorkloadPair {
    pub local: (Arc<str>, Arc<str>, Arc<str>),
    pub peer: (Arc<str>, Arc<str>, Arc<str>),
    pub service_port: u16,
    pub role: crate::flows::Role,
}

impl WorkloadPair {
    pub fn attributes(&self) -> Vec<(&'static str, &str)> {
        let mut attrs = vec![(names::K8S_NAMESPACE_NAME, &*self.local.0)];
        if let Some(name) = workload_attribute(&self.local.1) {
            attrs.push((name, &*self.local.2));
        }
        attrs.extend([
            (names::PEER_K8S_NAMESPACE_NAME, &*self.peer.0),
            if &*self.peer.1 == "Service" {
                (names::PEER_K8S_SERVICE_NAME, &*self.peer.2)
            } else {
                (names::PEER_K8S_WORKLOAD_NAME, &*self.peer.2)
            },
        ]);
        if &*self.peer.1 != "Service" {
            attrs.push((names::PEER_K8S_WORKLOAD_KIND, &*self.peer.1));
        }
        attrs
    }
}

/// Resolves pairs to pod attributes. Shared by the export and the local views.
#[derive(Debug)]
pub struct Kubernetes {
    cgroups: Mutex<cgroup_ids::CgroupIds>,
    /// Parsed cgroup paths, by cgroup ID.
    parsed: Mutex<HashMap<u64, Option<Arc<cgroup_path::PodCgroup>>>>,
    api: Option<KubeApi>,
    rollup: Rollup,
}

/// Parsed cgroups remembered at most.
const MAX_PARSED: usize = 100_000;

impl Kubernetes {
    pub fn new(cgroup_root: PathBuf, api: Option<KubeApi>, rollup: Rollup) -> Self {
        Self {
            cgroups: Mutex::new(cgroup_ids::CgroupIds::new(cgroup_root)),
            parsed: Mutex::new(HashMap::new()),
            api,
            rollup,
        }
    }

    pub fn rollup(&self) -> Rollup {
        self.rollup
    }

    pub fn api(&self) -> Option<&KubeApi> {
        self.api.as_ref()
    }

    /// The API server's index as of now (empty without one).
    pub fn index(&self, now: Instant) -> Arc<ApiIndex> {
        self.api
            .as_ref()
            .map_or_else(|| Arc::new(ApiIndex::default()), |a| a.index(now))
    }

    fn pod_cgroup(&self, cgroup_id: u64, now: Instant) -> Option<Arc<cgroup_path::PodCgroup>> {
        let mut parsed = self.parsed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(known) = parsed.get(&cgroup_id) {
            return known.clone();
        }
        let path = self
            .cgroups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .path(cgroup_id, now)?;
        let pod = cgroup_path::parse(&path).map(Arc::new);
        if parsed.len() < MAX_PARSED {
            parsed.insert(cgroup_id, pod.clone());
        }
        pod
    }

    /// The pair's attributes, `None` when nothing is known about either end.
    pub fn attributes(&self, pair: &FlowPair, index: &ApiIndex, now: Instant) -> Option<Arc<PodAttributes>> {
        let mut a = PodAttributes::default();
        if let Some(pod) = pair.owner.cgroup_id.and_then(|id| self.pod_cgroup(id, now)) {
            a.pod_uid = Some(Arc::from(pod.pod_uid.as_str()));
            a.container_id = pod.container_id.as_deref().map(Arc::from);
            if let Some(info) = index.pod_by_uid(&pod.pod_uid) {
                local_pod(&mut a, info);
            }
        } else if let Some(info) = index.pod_by_ip(pair.key.local) {
            // a socket whose owner was not recorded (opened before the agent started)
            a.pod_uid = Some(Arc::clone(&info.uid));
            local_pod(&mut a, info);
        }
        peer(&mut a, pair.key.remote, index);
        (a != PodAttributes::default()).then(|| Arc::new(a))
    }
}

fn local_pod(a: &mut PodAttributes, info: &PodInfo) {
    a.pod_name = Some(Arc::clone(&info.name));
    a.namespace = Some(Arc::clone(&info.namespace));
    a.node_name = info.node.clone();
    if let Some(w) = &info.workload {
        a.workload_kind = Some(Arc::clone(&w.kind));
        a.workload_name = Some(Arc::clone(&w.name));
    }
}

fn peer(a: &mut PodAttributes, remote: IpAddr, index: &ApiIndex) {
    if let Some(info) = index.pod_by_ip(remote) {
        a.peer_namespace = Some(Arc::clone(&info.namespace));
        a.peer_pod_name = Some(Arc::clone(&info.name));
        if let Some(w) = &info.workload {
            a.peer_workload_kind = Some(Arc::clone(&w.kind));
            a.peer_workload_name = Some(Arc::clone(&w.name));
        }
    }
    if let Some(service) = index.service_of(remote) {
        a.peer_service_name = Some(Arc::clone(&service.name));
        a.peer_namespace.get_or_insert_with(|| Arc::clone(&service.namespace));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::Role;

    #[test]
    fn attributes_follow_the_conventions_and_skip_the_unknown() {
        let a = PodAttributes {
            pod_uid: Some("u-1".into()),
            namespace: Some("shop".into()),
            workload_kind: Some("Deployment".into()),
            workload_name: Some("web".into()),
            peer_namespace: Some("shop".into()),
            peer_service_name: Some("db".into()),
            ..Default::default()
        };
        assert_eq!(
            a.attributes(),
            vec![
                ("k8s.pod.uid", "u-1"),
                ("k8s.namespace.name", "shop"),
                ("k8s.deployment.name", "web"),
                ("flowtel.peer.k8s.namespace.name", "shop"),
                ("flowtel.peer.k8s.service.name", "db"),
            ]
        );
        let key = FlowKey {
            local: "10.0.0.1".parse().expect("ip"),
            remote: "10.0.0.2".parse().expect("ip"),
            service_port: 5432,
            role: Role::Client,
        };
        let rollup = a.rollup_key(&key).expect("both ends known");
        assert_eq!(
            rollup.attributes(),
            vec![
                ("k8s.namespace.name", "shop"),
                ("k8s.deployment.name", "web"),
                ("flowtel.peer.k8s.namespace.name", "shop"),
                ("flowtel.peer.k8s.service.name", "db"),
            ]
        );
        let no_peer = PodAttributes {
            peer_service_name: None,
            ..a
        };
        assert_eq!(no_peer.rollup_key(&key), None, "an unknown peer keeps its pair series");
    }
}
