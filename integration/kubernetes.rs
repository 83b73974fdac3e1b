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
const BACKEND_PORT: u16 = 8080;

/// One address family's plan for a DNAT lab: a service address, a backend behind a veth, and
/// the root side of that veth.
#[derive(Clone, Copy)]
struct Plan {
    service: &'static str,
    backend: &'static str,
    root_side: &'static str,
    prefix: u8,
    /// nftables family
    nft: &'static str,
    /// nftables address match
    daddr: &'static str,
}

const V4: Plan = Plan {
    service: SERVICE_IP,
    backend: BACKEND_IP,
    root_side: "10.77.0.1",
    prefix: 24,
    nft: "ip",
    daddr: "ip daddr",
};

const V6: Plan = Plan {
    service: "fd00:207::10",
    backend: "fd00:77::2",
    root_side: "fd00:77::1",
    prefix: 64,
    nft: "ip6",
    daddr: "ip6 daddr",
};

impl Plan {
    fn service_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.service.parse().expect("service address"), 80)
    }

    /// nftables writes an IPv6 address with a port in brackets.
    fn backend_target(&self) -> String {
        if self.nft == "ip6" {
            format!("[{}]:{BACKEND_PORT}", self.backend)
        } else {
            format!("{}:{BACKEND_PORT}", self.backend)
        }
    }
}

/// A backend namespace behind a veth from the root namespace, a route to the service address
/// through it, and a DNAT rule in the root namespace's output hook (where kube-proxy puts it for
/// host processes): service:80 -> backend:8080. All removed on drop.
struct DnatLab {
    plan: Plan,
    ns: String,
    root_if: String,
    table: String,
}

impl DnatLab {
    fn new(plan: Plan) -> Self {
        let id = std::process::id();
        let lab = Self {
            plan,
            ns: format!("flowtel-k8s-{id}"),
            root_if: format!("fk{id}a"),
            table: format!("flowtel_dnat_{id}"),
        };
        let peer_if = format!("fk{id}b");
        // addresses usable at once: no duplicate address detection on a link of two ends
        let nodad: &[&str] = if plan.nft == "ip6" { &["nodad"] } else { &[] };
        run("ip", &["netns", "add", &lab.ns]);
        run(
            "ip",
            &["link", "add", &lab.root_if, "type", "veth", "peer", "name", &peer_if],
        );
        run("ip", &["link", "set", &peer_if, "netns", &lab.ns]);
        let root_addr = format!("{}/{}", plan.root_side, plan.prefix);
        run(
            "ip",
            &[&["addr", "add", &root_addr, "dev", &lab.root_if], nodad].concat(),
        );
        run("ip", &["link", "set", &lab.root_if, "up"]);
        support::run_in(&lab.ns, "ip", &["link", "set", "lo", "up"]);
        let backend_addr = format!("{}/{}", plan.backend, plan.prefix);
        support::run_in(
            &lab.ns,
            "ip",
            &[&["addr", "add", &backend_addr, "dev", &peer_if], nodad].concat(),
        );
        support::run_in(&lab.ns, "ip", &["link", "set", &peer_if, "up"]);
        let host_route = if plan.nft == "ip6" { "128" } else { "32" };
        run(
            "ip",
            &[
                "route",
                "add",
                &format!("{}/{host_route}", plan.service),
                "dev",
                &lab.root_if,
            ],
        );
        let script = format!(
            "add table {f} {t}\n\
             add chain {f} {t} out {{ type nat hook output priority -100; policy accept; }}\n\
             add rule {f} {t} out {m} {s} tcp dport 80 dnat to {b}\n",
            f = plan.nft,
            t = lab.table,
            m = plan.daddr,
            s = plan.service,
            b = plan.backend_target(),
        );
        support::nft_script(&script, "the DNAT rule");
        lab
    }

    /// A listener on the backend's port 8080 inside the backend namespace that reads each
    /// connection to its end.
    fn backend(&self) {
        let backend: IpAddr = self.plan.backend.parse().expect("backend address");
        let listener = VethPair::in_ns(&self.ns, || {
            TcpListener::bind((backend, BACKEND_PORT)).expect("bind in the backend namespace")
        });
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { break };
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut conn, &mut std::io::sink());
                });
            }
        });
    }
}

impl Drop for DnatLab {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", self.plan.nft, &self.table])
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

/// The client-side points of `metric` whose peer is one of `peers`, in the newest export.
fn client_points(path: &std::path::Path, metric: &str, peers: &[&str]) -> Vec<FilePoint> {
    file_exports(path)
        .last()
        .map(|e| {
            e.iter()
                .filter(|p| {
                    p.metric == metric
                        && p.attr("network.tcp.handshake.role") == Some("client")
                        && p.attr("network.peer.address").is_some_and(|a| peers.contains(&a))
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

/// The newest export's value of the agent's `metric` whose `key` is `value` (0 if absent).
fn agent_figure(path: &std::path::Path, metric: &str, key: &str, value: &str) -> i64 {
    file_exports(path)
        .last()
        .and_then(|e| {
            e.iter()
                .find(|p| p.metric == metric && p.attr(key) == Some(value))
                .map(|p| p.value)
        })
        .unwrap_or(0)
}

/// `flowtel.agent.nat.reversals` on `nat_path` ("kernel" or "conntrack").
fn reversals(path: &std::path::Path, nat_path: &str) -> i64 {
    agent_figure(path, "flowtel.agent.nat.reversals", "flowtel.nat.path", nat_path)
}

fn send_to_service(plan: Plan, size: usize) {
    let mut c = std::net::TcpStream::connect(plan.service_addr()).expect("connect to the service address");
    std::io::Write::write_all(&mut c, &vec![4u8; size]).expect("write");
}

/// Three connections to the service address; the agent must key them by the backend, keep
/// the original address, collapse them into one pair, and count them as reversed in the
/// kernel.
fn dnat_flow(plan: Plan) {
    let _serial = serial();
    let lab = DnatLab::new(plan);
    lab.backend();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("metrics.jsonl");
    let service_range = if plan.nft == "ip6" {
        "fd00:207::/64"
    } else {
        "10.207.0.0/24"
    };
    let (mut agent, _log) = start_agent(&[
        ("FLOWTEL_NAT__DESTINATIONS", format!("[\"{service_range}\"]")),
        ("FLOWTEL_EXPORT__FILE_PATH", path.display().to_string()),
        ("FLOWTEL_EXPORT__INTERVAL_SECS", "1".into()),
    ]);
    for _ in 0..3 {
        send_to_service(plan, 1500);
    }
    wait_for("the backend flow exported", Duration::from_secs(10), || {
        transmitted(&backend_points(&path, "flowtel.tcp.bytes")) == 4500
    });
    stop(&mut agent);
    drop(lab);
    let points = backend_points(&path, "flowtel.tcp.bytes");
    for p in &points {
        assert_eq!(p.attr("network.peer.address"), Some(plan.backend), "{p:?}");
        assert_eq!(p.attr("flowtel.peer.original.address"), Some(plan.service), "{p:?}");
        assert_eq!(p.attr("flowtel.peer.original.port"), Some("80"), "{p:?}");
        // noted as its SYN left, in the connecting process
        assert!(p.attr("process.executable.name").is_some(), "{p:?}");
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
            .any(|p| p.metric == "flowtel.tcp.bytes" && p.attr("network.peer.address") == Some(plan.service)),
        "nothing left under the service address"
    );
    assert_eq!(
        reversals(&path, "kernel"),
        3,
        "each connection reversed in the kernel, once"
    );
    assert_eq!(
        reversals(&path, "conntrack"),
        0,
        "no conntrack lookup for a connection seen opening"
    );
}

#[test]
fn a_dnat_flow_is_attributed_to_the_backend_and_keeps_the_original_address() {
    dnat_flow(V4);
}

#[test]
fn an_ipv6_dnat_flow_is_attributed_to_the_backend_and_keeps_the_original_address() {
    dnat_flow(V6);
}

/// `flowtel.agent.dropped` for `reason`.
fn dropped(path: &std::path::Path, reason: &str) -> i64 {
    agent_figure(path, "flowtel.agent.dropped", "flowtel.drop.reason", reason)
}

/// With room for one live DNATed connection, a second one open at the same time stays under the
/// address it connected to, and is counted; nothing of it is lost. Once both have closed, the
/// room is free again: a third connection is reversed.
#[test]
fn a_full_nat_peer_map_is_counted_and_loses_no_bytes() {
    let _serial = serial();
    let lab = DnatLab::new(V4);
    lab.backend();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("metrics.jsonl");
    let (mut agent, _log) = start_agent(&[
        ("FLOWTEL_NAT__DESTINATIONS", "[\"10.207.0.0/24\"]".into()),
        ("FLOWTEL_NAT__PEER_MAP_CAPACITY", "1".into()),
        ("FLOWTEL_EXPORT__FILE_PATH", path.display().to_string()),
        ("FLOWTEL_EXPORT__INTERVAL_SECS", "1".into()),
    ]);
    let mut first = std::net::TcpStream::connect(V4.service_addr()).expect("first connection");
    let mut second = std::net::TcpStream::connect(V4.service_addr()).expect("second connection");
    std::io::Write::write_all(&mut first, &[1u8; 300]).expect("write");
    std::io::Write::write_all(&mut second, &[2u8; 500]).expect("write");
    drop(first);
    drop(second);
    let under_service = |path: &std::path::Path| transmitted(&client_points(path, "flowtel.tcp.bytes", &[SERVICE_IP]));
    wait_for("both connections' bytes exported", Duration::from_secs(10), || {
        transmitted(&backend_points(&path, "flowtel.tcp.bytes")) + under_service(&path) == 800
    });
    // the first socket's slot is freed when it is destroyed: both client closes folded
    let client_closes = |path: &std::path::Path| -> i64 {
        client_points(path, "flowtel.tcp.connections", &[SERVICE_IP, V4.backend])
            .iter()
            .filter(|p| p.attr("flowtel.tcp.connection.outcome") == Some("closed"))
            .map(|p| p.value)
            .sum()
    };
    wait_for("both client sockets closed", Duration::from_secs(10), || {
        client_closes(&path) == 2
    });
    let reversed_before_third = reversals(&path, "kernel");
    let mut third = std::net::TcpStream::connect(V4.service_addr()).expect("third connection");
    std::io::Write::write_all(&mut third, &[3u8; 700]).expect("write");
    drop(third);
    wait_for("the third connection's bytes exported", Duration::from_secs(10), || {
        transmitted(&backend_points(&path, "flowtel.tcp.bytes")) + under_service(&path) == 1500
    });
    stop(&mut agent);
    drop(lab);
    assert_eq!(reversed_before_third, 1);
    assert_eq!(
        transmitted(&backend_points(&path, "flowtel.tcp.bytes")),
        1000,
        "the first and the third, reversed"
    );
    assert_eq!(under_service(&path), 500, "the second, under the service address");
    assert_eq!(dropped(&path, "nat_unstored"), 1);
    assert_eq!(reversals(&path, "kernel"), 2);
}

/// A connection opened before the agent started: the kernel never saw its SYN, so user space
/// asks conntrack, and its bytes written afterwards still land under the backend.
#[test]
fn a_dnat_connection_that_predates_the_agent_is_reversed_through_conntrack() {
    let _serial = serial();
    let lab = DnatLab::new(V4);
    lab.backend();
    let mut early = std::net::TcpStream::connect(V4.service_addr()).expect("connect before the agent");
    std::io::Write::write_all(&mut early, &[1u8; 700]).expect("write before the agent");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("metrics.jsonl");
    let (mut agent, _log) = start_agent(&[
        ("FLOWTEL_NAT__DESTINATIONS", "[\"10.207.0.0/24\"]".into()),
        ("FLOWTEL_EXPORT__FILE_PATH", path.display().to_string()),
        ("FLOWTEL_EXPORT__INTERVAL_SECS", "1".into()),
        ("FLOWTEL_SAMPLER__WALK_INTERVAL_MS", "500".into()),
    ]);
    wait_for("the early connection adopted", Duration::from_secs(10), || {
        reversals(&path, "conntrack") == 1
    });
    std::io::Write::write_all(&mut early, &[2u8; 1200]).expect("write after the agent started");
    drop(early);
    // what the walk saw at adoption (700 bytes) and what came after (1200), under the backend
    wait_for(
        "the early connection's bytes under the backend",
        Duration::from_secs(10),
        || transmitted(&backend_points(&path, "flowtel.tcp.bytes")) == 1900,
    );
    stop(&mut agent);
    drop(lab);
    let points = backend_points(&path, "flowtel.tcp.bytes");
    assert!(!points.is_empty());
    for p in &points {
        assert_eq!(p.attr("network.peer.address"), Some(BACKEND_IP), "{p:?}");
        assert_eq!(p.attr("flowtel.peer.original.address"), Some(SERVICE_IP), "{p:?}");
    }
    assert_eq!(
        reversals(&path, "kernel"),
        0,
        "the kernel never saw this connection's SYN"
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
    let lab = DnatLab::new(V4);
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
