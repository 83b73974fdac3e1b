//! The flow table as `flowtel snapshot` prints it: JSON for scripts, a text table for people.
use std::fmt::Write as _;
use std::net::IpAddr;

use serde::Serialize;

use std::collections::BTreeMap;

use crate::contributors::{top_by_category, Contributor, RankMetric};
use crate::enrich::{Category, Enricher, PairContext, Placement};
use crate::flows::{ConnectFailure, FlowCounters, FlowPair, FlowTable, Log2Histogram, Owner, Phase};
use crate::monitor::AgentStats;

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
pub struct MonitorReport {
    pub name: String,
    pub pairs: usize,
    #[serde(flatten)]
    pub counters: CountersReport,
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
    fn new(p: &FlowPair, context: &PairContext) -> Self {
        Self {
            local: p.key.local,
            remote: p.key.remote,
            service_port: p.key.service_port,
            role: p.key.role.as_str(),
            category: context.category,
            local_resource: context.local.clone(),
            peer_resource: context.peer.clone(),
            peer_service: context.peer_service.as_deref().map(str::to_string),
            counters: (&p.counters).into(),
            owner: p.owner.clone(),
        }
    }
}

impl Snapshot {
    pub fn new(
        table: &FlowTable,
        agent: &AgentStats,
        seconds: f64,
        cgroup: String,
        enricher: &Enricher,
        top: Option<TopRequest>,
    ) -> Self {
        let pairs = table.pairs();
        let contexts: Vec<PairContext> = pairs.iter().map(|p| enricher.classify(&p.key)).collect();
        let monitors = enricher
            .monitors()
            .iter()
            .map(|m| {
                let mut total = FlowCounters::default();
                let mut n = 0;
                for (p, c) in pairs.iter().zip(&contexts) {
                    if m.matches(&p.key, c) {
                        total.add(&p.counters);
                        total.active += p.counters.active;
                        n += 1;
                    }
                }
                MonitorReport {
                    name: m.name.to_string(),
                    pairs: n,
                    counters: (&total).into(),
                }
            })
            .collect();
        let report = |c: &Contributor<'_>| PairReport::new(c.pair, &c.context);
        Self {
            seconds,
            cgroup,
            pairs: top.is_none().then(|| {
                pairs
                    .iter()
                    .zip(&contexts)
                    .map(|(p, c)| PairReport::new(p, c))
                    .collect()
            }),
            top: top.map(|t| TopReport {
                by: t.by,
                limit: t.limit,
                categories: top_by_category(table, enricher, t.by, t.limit, t.category)
                    .into_iter()
                    .map(|(category, ranked)| (category, ranked.iter().map(report).collect()))
                    .collect(),
            }),
            monitors,
            overflow: table.overflow().into(),
            evicted: table.evicted().into(),
            totals: table.totals().into(),
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
                match p.peer_resource.subnet.as_deref().or(p.peer_service.as_deref()) {
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
