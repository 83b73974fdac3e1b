//! What one agent costs a metrics backend: series per host and bytes per second, for 50, 500
//! and 5,000 peers, with the default settings and with the large-fleet profile
//! (config/large-fleet.toml), as OTLP (protobuf, gzip) and as the `/metrics` page (what a
//! Prometheus-compatible backend stores: one series per sample line, a histogram's buckets
//! included). Then the load of 1,000 and 10,000 such hosts. Prints figures; asserts nothing.
//!   cargo bench --bench fleet_cost
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use flate2::write::GzEncoder;
use flowtel::config::Config;
use flowtel::enrich::{Annotations, Enricher};
use flowtel::export::metric_set::build;
use flowtel::export::otlp::{encode, HistogramFormat};
use flowtel::export::prometheus::render;
use flowtel::export::{AgentMetrics, SeriesSelector, Temporality};
use flowtel::flows::{FlowCounters, FlowKey, FlowTable, Owner, PairDelta, Role};
use flowtel::health::{Attribution, GroupHealth, GroupId, Status};
use prost::Message;

const PEERS: [u32; 3] = [50, 500, 5_000];

/// One interval of traffic to `peers` peers: a client pair to each (port 443), a few with loss
/// and failed connects, and a server pair from every tenth peer (port 8080).
fn deltas(peers: u32, round: u64) -> Vec<PairDelta> {
    let mut out = Vec::new();
    for i in 0..peers {
        let remote = IpAddr::V4(Ipv4Addr::from(0x0a01_0000 + i));
        let mut counters = FlowCounters {
            bytes_sent: 20_000 + u64::from(i) * round,
            bytes_received: 80_000,
            segs_sent: 40,
            segs_received: 70,
            retrans: [0, u64::from(i % 9 == 0), 0],
            rto: [0, u64::from(i % 50 == 0), 0],
            conn_established: 4,
            conn_closed: 4,
            conn_failed: [u64::from(i % 40 == 0), 0, 0, 0],
            active: 1,
            ..Default::default()
        };
        for us in [300, 450, 800] {
            counters.rtt.record(us + u64::from(i % 200));
        }
        counters.connect_duration.record(500);
        let owner = Owner {
            pid: Some(1000 + i % 7),
            comm: Some(format!("svc-{}", i % 7)),
            cgroup_id: Some(1),
        };
        out.push(PairDelta {
            key: FlowKey {
                local: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                remote,
                service_port: 443,
                role: Role::Client,
            },
            counters: counters.clone(),
            owner: owner.clone(),
        });
        if i % 10 == 0 {
            out.push(PairDelta {
                key: FlowKey {
                    local: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                    remote,
                    service_port: 8080,
                    role: Role::Server,
                },
                counters,
                owner,
            });
        }
    }
    out
}

fn profile(file: Option<&str>) -> Config {
    let path = file.map(|f| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(f));
    Config::load(path.as_deref(), std::iter::empty()).expect("profile")
}

struct Cost {
    /// Seconds between exports (and scrapes).
    interval: f64,
    otlp_points: usize,
    otlp_gzip: usize,
    prometheus_series: usize,
    prometheus_bytes: usize,
    prometheus_gzip: usize,
}

fn gzip(bytes: &[u8]) -> usize {
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes).expect("gzip");
    gz.finish().expect("gzip").len()
}

fn measure(config: &Config, peers: u32) -> Cost {
    let export = config.export_config(|_| None).expect("export settings");
    let enricher = Arc::new(Enricher::new(&config.resources, None, &config.monitors).expect("resources and monitors"));
    let mut table = FlowTable::new(config.flow_table_config());
    let start = SystemTime::now();
    let mut selector = SeriesSelector::new(export.selection, start);
    let mut annotations = Annotations::default();
    let max_groups = config.health.thresholds.max_groups;
    // every tracked peer group healthy: what a calm fleet exports
    let health: Vec<GroupHealth> = (0..peers.min(max_groups as u32))
        .map(|i| GroupHealth {
            group: GroupId::Peer {
                address: IpAddr::V4(Ipv4Addr::from(0x0a01_0000 + i)),
                port: 443,
            },
            status: Status::Healthy,
            reasons: Vec::new(),
            attribution: Attribution::Peer,
            rtt_ratio: Some(1.0),
            retransmit_ratio: Some(0.001),
            timeouts: 0,
            connect_failure_ratio: Some(0.0),
            evidence: Default::default(),
            context: None,
        })
        .collect();
    let agent = AgentMetrics {
        started: Some(start),
        dropped: vec![("pair_map_full", 0), ("flow_table_full", 0), ("export_undelivered", 0)],
        ..Default::default()
    };
    let mut cost = None;
    // the third export: series selected, steady state
    for round in 1..=3u64 {
        let now = Instant::now() + Duration::from_secs(round * 30);
        table.apply_poll(&deltas(peers, round), &FlowCounters::default(), now);
        annotations.refresh(&table, &enricher, now);
        let frame = selector.select(&annotations.view(&table), start + Duration::from_secs(round * 30));
        let set = build(&frame, &health, &agent, Temporality::Cumulative, &export.peer_addresses);
        let request = encode(&set, &Default::default(), HistogramFormat::Exponential);
        let page = render(&set);
        cost = Some(Cost {
            interval: export.interval.as_secs_f64(),
            otlp_points: set.families.iter().map(|f| f.points.len()).sum(),
            otlp_gzip: gzip(&request.encode_to_vec()),
            prometheus_series: page.lines().filter(|l| !l.starts_with('#')).count(),
            prometheus_bytes: page.len(),
            prometheus_gzip: gzip(page.as_bytes()),
        });
    }
    cost.expect("three exports")
}

fn main() {
    println!(
        "| profile | peers | OTLP points per export | OTLP gzip bytes/s | /metrics series | /metrics bytes/s (gzip) |"
    );
    println!("|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    for (name, file) in [("default", None), ("large-fleet", Some("config/large-fleet.toml"))] {
        let config = profile(file);
        for peers in PEERS {
            let c = measure(&config, peers);
            println!(
                "| {name} | {peers} | {} | {:.0} | {} | {:.0} ({:.0}) |",
                c.otlp_points,
                c.otlp_gzip as f64 / c.interval,
                c.prometheus_series,
                c.prometheus_bytes as f64 / c.interval,
                c.prometheus_gzip as f64 / c.interval,
            );
            rows.push((name, peers, c));
        }
    }
    println!();
    println!("| profile | peers per host | hosts | active series | samples/s (scraped every export interval) | OTLP gzip MB/s |");
    println!("|---|---|---|---|---|---|");
    for (name, peers, c) in &rows {
        for hosts in [1_000u64, 10_000] {
            let series = c.prometheus_series as u64 * hosts;
            println!(
                "| {name} | {peers} | {hosts} | {:.1} M | {:.0} k | {:.1} |",
                series as f64 / 1e6,
                series as f64 / c.interval / 1e3,
                c.otlp_gzip as f64 * hosts as f64 / c.interval / 1e6
            );
        }
    }
}
