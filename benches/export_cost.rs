//! What one export of 1000 flow pairs costs: CPU time to select, build the metric set and encode
//! it as OTLP (and, apart, to render it as the `/metrics` page), and bytes on the wire as OTLP
//! protobuf (plain and gzip), as an OTLP JSON line and as the OpenMetrics page. Pairs are
//! annotated before the clock starts: the poller does that once per new pair, not per export.
//! Prints figures; asserts nothing about time.   cargo bench --bench export_cost
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant, SystemTime};

use flate2::write::GzEncoder;
use flowtel::enrich::{Annotations, Enricher};
use flowtel::export::file::to_json_line;
use flowtel::export::metric_set::build;
use flowtel::export::otlp::{encode, HistogramFormat};
use flowtel::export::prometheus::render;
use flowtel::export::{AgentMetrics, SelectionConfig, SeriesSelector, Temporality};
use flowtel::flows::{FlowCounters, FlowKey, FlowTable, FlowTableConfig, Owner, PairDelta, Role};
use prost::Message;

const PAIRS: u32 = 1000;
const ROUNDS: usize = 50;

fn table(round: u64) -> FlowTable {
    let mut table = FlowTable::new(FlowTableConfig::default());
    let deltas: Vec<PairDelta> = (0..PAIRS)
        .map(|i| {
            let mut counters = FlowCounters {
                bytes_sent: 10_000 + u64::from(i) * round,
                bytes_received: 50_000,
                segs_sent: 40,
                segs_received: 60,
                retrans: [0, u64::from(i % 7 == 0), 0],
                conn_established: 3,
                conn_closed: 3,
                active: 1,
                ..Default::default()
            };
            for us in [80, 120, 400, 2_000] {
                counters.rtt.record(us + u64::from(i));
            }
            counters.connect_duration.record(150);
            PairDelta {
                key: FlowKey {
                    local: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                    remote: IpAddr::V4(Ipv4Addr::from(0x0a01_0000 + i)),
                    service_port: 443,
                    role: Role::Client,
                },
                counters,
                owner: Owner {
                    pid: Some(1234),
                    comm: Some("envoy".into()),
                    cgroup_id: Some(1),
                },
            }
        })
        .collect();
    table.apply_poll(&deltas, &FlowCounters::default(), Instant::now());
    table
}

fn main() {
    let table = table(1);
    let start = SystemTime::now();
    let mut annotations = Annotations::default();
    annotations.refresh(&table, &Enricher::default(), Instant::now());
    let view = annotations.view(&table);
    let mut times = Vec::with_capacity(ROUNDS);
    let mut page_times = Vec::with_capacity(ROUNDS);
    let mut sizes = (0, 0, 0, 0);
    for round in 0..ROUNDS {
        let mut selector = SeriesSelector::new(SelectionConfig::default(), start);
        let began = Instant::now();
        let frame = selector.select(&view, start + Duration::from_secs(30 * (round as u64 + 1)));
        let agent = AgentMetrics::default();
        let set = build(&frame, &[], &agent, Temporality::Cumulative, &Default::default());
        let request = encode(&set, &Default::default(), HistogramFormat::Exponential);
        let body = request.encode_to_vec();
        times.push(began.elapsed());
        let began = Instant::now();
        let page = render(&set);
        page_times.push(began.elapsed());
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&body).expect("gzip");
        let gzipped = gz.finish().expect("gzip");
        let json = to_json_line(&request).expect("json");
        sizes = (body.len(), gzipped.len(), json.len(), page.len());
    }
    page_times.sort();
    times.sort();
    let median = times[times.len() / 2];
    println!("export of {PAIRS} flow pairs (+ overflow series), {ROUNDS} rounds:");
    println!(
        "  select + metric set + encode + protobuf serialize: median {:.2} ms (min {:.2}, max {:.2})",
        median.as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3
    );
    println!(
        "  OTLP protobuf body: {} bytes ({:.0} per pair)",
        sizes.0,
        sizes.0 as f64 / f64::from(PAIRS)
    );
    println!(
        "  OTLP protobuf gzip: {} bytes ({:.0} per pair)",
        sizes.1,
        sizes.1 as f64 / f64::from(PAIRS)
    );
    println!("  OTLP JSON line:     {} bytes", sizes.2);
    println!(
        "  /metrics page from the same metric set: {} bytes, rendered in median {:.2} ms",
        sizes.3,
        page_times[page_times.len() / 2].as_secs_f64() * 1e3
    );
}
