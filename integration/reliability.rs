//! Faults injected for real into a running `flowtel run`: the collector (rotel) stopped and
//! restarted, a collector that accepts and never answers, SIGKILL, SIGTERM, a connection storm
//! ten times the kernel map's capacity, and more flow pairs than the memory budget.
mod support;

use std::collections::HashMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use support::agent::{
    attached_cgroup, cgroup_programs, client_bytes, dropped, file_exports, flowtel_programs, lines, rotel_points,
    rss_bytes, start_agent, start_rotel, stop, wait_listening, FilePoint, Point,
};
use support::{drain_connections, exchange, free_port, http_get, http_status, serial, wait_for};

/// Client-side bytes sent to server `port`, as rotel received them: the newest cumulative value
/// (`delta`: false) or the sum of every delta point.
fn collected_bytes(points: &[Point], port: u16, delta: bool) -> (i64, Vec<String>) {
    let ours: Vec<&Point> = points
        .iter()
        .filter(|p| {
            p.metric == "flowtel.tcp.bytes"
                && p.attributes.get("server.port") == Some(&format!("Int({port})"))
                && p.attributes.get("network.tcp.handshake.role").map(String::as_str) == Some("Str(client)")
                && p.attributes.get("network.io.direction").map(String::as_str) == Some("Str(transmit)")
        })
        .collect();
    let values = ours.iter().filter_map(|p| p.value.as_deref()?.parse::<i64>().ok());
    let total = if delta { values.sum() } else { values.max().unwrap_or(0) };
    (total, ours.iter().filter_map(|p| p.start.clone()).collect())
}

fn server() -> (TcpListener, SocketAddr, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    (listener, addr, addr.port())
}

fn failures_logged(log: &support::agent::Log) -> usize {
    lines(log).iter().filter(|l| l.contains("OTLP export failed")).count()
}

/// Cumulative: the outage loses nothing and resets nothing; memory stays bounded; the failure
/// is logged once per backoff step, not once per export.
#[test]
fn collector_outage_cumulative_totals_continue_without_reset_or_gap() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let grpc = free_port();
    let (before_log, after_log) = (dir.path().join("rotel-1.log"), dir.path().join("rotel-2.log"));
    let rotel = start_rotel(grpc, free_port(), &before_log);
    wait_listening(grpc);
    let (mut agent, log) = start_agent(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{grpc}")),
        ("OTEL_METRIC_EXPORT_INTERVAL", "1000".into()),
    ]);
    let (listener, addr, port) = server();
    exchange(&listener, addr, 1000, 0);
    wait_for("the first export", Duration::from_secs(20), || {
        collected_bytes(&rotel_points(&before_log), port, false).0 == 1000
    });
    let rss_before = rss_bytes(agent.0.id());

    drop(rotel); // the collector goes away
    exchange(&listener, addr, 2000, 0);
    let outage = Instant::now();
    let mut rss_peak = rss_before;
    while outage.elapsed() < Duration::from_secs(8) {
        rss_peak = rss_peak.max(rss_bytes(agent.0.id()));
        std::thread::sleep(Duration::from_millis(250));
    }
    exchange(&listener, addr, 3000, 0);
    let logged = failures_logged(&log);
    assert!(agent.0.try_wait().expect("status").is_none(), "still running");
    // exports are tried every second; the log steps 1, 2, 4, 8 s
    assert!(
        (1..=5).contains(&logged),
        "one line per backoff step, not per export: {logged}"
    );

    let _rotel = start_rotel(grpc, free_port(), &after_log);
    wait_listening(grpc);
    let resumed = wait_for("export after the collector's return", Duration::from_secs(20), || {
        collected_bytes(&rotel_points(&after_log), port, false).0 > 0
    });
    wait_for("every byte delivered", Duration::from_secs(10), || {
        collected_bytes(&rotel_points(&after_log), port, false).0 == 6000
    });
    stop(&mut agent);
    eprintln!(
        "resumed {resumed:?} after the collector listened; RSS {} -> peak {} KiB during the outage; {logged} failure lines",
        rss_before / 1024,
        rss_peak / 1024
    );
    // one export interval is 1 s; the attempt comes with the next export
    assert!(
        resumed < Duration::from_secs(3),
        "resumed within an interval: {resumed:?}"
    );
    let (_, starts_before) = collected_bytes(&rotel_points(&before_log), port, false);
    let (_, starts_after) = collected_bytes(&rotel_points(&after_log), port, false);
    assert!(!starts_before.is_empty() && !starts_after.is_empty());
    assert!(
        starts_before
            .iter()
            .chain(&starts_after)
            .all(|s| *s == starts_before[0]),
        "one start time across the outage (no reset): {starts_before:?} {starts_after:?}"
    );
    // README: at most one cumulative request waits (a few MB at the default top_k)
    assert!(
        rss_peak < rss_before + 16 * 1024 * 1024,
        "memory bounded during the outage: {rss_before} -> {rss_peak}"
    );
    assert!(lines(&log).iter().any(|l| l.contains("OTLP export resumed")));
}

/// Delta: the newest four intervals wait and arrive in order; older ones are dropped and
/// counted as `export_undelivered`.
#[test]
fn collector_outage_delta_keeps_the_last_four_intervals_and_counts_the_rest() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let grpc = free_port();
    let (before_log, after_log) = (dir.path().join("rotel-1.log"), dir.path().join("rotel-2.log"));
    let rotel = start_rotel(grpc, free_port(), &before_log);
    wait_listening(grpc);
    let (mut agent, _log) = start_agent(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{grpc}")),
        ("OTEL_METRIC_EXPORT_INTERVAL", "1000".into()),
        ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta".into()),
    ]);
    let (listener, addr, port) = server();
    exchange(&listener, addr, 1000, 0);
    wait_for("the first export", Duration::from_secs(20), || {
        collected_bytes(&rotel_points(&before_log), port, true).0 == 1000
    });

    drop(rotel);
    // early in the outage: its interval is more than four intervals old when the collector returns
    exchange(&listener, addr, 2000, 0);
    std::thread::sleep(Duration::from_secs(9));
    // late in the outage: within the four intervals that wait
    exchange(&listener, addr, 4000, 0);
    std::thread::sleep(Duration::from_millis(1500));
    let _rotel = start_rotel(grpc, free_port(), &after_log);
    wait_listening(grpc);
    wait_for("the waiting intervals delivered", Duration::from_secs(20), || {
        collected_bytes(&rotel_points(&after_log), port, true).0 >= 4000
    });
    std::thread::sleep(Duration::from_secs(2));
    stop(&mut agent);
    let before = collected_bytes(&rotel_points(&before_log), port, true).0;
    let after = collected_bytes(&rotel_points(&after_log), port, true).0;
    assert_eq!(before, 1000);
    assert_eq!(
        after, 4000,
        "the early outage interval is dropped, the late one delivered"
    );
    let undelivered = rotel_points(&after_log)
        .iter()
        .filter(|p| {
            p.metric == "flowtel.agent.dropped"
                && p.attributes.get("flowtel.drop.reason").map(String::as_str) == Some("Str(export_undelivered)")
        })
        .filter_map(|p| p.value.as_deref()?.parse::<i64>().ok())
        .max()
        .unwrap_or(0);
    assert!(undelivered >= 3, "dropped intervals are counted: {undelivered}");
}

/// A collector that accepts and never answers: the export timeout holds, and sampling and the
/// local /metrics view carry on at their own pace.
#[test]
fn a_blackholed_collector_delays_neither_sampling_nor_the_local_views() {
    let _serial = serial();
    let blackhole = TcpListener::bind("127.0.0.1:0").expect("bind");
    let bh_port = blackhole.local_addr().expect("addr").port();
    blackhole.set_nonblocking(true).expect("nonblocking");
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop_flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acceptor = {
        let (held, stop_flag) = (held.clone(), stop_flag.clone());
        std::thread::spawn(move || {
            while !stop_flag.load(std::sync::atomic::Ordering::Relaxed) {
                match blackhole.accept() {
                    Ok((s, _)) => held.lock().unwrap_or_else(|e| e.into_inner()).push(s),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        })
    };
    let (metrics_port, probes_port) = (free_port(), free_port());
    let (mut agent, log) = start_agent(&[
        ("FLOWTEL_PROBES__ENABLED", "true".into()),
        ("FLOWTEL_PROBES__LISTEN", format!("127.0.0.1:{probes_port}")),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{bh_port}")),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000".into()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "1000".into()),
        ("FLOWTEL_EXPORT__PROMETHEUS__ENABLED", "true".into()),
        (
            "FLOWTEL_EXPORT__PROMETHEUS__LISTEN",
            format!("127.0.0.1:{metrics_port}"),
        ),
    ]);
    std::thread::sleep(Duration::from_secs(3));
    let (listener, addr, port) = server();
    exchange(&listener, addr, 4242, 0);
    let needle = format!("server_port=\"{port}\",network_tcp_handshake_role=\"client\"");
    let seen = wait_for("the bytes on /metrics", Duration::from_secs(10), || {
        http_get(metrics_port, "/metrics").is_some_and(|page| {
            page.lines()
                .any(|l| l.starts_with("flowtel_tcp_bytes_total") && l.contains(&needle) && l.ends_with(" 4242"))
        })
    });
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let t = Instant::now();
        assert!(http_get(metrics_port, "/metrics").is_some());
        slowest = slowest.max(t.elapsed());
    }
    let ready = http_status(probes_port, "/readyz").map(|(code, _)| code);
    stop(&mut agent);
    stop_flag.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = acceptor.join();
    let log = lines(&log);
    let failures: Vec<&String> = log.iter().filter(|l| l.contains("OTLP export failed")).collect();
    eprintln!("bytes on /metrics after {seen:?}; slowest /metrics {slowest:?}; {failures:?}");
    assert!(!failures.is_empty(), "the timeouts are reported");
    assert!(
        failures
            .iter()
            .all(|l| l.contains("127.0.0.1") && l.to_lowercase().contains("time")),
        "the failure says it timed out: {failures:?}"
    );
    assert!(
        !held.lock().unwrap_or_else(|e| e.into_inner()).is_empty(),
        "the agent connected"
    );
    // one export interval plus one poll, with room for a loaded machine
    assert!(seen < Duration::from_secs(4), "sampling not delayed: {seen:?}");
    assert!(slowest < Duration::from_secs(1), "/metrics not delayed: {slowest:?}");
    assert_eq!(ready, Some(200), "polls keep succeeding");
}

/// `kill -9` leaves nothing attached and nothing pinned, and a new agent starts normally.
#[test]
fn sigkill_leaves_no_program_attached_or_pinned_and_a_restart_works() {
    let _serial = serial();
    let before = flowtel_programs();
    let (mut agent, log) = start_agent(&[]);
    let cgroup = attached_cgroup(&log);
    let ours: Vec<u64> = flowtel_programs()
        .into_iter()
        .filter(|id| !before.contains(id))
        .collect();
    assert!(
        ours.len() >= 5,
        "sock_ops, 3 tracepoints and the iterator loaded: {ours:?}"
    );
    assert!(
        cgroup_programs(&cgroup).iter().any(|n| n == "flowtel_sockops"),
        "attached to {cgroup}"
    );

    agent.0.kill().expect("SIGKILL");
    agent.0.wait().expect("reaped");
    wait_for("the programs freed", Duration::from_secs(10), || {
        flowtel_programs().iter().all(|id| !ours.contains(id))
    });
    assert!(
        !cgroup_programs(&cgroup).iter().any(|n| n.starts_with("flowtel_")),
        "nothing left on {cgroup}"
    );
    let pinned: Vec<String> = std::fs::read_dir("/sys/fs/bpf")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains("flowtel"))
                .collect()
        })
        .unwrap_or_default();
    assert!(pinned.is_empty(), "nothing pinned: {pinned:?}");

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("metrics.jsonl");
    let (mut again, _log) = start_agent(&[
        ("FLOWTEL_EXPORT__FILE_PATH", path.display().to_string()),
        ("FLOWTEL_EXPORT__INTERVAL_SECS", "1".into()),
    ]);
    let (listener, addr, port) = server();
    exchange(&listener, addr, 3210, 0);
    wait_for("the restarted agent's export", Duration::from_secs(10), || {
        client_bytes(file_exports(&path).last().map_or(&[][..], Vec::as_slice), port) == 3210
    });
    stop(&mut again);
}

/// SIGTERM: the final export carries what was counted since the last one, the programs are
/// detached, and the process is gone within 5 s.
#[test]
fn sigterm_exports_detaches_and_exits_within_5_seconds() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let grpc = free_port();
    let log_path = dir.path().join("rotel.log");
    let _rotel = start_rotel(grpc, free_port(), &log_path);
    wait_listening(grpc);
    let before = flowtel_programs();
    let (mut agent, _log) = start_agent(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{grpc}")),
        // no periodic export during the test: only the final one can deliver
        ("OTEL_METRIC_EXPORT_INTERVAL", "600000".into()),
    ]);
    let ours: Vec<u64> = flowtel_programs()
        .into_iter()
        .filter(|id| !before.contains(id))
        .collect();
    let (listener, addr, port) = server();
    exchange(&listener, addr, 5555, 0);
    let sent = Instant::now();
    // SAFETY: signalling our own child by pid.
    assert_eq!(unsafe { libc::kill(agent.0.id() as i32, libc::SIGTERM) }, 0);
    let status = agent.0.wait().expect("exits");
    let took = sent.elapsed();
    eprintln!("exited {took:?} after SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(5), "exit within 5 s: {took:?}");
    wait_for("the final export at the collector", Duration::from_secs(5), || {
        collected_bytes(&rotel_points(&log_path), port, false).0 == 5555
    });
    wait_for("the programs freed", Duration::from_secs(10), || {
        flowtel_programs().iter().all(|id| !ours.contains(id))
    });
}

/// Transmitted bytes per peer address for `port` (client ends), and the overflow series'.
fn per_peer(export: &[FilePoint], port: u16) -> (HashMap<String, i64>, i64) {
    let mut peers = HashMap::new();
    let mut overflow = 0;
    for p in export.iter().filter(|p| p.metric == "flowtel.tcp.bytes") {
        if p.attr("network.io.direction") != Some("transmit") {
            continue;
        }
        if p.attr("otel.metric.overflow") == Some("true") {
            overflow += p.value;
        } else if p.attr("server.port") == Some(&port.to_string())
            && p.attr("network.tcp.handshake.role") == Some("client")
        {
            *peers
                .entry(p.attr("network.peer.address").unwrap_or("?").to_string())
                .or_insert(0) += p.value;
        }
    }
    (peers, overflow)
}

/// Sends `size` bytes to 127.0.`a`.`b`:`port` (a listener on 0.0.0.0 answers every loopback
/// address, so each target is a distinct pair at both ends).
fn send_to(a: u8, b: u8, port: u16, size: usize) {
    let mut c = TcpStream::connect((Ipv4Addr::new(127, 0, a, b), port)).expect("connect");
    c.write_all(&vec![7u8; size]).expect("write");
}

/// 640 pairs closing within one poll against a 64-entry kernel map: folds beyond the capacity
/// go to the overflow bucket and are counted; the pairs that were kept are exact; and once the
/// storm has passed, a new pair is seen on its own again.
#[test]
fn a_storm_of_ten_times_the_map_capacity_is_counted_kept_exact_and_recovers() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("metrics.jsonl");
    let (mut agent, _log) = start_agent(&[
        ("FLOWTEL_SAMPLER__PAIR_MAP_CAPACITY", "64".into()),
        ("FLOWTEL_SAMPLER__POLL_INTERVAL_MS", "2000".into()),
        ("FLOWTEL_EXPORT__FILE_PATH", path.display().to_string()),
        ("FLOWTEL_EXPORT__INTERVAL_SECS", "1".into()),
        ("FLOWTEL_EXPORT__TOP_K", "5000".into()),
    ]);
    let listener = TcpListener::bind("0.0.0.0:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let _drain = drain_connections(listener);
    // 320 connections, each to its own address with its own size: 640 pairs
    let size = |i: usize| 100 + i;
    let target = |i: usize| (1 + (i / 200) as u8, 1 + (i % 200) as u8);
    let started = Instant::now();
    for i in 0..320 {
        let (a, b) = target(i);
        send_to(a, b, port, size(i));
    }
    let storm = started.elapsed();
    std::thread::sleep(Duration::from_secs(5));
    let exports = file_exports(&path);
    let last = exports.last().expect("exports");
    let full = dropped(last, "pair_map_full");
    let (peers, overflow) = per_peer(last, port);
    eprintln!(
        "storm of 320 connections took {storm:?}; {} client pairs kept, pair_map_full = {full}",
        peers.len()
    );
    assert!(full > 0, "folds beyond the capacity are counted");
    assert!(peers.len() < 320, "not every pair fit: {}", peers.len());
    for i in 0..320 {
        let (a, b) = target(i);
        if let Some(bytes) = peers.get(&format!("127.0.{a}.{b}")) {
            assert_eq!(*bytes, size(i) as i64, "a kept pair is exact (127.0.{a}.{b})");
        }
    }
    let sent: i64 = (0..320).map(|i| size(i) as i64).sum();
    let kept: i64 = peers.values().sum();
    assert!(kept + overflow >= sent, "nothing lost: {kept} + {overflow} < {sent}");

    // the storm is over: a new pair has its own series again
    send_to(9, 9, port, 777);
    wait_for("the next pair on its own", Duration::from_secs(10), || {
        file_exports(&path)
            .last()
            .is_some_and(|e| per_peer(e, port).0.get("127.0.9.9") == Some(&777))
    });
    let after = dropped(file_exports(&path).last().expect("exports"), "pair_map_full");
    stop(&mut agent);
    assert!(after - full <= 2, "no lasting blind period: {full} -> {after}");
}

/// 1000 pairs in five waves against a 100-pair table budget: the table never holds more than
/// 100, idle pairs are evicted first (counted), the rest fold into the overflow bucket, the sums
/// stay whole, and memory does not grow with the waves.
#[test]
fn the_flow_table_budget_evicts_idle_pairs_then_overflows_and_memory_stays_flat() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("metrics.jsonl");
    let (mut agent, _log) = start_agent(&[
        ("FLOWTEL_FLOWS__MAX_PAIRS", "100".into()),
        ("FLOWTEL_EXPORT__FILE_PATH", path.display().to_string()),
        ("FLOWTEL_EXPORT__INTERVAL_SECS", "1".into()),
        ("FLOWTEL_EXPORT__TOP_K", "5000".into()),
    ]);
    let listener = TcpListener::bind("0.0.0.0:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let _drain = drain_connections(listener);
    let mut sent = 0i64;
    let mut rss = Vec::new();
    for wave in 0..5u8 {
        for i in 0..100u8 {
            send_to(10 + wave, 1 + i, port, 1000);
            sent += 1000;
        }
        std::thread::sleep(Duration::from_millis(1500));
        rss.push(rss_bytes(agent.0.id()));
    }
    std::thread::sleep(Duration::from_millis(1500));
    stop(&mut agent);
    let exports = file_exports(&path);
    let last = exports.last().expect("exports");
    let most_pairs = exports
        .iter()
        .flat_map(|e| e.iter().filter(|p| p.metric == "flowtel.agent.flow_pairs"))
        .map(|p| p.value)
        .max()
        .unwrap_or(0);
    let evicted = dropped(last, "flow_table_evicted_for_room");
    let folded = dropped(last, "flow_table_full");
    let (peers, overflow) = per_peer(last, port);
    let kept: i64 = peers.values().sum();
    eprintln!(
        "most pairs {most_pairs}; evicted for room {evicted}; folded {folded}; RSS by wave (KiB) {:?}",
        rss.iter().map(|r| r / 1024).collect::<Vec<_>>()
    );
    assert!(most_pairs <= 100, "the budget holds: {most_pairs}");
    assert!(evicted > 0, "idle pairs made room, counted");
    assert!(
        kept + overflow >= sent,
        "the sums stay whole: {kept} + {overflow} < {sent}"
    );
    assert!(
        rss[4] < rss[0] + 4 * 1024 * 1024,
        "memory does not grow with the waves: {rss:?}"
    );
}
