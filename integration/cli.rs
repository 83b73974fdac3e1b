//! The `flowtel` binary as a user runs it: snapshot JSON over real traffic, and the one-line
//! errors for bad input.
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;

use support::{wait_attached, wait_logged};

const BIN: &str = env!("CARGO_BIN_EXE_flowtel");

fn flowtel(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("FLOWTEL_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("flowtel runs")
}

/// Asserts a failed run printed exactly one line on stderr, naming `needle`.
fn assert_one_line_error(out: &std::process::Output, needle: &str) {
    assert!(!out.status.success(), "must exit non-zero");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].starts_with("flowtel: "), "{stderr}");
    assert!(lines[0].contains(needle), "names {needle}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn unknown_config_key_is_a_one_line_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("flowtel.toml");
    std::fs::write(&file, "[sampler]\npoll_interval = 5\n").expect("write config");
    let out = flowtel(
        &[
            "--config",
            file.to_str().expect("utf8 path"),
            "snapshot",
            "--seconds",
            "0",
        ],
        &[],
    );
    assert_one_line_error(&out, "poll_interval");
}

#[test]
fn unreadable_config_file_is_a_one_line_error() {
    let out = flowtel(
        &["snapshot", "--seconds", "0"],
        &[("FLOWTEL_CONFIG", "/nonexistent/flowtel.toml")],
    );
    assert_one_line_error(&out, "/nonexistent/flowtel.toml");
}

#[test]
fn malformed_env_value_is_a_one_line_error() {
    let out = flowtel(
        &["snapshot", "--seconds", "0"],
        &[("FLOWTEL_SAMPLER__PAIR_MAP_CAPACITY", "lots")],
    );
    assert_one_line_error(&out, "pair_map_capacity");
}

#[test]
fn malformed_otel_variables_are_one_line_errors() {
    let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317");
    for (name, value, needle) in [
        (
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "http/json",
            "OTEL_EXPORTER_OTLP_PROTOCOL=http/json",
        ),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s", "OTEL_EXPORTER_OTLP_TIMEOUT"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "soon", "OTEL_METRIC_EXPORT_INTERVAL"),
        (
            "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
            "weekly",
            "TEMPORALITY",
        ),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd", "gzip or none"),
    ] {
        let out = flowtel(&["check"], &[endpoint, (name, value)]);
        assert_one_line_error(&out, needle);
    }
}

/// A token given without its key is reported by position, never echoed.
#[test]
fn a_malformed_header_is_a_one_line_error_that_does_not_echo_it() {
    let out = flowtel(
        &["check"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "Bearer-s3cret-token"),
        ],
    );
    assert_one_line_error(&out, "OTEL_EXPORTER_OTLP_HEADERS: header 1 has no '='");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("s3cret"));
}

/// A kernel without BTF, for real: a private mount namespace hides /sys/kernel/btf under an
/// empty tmpfs (the host's view is untouched).
#[test]
fn missing_kernel_btf_is_a_one_line_error() {
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs none /sys/kernel/btf && exec {BIN} snapshot --seconds 0"
        ))
        .env_remove("FLOWTEL_CONFIG")
        .output()
        .expect("unshare runs");
    assert_one_line_error(&out, "kernel BTF not found at /sys/kernel/btf/vmlinux");
    assert!(
        std::path::Path::new("/sys/kernel/btf/vmlinux").exists(),
        "the host still has BTF"
    );
}

/// Root without CAP_BPF (lowered in the bounding set, so exec cannot grant it).
#[test]
fn a_missing_capability_is_a_one_line_error_naming_it() {
    let out = Command::new("setpriv")
        .args(["--bounding-set", "-bpf", "--inh-caps", "-all", "--"])
        .args([BIN, "snapshot", "--seconds", "0"])
        .env_remove("FLOWTEL_CONFIG")
        .output()
        .expect("setpriv runs");
    assert_one_line_error(&out, "missing CAP_BPF");
    assert!(String::from_utf8_lossy(&out.stderr).contains("grant CAP_BPF"));
}

#[test]
fn nonexistent_cgroup_path_is_a_one_line_error() {
    let out = flowtel(
        &["snapshot", "--seconds", "0"],
        &[("FLOWTEL_SAMPLER__CGROUP_PATH", "/sys/fs/cgroup/no-such-group")],
    );
    assert_one_line_error(&out, "cgroup_path");
}

/// `flowtel snapshot --seconds N --json`, once its window has opened.
fn start_snapshot(seconds: &str) -> std::process::Child {
    let mut child = Command::new(BIN)
        .args(["snapshot", "--seconds", seconds, "--json"])
        .env_remove("FLOWTEL_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("flowtel snapshot starts");
    // the window opens at the first poll after attaching
    drop(wait_logged(&mut child, "snapshot window opened"));
    child
}

#[test]
fn snapshot_json_reports_a_connection_made_while_it_ran() {
    let child = start_snapshot("2");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::scope(|s| {
        s.spawn(|| {
            let (mut c, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 3];
            c.read_exact(&mut buf).expect("read");
            c.write_all(b"pong!").expect("write");
        });
        let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        c.write_all(b"pin").expect("write");
        let mut buf = Vec::new();
        c.read_to_end(&mut buf).expect("read");
        assert_eq!(buf, b"pong!");
    });
    let out = child.wait_with_output().expect("snapshot finishes");
    assert!(out.status.success(), "snapshot exit status");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    let pairs = json["pairs"].as_array().expect("pairs array");
    let ours: Vec<&serde_json::Value> = pairs.iter().filter(|p| p["service_port"] == port).collect();
    assert_eq!(ours.len(), 2, "client and server pair: {ours:?}");
    let client = ours.iter().find(|p| p["role"] == "client").expect("client pair");
    let server = ours.iter().find(|p| p["role"] == "server").expect("server pair");
    assert_eq!(
        (client["bytes_sent"].as_u64(), client["bytes_received"].as_u64()),
        (Some(3), Some(5))
    );
    assert_eq!(
        (server["bytes_sent"].as_u64(), server["bytes_received"].as_u64()),
        (Some(5), Some(3))
    );
    assert_eq!(client["connections"]["established"].as_u64(), Some(1));
    assert_eq!(client["local"], "127.0.0.1");
    for field in ["pair_map_full", "sock_storage_failed", "listener_map_full"] {
        assert!(
            json["agent"]["counters"][field].is_u64(),
            "agent counter {field} present"
        );
    }
    assert!(json["agent"]["pair_map_capacity"].as_u64().is_some_and(|c| c > 0));
}

/// Sends `n` bytes on `client` and waits until the server has read them all and the sender has
/// had their acknowledgements.
fn send_and_settle(client: &mut TcpStream, received: &std::sync::atomic::AtomicUsize, n: usize) {
    use std::sync::atomic::Ordering;
    let target = received.load(Ordering::SeqCst) + n;
    client.write_all(&vec![7u8; n]).expect("write");
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.load(Ordering::SeqCst) < target {
        assert!(Instant::now() < deadline, "the server never read {n} bytes");
        std::thread::sleep(Duration::from_millis(10));
    }
    // loopback acknowledges at once; leave room for the ACK to reach the sender
    std::thread::sleep(Duration::from_millis(200));
}

/// A stream open before the snapshot and still open after it: the snapshot reports exactly what
/// moved inside its window, to the byte, not the stream's lifetime.
#[test]
fn snapshot_counts_a_long_lived_stream_exactly_within_its_window() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let received = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&received);
    let server = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 65536];
        loop {
            match c.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => counted.fetch_add(n, Ordering::SeqCst),
            };
        }
    });
    let mut client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    send_and_settle(&mut client, &received, 300_000); // before the snapshot

    let child = start_snapshot("5");
    let window = Instant::now();
    for chunk in [250_000, 1_000_000, 123_457] {
        send_and_settle(&mut client, &received, chunk);
    }
    let in_window = 250_000 + 1_000_000 + 123_457;
    assert!(
        window.elapsed() < Duration::from_secs(4),
        "the window's traffic ended inside it"
    );
    let out = child.wait_with_output().expect("snapshot finishes");
    assert!(out.status.success(), "snapshot exit status");
    send_and_settle(&mut client, &received, 200_000); // after it: the stream goes on
    drop(client);
    server.join().expect("server");

    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    let pairs = json["pairs"].as_array().expect("pairs array");
    let ours = |role: &str| {
        pairs
            .iter()
            .find(|p| p["service_port"] == port && p["role"] == role)
            .unwrap_or_else(|| panic!("{role} pair in {pairs:?}"))
    };
    assert_eq!(ours("client")["bytes_sent"].as_u64(), Some(in_window));
    assert_eq!(ours("server")["bytes_received"].as_u64(), Some(in_window));
    assert_eq!(
        ours("client")["connections"]["active"].as_u64(),
        Some(1),
        "still open at the end"
    );
}

#[test]
fn run_writes_otlp_json_lines_that_decode_to_the_measured_bytes() {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("metrics.jsonl");
    let mut child = Command::new(BIN)
        .arg("run")
        .env_remove("FLOWTEL_CONFIG")
        .env("FLOWTEL_EXPORT__FILE_PATH", &path)
        .env("FLOWTEL_EXPORT__INTERVAL_SECS", "1")
        .env("FLOWTEL_SAMPLER__POLL_INTERVAL_MS", "200")
        .stderr(Stdio::piped())
        .spawn()
        .expect("flowtel run starts");
    let _stderr = wait_attached(&mut child);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::scope(|s| {
        s.spawn(|| {
            let (mut c, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 3];
            c.read_exact(&mut buf).expect("read");
            c.write_all(b"pong!").expect("write");
        });
        let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        c.write_all(b"pin").expect("write");
        let mut buf = Vec::new();
        c.read_to_end(&mut buf).expect("read");
    });
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: signalling our own child process by pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let started = Instant::now();
    let status = child.wait().expect("flowtel exits");
    assert!(status.success(), "clean exit on SIGTERM");
    assert!(started.elapsed() < Duration::from_secs(5), "exits within 5 s");

    let text = std::fs::read_to_string(&path).expect("metrics file written");
    let last = text.lines().last().expect("at least one export");
    let request: ExportMetricsServiceRequest = serde_json::from_str(last).expect("OTLP JSON decodes");
    let metrics = &request.resource_metrics[0].scope_metrics[0].metrics;
    let bytes = metrics
        .iter()
        .find(|m| m.name == "flowtel.tcp.bytes")
        .expect("bytes metric");
    assert_eq!(bytes.unit, "By");
    let Some(metric::Data::Sum(sum)) = &bytes.data else {
        panic!("bytes is a sum")
    };
    let attr = |p: &opentelemetry_proto::tonic::metrics::v1::NumberDataPoint, k: &str| {
        p.attributes
            .iter()
            .find(|a| a.key == k)
            .and_then(|a| a.value.clone())
            .and_then(|v| v.value)
    };
    let value = |role: &str, direction: &str| -> Option<i64> {
        sum.data_points
            .iter()
            .find(|p| {
                attr(p, "server.port") == Some(Value::IntValue(i64::from(port)))
                    && attr(p, "network.tcp.handshake.role") == Some(Value::StringValue(role.into()))
                    && attr(p, "network.io.direction") == Some(Value::StringValue(direction.into()))
            })
            .and_then(|p| match p.value {
                Some(number_data_point::Value::AsInt(v)) => Some(v),
                _ => None,
            })
    };
    assert_eq!(value("client", "transmit"), Some(3));
    assert_eq!(value("client", "receive"), Some(5));
    assert_eq!(value("server", "transmit"), Some(5));
    assert_eq!(value("server", "receive"), Some(3));
    let resource = request.resource_metrics[0].resource.as_ref().expect("resource");
    assert!(resource.attributes.iter().any(|a| a.key == "service.name"
        && a.value.as_ref().and_then(|v| v.value.clone()) == Some(Value::StringValue("flowtel".into()))));
}

/// `flowtel probe` is the container health check: it exits 0 once a running agent's /readyz
/// answers 200 (and `--live` asks /healthz), and with no agent there it is one line and exit 1.
#[test]
fn probe_asks_a_running_agents_readiness_and_fails_in_one_line_without_one() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let env = [("FLOWTEL_PROBES__LISTEN", listen.as_str())];
    assert_one_line_error(&flowtel(&["probe"], &env), "no agent answered");

    let mut child = Command::new(BIN)
        .arg("run")
        .env_remove("FLOWTEL_CONFIG")
        .env("FLOWTEL_PROBES__ENABLED", "true")
        .env("FLOWTEL_PROBES__LISTEN", &listen)
        .env("FLOWTEL_SAMPLER__POLL_INTERVAL_MS", "200")
        .stderr(Stdio::piped())
        .spawn()
        .expect("flowtel run starts");
    let _stderr = wait_attached(&mut child);
    let deadline = Instant::now() + Duration::from_secs(15);
    let ready = loop {
        let out = flowtel(&["probe"], &env);
        if out.status.success() {
            break out;
        }
        assert!(Instant::now() < deadline, "never ready: {out:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let body = String::from_utf8_lossy(&ready.stdout);
    assert!(
        body.contains("\"ok\":true") && body.contains("\"attached\":true"),
        "the /readyz body: {body}"
    );
    let live = flowtel(&["probe", "--live"], &env);
    assert!(live.status.success(), "{live:?}");
    // SAFETY: signalling our own child by pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    assert!(child.wait().expect("flowtel exits").success());
}
