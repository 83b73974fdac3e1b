//! Running the real binary: `flowtel run` as a child process with its log collected, and rotel
//! (PyPI `rotel`, which ships `rotel-agent`) as the real OTLP collector, whose debug log the
//! tests read back.
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::Reaped;

pub const BIN: &str = env!("CARGO_BIN_EXE_flowtel");

pub fn rotel_agent() -> PathBuf {
    if let Ok(path) = std::env::var("FLOWTEL_TEST_ROTEL") {
        return PathBuf::from(path);
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import rotel, os; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))",
        ])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "rotel is not installed: pip install rotel ({})",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// rotel on loopback with OTLP gRPC and HTTP receivers, printing every metric to `log`.
pub fn start_rotel(grpc: u16, http: u16, log: &std::path::Path) -> Reaped {
    Reaped(
        Command::new(rotel_agent())
            .args(["start", "--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc}")])
            .args(["--otlp-http-endpoint", &format!("127.0.0.1:{http}")])
            .args([
                "--exporter",
                "blackhole",
                "--debug-log",
                "metrics",
                "--debug-log-verbosity",
                "detailed",
            ])
            .stdout(std::fs::File::create(log).expect("log file"))
            .stderr(Stdio::null())
            .spawn()
            .expect("rotel-agent starts"),
    )
}

/// A data point as rotel's debug log prints it.
#[derive(Debug, Clone)]
pub struct Point {
    pub metric: String,
    pub unit: String,
    /// The descriptor's DataType: Sum, Gauge, Histogram, ExponentialHistogram.
    pub kind: String,
    pub attributes: HashMap<String, String>,
    pub value: Option<String>,
    /// As printed: `2026-11-27 03:21:13.123456789 +0000 UTC`.
    pub start: Option<String>,
    /// The export's time, as printed.
    pub time: Option<String>,
}

/// Parses rotel's `--debug-log-verbosity detailed` output (the OpenTelemetry Collector debug
/// exporter layout) into data points, plus the resource attributes seen.
pub fn parse(log: &str) -> (Vec<Point>, HashMap<String, String>) {
    let mut points = Vec::new();
    let mut resource = HashMap::new();
    let (mut metric, mut unit, mut kind) = (String::new(), String::new(), String::new());
    let mut current: Option<Point> = None;
    let mut in_resource = false;
    for line in log.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("Resource attributes:") {
            in_resource = true;
            continue;
        }
        if let Some(attr) = trimmed.strip_prefix("-> ") {
            let Some((key, value)) = attr.split_once(": ") else {
                continue;
            };
            if in_resource {
                resource.insert(key.to_string(), value.to_string());
            } else if key == "Name" {
                metric = value.to_string();
            } else if key == "Unit" {
                unit = value.to_string();
            } else if key == "DataType" {
                kind = value.to_string();
            } else if matches!(key, "Description" | "IsMonotonic" | "AggregationTemporality") {
                continue;
            } else if let Some(p) = current.as_mut() {
                p.attributes.insert(key.to_string(), value.to_string());
            }
            continue;
        }
        in_resource = false;
        if trimmed.starts_with("NumberDataPoints #")
            || trimmed.starts_with("ExponentialHistogramDataPoints #")
            || trimmed.starts_with("HistogramDataPoints #")
        {
            points.extend(current.take());
            current = Some(Point {
                metric: metric.clone(),
                unit: unit.clone(),
                kind: kind.clone(),
                attributes: HashMap::new(),
                value: None,
                start: None,
                time: None,
            });
        } else if let Some(t) = trimmed.strip_prefix("StartTimestamp: ") {
            if let Some(p) = current.as_mut() {
                p.start = Some(t.to_string());
            }
        } else if let Some(t) = trimmed.strip_prefix("Timestamp: ") {
            if let Some(p) = current.as_mut() {
                p.time = Some(t.to_string());
            }
        } else if let Some(v) = trimmed
            .strip_prefix("Value: ")
            .or_else(|| trimmed.strip_prefix("Count: "))
        {
            if let Some(p) = current.as_mut() {
                p.value = Some(v.to_string());
            }
        }
    }
    points.extend(current);
    (points, resource)
}

pub type Log = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// Starts `flowtel run` with `envs`, waits until it is attached, and collects its log lines.
pub fn start_agent(envs: &[(&str, String)]) -> (Reaped, Log) {
    start_agent_with(&[], envs)
}

/// As `start_agent`, with global arguments (such as `--config FILE`) before `run`.
pub fn start_agent_with(args: &[String], envs: &[(&str, String)]) -> (Reaped, Log) {
    let mut cmd = Command::new(BIN);
    // the test's own FLOWTEL_* settings (FLOWTEL_SOAK_SECS, FLOWTEL_TEST_ROTEL) are not the agent's
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("FLOWTEL_")) {
        cmd.env_remove(name);
    }
    cmd.args(args)
        .arg("run")
        .env("FLOWTEL_SAMPLER__POLL_INTERVAL_MS", "200");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut agent = Reaped(cmd.stderr(Stdio::piped()).spawn().expect("flowtel run starts"));
    let stderr = BufReader::new(agent.0.stderr.take().expect("stderr"));
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = std::sync::Arc::clone(&lines);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            // kept before the signal: a caller woken by it reads the line
            let attached = line.contains("sampler attached");
            sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            if attached {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30)).expect("flowtel attached");
    (agent, lines)
}

pub fn stop(agent: &mut Reaped) {
    // SAFETY: signalling our own child by pid.
    assert_eq!(unsafe { libc::kill(agent.0.id() as i32, libc::SIGTERM) }, 0);
    assert!(agent.0.wait().expect("flowtel exits").success());
}

/// `rotel`'s `Str(x)`, `Int(5)`, `Bool(true)` as the bare value.
pub fn bare(value: &str) -> &str {
    value
        .split_once('(')
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .unwrap_or(value)
}

/// rotel's debug log at `path`, parsed; empty while rotel has not written it.
pub fn rotel_points(path: &std::path::Path) -> Vec<Point> {
    parse(&std::fs::read_to_string(path).unwrap_or_default()).0
}

/// The agent's log lines so far, whatever a panicking reader thread left.
pub fn lines(log: &Log) -> Vec<String> {
    log.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// One number data point of an OTLP JSON lines file (the agent's file output), flattened.
#[derive(Debug, Clone)]
pub struct FilePoint {
    pub metric: String,
    /// Attribute values as text: strings as they are, integers and booleans printed.
    pub attributes: HashMap<String, String>,
    pub value: i64,
    pub start_unix_nano: u64,
}

impl FilePoint {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// Every export in the file, in order, each as its sum and gauge points.
pub fn file_exports(path: &std::path::Path) -> Vec<Vec<FilePoint>> {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};

    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str::<ExportMetricsServiceRequest>(line).ok())
        .map(|request| {
            let mut points = Vec::new();
            for m in request
                .resource_metrics
                .iter()
                .flat_map(|r| &r.scope_metrics)
                .flat_map(|s| &s.metrics)
            {
                let data_points = match &m.data {
                    Some(metric::Data::Sum(s)) => &s.data_points,
                    Some(metric::Data::Gauge(g)) => &g.data_points,
                    _ => continue,
                };
                for p in data_points {
                    let value = match p.value {
                        Some(number_data_point::Value::AsInt(v)) => v,
                        Some(number_data_point::Value::AsDouble(v)) => v as i64,
                        None => continue,
                    };
                    let attributes = p
                        .attributes
                        .iter()
                        .map(|kv| {
                            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                                Some(Value::StringValue(s)) => s.clone(),
                                Some(Value::IntValue(i)) => i.to_string(),
                                Some(Value::BoolValue(b)) => b.to_string(),
                                other => format!("{other:?}"),
                            };
                            (kv.key.clone(), v)
                        })
                        .collect();
                    points.push(FilePoint {
                        metric: m.name.clone(),
                        attributes,
                        value,
                        start_unix_nano: p.start_time_unix_nano,
                    });
                }
            }
            points
        })
        .collect()
}

/// Client-side bytes sent to `port` in one export, summed over the pairs that have series.
pub fn client_bytes(export: &[FilePoint], port: u16) -> i64 {
    export
        .iter()
        .filter(|p| {
            p.metric == "flowtel.tcp.bytes"
                && p.attr("server.port") == Some(&port.to_string())
                && p.attr("network.tcp.handshake.role") == Some("client")
                && p.attr("network.io.direction") == Some("transmit")
        })
        .map(|p| p.value)
        .sum()
}

/// The agent's own `flowtel.agent.dropped` count for `reason` in one export.
pub fn dropped(export: &[FilePoint], reason: &str) -> i64 {
    export
        .iter()
        .filter(|p| p.metric == "flowtel.agent.dropped" && p.attr("flowtel.drop.reason") == Some(reason))
        .map(|p| p.value)
        .sum()
}

/// Resident memory of process `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Waits (up to 20 s) until something listens on 127.0.0.1:`port`.
pub fn wait_listening(port: u16) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// IDs of the loaded BPF programs whose names start with `flowtel_`, from bpftool.
pub fn flowtel_programs() -> Vec<u64> {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .expect("bpftool runs (apt-get install bpftool)");
    assert!(
        out.status.success(),
        "bpftool prog show: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let progs: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    progs
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("flowtel_")))
                .filter_map(|p| p["id"].as_u64())
                .collect()
        })
        .unwrap_or_default()
}

/// Names of the programs attached to cgroup `path`, from bpftool.
pub fn cgroup_programs(path: &str) -> Vec<String> {
    let out = Command::new("bpftool")
        .args(["-j", "cgroup", "show", path])
        .output()
        .expect("bpftool runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let progs: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or(serde_json::Value::Null);
    progs
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["name"].as_str().map(String::from)).collect())
        .unwrap_or_default()
}

/// The cgroup the agent attached to, from its "sampler attached cgroup=..." line.
pub fn attached_cgroup(log: &Log) -> String {
    lines(log)
        .iter()
        .find_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("cgroup="))
                .map(|c| c.trim_matches('"').to_string())
        })
        .expect("the agent logged its cgroup")
}
