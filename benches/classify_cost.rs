//! What naming resources costs: the longest-prefix lookup with an AWS-sized service list (10 000
//! prefixes) against an empty one, and one export of 1000 flow pairs with and without 20
//! configured networks, that list and 5 monitors. Prints medians; asserts nothing about time.
//!   cargo bench --bench classify_cost
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant, SystemTime};

use flowtel::enrich::monitors::{LocalSelector, RemoteSelector};
use flowtel::enrich::resources::{NetworkEntry, ResourcesSection};
use flowtel::enrich::service_lists::{ListFormat, ServiceListSource};
use flowtel::enrich::{Annotations, Enricher, MonitorSection};
use flowtel::export::{SelectionConfig, SeriesSelector};
use flowtel::flows::{FlowCounters, FlowKey, FlowTable, FlowTableConfig, Owner, PairDelta, Role};

const SERVICE_PREFIXES: u32 = 10_000;
const PAIRS: u32 = 1000;
const LOOKUPS: u32 = 200_000;
const ROUNDS: usize = 21;

/// A tiny deterministic generator: varied addresses, not randomness.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 32) as u32
    }
}

/// An ip-ranges.json with `n` public /16../24 prefixes, as many services as AWS lists.
fn ip_ranges(n: u32) -> String {
    let mut rng = Lcg(42);
    let services = ["AMAZON", "S3", "EC2", "DYNAMODB", "CLOUDFRONT", "ROUTE53"];
    let prefixes: Vec<String> = (0..n)
        .map(|i| {
            let len = 16 + rng.next() % 9;
            let addr = Ipv4Addr::from((rng.next() % 0xdf00_0000 + 0x0100_0000) & !((1u32 << (32 - len)) - 1));
            format!(
                r#"{{"ip_prefix":"{addr}/{len}","region":"r{}","service":"{}","network_border_group":"x"}}"#,
                i % 30,
                services[(i % 6) as usize]
            )
        })
        .collect();
    format!(
        r#"{{"syncToken":"1","createDate":"x","prefixes":[{}],"ipv6_prefixes":[]}}"#,
        prefixes.join(",")
    )
}

fn enricher(dir: &std::path::Path) -> Enricher {
    let path = dir.join("ip-ranges.json");
    std::fs::write(&path, ip_ranges(SERVICE_PREFIXES)).expect("write list");
    let mut resources = ResourcesSection::default();
    for i in 0..20u8 {
        resources.networks.insert(
            format!("10.{i}.0.0/16"),
            NetworkEntry {
                name: format!("subnet-{i}"),
                vpc: Some(format!("vpc-{}", i % 3)),
                zone: Some(format!("zone-{}", i % 4)),
                region: Some("r0".into()),
            },
        );
    }
    resources.service_lists.push(ServiceListSource {
        path,
        format: ListFormat::Aws,
        services: vec![],
    });
    let monitors: Vec<MonitorSection> = (0..5u8)
        .map(|i| MonitorSection {
            name: format!("m{i}"),
            local: vec![LocalSelector::Subnet(format!("subnet-{i}"))],
            remote: vec![
                RemoteSelector::Zone(format!("zone-{}", i % 4)),
                RemoteSelector::Service("S3".into()),
            ],
        })
        .collect();
    Enricher::new(&resources, None, &monitors).expect("enricher")
}

fn table() -> FlowTable {
    let mut rng = Lcg(7);
    let mut table = FlowTable::new(FlowTableConfig::default());
    let deltas: Vec<PairDelta> = (0..PAIRS)
        .map(|i| {
            // half to configured networks, half to public addresses
            let remote = if i % 2 == 0 {
                Ipv4Addr::from(0x0a00_0000 + rng.next() % 0x0014_0000)
            } else {
                Ipv4Addr::from(rng.next() % 0xdf00_0000 + 0x0100_0000)
            };
            let mut counters = FlowCounters {
                bytes_sent: 10_000 + u64::from(i),
                segs_sent: 10,
                active: 1,
                ..Default::default()
            };
            counters.rtt.record(200);
            PairDelta {
                key: FlowKey {
                    local: IpAddr::V4(Ipv4Addr::new(10, (i % 20) as u8, 0, 1)),
                    remote: IpAddr::V4(remote),
                    service_port: 443,
                    role: Role::Client,
                },
                counters,
                owner: Owner::default(),
            }
        })
        .collect();
    table.apply_poll(&deltas, &FlowCounters::default(), Instant::now());
    table
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let loaded = Instant::now();
    let full = enricher(dir.path());
    println!(
        "build: {} service prefixes, 20 networks, 5 monitors in {:.1} ms",
        full.classifier().service_prefixes(),
        loaded.elapsed().as_secs_f64() * 1e3
    );
    let empty = Enricher::default();
    let table = table();
    let keys: Vec<FlowKey> = table.pairs().iter().map(|p| p.key).collect();

    for (name, e) in [("no resources", &empty), ("10k prefixes + 20 networks", &full)] {
        let times: Vec<Duration> = (0..ROUNDS)
            .map(|_| {
                let began = Instant::now();
                let mut n = 0usize;
                for i in 0..LOOKUPS {
                    let c = e.classify(&keys[(i % PAIRS) as usize]);
                    n += c.category as usize;
                }
                std::hint::black_box(n);
                began.elapsed()
            })
            .collect();
        println!(
            "classify one pair ({name}): {:.0} ns (median of {ROUNDS} rounds of {LOOKUPS})",
            median(times).as_nanos() as f64 / f64::from(LOOKUPS)
        );
    }

    let start = SystemTime::now();
    for (name, e) in [("no resources", &empty), ("10k prefixes, 5 monitors", &full)] {
        // annotation happens once per new pair (in the poller), selection once per export
        let (annotate, select): (Vec<Duration>, Vec<Duration>) = (0..ROUNDS)
            .map(|round| {
                let began = Instant::now();
                let mut annotations = Annotations::default();
                annotations.refresh(&table, e, Instant::now());
                let annotated = began.elapsed();
                let mut selector = SeriesSelector::new(SelectionConfig::default(), start);
                let began = Instant::now();
                let frame = selector.select(
                    &annotations.view(&table),
                    start + Duration::from_secs(30 * (round as u64 + 1)),
                );
                std::hint::black_box(frame.series.len());
                (annotated, began.elapsed())
            })
            .unzip();
        println!(
            "annotate {PAIRS} new pairs ({name}): {:.2} ms; select them: {:.2} ms (medians of {ROUNDS})",
            median(annotate).as_secs_f64() * 1e3,
            median(select).as_secs_f64() * 1e3
        );
    }
}
