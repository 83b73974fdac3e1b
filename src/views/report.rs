//! `flowtel snapshot`: what every flow pair moved during a window of `--seconds`, as JSON for
//! scripts or a text table for people. The sockets are walked at every poll, and the first
//! poll's counters open the window, so a connection open before the snapshot and still open
//! after it reports exactly what it moved inside the window.
use std::fmt::Write as _;
use std::net::IpAddr;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::Config;
use crate::enrich::{Category, Enricher, FlowView, Placement};
use crate::flows::{ConnectFailure, FlowCounters, FlowTable, Log2Histogram, Owner, PairSnapshots, Phase};
use crate::poller::{AgentStats, Poller};
use crate::views::contributors::{top_by_category, Contributor, RankMetric};

/// `--top N --by METRIC [--category C]`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopRequest {
    pub limit: usize,
    pub by: RankMetric,
    pub category: Option<Category>,
}

#[derive(Debug, Serialize)]
pub struct Snapshot {
    pub seconds: f64,
    pub cgroup: String,
    /// Every pair (left out when a top-contributor list was asked for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pairs: Option<Vec<PairReport>>,
    /// The top contributors per category, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top: Option<TopReport>,
    /// Each monitor's rollup over the pairs it selects.
    pub monitors: Vec<MonitorReport>,
    /// Deltas that found no room in a map or the table: counted, without pair detail.
    pub overflow: CountersReport,
    pub evicted: CountersReport,
    pub totals: CountersReport,
    pub agent: AgentStats,
}

#[derive(Debug, Serialize)]
pub struct TopReport {
    pub by: RankMetric,
    pub limit: usize,
    /// Largest first, per category.
    pub categories: BTreeMap<Category, Vec<PairReport>>,
}

#[derive(Debug, Serialize)]
pub struct MonitorReport<C = CountersReport> {
    pub name: String,
    pub pairs: usize,
    #[serde(flatten)]
    pub counters: C,
}

impl From<MonitorReport<FlowCounters>> for MonitorReport {
    fn from(m: MonitorReport<FlowCounters>) -> Self {
        Self {
            name: m.name,
            pairs: m.pairs,
            counters: (&m.counters).into(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct PairReport {
    pub local: IpAddr,
    pub remote: IpAddr,
    pub service_port: u16,
    pub role: &'static str,
    pub category: Category,
    /// Where each end sits, as far as `[resources]` says.
    pub local_resource: Placement,
    pub peer_resource: Placement,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_service: Option<String>,
    /// The name the peer's address was resolved from, where the DNS capture saw it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_dns_name: Option<String>,
    #[serde(flatten)]
    pub counters: CountersReport,
    pub owner: Owner,
}

#[derive(Debug, Serialize)]
pub struct ByPhase {
    pub syn: u64,
    pub established: u64,
    pub close: u64,
}

#[derive(Debug, Serialize)]
pub struct Connections {
    pub established: u64,
    pub closed: u64,
    pub reset: u64,
    pub failed: Failures,
    pub active: u64,
}

#[derive(Debug, Serialize)]
pub struct Failures {
    pub refused: u64,
    pub timeout: u64,
    pub reset: u64,
    pub unreachable: u64,
}

#[derive(Debug, Serialize)]
pub struct HistogramReport {
    pub count: u64,
    pub sum_us: u64,
    pub mean_us: Option<f64>,
    pub p50_us_upper: Option<f64>,
    pub p99_us_upper: Option<f64>,
    /// Bucket k holds (2^(k-1), 2^k] units of 2^-20 s (0.954 us); bucket 0 up to one unit.
    pub buckets: Vec<u64>,
}

#[derive(Debug, Serialize)]
pub struct CountersReport {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub segs_sent: u64,
    pub segs_received: u64,
    pub retransmits: ByPhase,
    pub timeouts: ByPhase,
    pub connections: Connections,
    pub rtt: HistogramReport,
    /// Receiver-side RTT estimates.
    pub rtt_receiver: HistogramReport,
    pub connect_duration: HistogramReport,
}

impl From<&FlowCounters> for CountersReport {
    fn from(c: &FlowCounters) -> Self {
        let by_phase = |f: &dyn Fn(Phase) -> u64| ByPhase {
            syn: f(Phase::Syn),
            established: f(Phase::Established),
            close: f(Phase::Close),
        };
        Self {
            bytes_sent: c.bytes_sent,
            bytes_received: c.bytes_received,
            segs_sent: c.segs_sent,
            segs_received: c.segs_received,
            retransmits: by_phase(&|p| c.retransmits(p)),
            timeouts: by_phase(&|p| c.timeouts(p)),
            connections: Connections {
                established: c.conn_established,
                closed: c.conn_closed,
                reset: c.conn_reset,
                failed: Failures {
                    refused: c.failed(ConnectFailure::Refused),
                    timeout: c.failed(ConnectFailure::Timeout),
                    reset: c.failed(ConnectFailure::Reset),
                    unreachable: c.failed(ConnectFailure::Unreachable),
                },
                active: c.active,
            },
            rtt: (&c.rtt).into(),
            rtt_receiver: (&c.rtt_receiver).into(),
            connect_duration: (&c.connect_duration).into(),
        }
    }
}

impl From<&Log2Histogram> for HistogramReport {
    fn from(h: &Log2Histogram) -> Self {
        let last = h.buckets.iter().rposition(|n| *n > 0).map_or(0, |i| i + 1);
        Self {
            count: h.count,
            sum_us: h.sum_us,
            mean_us: h.mean_us(),
            p50_us_upper: h.quantile_upper_seconds(0.5).map(|s| s * 1e6),
            p99_us_upper: h.quantile_upper_seconds(0.99).map(|s| s * 1e6),
            buckets: h.buckets[..last].to_vec(),
        }
    }
}

impl PairReport {
    fn new(c: &Contributor<'_>) -> Self {
        let (p, context) = (c.pair.pair, &c.pair.annotation.context);
        Self {
            local: p.key.local,
            remote: p.key.remote,
            service_port: p.key.service_port,
            role: p.key.role.as_str(),
            category: context.category,
            local_resource: context.local.clone(),
            peer_resource: context.peer.clone(),
            peer_service: context.peer_service.as_deref().map(str::to_string),
            peer_dns_name: c.pair.annotation.dns_name.as_deref().map(str::to_string),
            counters: (&c.counters).into(),
            owner: p.owner.clone(),
        }
    }
}

/// What the table held when the snapshot's window opened: every figure in the snapshot counts
/// from here, so that a connection open before the window reports only what it moved inside it.
#[derive(Debug, Default)]
pub struct WindowStart {
    pairs: PairSnapshots,
    overflow: FlowCounters,
    evicted: FlowCounters,
    totals: FlowCounters,
}

impl WindowStart {
    pub fn take(table: &FlowTable) -> Self {
        Self {
            pairs: PairSnapshots::take(table.pairs()),
            overflow: table.overflow().clone(),
            evicted: table.evicted().clone(),
            totals: table.totals().clone(),
        }
    }
}

impl Snapshot {
    /// The flows of `view` since `start`, over `seconds`.
    pub fn new(
        view: &FlowView<'_>,
        start: &WindowStart,
        agent: &AgentStats,
        seconds: f64,
        cgroup: String,
        top: Option<TopRequest>,
    ) -> Self {
        let window: Vec<Contributor<'_>> = view
            .pairs
            .iter()
            .map(|p| Contributor {
                pair: *p,
                counters: start.pairs.since(p.pair),
            })
            .collect();
        let mut monitors: Vec<MonitorReport<FlowCounters>> = view
            .monitors
            .iter()
            .map(|name| MonitorReport {
                name: name.to_string(),
                pairs: 0,
                counters: FlowCounters::default(),
            })
            .collect();
        for c in &window {
            for &m in c.pair.annotation.monitors.iter() {
                let report = &mut monitors[m];
                report.pairs += 1;
                report.counters.add(&c.counters);
                report.counters.active += c.counters.active;
            }
        }
        Self {
            seconds,
            cgroup,
            pairs: top.is_none().then(|| window.iter().map(PairReport::new).collect()),
            top: top.map(|t| TopReport {
                by: t.by,
                limit: t.limit,
                categories: top_by_category(window.iter().cloned(), t.by, t.limit, t.category)
                    .into_iter()
                    .map(|(category, ranked)| (category, ranked.iter().map(PairReport::new).collect()))
                    .collect(),
            }),
            monitors: monitors.into_iter().map(Into::into).collect(),
            overflow: (&view.table.overflow().saturating_sub(&start.overflow)).into(),
            evicted: (&view.table.evicted().saturating_sub(&start.evicted)).into(),
            totals: (&view.table.totals().saturating_sub(&start.totals)).into(),
            agent: agent.clone(),
        }
    }

    /// A text table, busiest pairs first.
    pub fn to_text(&self) -> String {
        let mut pairs: Vec<&PairReport> = match (&self.pairs, &self.top) {
            (Some(all), _) => all.iter().collect(),
            (None, Some(top)) => top.categories.values().flatten().collect(),
            (None, None) => Vec::new(),
        };
        if self.top.is_none() {
            pairs.sort_by_key(|p| std::cmp::Reverse(p.counters.bytes_sent + p.counters.bytes_received));
        }
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<13} {:<6} {:<40} {:<40} {:>5} {:>12} {:>12} {:>7} {:>5} {:>6} {:>6} {:>9} {:<15}",
            "CATEGORY",
            "ROLE",
            "LOCAL",
            "REMOTE",
            "PORT",
            "TX_BYTES",
            "RX_BYTES",
            "RETRANS",
            "RTO",
            "CONNS",
            "ACTIVE",
            "RTT_MEAN",
            "COMM"
        );
        for p in &pairs {
            let c = &p.counters;
            let retrans = c.retransmits.syn + c.retransmits.established + c.retransmits.close;
            let rto = c.timeouts.syn + c.timeouts.established + c.timeouts.close;
            let conns = c.connections.established
                + c.connections.failed.refused
                + c.connections.failed.timeout
                + c.connections.failed.reset
                + c.connections.failed.unreachable;
            let rtt = c.rtt.mean_us.map_or("-".to_string(), |us| format!("{:.0}us", us));
            let _ = writeln!(
                out,
                "{:<13} {:<6} {:<40} {:<40} {:>5} {:>12} {:>12} {:>7} {:>5} {:>6} {:>6} {:>9} {:<15}",
                p.category.as_str(),
                p.role,
                p.local.to_string(),
                match p
                    .peer_dns_name
                    .as_deref()
                    .or(p.peer_resource.subnet.as_deref())
                    .or(p.peer_service.as_deref())
                {
                    Some(name) => format!("{} ({name})", p.remote),
                    None => p.remote.to_string(),
                },
                p.service_port,
                c.bytes_sent,
                c.bytes_received,
                retrans,
                rto,
                conns,
                c.connections.active,
                rtt,
                p.owner.comm.as_deref().unwrap_or("-"),
            );
        }
        for m in &self.monitors {
            let _ = writeln!(
                out,
                "monitor {}: {} pairs, {} bytes sent, {} received, {} retransmits, {} timeouts",
                m.name,
                m.pairs,
                m.counters.bytes_sent,
                m.counters.bytes_received,
                m.counters.retransmits.syn + m.counters.retransmits.established + m.counters.retransmits.close,
                m.counters.timeouts.syn + m.counters.timeouts.established + m.counters.timeouts.close,
            );
        }
        let a = &self.agent;
        let _ = writeln!(
            out,
            "{} pairs over {:.1}s on {}; pair map peak {}/{}; drops: pair_map_full={} sock_storage_failed={} listener_map_full={}",
            pairs.len(),
            self.seconds,
            self.cgroup,
            a.pair_map_peak_entries,
            a.pair_map_capacity,
            a.counters.pair_map_full,
            a.counters.sock_storage_failed,
            a.counters.listener_map_full,
        );
        out
    }
}

/// `flowtel snapshot`: samples for `seconds` from the first poll, then reports the window.
pub fn take(config: &Config, enricher: Enricher, seconds: f64, top: Option<TopRequest>) -> anyhow::Result<Snapshot> {
    let mut poller = Poller::start(config.sampler_config_walking_every_poll(), config.flow_table_config())?
        .with_dns_cache(config.dns_cache_config())
        .with_enricher(std::sync::Arc::new(enricher));
    let opened = Instant::now();
    poller.poll(opened)?;
    let start = WindowStart::take(poller.table());
    // from here on, what connections move counts
    tracing::info!(seconds, "snapshot window opened");
    let deadline = opened + Duration::from_secs_f64(seconds.max(0.0));
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        std::thread::sleep(left.min(config.poll_interval()));
        poller.poll(Instant::now())?;
        if Instant::now() >= deadline {
            break;
        }
    }
    let cgroup = poller.cgroup().display().to_string();
    Ok(Snapshot::new(
        &poller.view(),
        &start,
        poller.stats(),
        opened.elapsed().as_secs_f64(),
        cgroup,
        top,
    ))
}
