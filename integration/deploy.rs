//! What ships under docker/ checked for real wherever it can run here: every dashboard query
//! against a real Prometheus scraping a live agent, the systemd unit's capability set, the Debian
//! package, and the compose file, collector pipeline, Kubernetes manifests and Helm chart through
//! real parsers and validators. No Docker engine, Kubernetes or Grafana runs here.
mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize as _;
use serde_json::Value as Json;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_flowtel");

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

// ------------------------------------------------------------------------------------ dashboards

/// Every PromQL expression of a dashboard, and its variables' `label_values` queries.
fn dashboard_queries(dashboard: &Json) -> (Vec<String>, Vec<String>) {
    fn walk(panels: &Json, out: &mut Vec<String>) {
        for p in panels.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    out.push(expr.to_string());
                }
            }
            walk(&p["panels"], out);
        }
    }
    let mut exprs = Vec::new();
    walk(&dashboard["panels"], &mut exprs);
    let variables = dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["definition"].as_str().map(str::to_string))
        .collect();
    (exprs, variables)
}

/// Grafana's variables as a user with every "All" selected sees them.
fn substitute(expr: &str, dashboard: &Json) -> String {
    let mut out = expr
        .replace("$__rate_interval", "20s")
        .replace("$__range", "2m")
        .replace("$__interval", "5s");
    for v in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        let name = v["name"].as_str().unwrap_or_default();
        let value = match v["type"].as_str() {
            Some("custom") => v["current"]["value"].as_str().unwrap_or("10").to_string(),
            _ => ".*".to_string(),
        };
        out = out
            .replace(&format!("${{{name}}}"), &value)
            .replace(&format!("${name}\""), &format!("{value}\""))
            .replace(&format!("${name},"), &format!("{value},"));
    }
    assert!(
        !out.contains("$__") && !out.contains("$monitor") && !out.contains("$category"),
        "unsubstituted variable in {out}"
    );
    out
}

fn prometheus_query(web_port: u16, query: &str) -> Result<usize, String> {
    let url = format!(
        "/api/v1/query?query={}",
        percent_encoding::utf8_percent_encode(query, percent_encoding::NON_ALPHANUMERIC)
    );
    let body = http_get(web_port, &url).ok_or("Prometheus did not answer")?;
    let json: Json = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    if json["status"] != "success" {
        return Err(format!("{}: {}", json["errorType"], json["error"]));
    }
    Ok(json["data"]["result"].as_array().map_or(0, Vec::len))
}

/// `label_values(metric, label)`: some series of the metric must carry the label.
fn prometheus_label_values(web_port: u16, definition: &str) -> Result<usize, String> {
    let (metric, label) = definition
        .strip_prefix("label_values(")
        .and_then(|s| s.strip_suffix(')'))
        .and_then(|s| s.split_once(','))
        .ok_or_else(|| format!("not a label_values(metric, label) query: {definition}"))?;
    let (metric, label) = (metric.trim(), label.trim());
    prometheus_query(web_port, &format!("count by ({label}) ({metric}{{{label}!=\"\"}})"))
}

#[test]
fn every_dashboard_query_returns_data_from_a_live_agent() {
    let _serial = serial();
    let hub = Hub::new(223, 2);
    // spoke 0 is app-b in another zone, spoke 1 the database, lossy
    let (b, db) = (&hub.spokes[0], &hub.spokes[1]);
    VethPair::nft_input_rule(
        &db.ns,
        &format!(
            "ip saddr {} tcp dport 7000 tcp flags & (syn|fin|rst) == 0 numgen random mod 100 < 12 counter drop",
            db.hub_addr
        ),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let (metrics_port, probes_port, web_port) = (free_port(), free_port(), free_port());
    let config = dir.path().join("flowtel.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[sampler]
poll_interval_ms = 500
[export]
interval_secs = 1
[export.prometheus]
enabled = true
listen = "127.0.0.1:{metrics_port}"
[probes]
enabled = true
listen = "127.0.0.1:{probes_port}"
[health]
interval_secs = 1
[resources.host]
zone = "zone-a"
[resources.networks]
"10.223.0.0/16" = {{ name = "app-a", vpc = "vpc-1", zone = "zone-a" }}
"{b}/32" = {{ name = "app-b", vpc = "vpc-1", zone = "zone-b" }}
"{db}/32" = {{ name = "db", vpc = "vpc-1", zone = "zone-a" }}
[[monitors]]
name = "app-to-b"
local = [{{ subnet = "app-a" }}]
remote = [{{ subnet = "app-b" }}]
[[monitors]]
name = "app-to-db"
local = [{{ subnet = "app-a" }}]
remote = [{{ subnet = "db" }}]
"#,
            b = b.addr,
            db = db.addr
        ),
    )
    .expect("flowtel config");
    let prometheus_config = dir.path().join("prometheus.yml");
    std::fs::write(
        &prometheus_config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}/*.rules.yml\n\
             scrape_configs:\n  - job_name: flowtel\n    scrape_interval: 1s\n    \
             static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n",
            repo("docker/prometheus/rules").display()
        ),
    )
    .expect("prometheus config");
    let _prometheus = start_prometheus(&prometheus_config, dir.path(), web_port);
    let mut agent = Reaped(
        Command::new(BIN)
            .args(["--config", config.to_str().expect("utf8"), "run"])
            // the fleet dashboard's cluster variable reads it from target_info
            .env("OTEL_RESOURCE_ATTRIBUTES", "k8s.cluster.name=test-cluster")
            .stderr(Stdio::piped())
            .spawn()
            .expect("flowtel run starts"),
    );
    let _log = wait_attached(&mut agent.0);
    let _traffic = Traffic::start_with(&hub, 7000, 2_000, 200_000, Duration::from_millis(50), 2);

    // the probes of a running agent
    let deadline = Instant::now() + Duration::from_secs(20);
    let ready = loop {
        if let Some((200, body)) = http_status(probes_port, "/readyz") {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "never ready: {:?}",
            http_status(probes_port, "/readyz")
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let ready: Json = serde_json::from_str(&ready).expect("JSON body");
    assert_eq!(
        (ready["ok"].as_bool(), ready["attached"].as_bool()),
        (Some(true), Some(true))
    );
    assert_eq!(http_status(probes_port, "/healthz").map(|r| r.0), Some(200));
    assert_eq!(http_status(probes_port, "/nope").map(|r| r.0), Some(404));

    let mut dashboards = Vec::new();
    for entry in std::fs::read_dir(repo("docker/grafana/dashboards")).expect("dashboards") {
        let path = entry.expect("entry").path();
        let json: Json = serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("dashboard JSON");
        dashboards.push((path, json));
    }
    assert_eq!(
        dashboards.len(),
        5,
        "overview, top contributors, explorer, topology, fleet"
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    // the rates need a few scrapes, health needs its baselines: retry until all answer
    let queries = loop {
        let mut failures = BTreeSet::new();
        let mut queries = 0;
        for (path, dashboard) in &dashboards {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let (exprs, variables) = dashboard_queries(dashboard);
            for expr in exprs {
                queries += 1;
                let q = substitute(&expr, dashboard);
                match prometheus_query(web_port, &q) {
                    Ok(0) => failures.insert(format!("{name}: no data: {q}")),
                    Ok(_) => false,
                    Err(e) => failures.insert(format!("{name}: {e}: {q}")),
                };
            }
            for v in variables {
                queries += 1;
                match prometheus_label_values(web_port, &v) {
                    Ok(0) => failures.insert(format!("{name}: variable without values: {v}")),
                    Ok(_) => false,
                    Err(e) => failures.insert(format!("{name}: {e}: {v}")),
                };
            }
        }
        if failures.is_empty() {
            break queries;
        }
        // a query that does not parse never will: fail at once
        let parse_errors: Vec<&String> = failures.iter().filter(|f| f.contains("bad_data")).collect();
        assert!(parse_errors.is_empty(), "{parse_errors:#?}");
        assert!(
            Instant::now() < deadline,
            "{} of {queries} dashboard queries failed:\n{}",
            failures.len(),
            failures.into_iter().collect::<Vec<_>>().join("\n")
        );
        std::thread::sleep(Duration::from_secs(2));
    };
    assert!(queries >= 40, "{queries} queries checked");
}

// ------------------------------------------------------------------------- systemd capabilities

/// The unit's AmbientCapabilities, as setpriv spells them (`+bpf,+perfmon,...`).
fn unit_capabilities() -> String {
    let unit = std::fs::read_to_string(repo("docker/systemd/flowtel.service")).expect("unit");
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("AmbientCapabilities in the unit");
    let bounding = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("CapabilityBoundingSet in the unit");
    assert_eq!(line, bounding, "ambient and bounding sets agree");
    line.split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_ascii_lowercase()))
        .collect::<Vec<_>>()
        .join(",")
}

/// The unit's SystemCallFilter= line, as written.
fn unit_system_call_filter() -> String {
    let unit = std::fs::read_to_string(repo("docker/systemd/flowtel.service")).expect("unit");
    unit.lines()
        .find_map(|l| l.strip_prefix("SystemCallFilter="))
        .expect("SystemCallFilter in the unit")
        .to_string()
}

/// The agent as the unit runs it: an unprivileged user with exactly the unit's capabilities and
/// no_new_privs, and, given a SystemCallFilter= value, under that allow-list (anything else kills
/// it with SIGSYS, as under systemd). Exports to a file in `dir` every second.
fn spawn_as_the_unit(dir: &Path, system_call_filter: Option<&str>) -> (Reaped, PathBuf) {
    let caps = unit_capabilities();
    // a copy nobody can execute, and a directory nobody can write
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).expect("chmod");
    let binary = dir.join("flowtel");
    std::fs::copy(BIN, &binary).expect("copy the binary");
    let metrics = dir.join("metrics.jsonl");
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--no-new-privs"])
        .arg(format!("--inh-caps=-all,{caps}"))
        .arg(format!("--ambient-caps=-all,{caps}"))
        .arg(format!("--bounding-set=-all,{caps}"));
    if let Some(filter) = system_call_filter {
        // beside the binary: readable by the unprivileged user wherever the repository is
        let wrapper = dir.join("seccomp_exec.py");
        std::fs::copy(repo("integration/support/seccomp_exec.py"), &wrapper).expect("copy the wrapper");
        cmd.arg("/usr/bin/python3").arg(&wrapper).arg(filter);
    }
    cmd.arg(&binary)
        .arg("run")
        .env_remove("FLOWTEL_CONFIG")
        .env("FLOWTEL_EXPORT__FILE_PATH", &metrics)
        .env("FLOWTEL_EXPORT__INTERVAL_SECS", "1")
        .stderr(Stdio::piped());
    (Reaped(cmd.spawn().expect("setpriv runs")), metrics)
}

/// A 4321-byte exchange on loopback, and its export in `metrics` (20 s at most).
fn exchange_is_exported(metrics: &Path) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::scope(|s| {
        s.spawn(|| {
            let (mut c, _) = listener.accept().expect("accept");
            std::io::Write::write_all(&mut c, &[9u8; 4321]).expect("write");
        });
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut c, &mut got).expect("read");
        assert_eq!(got.len(), 4321);
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let needle = format!("\"intValue\":\"{port}\"");
    loop {
        let text = std::fs::read_to_string(metrics).unwrap_or_default();
        if text
            .lines()
            .last()
            .is_some_and(|l| l.contains(&needle) && l.contains("\"asInt\":\"4321\""))
        {
            break;
        }
        assert!(Instant::now() < deadline, "no export of the 4321-byte exchange");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn the_units_capability_set_loads_attaches_and_exports_as_an_unprivileged_user() {
    let _serial = serial();
    assert_eq!(unit_capabilities(), "+bpf,+perfmon,+net_admin,+sys_admin,+sys_ptrace");
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut agent, metrics) = spawn_as_the_unit(dir.path(), None);
    let _log = wait_attached(&mut agent.0);
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.0.id())).expect("status");
    assert!(status.contains("Uid:\t65534"), "runs as nobody: {status}");
    exchange_is_exported(&metrics);
}

/// The unit's system-call filter, applied as systemd applies it: the agent starts, attaches,
/// exports and stops cleanly on SIGTERM (its final export included) without one system call
/// outside the allow-list; and the filter is really in force: without `bpf` in it, the same
/// agent is killed by SIGSYS.
#[test]
fn the_units_system_call_filter_lets_the_agent_run_export_and_stop() {
    let _serial = serial();
    let filter = unit_system_call_filter();
    assert_eq!(filter, "@system-service @basic-io bpf setns");
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut agent, metrics) = spawn_as_the_unit(dir.path(), Some(&filter));
    let log = wait_attached(&mut agent.0);
    exchange_is_exported(&metrics);
    // SAFETY: signalling our own child by pid.
    assert_eq!(unsafe { libc::kill(agent.0.id() as i32, libc::SIGTERM) }, 0);
    let status = agent.0.wait().expect("the agent exits");
    drop(log);
    assert!(
        status.success(),
        "the agent under the unit's filter ended with {status:?}"
    );

    let without_bpf = filter.replace(" bpf", "");
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut agent, _) = spawn_as_the_unit(dir.path(), Some(&without_bpf));
    let status = agent.0.wait().expect("the agent exits");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGSYS),
        "without bpf in the filter the agent must be killed by SIGSYS: {status:?}"
    );
}

// ---------------------------------------------------------------------------- Debian package

const UNIT: &str = "/usr/lib/systemd/system/flowtel.service";

/// Purges the package and what its scripts made, pass or fail.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "flowtel"]).output();
        let _ = Command::new("userdel").arg("flowtel").output();
        let _ = std::fs::remove_dir_all("/etc/flowtel");
    }
}

#[test]
fn the_deb_builds_installs_and_its_unit_verifies() {
    let _serial = serial();
    assert!(
        !Path::new("/usr/bin/flowtel").exists(),
        "/usr/bin/flowtel exists already: this test installs and purges the package"
    );
    // its own target directory: a release build, and no wait on the lock of the test build's
    let out = run_ok(
        Command::new("cargo")
            .args(["deb", "--locked"])
            .env("CARGO_TARGET_DIR", repo("target/deb"))
            .current_dir(repo(".")),
    );
    let deb = out
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no .deb path in cargo deb's output:\n{out}"));
    let contents = run_ok(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    for path in [
        "./usr/bin/flowtel",
        "./etc/flowtel/flowtel.toml",
        "./usr/lib/systemd/system/flowtel.service",
    ] {
        assert!(contents.contains(path), "{path} in the package:\n{contents}");
    }
    let _installed = Installed;
    run_ok(Command::new("dpkg").arg("-i").arg(&deb));
    let unit = std::fs::read_to_string(UNIT).expect("unit installed");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let binary = exec.split_whitespace().next().expect("binary");
    assert!(Path::new(binary).is_file(), "ExecStart {binary} is installed");
    let config = exec
        .split_whitespace()
        .skip_while(|w| *w != "--config")
        .nth(1)
        .expect("--config in ExecStart");
    assert!(Path::new(config).is_file(), "{config} is installed");
    run_ok(Command::new(binary).args(["--config", config, "check"]));
    run_ok(Command::new("getent").args(["passwd", "flowtel"]));
    let verify = Command::new("systemd-analyze")
        .args(["verify", UNIT])
        .output()
        .expect("systemd-analyze runs");
    assert!(
        verify.status.success(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}

// -------------------------------------------------------------------- compose, collector, k8s

#[test]
fn the_compose_file_parses_against_the_compose_specification() {
    let text = std::fs::read_to_string(repo("docker/compose.yaml")).expect("compose.yaml");
    let compose: compose_spec::Compose = serde_yaml::from_str(&text).expect("a valid Compose file");
    let names: BTreeSet<String> = compose.services.keys().map(|k| k.to_string()).collect();
    assert_eq!(
        names,
        ["flowtel", "grafana", "otel-collector", "prometheus"]
            .into_iter()
            .map(String::from)
            .collect()
    );
    // the files the stack mounts exist
    let raw: serde_yaml::Value = serde_yaml::from_str(&text).expect("YAML");
    for service in raw["services"].as_mapping().expect("services").values() {
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let source = volume.as_str().and_then(|v| v.split(':').next()).unwrap_or_default();
            if let Some(relative) = source.strip_prefix("./") {
                assert!(repo("docker").join(relative).exists(), "{source} is in docker/");
            }
        }
    }
    run_ok(Command::new(BIN).args([
        "--config",
        repo("docker/flowtel-demo.toml").to_str().expect("utf8"),
        "check",
    ]));
}

#[test]
fn the_collector_pipeline_references_only_defined_components() {
    let text = std::fs::read_to_string(repo("docker/otel-collector.yaml")).expect("collector config");
    let config: serde_yaml::Value = serde_yaml::from_str(&text).expect("YAML");
    let defined = |kind: &str| -> BTreeSet<String> {
        config[kind]
            .as_mapping()
            .map(|m| m.keys().filter_map(|k| k.as_str().map(String::from)).collect())
            .unwrap_or_default()
    };
    let metrics = &config["service"]["pipelines"]["metrics"];
    for kind in ["receivers", "processors", "exporters"] {
        let used: BTreeSet<String> = metrics[kind]
            .as_sequence()
            .unwrap_or_else(|| panic!("pipeline {kind}"))
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        assert!(!used.is_empty());
        assert!(used.is_subset(&defined(kind)), "{kind}: {used:?} not all defined");
    }
    let processors: Vec<&str> = metrics["processors"]
        .as_sequence()
        .expect("processors")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(processors.first(), Some(&"memory_limiter"), "memory_limiter first");
    assert!(processors.contains(&"deltatocumulative"));
    assert!(defined("exporters").contains("prometheus"));
    let extensions: BTreeSet<String> = config["service"]["extensions"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    assert!(extensions.is_subset(&defined("extensions")));
    run_ok(Command::new("promtool").args([
        "check",
        "config",
        "--syntax-only",
        repo("docker/prometheus/prometheus.yml").to_str().expect("utf8"),
    ]));
}

#[test]
fn the_kubernetes_manifests_and_the_helm_chart_validate_offline() {
    let manifests: Vec<String> = ["namespace.yaml", "rbac.yaml", "configmap.yaml", "daemonset.yaml"]
        .iter()
        .map(|f| repo("docker/kubernetes").join(f).display().to_string())
        .collect();
    run_ok(Command::new("kubernetes-validate").arg("--strict").args(&manifests));

    let chart = repo("docker/helm/flowtel");
    run_ok(Command::new("helm").arg("lint").arg("--strict").arg(&chart));
    let dir = tempfile::tempdir().expect("tempdir");
    let values = dir.path().join("values.yaml");
    std::fs::write(
        &values,
        r#"
otlp:
  endpoint: https://api.honeycomb.io:443
  headers: {x-honeycomb-team: secret-key}
networks:
  "10.0.1.0/24": {name: app-a, vpc: vpc-1, zone: eu-west-1a, region: eu-west-1}
  "10.0.2.0/24": {name: db, vpc: vpc-1, zone: eu-west-1b, region: eu-west-1}
monitors:
  - name: app-to-db
    local: [{subnet: app-a}]
    remote: [{subnet: db}]
  - name: app-out
    local: [{zone: eu-west-1a}]
    remote: [everywhere]
resources:
  limits: {cpu: "1", memory: 1Gi}
"#,
    )
    .expect("values");
    let fleet = [
        "metrics.enabled=true",
        "podMonitor.enabled=true",
        "prometheusRule.enabled=true",
    ];
    // every other toggle on: extra env, env sources, volumes and mounts, resource attributes, the
    // privileged fallback, another update strategy, probe timings
    let extras = dir.path().join("extras.yaml");
    std::fs::write(
        &extras,
        r#"
resourceAttributes: {k8s.cluster.name: prod-eu}
extraEnv: [{name: FLOWTEL_EXPORT__REDACT_KEY, valueFrom: {secretKeyRef: {name: redact, key: key}}}]
extraEnvFrom: [{configMapRef: {name: flowtel-extra}}]
extraVolumes: [{name: ca, secret: {secretName: collector-ca}}]
extraVolumeMounts: [{name: ca, mountPath: /etc/flowtel/ca, readOnly: true}]
securityContext: {privileged: true, extraCapabilities: [SYS_RESOURCE]}
updateStrategy: {type: OnDelete}
priorityClassName: system-node-critical
probes: {startup: {periodSeconds: 5, failureThreshold: 60}}
"#,
    )
    .expect("extras");
    for (name, extra, toggles) in [
        ("defaults", None, &[][..]),
        ("custom", Some(&values), &[][..]),
        ("fleet", Some(&values), &fleet[..]),
        ("extras", Some(&extras), &[][..]),
    ] {
        let mut cmd = Command::new("helm");
        cmd.args(["template", "flowtel"])
            .arg(&chart)
            .args(["--namespace", "flowtel"]);
        if let Some(v) = extra {
            cmd.arg("--values").arg(v);
        }
        for toggle in toggles {
            cmd.args(["--set", toggle]);
        }
        let rendered = run_ok(&mut cmd);
        // prometheus-operator's kinds have no offline schema: promtool checks the rules, and the
        // PodMonitor is checked against the DaemonSet it scrapes; the rest goes to
        // kubernetes-validate
        let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&rendered)
            .map(|doc| serde_yaml::Value::deserialize(doc).expect("rendered YAML"))
            .filter(|v| !v.is_null())
            .collect();
        let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
        let operator = |kind: &str| kind == "PodMonitor" || kind == "PrometheusRule";
        assert_eq!(
            kinds.iter().filter(|k| operator(k)).count(),
            if toggles.is_empty() { 0 } else { 2 },
            "{name}: {kinds:?}"
        );
        let builtin: Vec<String> = docs
            .iter()
            .filter(|d| !d["kind"].as_str().is_some_and(operator))
            .map(|d| serde_yaml::to_string(d).expect("YAML"))
            .collect();
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, builtin.join("---\n")).expect("write rendered chart");
        run_ok(Command::new("kubernetes-validate").arg("--strict").arg(&path));
        check_operator_kinds(&docs, dir.path());
        let daemonset = docs.iter().find(|d| d["kind"] == "DaemonSet").expect("a DaemonSet");
        let pod = &daemonset["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let env = |k: &str| {
            container["env"]
                .as_sequence()
                .into_iter()
                .flatten()
                .find(|e| e["name"] == k)
                .cloned()
        };
        assert_eq!(pod["nodeSelector"]["kubernetes.io/os"], "linux", "{name}");
        assert!(container["startupProbe"].is_mapping(), "{name}: a startup probe");
        assert_eq!(
            env("FLOWTEL_PROBES__LISTEN").map(|e| e["value"].clone()),
            Some("$(HOST_IP):9465".into()),
            "{name}: probes on the node's IP"
        );
        if name == "extras" {
            assert!(env("FLOWTEL_EXPORT__REDACT_KEY").is_some());
            assert_eq!(container["envFrom"][0]["configMapRef"]["name"], "flowtel-extra");
            assert!(pod["volumes"]
                .as_sequence()
                .expect("volumes")
                .iter()
                .any(|v| v["name"] == "ca"));
            assert!(container["volumeMounts"]
                .as_sequence()
                .expect("mounts")
                .iter()
                .any(|m| m["name"] == "ca"));
            assert_eq!(container["securityContext"]["privileged"], true);
            assert!(container["securityContext"]["capabilities"]["add"]
                .as_sequence()
                .expect("capabilities")
                .iter()
                .any(|c| c == "SYS_RESOURCE"));
            assert_eq!(daemonset["spec"]["updateStrategy"]["type"], "OnDelete");
            assert_eq!(pod["priorityClassName"], "system-node-critical");
            assert_eq!(container["startupProbe"]["failureThreshold"], 60);
            assert_eq!(
                env("OTEL_RESOURCE_ATTRIBUTES").map(|e| e["value"].clone()),
                Some("k8s.node.name=$(K8S_NODE_NAME),k8s.cluster.name=prod-eu".into())
            );
        } else {
            assert_eq!(
                container["securityContext"]["privileged"], false,
                "{name}: least privilege by default"
            );
            assert!(
                pod["priorityClassName"].is_null(),
                "{name}: no priority class by default"
            );
        }
        // the flowtel.toml the chart renders is a valid flowtel configuration
        let mut config = None;
        for value in docs {
            if value["kind"] == "ConfigMap" {
                config = value["data"]["flowtel.toml"].as_str().map(String::from);
            }
            if value["kind"] == "Secret" {
                assert_eq!(
                    value["stringData"]["OTEL_EXPORTER_OTLP_HEADERS"].as_str(),
                    Some("x-honeycomb-team=secret-key"),
                    "headers go to a Secret, not the ConfigMap"
                );
            }
        }
        let config = config.expect("a ConfigMap with flowtel.toml");
        assert!(!config.contains("secret-key"));
        let toml = dir.path().join(format!("{name}.toml"));
        std::fs::write(&toml, &config).expect("write config");
        let checked = run_ok(Command::new(BIN).args(["--config", toml.to_str().expect("utf8"), "check"]));
        if extra == Some(&values) {
            assert!(
                checked.contains("2 networks") && checked.contains("2 monitors"),
                "{checked}"
            );
        }
    }
}

#[test]
fn the_chart_readme_is_what_its_generator_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("README.md");
    let status = Command::new("python3")
        .arg(repo("docker/helm/flowtel/generate-readme.py"))
        .arg(&out)
        .status()
        .expect("python3 runs");
    assert!(status.success());
    let generated = std::fs::read_to_string(&out).expect("generated");
    assert_eq!(
        std::fs::read_to_string(repo("docker/helm/flowtel/README.md")).expect("chart README"),
        generated,
        "the chart README is stale: run python3 docker/helm/flowtel/generate-readme.py"
    );
    // every value is documented
    let undocumented: Vec<&str> = generated
        .lines()
        .filter(|l| l.starts_with("| `") && l.ends_with("|  |"))
        .collect();
    assert!(
        undocumented.is_empty(),
        "values without a description: {undocumented:?}"
    );
}

/// A rendered PrometheusRule's spec is a valid Prometheus rule file (promtool), and a rendered
/// PodMonitor selects the DaemonSet's pods and scrapes a port they name.
fn check_operator_kinds(docs: &[serde_yaml::Value], dir: &Path) {
    let daemonset = docs.iter().find(|d| d["kind"] == "DaemonSet").expect("a DaemonSet");
    for doc in docs {
        match doc["kind"].as_str() {
            Some("PrometheusRule") => {
                assert_eq!(doc["apiVersion"], "monitoring.coreos.com/v1");
                let rules = dir.join("prometheusrule.yml");
                std::fs::write(&rules, serde_yaml::to_string(&doc["spec"]).expect("YAML")).expect("write rules");
                let checked = run_ok(Command::new("promtool").arg("check").arg("rules").arg(&rules));
                assert!(checked.contains("SUCCESS"), "{checked}");
            }
            Some("PodMonitor") => {
                assert_eq!(doc["apiVersion"], "monitoring.coreos.com/v1");
                let selector = &doc["spec"]["selector"]["matchLabels"];
                let pod_labels = &daemonset["spec"]["template"]["metadata"]["labels"];
                for (k, v) in selector.as_mapping().expect("matchLabels") {
                    assert_eq!(&pod_labels[k], v, "the PodMonitor selects the DaemonSet's pods");
                }
                let ports = &daemonset["spec"]["template"]["spec"]["containers"][0]["ports"];
                for endpoint in doc["spec"]["podMetricsEndpoints"].as_sequence().expect("endpoints") {
                    let port = endpoint["port"].as_str().expect("a named port");
                    assert!(
                        ports.as_sequence().expect("ports").iter().any(|p| p["name"] == port),
                        "the container names port {port}"
                    );
                }
            }
            _ => {}
        }
    }
}
