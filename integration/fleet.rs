//! The fleet layer: the shipped Prometheus rules pass their promtool tests, are what their
//! generator writes, and localise real faults on a simulated fleet.
//!
//! The fleet: four hosts in two zones (h1, h2 in zone a behind router ra; h3, h4 in zone b
//! behind router rb; ra and rb joined by one veth, the inter-zone link). Each host is a network
//! namespace plus a cgroup of its own, runs a traffic process (a server, and clients to every
//! other host) and has its own flowtel agent attached to its cgroup with its own `[resources]`.
//! A real Prometheus scrapes the four agents and evaluates the shipped rules (alert `for:`
//! shortened to 0s). Faults come from nftables loss on the routers and one host.
mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use support::agent::BIN;
use support::*;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

const RULES: &str = "docker/prometheus/rules";
const RULE_FILES: [&str; 2] = ["flowtel-rollups.rules.yml", "flowtel-fleet.rules.yml"];

#[test]
fn every_shipped_rule_passes_its_promtool_tests() {
    let tests: Vec<PathBuf> = std::fs::read_dir(repo(RULES).join("tests"))
        .expect("rule tests")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().ends_with(".test.yml"))
        .collect();
    assert!(!tests.is_empty());
    let out = Command::new("promtool")
        .args(["test", "rules"])
        .args(&tests)
        .output()
        .expect("promtool is installed (apt-get install prometheus)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");

    // every rule is exercised by some test: its record as an expression, its alert by name
    let mut rules = BTreeSet::new();
    for file in RULE_FILES {
        let text = std::fs::read_to_string(repo(RULES).join(file)).expect("rules");
        let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("YAML");
        for group in doc["groups"].as_sequence().expect("groups") {
            for rule in group["rules"].as_sequence().expect("rules") {
                let name = rule["record"].as_str().or(rule["alert"].as_str()).expect("named rule");
                rules.insert(name.to_string());
            }
        }
    }
    let mut tested = BTreeSet::new();
    for path in &tests {
        let doc: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(path).expect("test file")).expect("YAML");
        for test in doc["tests"].as_sequence().expect("tests") {
            for check in test["promql_expr_test"].as_sequence().into_iter().flatten() {
                let expr = check["expr"].as_str().expect("expr");
                tested.insert(expr.split('{').next().unwrap_or(expr).to_string());
            }
            for check in test["alert_rule_test"].as_sequence().into_iter().flatten() {
                tested.insert(check["alertname"].as_str().expect("alertname").to_string());
            }
        }
    }
    let untested: Vec<&String> = rules.difference(&tested).collect();
    assert!(untested.is_empty(), "rules without a promtool test: {untested:?}");
    eprintln!("{} rules, every one tested by promtool", rules.len());
}

#[test]
fn the_committed_rules_are_what_the_generator_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chart = dir.path().join("chart");
    let status = Command::new("python3")
        .arg(repo(RULES).join("generate.py"))
        .arg(dir.path())
        .arg(&chart)
        .status()
        .expect("python3 runs");
    assert!(status.success());
    for file in RULE_FILES {
        let generated = std::fs::read_to_string(dir.path().join(file)).expect("generated");
        for committed in [repo(RULES).join(file), repo("docker/helm/flowtel/files").join(file)] {
            assert_eq!(
                std::fs::read_to_string(&committed).expect("committed"),
                generated,
                "{} is stale: run python3 {RULES}/generate.py",
                committed.display()
            );
        }
    }
    for test in ["rollups.test.yml", "fleet.test.yml"] {
        assert_eq!(
            std::fs::read_to_string(repo(RULES).join("tests").join(test)).expect("committed"),
            std::fs::read_to_string(dir.path().join("tests").join(test)).expect("generated"),
            "{test} is stale"
        );
    }
}

#[test]
fn the_large_fleet_profile_is_a_valid_configuration() {
    let out = Command::new(BIN)
        .args([
            "--config",
            repo("config/large-fleet.toml").to_str().expect("utf8"),
            "check",
        ])
        .env_remove("FLOWTEL_CONFIG")
        .output()
        .expect("flowtel runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

// --------------------------------------------------------------------------- the simulated fleet

const SERVICE_PORT: u16 = 9100;

/// A request/response load: a server on `port`, and two client loops to each peer, each
/// sending 20 KB and reading 1 KB per connection. Stops by itself after `seconds`.
const TRAFFIC: &str = r#"
import socket, sys, threading, time
port, peers, deadline = int(sys.argv[1]), sys.argv[2].split(","), time.time() + float(sys.argv[3])
def serve(c):
    try:
        c.settimeout(10)
        got = 0
        while got < 20000:
            b = c.recv(65536)
            if not b:
                return
            got += len(b)
        c.sendall(b"x" * 1000)
    except OSError:
        pass
    finally:
        c.close()
def server():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(256)
    while time.time() < deadline:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()
def client(peer):
    while time.time() < deadline:
        try:
            c = socket.create_connection((peer, port), timeout=5)
            c.settimeout(10)
            c.sendall(b"r" * 20000)
            while c.recv(65536):
                pass
            c.close()
        except OSError:
            time.sleep(0.1)
        time.sleep(0.02)
threading.Thread(target=server, daemon=True).start()
time.sleep(0.5)
for p in peers:
    for _ in range(2):
        threading.Thread(target=client, args=(p,), daemon=True).start()
while time.time() < deadline:
    time.sleep(1)
"#;

struct Host {
    name: &'static str,
    zone: &'static str,
    ns: String,
    addr: String,
    /// The router's end of the host's link, in the router's namespace.
    router_if: String,
    cgroup: PathBuf,
    metrics_port: u16,
}

/// Namespaces, cgroups and processes of the fleet; removed on drop, pass or fail.
struct Fleet {
    net: u8,
    routers: [String; 2],
    /// Each router's end of the inter-zone link.
    inter_zone_if: [String; 2],
    hosts: Vec<Host>,
    cgroup_root: PathBuf,
    processes: Vec<Reaped>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // processes first: a cgroup with members cannot be removed
        self.processes.clear();
        for ns in self.hosts.iter().map(|h| &h.ns).chain(self.routers.iter()) {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
        for h in &self.hosts {
            let _ = std::fs::remove_dir(&h.cgroup);
        }
        let _ = std::fs::remove_dir(&self.cgroup_root);
    }
}

fn veth(a_ns: &str, a_if: &str, a_addr: &str, b_ns: &str, b_if: &str, b_addr: &str) {
    run(
        "ip",
        &[
            "link", "add", a_if, "netns", a_ns, "type", "veth", "peer", "name", b_if, "netns", b_ns,
        ],
    );
    for (ns, ifname, addr) in [(a_ns, a_if, a_addr), (b_ns, b_if, b_addr)] {
        run_in(ns, "ip", &["addr", "add", addr, "dev", ifname]);
        run_in(ns, "ip", &["link", "set", ifname, "up"]);
    }
}

impl Fleet {
    fn new(net: u8) -> Self {
        let id = std::process::id() % 100_000;
        let cgroup_root = flowtel::sampler::cgroup2_root()
            .expect("cgroup v2 mounted")
            .join(format!("flowtel-fleet-{id}"));
        let mut fleet = Fleet {
            net,
            routers: [format!("ftl-ra-{id}"), format!("ftl-rb-{id}")],
            inter_zone_if: [format!("rab{id}"), format!("rba{id}")],
            hosts: Vec::new(),
            cgroup_root,
            processes: Vec::new(),
        };
        for (i, (name, zone)) in [("h1", "a"), ("h2", "a"), ("h3", "b"), ("h4", "b")]
            .into_iter()
            .enumerate()
        {
            fleet.hosts.push(Host {
                name,
                zone,
                ns: format!("ftl-{name}-{id}"),
                addr: format!("10.{net}.{}.2", i + 1),
                router_if: format!("r{name}{id}"),
                cgroup: fleet.cgroup_root.join(name),
                metrics_port: free_port(),
            });
        }
        for ns in fleet.routers.iter().chain(fleet.hosts.iter().map(|h| &h.ns)) {
            run("ip", &["netns", "add", ns]);
            run_in(ns, "ip", &["link", "set", "lo", "up"]);
        }
        for r in &fleet.routers {
            run_in(r, "sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
        }
        let [ra, rb] = &fleet.routers;
        veth(
            ra,
            &fleet.inter_zone_if[0],
            &format!("10.{net}.100.1/24"),
            rb,
            &fleet.inter_zone_if[1],
            &format!("10.{net}.100.2/24"),
        );
        for (i, h) in fleet.hosts.iter().enumerate() {
            let router = if h.zone == "a" { ra } else { rb };
            veth(
                &h.ns,
                &format!("eth{i}"),
                &format!("{}/24", h.addr),
                router,
                &h.router_if,
                &format!("10.{net}.{}.1/24", i + 1),
            );
            run_in(
                &h.ns,
                "ip",
                &["route", "add", "default", "via", &format!("10.{net}.{}.1", i + 1)],
            );
        }
        for (i, h) in fleet.hosts.iter().enumerate() {
            // each router reaches the other zone's hosts over the inter-zone link
            let (router, via) = if h.zone == "a" { (rb, "1") } else { (ra, "2") };
            run_in(
                router,
                "ip",
                &[
                    "route",
                    "add",
                    &format!("10.{net}.{}.0/24", i + 1),
                    "via",
                    &format!("10.{net}.100.{via}"),
                ],
            );
        }
        std::fs::create_dir_all(&fleet.cgroup_root).expect("fleet cgroup");
        for h in &fleet.hosts {
            std::fs::create_dir_all(&h.cgroup).expect("host cgroup");
        }
        fleet
    }

    /// Starts each host's traffic process inside its namespace and its cgroup.
    fn start_traffic(&mut self, seconds: u64) {
        for h in &self.hosts {
            let peers: Vec<&str> = self
                .hosts
                .iter()
                .filter(|p| p.name != h.name)
                .map(|p| p.addr.as_str())
                .collect();
            let script = format!(
                "echo $$ > {}/cgroup.procs && exec ip netns exec {} python3 -c \"$0\" {SERVICE_PORT} {} {seconds}",
                h.cgroup.display(),
                h.ns,
                peers.join(",")
            );
            self.processes.push(Reaped(
                Command::new("sh")
                    .args(["-c", &script, TRAFFIC])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("traffic starts"),
            ));
        }
    }

    /// Starts one agent per host, attached to the host's cgroup, with its own resources.
    fn start_agents(&mut self, dir: &Path) {
        let net = self.net;
        let networks: String = self
            .hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                format!(
                    "\"10.{net}.{}.0/24\" = {{ name = \"{}\", zone = \"{}\" }}\n",
                    i + 1,
                    h.name,
                    h.zone
                )
            })
            .collect();
        for h in &self.hosts {
            let config = dir.join(format!("{}.toml", h.name));
            std::fs::write(
                &config,
                format!(
                    "[sampler]\ncgroup_path = \"{}\"\npoll_interval_ms = 500\nwalk_interval_ms = 2000\n\
                     [export]\ninterval_secs = 1\n[export.prometheus]\nenabled = true\nlisten = \"127.0.0.1:{}\"\n\
                     [health]\ninterval_secs = 2\n[resources.host]\nzone = \"{}\"\n[resources.networks]\n{networks}",
                    h.cgroup.display(),
                    h.metrics_port,
                    h.zone
                ),
            )
            .expect("agent config");
            // the log goes to a file: a pipe nobody reads would stall or kill the agent
            let log = dir.join(format!("{}.log", h.name));
            self.processes.push(Reaped(
                Command::new(BIN)
                    .args(["--config", config.to_str().expect("utf8"), "run"])
                    .env_remove("FLOWTEL_CONFIG")
                    .stderr(std::fs::File::create(&log).expect("agent log"))
                    .spawn()
                    .expect("flowtel run starts"),
            ));
            wait_for(&format!("{} attached", h.name), Duration::from_secs(30), || {
                std::fs::read_to_string(&log).is_ok_and(|l| l.contains("sampler attached"))
            });
        }
    }

    /// Drops `percent`% of data packets that router `router` forwards in from `ifname`.
    fn router_loss(&self, router: &str, ifname: &str, percent: u32) {
        let rule = format!(
            "iifname \"{ifname}\" ip protocol tcp ip length > 200 numgen random mod 100 < {percent} counter drop"
        );
        nft_rule(router, "forward", "forward", &rule);
    }
}

fn nft_clear(ns: &str) {
    let _ = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "delete", "table", "inet", "flowtel_test"])
        .status();
}

/// Each firing alert as (name, fault scope, location).
fn firing(web_port: u16) -> BTreeSet<(String, String, String)> {
    let Some(body) = http_get(web_port, "/api/v1/alerts") else {
        return BTreeSet::new();
    };
    let json: Json = serde_json::from_str(&body).unwrap_or_default();
    json["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["state"] == "firing")
        .map(|a| {
            let l = &a["labels"];
            let s = |k: &str| l[k].as_str().unwrap_or_default().to_string();
            (s("alertname"), s("fault_scope"), s("location"))
        })
        .collect()
}

/// Polls the alerts until `done` holds for them, at most `timeout`; returns the time it took and
/// the alerts then.
fn alerts_until(
    web_port: u16,
    timeout: Duration,
    what: &str,
    done: impl Fn(&BTreeSet<(String, String, String)>) -> bool,
) -> (Duration, BTreeSet<(String, String, String)>) {
    let start = Instant::now();
    loop {
        let alerts = firing(web_port);
        if done(&alerts) {
            return (start.elapsed(), alerts);
        }
        assert!(
            start.elapsed() < timeout,
            "{what}: not within {timeout:?}; firing: {alerts:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// No alert fires for `how_long`.
fn quiet_for(web_port: u16, how_long: Duration, phase: &str) {
    let start = Instant::now();
    while start.elapsed() < how_long {
        let alerts = firing(web_port);
        assert!(alerts.is_empty(), "{phase}: false alarm: {alerts:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_simulated_fleet_localises_each_fault() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut fleet = Fleet::new(231);
    fleet.start_agents(dir.path());
    fleet.start_traffic(600);

    // the shipped rules, with every alert's `for:` cut to 0s so that the test need not wait
    let rules_dir = dir.path().join("rules");
    std::fs::create_dir_all(&rules_dir).expect("rules dir");
    for file in RULE_FILES {
        let text = std::fs::read_to_string(repo(RULES).join(file)).expect("rules");
        let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("YAML");
        let mut doc = doc;
        for group in doc["groups"].as_sequence_mut().expect("groups") {
            for rule in group["rules"].as_sequence_mut().expect("rules") {
                if let Some(m) = rule.as_mapping_mut() {
                    if m.contains_key("for") {
                        m.insert("for".into(), "0s".into());
                    }
                }
            }
        }
        std::fs::write(rules_dir.join(file), serde_yaml::to_string(&doc).expect("YAML")).expect("write rules");
    }
    let web_port = free_port();
    let targets: Vec<String> = fleet
        .hosts
        .iter()
        .map(|h| format!("'127.0.0.1:{}'", h.metrics_port))
        .collect();
    let prometheus_config = dir.path().join("prometheus.yml");
    std::fs::write(
        &prometheus_config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}/*.rules.yml\n\
             scrape_configs:\n  - job_name: flowtel\n    static_configs:\n      - targets: [{}]\n",
            rules_dir.display(),
            targets.join(", ")
        ),
    )
    .expect("prometheus config");
    fleet
        .processes
        .push(start_prometheus(&prometheus_config, dir.path(), web_port));

    // every agent judges every peer before any fault
    let judged = |_: &BTreeSet<(String, String, String)>| {
        http_get(
            web_port,
            "/api/v1/query?query=count(instance%3Aflowtel_health_peers_judged%3Acount%20%3E%3D%203)",
        )
        .and_then(|b| serde_json::from_str::<Json>(&b).ok())
        .and_then(|j| j["data"]["result"][0]["value"][1].as_str().map(str::to_string))
            == Some("4".into())
    };
    let (warm, _) = alerts_until(
        web_port,
        Duration::from_secs(90),
        "every host judging its 3 peers",
        judged,
    );
    eprintln!("fleet warm after {warm:?}");
    quiet_for(web_port, Duration::from_secs(15), "clean fleet");

    let addr = |name: &str| fleet.hosts.iter().find(|h| h.name == name).expect("host").addr.clone();
    let instance = |name: &str| {
        format!(
            "127.0.0.1:{}",
            fleet.hosts.iter().find(|h| h.name == name).expect("host").metrics_port
        )
    };
    let [ra, rb] = fleet.routers.clone();
    let mut report = Vec::new();

    // 1. one host's link: ra drops 10% of what h1 sends
    let h1 = fleet.hosts.iter().find(|h| h.name == "h1").expect("h1");
    fleet.router_loss(&ra, &h1.router_if, 10);
    let (t, alerts) = alerts_until(web_port, Duration::from_secs(90), "h1's link localised to h1", |a| {
        a.iter()
            .any(|(_, scope, location)| scope == "host" && *location == instance("h1"))
    });
    let h1_names = [instance("h1"), addr("h1"), format!("{}:{SERVICE_PORT}", addr("h1"))];
    assert!(
        alerts.iter().all(|(_, _, location)| h1_names.contains(location)),
        "every alert names h1: {alerts:?}"
    );
    report.push(format!("h1's link: {t:?}, {alerts:?}"));
    nft_clear(&ra);
    let (t, _) = alerts_until(web_port, Duration::from_secs(90), "h1's alerts clear", |a| a.is_empty());
    report.push(format!("h1's link repaired: clear after {t:?}"));
    quiet_for(web_port, Duration::from_secs(10), "after h1's link");

    // 2. the inter-zone link: both routers drop 10% of what crosses it
    fleet.router_loss(&ra, &fleet.inter_zone_if[0], 10);
    fleet.router_loss(&rb, &fleet.inter_zone_if[1], 10);
    let paths: BTreeSet<String> = ["a -> b", "b -> a"].into_iter().map(String::from).collect();
    let (t, alerts) = alerts_until(
        web_port,
        Duration::from_secs(90),
        "the inter-zone path localised",
        |a| {
            let found: BTreeSet<String> = a
                .iter()
                .filter(|(_, s, _)| s == "zone_path")
                .map(|(_, _, l)| l.clone())
                .collect();
            found == paths
        },
    );
    assert!(
        alerts.iter().all(|(_, scope, _)| scope == "zone_path"),
        "only the path is named: {alerts:?}"
    );
    report.push(format!("inter-zone link: {t:?}, {alerts:?}"));
    nft_clear(&ra);
    nft_clear(&rb);
    let (t, _) = alerts_until(web_port, Duration::from_secs(90), "the path's alerts clear", |a| {
        a.is_empty()
    });
    report.push(format!("inter-zone link repaired: clear after {t:?}"));
    quiet_for(web_port, Duration::from_secs(10), "after the inter-zone link");

    // 3. one server: h4 drops 10% of the requests it receives
    let h4 = fleet.hosts.iter().find(|h| h.name == "h4").expect("h4");
    nft_rule(
        &h4.ns,
        "input",
        "input",
        &format!("tcp dport {SERVICE_PORT} ip length > 200 numgen random mod 100 < 10 counter drop"),
    );
    let h4_service = format!("{}:{SERVICE_PORT}", addr("h4"));
    let (t, alerts) = alerts_until(web_port, Duration::from_secs(90), "h4's service localised", |a| {
        a.iter()
            .any(|(_, scope, location)| scope == "peer" && *location == h4_service)
    });
    assert!(
        alerts
            .iter()
            .all(|(_, _, location)| *location == h4_service || *location == instance("h4")),
        "every alert names h4: {alerts:?}"
    );
    report.push(format!("towards h4's service: {t:?}, {alerts:?}"));
    nft_clear(&h4.ns);
    let (t, _) = alerts_until(web_port, Duration::from_secs(90), "h4's alerts clear", |a| a.is_empty());
    report.push(format!("h4 repaired: clear after {t:?}"));

    eprintln!("simulated fleet:\n  {}", report.join("\n  "));
}
