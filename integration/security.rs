//! Least privilege, secrets, local endpoints and peer-address redaction, checked on a running
//! `flowtel run`.
mod support;

use std::collections::HashMap;
use std::io::Write;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use flowtel::export::redact::PeerAddresses;
use support::agent::{client_bytes, file_exports, lines, start_agent, stop};
use support::{drain_connections, free_port, http_get, serial, wait_for};

const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;

/// (name, CapEff, CapPrm, CapBnd, NoNewPrivs) of every thread of `pid`.
fn thread_capabilities(pid: u32) -> Vec<(String, u64, u64, u64, bool)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task dir")
        .flatten()
    {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm"))
            .unwrap_or_default()
            .trim()
            .to_string();
        let Ok(status) = std::fs::read_to_string(path.join("status")) else {
            continue;
        };
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        let hex = |key: &str| u64::from_str_radix(&field(key), 16).expect("capability mask");
        threads.push((
            name,
            hex("CapEff:"),
            hex("CapPrm:"),
            hex("CapBnd:"),
            field("NoNewPrivs:") == "1",
        ));
    }
    threads
}

fn send(to: Ipv4Addr, port: u16, size: usize) {
    let mut c = TcpStream::connect((to, port)).expect("connect");
    c.write_all(&vec![3u8; size]).expect("write");
}

/// After attaching, no thread holds more than CAP_SYS_ADMIN and CAP_SYS_PTRACE (the poll
/// thread, for the namespace walk), every other thread holds nothing, none can gain anything
/// through exec, and sampling still works.
#[test]
fn after_attaching_every_thread_drops_what_it_no_longer_needs() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("metrics.jsonl");
    let (mut agent, log) = start_agent(&[
        ("FLOWTEL_EXPORT__FILE_PATH", path.display().to_string()),
        ("FLOWTEL_EXPORT__INTERVAL_SECS", "1".into()),
        ("FLOWTEL_EXPORT__PROMETHEUS__ENABLED", "true".into()),
        (
            "FLOWTEL_EXPORT__PROMETHEUS__LISTEN",
            format!("127.0.0.1:{}", free_port()),
        ),
    ]);
    wait_for("the capability drop", Duration::from_secs(10), || {
        lines(&log)
            .iter()
            .any(|l| l.contains("capabilities dropped after attaching"))
    });
    let threads = thread_capabilities(agent.0.id());
    let poll_keeps = (1u64 << CAP_SYS_ADMIN) | (1u64 << CAP_SYS_PTRACE);
    eprintln!("{threads:x?}");
    assert!(threads.len() >= 3, "main, runtime and poll threads: {threads:?}");
    for (name, effective, permitted, bounding, no_new_privs) in &threads {
        let allowed = if name == "flowtel-poll" { poll_keeps } else { 0 };
        assert_eq!(effective & !allowed, 0, "{name} effective {effective:x}");
        assert_eq!(permitted & !allowed, 0, "{name} permitted {permitted:x}");
        assert_eq!(bounding & !allowed, 0, "{name} bounding {bounding:x}");
        assert!(no_new_privs, "{name}: no_new_privs");
    }
    let poll = threads.iter().find(|t| t.0 == "flowtel-poll").expect("the poll thread");
    assert_eq!(poll.1, poll_keeps, "the poll thread keeps exactly the walk's two");
    let main = threads.iter().find(|t| t.0 == "flowtel").expect("the main thread");
    assert_eq!(main.1, 0, "the main thread holds nothing");

    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drain_connections(listener);
    send(Ipv4Addr::LOCALHOST, port, 4321);
    wait_for("bytes counted after the drop", Duration::from_secs(10), || {
        file_exports(&path)
            .last()
            .is_some_and(|e| client_bytes(e, port) == 4321)
    });
    stop(&mut agent);
}

/// API keys in headers appear nowhere in the log, even at trace level and while exports fail.
#[test]
fn header_values_are_never_logged() {
    let _serial = serial();
    const SECRET: &str = "s3cret-api-key-0123456789";
    let (mut agent, log) = start_agent(&[
        ("FLOWTEL_LOG", "trace".into()),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}", free_port()),
        ),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            format!("x-api-key={SECRET},x-tenant=acme"),
        ),
        ("OTEL_METRIC_EXPORT_INTERVAL", "1000".into()),
    ]);
    wait_for("a failed export", Duration::from_secs(15), || {
        lines(&log).iter().any(|l| l.contains("OTLP export failed"))
    });
    stop(&mut agent);
    let log = lines(&log);
    assert!(log.len() > 20, "trace logging was on: {} lines", log.len());
    let leaks: Vec<&String> = log
        .iter()
        .filter(|l| l.contains(SECRET) || l.contains("acme"))
        .collect();
    assert!(leaks.is_empty(), "header values in the log: {leaks:?}");
}

/// /metrics and the probes listen on loopback unless configured otherwise.
#[test]
fn local_endpoints_bind_to_loopback_by_default() {
    let _serial = serial();
    let (mut agent, _log) = start_agent(&[
        ("FLOWTEL_EXPORT__PROMETHEUS__ENABLED", "true".into()),
        ("FLOWTEL_PROBES__ENABLED", "true".into()),
    ]);
    let pid = agent.0.id();
    let out = Command::new("ss").args(["-Hltnp"]).output().expect("ss runs");
    stop(&mut agent);
    let text = String::from_utf8_lossy(&out.stdout);
    let ours: Vec<&str> = text.lines().filter(|l| l.contains(&format!("pid={pid},"))).collect();
    assert_eq!(ours.len(), 2, "/metrics and the probes: {text}");
    for line in &ours {
        let local = line.split_whitespace().nth(3).expect("local address column");
        assert!(local.starts_with("127.0.0.1:"), "{line}");
    }
    assert!(ours.iter().any(|l| l.contains("127.0.0.1:9464")), "{ours:?}");
    assert!(ours.iter().any(|l| l.contains("127.0.0.1:9465")), "{ours:?}");
}

/// With `redact_peer_addresses`, OTLP and /metrics carry the keyed hash of each peer, never
/// the address, while local addresses stay.
#[test]
fn redacted_peer_addresses_leave_as_keyed_hashes_only() {
    let _serial = serial();
    const KEY: &str = "a key shared by the fleet, 2026";
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("metrics.jsonl");
    let metrics_port = free_port();
    let (mut agent, log) = start_agent(&[
        ("FLOWTEL_EXPORT__REDACT_PEER_ADDRESSES", "true".into()),
        ("FLOWTEL_EXPORT__REDACT_KEY", KEY.into()),
        ("FLOWTEL_EXPORT__FILE_PATH", path.display().to_string()),
        ("FLOWTEL_EXPORT__INTERVAL_SECS", "1".into()),
        ("FLOWTEL_EXPORT__PROMETHEUS__ENABLED", "true".into()),
        (
            "FLOWTEL_EXPORT__PROMETHEUS__LISTEN",
            format!("127.0.0.1:{metrics_port}"),
        ),
    ]);
    let listener = TcpListener::bind("0.0.0.0:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drain_connections(listener);
    let peer = Ipv4Addr::new(127, 0, 0, 77);
    send(peer, port, 2468);
    wait_for("the flow exported", Duration::from_secs(10), || {
        file_exports(&path)
            .last()
            .is_some_and(|e| client_bytes(e, port) == 2468)
    });
    let page = http_get(metrics_port, "/metrics").expect("/metrics");
    stop(&mut agent);

    let redact = PeerAddresses::new(true, Some(KEY)).expect("key");
    let hashed_peer = redact.show(peer.into());
    let exports = file_exports(&path);
    let last = exports.last().expect("exports");
    let mut seen: HashMap<String, String> = HashMap::new();
    for p in last.iter().filter(|p| p.attr("server.port") == Some(&port.to_string())) {
        let role = p.attr("network.tcp.handshake.role").unwrap_or("?").to_string();
        seen.insert(role, p.attr("network.peer.address").unwrap_or("").to_string());
        assert!(
            p.attr("network.peer.address").is_some_and(|a| a.starts_with("hmac:")),
            "{p:?}"
        );
    }
    assert_eq!(
        seen.get("client"),
        Some(&hashed_peer),
        "the client end's peer is 127.0.0.77"
    );
    // the server end's peer is 127.0.0.1, and its local address 127.0.0.77 is not redacted
    assert_eq!(seen.get("server"), Some(&redact.show(Ipv4Addr::LOCALHOST.into())));
    let text = std::fs::read_to_string(&path).expect("file");
    assert!(
        !text.contains("\"network.peer.address\",\"value\":{\"stringValue\":\"127."),
        "plain peer in OTLP"
    );
    let peer_labels: Vec<&str> = page
        .lines()
        .filter(|l| l.contains(&format!("server_port=\"{port}\"")))
        .collect();
    assert!(!peer_labels.is_empty(), "{page}");
    for line in peer_labels {
        assert!(line.contains("network_peer_address=\"hmac:"), "{line}");
        assert!(!line.contains("network_peer_address=\"127."), "{line}");
    }
    assert!(lines(&log).iter().all(|l| !l.contains(KEY)), "the key is never logged");
}
