//! Names from the Kubernetes API server, through kube-rs watches (list, then watch; a watch
//! that expires with 410 Gone relists):
//!
//! - Pods: all of them, for peer addresses, and this node's (`spec.nodeName`), for the local
//!   ends. Heavy fields (specs, managed fields, annotations) are dropped on arrival.
//! - Services (ClusterIP -> service), EndpointSlices (backend address -> service) and
//!   ReplicaSets (-> Deployment).
//!
//! The API server is optional. Unreachable, it is retried with a growing backoff (to 30 s); the
//! first failure is one warning, the rest are debug lines. Lookups answer from an index rebuilt
//! from the watches' stores when they changed, at most every [`REBUILD_EVERY`].
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;

pub const REBUILD_EVERY: Duration = Duration::from_secs(2);

/// A workload: the controller that owns a pod (a Deployment through its ReplicaSet).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Workload {
    /// `Deployment`, `StatefulSet`, `DaemonSet`, `Job`, `ReplicaSet`, `CronJob`...
    pub kind: Arc<str>,
    pub name: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub uid: Arc<str>,
    pub name: Arc<str>,
    pub namespace: Arc<str>,
    pub node: Option<Arc<str>>,
    pub workload: Option<Workload>,
    pub host_network: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    pub name: Arc<str>,
    pub namespace: Arc<str>,
}

/// What the API server said, indexed for lookups.
#[derive(Debug, Default)]
pub struct ApiIndex {
    pods_by_uid: HashMap<Arc<str>, Arc<PodInfo>>,
    /// Pod addresses, hostNetwork pods excluded: they share their node's address, and a flow to
    /// it cannot be told apart from one to the node or to another hostNetwork pod.
    pods_by_ip: HashMap<IpAddr, Arc<PodInfo>>,
    /// Addresses shared by hostNetwork pods (their nodes').
    host_network_ips: HashSet<IpAddr>,
    services_by_cluster_ip: HashMap<IpAddr, Arc<ServiceInfo>>,
    services_by_endpoint: HashMap<IpAddr, Arc<ServiceInfo>>,
}

impl ApiIndex {
    pub fn pod_by_uid(&self, uid: &str) -> Option<&Arc<PodInfo>> {
        self.pods_by_uid.get(uid)
    }

    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<&Arc<PodInfo>> {
        self.pods_by_ip.get(&ip)
    }

    pub fn is_host_network(&self, ip: IpAddr) -> bool {
        self.host_network_ips.contains(&ip)
    }

    /// The Service an address belongs to: its ClusterIP, or one of its endpoints.
    pub fn service_of(&self, ip: IpAddr) -> Option<&Arc<ServiceInfo>> {
        self.services_by_cluster_ip
            .get(&ip)
            .or_else(|| self.services_by_endpoint.get(&ip))
    }

    pub fn cluster_ips(&self) -> impl Iterator<Item = &IpAddr> {
        self.services_by_cluster_ip.keys()
    }

    pub fn pods(&self) -> usize {
        self.pods_by_uid.len()
    }
}

/// The watches and the index built from them.
pub struct KubeApi {
    pods: Store<Pod>,
    node_pods: Option<Store<Pod>>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    replica_sets: Store<ReplicaSet>,
    changes: Arc<AtomicU64>,
    built_at_change: AtomicU64,
    last_build: RwLock<Option<Instant>>,
    index: RwLock<Arc<ApiIndex>>,
    /// Set once every watch has listed: until then lookups may miss.
    ready: Arc<[AtomicBool; 5]>,
}

impl std::fmt::Debug for KubeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeApi").field("ready", &self.is_ready()).finish()
    }
}

impl KubeApi {
    /// Starts the watches on `runtime`. `node`: this node's name, for the node-scoped pod watch.
    pub fn start(client: kube::Client, node: Option<&str>, runtime: &tokio::runtime::Handle) -> Self {
        let changes = Arc::new(AtomicU64::new(0));
        let ready: Arc<[AtomicBool; 5]> = Arc::new(Default::default());
        let warned = Arc::new(AtomicBool::new(false));
        let watch = Watch {
            changes: Arc::clone(&changes),
            ready: Arc::clone(&ready),
            warned,
            runtime: runtime.clone(),
        };
        let pods = watch.spawn::<Pod>(0, Api::all(client.clone()), watcher::Config::default(), slim_pod);
        let node_pods = node.map(|n| {
            watch.spawn::<Pod>(
                1,
                Api::all(client.clone()),
                watcher::Config::default().fields(&format!("spec.nodeName={n}")),
                slim_pod,
            )
        });
        if node_pods.is_none() {
            ready[1].store(true, Ordering::Relaxed);
        }
        let services = watch.spawn::<Service>(2, Api::all(client.clone()), watcher::Config::default(), |s| {
            s.managed_fields_mut().clear();
            s.annotations_mut().clear();
            s.status = None;
        });
        let slices = watch.spawn::<EndpointSlice>(3, Api::all(client.clone()), watcher::Config::default(), |s| {
            s.managed_fields_mut().clear();
            s.annotations_mut().clear();
        });
        let replica_sets = watch.spawn::<ReplicaSet>(4, Api::all(client), watcher::Config::default(), |rs| {
            rs.managed_fields_mut().clear();
            rs.annotations_mut().clear();
            rs.spec = None;
            rs.status = None;
        });
        Self {
            pods,
            node_pods,
            services,
            slices,
            replica_sets,
            changes,
            built_at_change: AtomicU64::new(u64::MAX),
            last_build: RwLock::new(None),
            index: RwLock::new(Arc::new(ApiIndex::default())),
            ready,
        }
    }

    /// Whether every watch has listed at least once.
    pub fn is_ready(&self) -> bool {
        self.ready.iter().all(|r| r.load(Ordering::Relaxed))
    }

    /// The current index, rebuilt first if the watches changed and it is old enough.
    pub fn index(&self, now: Instant) -> Arc<ApiIndex> {
        let changes = self.changes.load(Ordering::Relaxed);
        let stale = self.built_at_change.load(Ordering::Relaxed) != changes;
        let due = self
            .last_build
            .read()
            .map(|t| t.is_none_or(|t| now.duration_since(t) >= REBUILD_EVERY))
            .unwrap_or(true);
        if stale && due {
            let index = Arc::new(self.build());
            if let Ok(mut slot) = self.index.write() {
                *slot = index;
            }
            if let Ok(mut t) = self.last_build.write() {
                *t = Some(now);
            }
            self.built_at_change.store(changes, Ordering::Relaxed);
        }
        self.index
            .read()
            .map(|i| Arc::clone(&i))
            .unwrap_or_else(|e| Arc::clone(&e.into_inner()))
    }

    fn build(&self) -> ApiIndex {
        let deployments: HashMap<(String, String), Workload> = self
            .replica_sets
            .state()
            .iter()
            .filter_map(|rs| {
                let owner = rs.owner_references().iter().find(|o| o.controller == Some(true))?;
                Some((
                    (rs.namespace().unwrap_or_default(), rs.name_any()),
                    Workload {
                        kind: Arc::from(owner.kind.as_str()),
                        name: Arc::from(owner.name.as_str()),
                    },
                ))
            })
            .collect();
        let mut index = ApiIndex::default();
        let node_pods = self.node_pods.as_ref().map(Store::state).unwrap_or_default();
        for pod in self.pods.state().iter().chain(node_pods.iter()) {
            let Some(info) = pod_info(pod, &deployments) else {
                continue;
            };
            let info = Arc::new(info);
            let ips = pod
                .status
                .as_ref()
                .map(|s| {
                    s.pod_ips
                        .iter()
                        .flatten()
                        .map(|p| p.ip.as_str())
                        .chain(s.pod_ip.as_deref())
                        .filter_map(|ip| ip.parse::<IpAddr>().ok())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            for ip in ips {
                if info.host_network {
                    index.host_network_ips.insert(ip);
                } else {
                    index.pods_by_ip.insert(ip, Arc::clone(&info));
                }
            }
            index.pods_by_uid.insert(Arc::clone(&info.uid), info);
        }
        for ip in &index.host_network_ips {
            index.pods_by_ip.remove(ip);
        }
        for svc in self.services.state() {
            let info = Arc::new(ServiceInfo {
                name: Arc::from(svc.name_any().as_str()),
                namespace: Arc::from(svc.namespace().unwrap_or_default().as_str()),
            });
            let Some(spec) = &svc.spec else { continue };
            for ip in spec.cluster_ips.iter().flatten().chain(spec.cluster_ip.iter()) {
                if let Ok(ip) = ip.parse::<IpAddr>() {
                    index.services_by_cluster_ip.insert(ip, Arc::clone(&info));
                }
            }
        }
        for slice in self.slices.state() {
            let Some(service) = slice.labels().get("kubernetes.io/service-name") else {
                continue;
            };
            let info = Arc::new(ServiceInfo {
                name: Arc::from(service.as_str()),
                namespace: Arc::from(slice.namespace().unwrap_or_default().as_str()),
            });
            for endpoint in &slice.endpoints {
                for address in &endpoint.addresses {
                    if let Ok(ip) = address.parse::<IpAddr>() {
                        index.services_by_endpoint.insert(ip, Arc::clone(&info));
                    }
                }
            }
        }
        index
    }
}

fn pod_info(pod: &Pod, deployments: &HashMap<(String, String), Workload>) -> Option<PodInfo> {
    let uid = pod.metadata.uid.as_deref()?;
    let namespace = pod.namespace().unwrap_or_default();
    let workload = pod
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| {
            if o.kind == "ReplicaSet" {
                if let Some(w) = deployments.get(&(namespace.clone(), o.name.clone())) {
                    return w.clone();
                }
            }
            Workload {
                kind: Arc::from(o.kind.as_str()),
                name: Arc::from(o.name.as_str()),
            }
        });
    let spec = pod.spec.as_ref();
    Some(PodInfo {
        uid: Arc::from(uid),
        name: Arc::from(pod.name_any().as_str()),
        namespace: Arc::from(namespace.as_str()),
        node: spec.and_then(|s| s.node_name.as_deref()).map(Arc::from),
        workload,
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
    })
}

/// Keeps what the index reads: names, owners, node, hostNetwork, addresses.
fn slim_pod(pod: &mut Pod) {
    pod.managed_fields_mut().clear();
    pod.annotations_mut().clear();
    if let Some(spec) = pod.spec.as_mut() {
        let (node, host_network) = (spec.node_name.take(), spec.host_network);
        *spec = Default::default();
        spec.node_name = node;
        spec.host_network = host_network;
    }
    if let Some(status) = pod.status.as_mut() {
        let (ip, ips) = (status.pod_ip.take(), status.pod_ips.take());
        *status = Default::default();
        status.pod_ip = ip;
        status.pod_ips = ips;
    }
}

struct Watch {
    changes: Arc<AtomicU64>,
    ready: Arc<[AtomicBool; 5]>,
    warned: Arc<AtomicBool>,
    runtime: tokio::runtime::Handle,
}

impl Watch {
    fn spawn<K>(&self, slot: usize, api: Api<K>, config: watcher::Config, slim: fn(&mut K)) -> Store<K>
    where
        K: kube::Resource<DynamicType = ()>
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned
            + Send
            + Sync
            + 'static,
    {
        let (store, writer) = reflector::store::<K>();
        let (changes, ready, warned) = (
            Arc::clone(&self.changes),
            Arc::clone(&self.ready),
            Arc::clone(&self.warned),
        );
        let kind = K::kind(&()).to_string();
        let stream = watcher(api, config)
            .modify(slim)
            .reflect(writer)
            // Init comes before every list attempt: let it through to the store, but not to the
            // backoff, which would otherwise reset on it and never grow
            .filter(|event| std::future::ready(!matches!(event, Ok(watcher::Event::Init))))
            .default_backoff();
        self.runtime.spawn(async move {
            futures::pin_mut!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::InitDone) => {
                        ready[slot].store(true, Ordering::Relaxed);
                        changes.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(kind, "Kubernetes watch listed");
                    }
                    Ok(_) => {
                        changes.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        if !warned.swap(true, Ordering::Relaxed) {
                            tracing::warn!(kind, error = %e, "Kubernetes API not answering: pods get their cgroup-derived attributes only until it does (retrying with backoff)");
                        } else {
                            tracing::debug!(kind, error = %e, "Kubernetes watch retrying");
                        }
                    }
                }
            }
        });
        store
    }
}
