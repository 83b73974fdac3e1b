//! Kubernetes names and NAT reversal.
//!
//! - NAT for real: in the test's own namespace and veth, an nftables DNAT rule maps a "service"
//!   address to a backend namespace; a client connects to the service address, and the agent
//!   must attribute the flow to the backend and keep the original address.
//! - The API part runs against an in-process fake API server (`support::fake_kube`): add,
//!   update and delete events, a watch expired with 410 Gone (relist), and the API server
//!   unreachable at start.
//! - End to end: a client process in a kubelet-shaped cgroup connects to a ClusterIP that the
//!   fake API server lists; the exported flow carries both ends' pods, workloads and Service.
mod support;

use std::net::{IpAddr, TcpListener};
use std::process::Command;
use std::time::{Duration, Instant};

use flowtel::enrich::kubernetes::api::KubeApi;
use support::agent::{file_exports, lines, start_agent, stop, FilePoint};
use support::fake_kube::{self, FakeKube, PODS, REPLICA_SETS, SERVICES, SLICES};
use support::{free_port, run, runtime, serial, wait_for, VethPair};

const SERVICE_IP: &str = "10.207.0.10";
const BACKEND_IP: &str = "10.77.0.2";
const ROOT_SIDE_IP: &str = "10.77.0.1";
const BACKEND_PORT: u16 = 8080;

/// A backend namespace behind a veth from the root namespace, a route to the service address
/// through it, and a DNAT rule in the root namespace's output hook (where kube-proxy puts it for
/// host processes): SERVICE_IP:80 -> BACKEND_IP:8080. All removed on drop.
struct DnatLab {
    ns: String,
    root_if: String,
    table: String,
}

impl DnatLab {
    fn new() -> Self {
        let id = std::process::id();
        let lab = Self {
            ns: format!("flowtel-k8s-{id}"),
            root_if: format!("fk{id}a"),
            table: format!("flowtel_dnat_{id}"),
        };
        let peer_if = format!("fk{id}b");
        run("ip", &["netns", "add", &lab.ns]);
        run(
            "ip",
            &["link", "add", &lab.root_if, "type", "veth", "peer", "name", &peer_if],
        );
        run("ip", &["link", "set", &peer_if, "netns", &lab.ns]);
        run(
            "ip",
            &["addr", "add", &format!("{ROOT_SIDE_IP}/24"), "dev", &lab.root_if],
        );
        run("ip", &["link", "set", &lab.root_if, "up"]);
        support::run_in(&lab.ns, "ip", &["link", "set", "lo", "up"]);
        support::run_in(
            &lab.ns,
            "ip",
            &["addr", "add", &format!("{BACKEND_IP}/24"), "dev", &peer_if],
        );
        support::run_in(&lab.ns, "ip", &["link", "set", &peer_if, "up"]);
        run(
            "ip",
            &["route", "add", &format!("{SERVICE_IP}/32"), "dev", &lab.root_if],
        );
        let script = format!(
            "add table ip {t}\n\
             add chain ip {t} out {{ type nat hook output priority -100; policy accept; }}\n\
             add rule ip {t} out ip daddr {SERVICE_IP} tcp dport 80 dnat to {BACKEND_IP}:{BACKEND_PORT}\n",
            t = lab.table
        );
        let mut nft = Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("nft runs");
        std::io::Write::write_all(&mut nft.stdin.take().expect("stdin"), script.as_bytes()).expect("nft script");
        assert!(nft.wait().expect("nft").success(), "the DNAT rule");
        lab
    }

    /// A listener on BACKEND_IP:8080 inside the backend namespace that reads each connection to
    /// its end.
    fn backend(&self) {
        let listener = VethPair::in_ns(&self.ns, || {
            TcpListener::bind((BACKEND_IP, BACKEND_PORT)).expect("bind in the backend namespace")
        });
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { break };
                let _ = std::io::copy(&mut conn, &mut std::io::sink());
            }
        });
    }
}

impl Drop for DnatLab {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", &self.table])
            .status();
        // deleting the namespace deletes the veth pair, and the route with it
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = Command::new("ip").args(["link", "del", &self.root_if]).status();
    }
}

/// The client-side point of `metric` whose peer is the backend, in the newest export.
fn backend_points(path: &std::path::Path, metric: &str) -> Vec<FilePoint> {
    file_exports(path)
        .last()
        .map(|e| {
            e.iter()
                .filter(|p| {
                    p.metric == metric
                        && p.attr("network.tcp.handshake.role") == Some("client")
                        && p.attr("server.port") == Some(&BACKEND_PORT.to_string())
                })
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

fn transmitted(points: &[FilePoint]) -> i64 {
    points
        .iter()
        .filter(|p| p.attr("network.io.direction") == Some("transmit"))
        .map(|p| p.value)
        .sum()
}

fn send_to_service(size: usize) {
    let mut c = std::net::TcpStream::connect((SERVICE_IP, 80)).expect("connect to the service address");
    std::io::Write::write_all(&mut c, &vec![4u8; size]).expect("write");
}

#[test]
fn a_dnat_flow_is_attributed_to_the_backend_and_keeps_the_original_address() {
    let _serial = serial();
    let lab = DnatLab::new();
    lab.backend();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("metrics.jsonl");
    let (mut agent, _log) = start_agent(&[
        ("FLOWTEL_NAT__DESTINATIONS", "[\"10.207.0.0/24\"]".into()),
        ("FLOWTEL_EXPORT__FILE_PATH", path.display().to_string()),
        ("FLOWTEL_EXPORT__INTERVAL_SECS", "1".into()),
    ]);
    for _ in 0..3 {
        send_to_service(1500);
    }
    wait_for("the backend flow exported", Duration::from_secs(10), || {
        transmitted(&backend_points(&path, "flowtel.tcp.bytes")) == 4500
    });
    stop(&mut agent);
    drop(lab);
    let points = backend_points(&path, "flowtel.tcp.bytes");
    for p in &points {
        assert_eq!(p.attr("network.peer.address"), Some(BACKEND_IP), "{p:?}");
        assert_eq!(p.attr("flowtel.peer.original.address"), Some(SERVICE_IP), "{p:?}");
        assert_eq!(p.attr("flowtel.peer.original.port"), Some("80"), "{p:?}");
    }
    let connections: i64 = backend_points(&path, "flowtel.tcp.connections")
        .iter()
        .filter(|p| p.attr("flowtel.tcp.connection.outcome") == Some("established"))
        .map(|p| p.value)
        .sum();
    assert_eq!(connections, 3, "three connections collapse into one pair again");
    let exports = file_exports(&path);
    let last = exports.last().expect("exports");
    assert!(
        !last
            .iter()
            .any(|p| p.metric == "flowtel.tcp.bytes" && p.attr("network.peer.address") == Some(SERVICE_IP)),
        "nothing left under the service address"
    );
}

fn client(port: u16) -> kube::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    kube::Client::try_from(kube::Config::new(
        format!("http://127.0.0.1:{port}").parse().expect("url"),
    ))
    .expect("client")
}

fn index_eventually(
    api: &KubeApi,
    what: &str,
    mut check: impl FnMut(&flowtel::enrich::kubernetes::api::ApiIndex) -> bool,
) {
    let start = Instant::now();
    loop {
        // the index rebuilds at most every REBUILD_EVERY: ask with a clock that has moved on
        let index = api.index(Instant::now() + Duration::from_secs(3600));
        if check(&index) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{what}: not within 20 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_watches_follow_adds_updates_deletes_and_relist_after_410() {
    let fake = FakeKube::default();
    fake.apply(REPLICA_SETS, fake_kube::replica_set("shop", "web-7d4b9", "web"));
    fake.apply(
        PODS,
        fake_kube::pod(
            "shop",
            "web-7d4b9-a",
            "uid-a",
            "node-1",
            "10.1.0.1",
            Some(("ReplicaSet", "web-7d4b9")),
        ),
    );
    fake.apply(SERVICES, fake_kube::service("shop", "web", "10.96.0.10"));
    fake.apply(SLICES, fake_kube::endpoint_slice("shop", "web", &["10.1.0.1"]));
    let runtime = runtime();
    let port = free_port();
    fake.serve(&runtime, port);
    let api = {
        let _guard = runtime.enter();
        KubeApi::start(client(port), Some("node-1"), runtime.handle())
    };
    let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
    index_eventually(&api, "the initial lists", |i| {
        i.pod_by_ip(ip("10.1.0.1")).is_some_and(|p| {
            p.workload
                .as_ref()
                .is_some_and(|w| &*w.kind == "Deployment" && &*w.name == "web")
        }) && i.service_of(ip("10.96.0.10")).is_some_and(|s| &*s.name == "web")
            && i.service_of(ip("10.1.0.1")).is_some_and(|s| &*s.name == "web")
    });
    assert!(api.is_ready());

    // add, then update (the pod moves to another address), then delete
    fake.apply(
        PODS,
        fake_kube::pod(
            "shop",
            "db-0",
            "uid-db",
            "node-2",
            "10.1.0.9",
            Some(("StatefulSet", "db")),
        ),
    );
    index_eventually(&api, "an added pod", |i| {
        i.pod_by_ip(ip("10.1.0.9"))
            .is_some_and(|p| &*p.name == "db-0" && p.workload.as_ref().is_some_and(|w| &*w.kind == "StatefulSet"))
    });
    fake.apply(
        PODS,
        fake_kube::pod(
            "shop",
            "db-0",
            "uid-db",
            "node-2",
            "10.1.0.10",
            Some(("StatefulSet", "db")),
        ),
    );
    index_eventually(&api, "an updated pod", |i| {
        i.pod_by_ip(ip("10.1.0.10")).is_some() && i.pod_by_ip(ip("10.1.0.9")).is_none()
    });
    fake.delete(PODS, "shop", "db-0");
    index_eventually(&api, "a deleted pod", |i| {
        i.pod_by_ip(ip("10.1.0.10")).is_none() && i.pod_by_uid("uid-db").is_none()
    });

    // hostNetwork pods share their node's address: never a peer pod
    fake.apply(
        PODS,
        fake_kube::host_network_pod("kube-system", "proxy-x", "uid-proxy", "node-1", "192.168.5.5"),
    );
    index_eventually(&api, "a hostNetwork pod", |i| {
        i.is_host_network(ip("192.168.5.5"))
            && i.pod_by_ip(ip("192.168.5.5")).is_none()
            && i.pod_by_uid("uid-proxy").is_some()
    });

    // the watch expires (410 Gone) after the list changed behind it: only a relist sees it
    let lists_before = fake
        .requests()
        .iter()
        .filter(|r| r.starts_with(SERVICES) && !r.contains("watch=true"))
        .count();
    fake.replace_behind_watches_and_expire(SERVICES, vec![fake_kube::service("shop", "api", "10.96.0.20")]);
    index_eventually(&api, "the relisted services", |i| {
        i.service_of(ip("10.96.0.20")).is_some_and(|s| &*s.name == "api") && i.service_of(ip("10.96.0.10")).is_none()
    });
    let lists_after = fake
        .requests()
        .iter()
        .filter(|r| r.starts_with(SERVICES) && !r.contains("watch=true"))
        .count();
    assert!(lists_after > lists_before, "a relist after 410: {:?}", fake.requests());
    // the node-scoped pod watch asked the API server for this node only
    assert!(fake
        .requests()
        .iter()
        .any(|r| r.starts_with(PODS) && r.contains("fieldSelector=spec.nodeName%3Dnode-1")));
}

#[test]
fn an_api_server_unreachable_at_start_is_waited_for() {
    let fake = FakeKube::default();
    fake.apply(
        PODS,
        fake_kube::pod("shop", "late-0", "uid-late", "node-1", "10.1.0.7", None),
    );
    let runtime = runtime();
    let port = free_port();
    let api = {
        let _guard = runtime.enter();
        KubeApi::start(client(port), Some("node-1"), runtime.handle())
    };
    std::thread::sleep(Duration::from_secs(3));
    assert!(!api.is_ready());
    assert_eq!(api.index(Instant::now()).pods(), 0);
    fake.serve(&runtime, port);
    let ip: IpAddr = "10.1.0.7".parse().expect("ip");
    // the backoff grows while the server is away (up to 30 s): allow for one long step
    let start = Instant::now();
    loop {
        if api
            .index(Instant::now() + Duration::from_secs(3600))
            .pod_by_ip(ip)
            .is_some()
        {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(40), "never recovered");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An agent with the API server unreachable: cgroup-derived attributes only, one warning.
#[test]
fn an_unreachable_api_server_is_one_warning_not_a_stream() {
    let _serial = serial();
    let (mut agent, log) = start_agent(&[
        ("FLOWTEL_KUBERNETES__ENABLED", "on".into()),
        (
            "FLOWTEL_KUBERNETES__API_SERVER",
            format!("http://127.0.0.1:{}", free_port()),
        ),
        ("FLOWTEL_KUBERNETES__NODE_NAME", "node-1".into()),
    ]);
    std::thread::sleep(Duration::from_secs(6));
    assert!(agent.0.try_wait().expect("status").is_none(), "still running");
    stop(&mut agent);
    let warnings = lines(&log)
        .iter()
        .filter(|l| l.contains("WARN") && l.contains("Kubernetes"))
        .count();
    assert_eq!(warnings, 1, "{:?}", lines(&log));
}

/// A kubelet-shaped cgroup under a test parent; the pod's directories are removed on drop.
struct PodCgroup {
    root: std::path::PathBuf,
    leaf: std::path::PathBuf,
}

impl PodCgroup {
    fn new(uid: &str, container: &str) -> Self {
        let cgroup_root = flowtel::sampler::cgroup2_root().expect("cgroup2");
        let root = cgroup_root.join(format!("flowtel-test-{}", std::process::id()));
        let leaf = root
            .join("kubepods.slice/kubepods-besteffort.slice")
            .join(format!("kubepods-besteffort-pod{}.slice", uid.replace('-', "_")))
            .join(format!("cri-containerd-{container}.scope"));
        std::fs::create_dir_all(&leaf).expect("create the pod's cgroup");
        Self { root, leaf }
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        let mut dir = self.leaf.clone();
        while dir.starts_with(&self.root) {
            let _ = std::fs::remove_dir(&dir);
            if !dir.pop() {
                break;
            }
        }
    }
}

fn pod_flow(rollup: &str) -> Vec<FilePoint> {
    const UID: &str = "0c1d2e3f-4a5b-4c6d-8e9f-a0b1c2d3e4f5";
    let container = "ab".repeat(32);
    let lab = DnatLab::new();
    lab.backend();
    let cgroup = PodCgroup::new(UID, &container);
    let fake = FakeKube::default();
    fake.apply(REPLICA_SETS, fake_kube::replica_set("shop", "client-5f6d", "client"));
    fake.apply(REPLICA_SETS, fake_kube::replica_set("shop", "web-7d4b9", "web"));
    fake.apply(
        PODS,
        fake_kube::pod(
            "shop",
            "client-5f6d-x1",
            UID,
            "node-1",
            "10.244.0.5",
            Some(("ReplicaSet", "client-5f6d")),
        ),
    );
    fake.apply(
        PODS,
        fake_kube::pod(
            "shop",
            "web-7d4b9-y2",
            "uid-web",
            "node-2",
            BACKEND_IP,
            Some(("ReplicaSet", "web-7d4b9")),
        ),
    );
    fake.apply(SERVICES, fake_kube::service("shop", "web", SERVICE_IP));
    fake.apply(SLICES, fake_kube::endpoint_slice("shop", "web", &[BACKEND_IP]));
    let runtime = runtime();
    let api_port = free_port();
    fake.serve(&runtime, api_port);

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("metrics.jsonl");
    let (mut agent, log) = start_agent(&[
        ("FLOWTEL_KUBERNETES__ENABLED", "on".into()),
        ("FLOWTEL_KUBERNETES__API_SERVER", format!("http://127.0.0.1:{api_port}")),
        ("FLOWTEL_KUBERNETES__NODE_NAME", "node-1".into()),
        ("FLOWTEL_KUBERNETES__ROLLUP", rollup.into()),
        ("FLOWTEL_EXPORT__FILE_PATH", path.display().to_string()),
        ("FLOWTEL_EXPORT__INTERVAL_SECS", "1".into()),
    ]);
    // the ClusterIP reaches the kernel's NAT list from the API server's Service
    wait_for("the ClusterIP as a NAT destination", Duration::from_secs(20), || {
        lines(&log).iter().any(|l| l.contains("NAT destinations updated"))
    });
    // the client runs inside the pod's cgroup: its socket's owner is the pod
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec python3 -c 'import socket; s = socket.create_connection((\"{SERVICE_IP}\", 80)); s.sendall(b\"x\" * 2500); s.close()'",
            cgroup.leaf.display()
        ))
        .status()
        .expect("the pod's client runs");
    assert!(status.success());
    wait_for("the pod's flow exported", Duration::from_secs(15), || {
        transmitted(&backend_points(&path, "flowtel.tcp.bytes")) == 2500
    });
    stop(&mut agent);
    drop(cgroup);
    drop(lab);
    backend_points(&path, "flowtel.tcp.bytes")
}

#[test]
fn a_pods_flow_to_a_service_carries_both_ends_names() {
    let _serial = serial();
    let points = pod_flow("pair");
    assert!(!points.is_empty());
    let expect = [
        ("network.peer.address", BACKEND_IP),
        ("flowtel.peer.original.address", SERVICE_IP),
        ("k8s.pod.uid", "0c1d2e3f-4a5b-4c6d-8e9f-a0b1c2d3e4f5"),
        ("container.id", &"ab".repeat(32)),
        ("k8s.pod.name", "client-5f6d-x1"),
        ("k8s.namespace.name", "shop"),
        ("k8s.node.name", "node-1"),
        ("k8s.deployment.name", "client"),
        ("flowtel.peer.k8s.namespace.name", "shop"),
        ("flowtel.peer.k8s.pod.name", "web-7d4b9-y2"),
        ("flowtel.peer.k8s.workload.name", "web"),
        ("flowtel.peer.k8s.workload.kind", "Deployment"),
        ("flowtel.peer.k8s.service.name", "web"),
    ];
    for p in &points {
        for (key, value) in expect {
            assert_eq!(p.attr(key), Some(value), "{key} on {p:?}");
        }
    }
}

#[test]
fn the_workload_rollup_sums_pairs_into_workload_series_without_addresses() {
    let _serial = serial();
    let points = pod_flow("workload");
    assert!(!points.is_empty());
    for p in &points {
        assert_eq!(p.attr("network.peer.address"), None, "no addresses: {p:?}");
        assert_eq!(p.attr("k8s.pod.name"), None, "no pod names: {p:?}");
        assert_eq!(p.attr("k8s.deployment.name"), Some("client"), "{p:?}");
        assert_eq!(p.attr("flowtel.peer.k8s.workload.name"), Some("web"), "{p:?}");
        assert_eq!(p.attr("flowtel.peer.k8s.workload.kind"), Some("Deployment"), "{p:?}");
    }
}
