//! Bounded, exact cardinality: at most K flow pairs get a series of their own in each export;
//! everything else is summed into one overflow series.
//!
//! Guarantees, for every additive counter and in every export:
//! - the series sum to the true total (the flow table's totals);
//! - no cumulative series goes backwards. A pair's series counts from the export before the one
//!   that first selected it (its start time); what the pair counted earlier stays in the overflow
//!   series. A pair that drops out of the top K stops being exported and its total moves to the
//!   overflow series, which therefore only grows. A pair selected again later starts a new series
//!   with a new start time.
//!
//! Pure but for the Kubernetes names: the table and the time are passed in.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::enrich::kubernetes::{PodAttributes, Rollup, WorkloadPair};
use crate::export::redact::PeerAddresses;

use crate::enrich::{Enricher, PairContext};
use crate::flows::{FlowCounters, FlowKey, FlowPair, FlowTable, PairSnapshots};

/// Pairs exported with their own series per export.
pub const DEFAULT_TOP_K: usize = 1000;
/// How long an idle pair keeps its series.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(300);
/// Loss score weights: a retransmission timeout or a failed connect hurts more than one
/// retransmitted segment.
pub const DEFAULT_RETRANSMIT_WEIGHT: u64 = 1;
pub const DEFAULT_TIMEOUT_WEIGHT: u64 = 10;
pub const DEFAULT_FAILURE_WEIGHT: u64 = 10;

/// What ranks pairs for the top K.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RankBy {
    /// The weighted loss score first, bytes to break ties.
    #[default]
    Loss,
    /// Bytes first, the loss score to break ties.
    Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SelectionConfig {
    pub top_k: usize,
    /// A selected pair with no traffic and no live connection keeps its series this long, so
    /// that a pair busy every few intervals does not restart its series each time.
    pub stale_after: Duration,
    pub rank_by: RankBy,
    pub retransmit_weight: u64,
    pub timeout_weight: u64,
    pub failure_weight: u64,
}

impl Default for SelectionConfig {
    fn default() -> Self {
        Self {
            top_k: DEFAULT_TOP_K,
            stale_after: DEFAULT_STALE_AFTER,
            rank_by: RankBy::Loss,
            retransmit_weight: DEFAULT_RETRANSMIT_WEIGHT,
            timeout_weight: DEFAULT_TIMEOUT_WEIGHT,
            failure_weight: DEFAULT_FAILURE_WEIGHT,
        }
    }
}

/// What one exported series stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeriesId {
    /// A flow pair, with its resources and category.
    Pair(FlowKey, Arc<PairContext>),
    /// Every pair without a series of its own.
    Overflow,
    /// A monitor's rollup of every pair it selects. Not additive with the other series: a pair
    /// counts in its own or the overflow series, and in each monitor it belongs to.
    Monitor(Arc<str>),
    /// `kubernetes.rollup = "workload"`: every pair between the same two workloads (or a
    /// workload and a Service) on the same port. Additive: such pairs have no series of their
    /// own.
    Workload(Arc<WorkloadPair>),
}

/// One exported series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    pub id: SeriesId,
    /// `process.executable.name`, where known.
    pub process: Option<String>,
    /// Where NAT reversal found the peer behind another address: the address the client
    /// connected to.
    pub original: Option<std::net::SocketAddr>,
    /// Pod, workload and Service names of both ends, where known.
    pub kubernetes: Option<Arc<PodAttributes>>,
    /// When this series started counting.
    pub start: SystemTime,
    /// Cumulative since `start`; `active` is the current gauge.
    pub values: FlowCounters,
    /// Counted since the previous export. Under delta temporality these are exported: the
    /// overflow series' delta excludes totals that moved to it from dropped series, so the deltas
    /// of an export always sum to what happened in its interval.
    pub delta: FlowCounters,
}

impl Series {
    pub fn key(&self) -> Option<&FlowKey> {
        match &self.id {
            SeriesId::Pair(key, _) => Some(key),
            _ => None,
        }
    }
}

/// Everything one export sends: the selected pairs in rank order, the overflow series, then one
/// series per monitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportFrame {
    /// The previous export, where this frame's deltas start.
    pub previous_time: SystemTime,
    pub time: SystemTime,
    pub series: Vec<Series>,
    /// How the outputs show peer addresses.
    pub peer_addresses: PeerAddresses,
}

impl ExportFrame {
    pub fn overflow(&self) -> Option<&Series> {
        self.series.iter().find(|s| s.id == SeriesId::Overflow)
    }

    pub fn monitor(&self, name: &str) -> Option<&Series> {
        self.series
            .iter()
            .find(|s| matches!(&s.id, SeriesId::Monitor(m) if &**m == name))
    }
}

/// A pair in the running for a series: its score, its interval delta, whether it was busy, and
/// its classification if the monitors already made it.
type Ranked<'a> = ((u128, u128), &'a FlowPair, FlowCounters, bool, Option<Arc<PairContext>>);

#[derive(Debug, Clone)]
struct Selected {
    incarnation: u64,
    base: FlowCounters,
    start: SystemTime,
    last_active: SystemTime,
}

/// Remembers which pairs have series and where each series started.
#[derive(Debug)]
pub struct SeriesSelector {
    config: SelectionConfig,
    started: SystemTime,
    last_export: SystemTime,
    selected: HashMap<FlowKey, Selected>,
    /// Each pair's incarnation and cumulative counters at the last export, for interval deltas.
    previous: PairSnapshots,
    previous_totals: FlowCounters,
    /// Each monitor's cumulative counters since the agent started, by name.
    rollups: HashMap<Arc<str>, FlowCounters>,
    /// Each workload pair's cumulative counters, since it began, and when it was last busy.
    workloads: HashMap<Arc<WorkloadPair>, (FlowCounters, SystemTime, SystemTime)>,
}

impl SeriesSelector {
    pub fn new(config: SelectionConfig, now: SystemTime) -> Self {
        Self {
            config,
            started: now,
            last_export: now,
            selected: HashMap::new(),
            previous: PairSnapshots::default(),
            previous_totals: FlowCounters::default(),
            rollups: HashMap::new(),
            workloads: HashMap::new(),
        }
    }

    /// Rank of one interval's activity, compared as (primary, tie-breaker).
    fn score(&self, delta: &FlowCounters) -> (u128, u128) {
        let c = &self.config;
        let loss = u128::from(delta.retrans_total()) * u128::from(c.retransmit_weight)
            + u128::from(delta.rto_total()) * u128::from(c.timeout_weight)
            + u128::from(delta.failed_total()) * u128::from(c.failure_weight);
        let bytes = u128::from(delta.bytes_sent) + u128::from(delta.bytes_received);
        match c.rank_by {
            RankBy::Loss => (loss, bytes),
            RankBy::Bytes => (bytes, loss),
        }
    }

    /// One export's series. `enricher` names the pairs' resources and defines the monitors.
    pub fn select(&mut self, table: &FlowTable, enricher: &Enricher, now: SystemTime) -> ExportFrame {
        let pairs = table.pairs();
        let monitors = enricher.monitors();
        let mut monitor_delta: Vec<FlowCounters> = vec![FlowCounters::default(); monitors.len()];
        let mut monitor_active: Vec<u64> = vec![0; monitors.len()];
        // one interval delta per pair, reused for ranking, the series, the overflow and monitors
        // the classification, when monitors needed it, travels with the pair to its series
        let mut ranked: Vec<Ranked<'_>> = Vec::new();
        let kubernetes = enricher.kubernetes();
        let clock = Instant::now();
        let index = kubernetes.map(|k| k.index(clock));
        let rollup_workloads = kubernetes.is_some_and(|k| k.rollup() == Rollup::Workload);
        let mut workload_delta: HashMap<Arc<WorkloadPair>, FlowCounters> = HashMap::new();
        let mut pod_attributes: HashMap<FlowKey, Arc<PodAttributes>> = HashMap::new();
        for pair in &pairs {
            let delta = pair.counters.since(self.previous.of(pair));
            let mut context = None;
            if !monitors.is_empty() {
                let c = enricher.classify(&pair.key);
                for (i, m) in monitors.iter().enumerate() {
                    if m.matches(&pair.key, &c) {
                        monitor_delta[i].add(&delta);
                        monitor_active[i] += pair.counters.active;
                    }
                }
                context = Some(Arc::new(c));
            }
            if let (Some(k), Some(index)) = (kubernetes, index.as_deref()) {
                if let Some(attributes) = k.attributes(pair, index, clock) {
                    // workload series are bounded like pair series: at most top_k of them
                    let rolled = rollup_workloads
                        .then(|| attributes.rollup_key(&pair.key))
                        .flatten()
                        .map(Arc::new)
                        .filter(|w| {
                            self.workloads.contains_key(w)
                                || workload_delta.contains_key(w)
                                || self.workloads.len() + workload_delta.len() < self.config.top_k
                        });
                    if let Some(workload) = rolled {
                        let into = workload_delta.entry(workload).or_default();
                        let active = into.active + pair.counters.active;
                        into.add(&delta);
                        into.active = active;
                        // its totals are in the workload's series
                        continue;
                    }
                    pod_attributes.insert(pair.key, attributes);
                }
            }
            // pairs idle (no traffic, no live connection) for stale_after stop being exported
            let busy = delta.has_activity() || pair.counters.active > 0;
            let recently_selected = self
                .selected
                .get(&pair.key)
                .is_some_and(|s| now.duration_since(s.last_active).unwrap_or_default() < self.config.stale_after);
            if busy || recently_selected {
                ranked.push((self.score(&delta), pair, delta, busy, context));
            }
        }
        ranked.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.key.cmp(&b.1.key)));
        ranked.truncate(self.config.top_k);

        let mut next: HashMap<FlowKey, Selected> = HashMap::with_capacity(ranked.len());
        let mut series = Vec::with_capacity(ranked.len() + 1);
        let mut in_series = FlowCounters::default();
        let mut delta_in_series = FlowCounters::default();
        for (_, pair, delta, busy, context) in ranked {
            delta_in_series.add(&delta);
            // a pair evicted and seen again since its series began starts a new series
            let earlier = self
                .selected
                .remove(&pair.key)
                .filter(|s| s.incarnation == pair.incarnation);
            let mut selected = earlier.unwrap_or_else(|| Selected {
                incarnation: pair.incarnation,
                base: self.previous.of(pair).cloned().unwrap_or_default(),
                start: self.last_export,
                last_active: now,
            });
            if busy {
                selected.last_active = now;
            }
            let values = pair.counters.saturating_sub(&selected.base);
            in_series.add(&values);
            series.push(Series {
                id: SeriesId::Pair(
                    pair.key,
                    context.unwrap_or_else(|| Arc::new(enricher.classify(&pair.key))),
                ),
                process: pair.owner.comm.clone(),
                original: pair.original,
                kubernetes: pod_attributes.remove(&pair.key),
                start: selected.start,
                values,
                delta,
            });
            next.insert(pair.key, selected);
        }

        let overflow_active = pairs
            .iter()
            .filter(|p| !next.contains_key(&p.key))
            .map(|p| p.counters.active)
            .sum();
        // workload series: add this interval, drop those idle for stale_after (their totals then
        // count in the overflow series, as a dropped pair's do)
        let mut workload_series = Vec::new();
        let mut in_workloads = FlowCounters::default();
        let mut delta_in_workloads = FlowCounters::default();
        let mut this_interval: HashMap<Arc<WorkloadPair>, FlowCounters> = HashMap::new();
        for (values, _, _) in self.workloads.values_mut() {
            values.active = 0;
        }
        for (workload, delta) in workload_delta {
            this_interval.insert(Arc::clone(&workload), delta.clone());
            let entry = self
                .workloads
                .entry(workload)
                .or_insert_with(|| (FlowCounters::default(), self.last_export, now));
            entry.0.add(&delta);
            entry.0.active = delta.active;
            if delta.has_activity() || delta.active > 0 {
                entry.2 = now;
            }
            delta_in_workloads.add(&delta);
        }
        let stale_after = self.config.stale_after;
        self.workloads
            .retain(|_, (_, _, busy)| now.duration_since(*busy).unwrap_or_default() < stale_after);
        for (workload, (values, start, _)) in &self.workloads {
            in_workloads.add(values);
            workload_series.push(Series {
                id: SeriesId::Workload(Arc::clone(workload)),
                process: None,
                original: None,
                kubernetes: None,
                start: *start,
                values: values.clone(),
                delta: this_interval.remove(workload).unwrap_or_default(),
            });
        }

        let mut overflow = table.totals().saturating_sub(&in_series).saturating_sub(&in_workloads);
        overflow.active = overflow_active;
        let mut overflow_delta = table
            .totals()
            .saturating_sub(&self.previous_totals)
            .saturating_sub(&delta_in_series)
            .saturating_sub(&delta_in_workloads);
        overflow_delta.active = overflow_active;
        series.push(Series {
            id: SeriesId::Overflow,
            process: None,
            original: None,
            kubernetes: None,
            start: self.started,
            values: overflow,
            delta: overflow_delta,
        });
        for ((monitor, mut delta), active) in monitors.iter().zip(monitor_delta).zip(monitor_active) {
            let total = self.rollups.entry(Arc::clone(&monitor.name)).or_default();
            total.add(&delta);
            total.active = active;
            delta.active = active;
            series.push(Series {
                id: SeriesId::Monitor(Arc::clone(&monitor.name)),
                process: None,
                original: None,
                kubernetes: None,
                start: self.started,
                values: total.clone(),
                delta,
            });
        }

        series.extend(workload_series);
        self.selected = next;
        self.previous = PairSnapshots::take(pairs.iter().copied());
        self.previous_totals = table.totals().clone();
        let previous_time = std::mem::replace(&mut self.last_export, now);
        ExportFrame {
            previous_time,
            time: now,
            series,
            // the pipeline applies the configured redaction
            peer_addresses: PeerAddresses::Plain,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::flows::{FlowTableConfig, Owner, PairDelta, Role};

    fn key(peer: u8) -> FlowKey {
        FlowKey {
            local: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            remote: IpAddr::V4(Ipv4Addr::new(10, 0, 1, peer)),
            service_port: 443,
            role: Role::Client,
        }
    }

    fn delta(peer: u8, bytes: u64, retrans: u64) -> PairDelta {
        let mut counters = FlowCounters {
            bytes_sent: bytes,
            segs_sent: 1,
            retrans: [0, retrans, 0],
            ..Default::default()
        };
        counters.rtt.record(100 + u64::from(peer));
        PairDelta {
            key: key(peer),
            counters,
            owner: Owner::default(),
        }
    }

    fn additive(c: &FlowCounters) -> FlowCounters {
        FlowCounters { active: 0, ..c.clone() }
    }

    fn sum(frame: &ExportFrame) -> FlowCounters {
        let mut total = FlowCounters::default();
        for s in &frame.series {
            total.add(&s.values);
        }
        total
    }

    /// A tiny deterministic generator: the tests need varied traffic, not randomness.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, bound: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % bound
        }
    }

    #[test]
    fn top_5_of_50_peers_sum_to_the_totals_and_never_go_backwards() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let i0 = Instant::now();
        let mut table = FlowTable::new(FlowTableConfig::default());
        let mut selector = SeriesSelector::new(
            SelectionConfig {
                top_k: 5,
                ..Default::default()
            },
            t0,
        );
        let mut last: HashMap<(Option<FlowKey>, SystemTime), FlowCounters> = HashMap::new();
        let mut rng = Lcg(7);
        let mut totals_before = FlowCounters::default();
        for interval in 1..=40u64 {
            let mut deltas = Vec::new();
            for peer in 0..50u8 {
                if rng.next(3) > 0 {
                    let retrans = if rng.next(10) == 0 { rng.next(5) } else { 0 };
                    deltas.push(delta(peer, rng.next(10_000), retrans));
                }
            }
            table.apply_poll(&deltas, &FlowCounters::default(), i0 + Duration::from_secs(interval));
            let frame = selector.select(&table, &Enricher::default(), t0 + Duration::from_secs(interval * 30));
            assert!(frame.series.len() <= 6, "K pairs plus overflow");
            assert_eq!(
                additive(&sum(&frame)),
                additive(table.totals()),
                "interval {interval}: series sum to the totals"
            );
            let mut deltas = FlowCounters::default();
            for s in &frame.series {
                deltas.add(&s.delta);
            }
            assert_eq!(
                additive(&deltas),
                additive(&table.totals().saturating_sub(&totals_before)),
                "interval {interval}: deltas sum to the interval's change"
            );
            totals_before = table.totals().clone();
            for s in &frame.series {
                let id = (s.key().copied(), s.start);
                if let Some(before) = last.get(&id) {
                    let back = before.saturating_sub(&s.values);
                    assert!(
                        !back.has_activity(),
                        "interval {interval}: series {:?} went backwards",
                        s.key()
                    );
                }
                last.insert(id, s.values.clone());
            }
        }
        // membership changed often, so drops and fresh starts were exercised
        assert!(last.len() > 50, "{} distinct series over 40 exports", last.len());
    }

    #[test]
    fn loss_outranks_bytes() {
        let t0 = SystemTime::UNIX_EPOCH;
        let mut table = FlowTable::new(FlowTableConfig::default());
        table.apply_poll(
            &[delta(1, 5_000_000, 0), delta(2, 10, 1)],
            &FlowCounters::default(),
            Instant::now(),
        );
        let mut selector = SeriesSelector::new(
            SelectionConfig {
                top_k: 1,
                ..Default::default()
            },
            t0,
        );
        let frame = selector.select(&table, &Enricher::default(), t0 + Duration::from_secs(30));
        assert_eq!(frame.series[0].key(), Some(&key(2)), "the lossy pair wins the one slot");
        let overflow = frame.overflow().expect("overflow series");
        assert_eq!(overflow.values.bytes_sent, 5_000_000);
        assert_eq!(overflow.id, SeriesId::Overflow);

        let by_bytes = SelectionConfig {
            top_k: 1,
            rank_by: RankBy::Bytes,
            ..Default::default()
        };
        let frame =
            SeriesSelector::new(by_bytes, t0).select(&table, &Enricher::default(), t0 + Duration::from_secs(30));
        assert_eq!(
            frame.series[0].key(),
            Some(&key(1)),
            "ranked by bytes, the bulk pair wins"
        );
    }

    #[test]
    fn idle_pairs_stop_being_exported_and_restart_as_new_series() {
        let t0 = SystemTime::UNIX_EPOCH;
        let i0 = Instant::now();
        let mut table = FlowTable::new(FlowTableConfig::default());
        let config = SelectionConfig {
            stale_after: Duration::from_secs(60),
            ..Default::default()
        };
        let mut selector = SeriesSelector::new(config, t0);
        let at = |n: u64| t0 + Duration::from_secs(30 * n);

        table.apply_poll(&[delta(1, 100, 0)], &FlowCounters::default(), i0);
        let first = selector.select(&table, &Enricher::default(), at(1));
        assert_eq!(first.series.len(), 2);
        assert_eq!(first.series[0].start, t0);
        assert_eq!(first.series[0].values.bytes_sent, 100);

        table.apply_poll(&[], &FlowCounters::default(), i0);
        let quiet = selector.select(&table, &Enricher::default(), at(2));
        assert_eq!(quiet.series.len(), 2, "idle for less than stale_after: still exported");
        assert_eq!((quiet.series[0].start, quiet.series[0].values.bytes_sent), (t0, 100));
        assert_eq!(quiet.series[0].delta.bytes_sent, 0);

        table.apply_poll(&[], &FlowCounters::default(), i0);
        let idle = selector.select(&table, &Enricher::default(), at(3));
        assert_eq!(idle.series.len(), 1, "only the overflow series while the pair is idle");
        assert_eq!(
            idle.overflow().map(|s| s.values.bytes_sent),
            Some(100),
            "its total moved to overflow"
        );

        table.apply_poll(&[delta(1, 50, 0)], &FlowCounters::default(), i0);
        let back = selector.select(&table, &Enricher::default(), at(4));
        assert_eq!(
            back.series[0].start,
            at(3),
            "a new series, counting from the previous export"
        );
        assert_eq!(back.series[0].values.bytes_sent, 50);
        assert_eq!(back.overflow().map(|s| s.values.bytes_sent), Some(100));
    }

    #[test]
    fn live_connections_keep_a_quiet_pair_and_the_gauge_is_not_summed_over_time() {
        let t0 = SystemTime::UNIX_EPOCH;
        let mut table = FlowTable::new(FlowTableConfig::default());
        let mut selector = SeriesSelector::new(
            SelectionConfig {
                top_k: 1,
                ..Default::default()
            },
            t0,
        );
        let mut quiet = delta(1, 0, 0);
        quiet.counters = FlowCounters {
            active: 3,
            ..Default::default()
        };
        let mut other = delta(2, 0, 0);
        other.counters = FlowCounters {
            active: 2,
            ..Default::default()
        };
        table.apply_poll(
            &[quiet.clone(), other.clone()],
            &FlowCounters::default(),
            Instant::now(),
        );
        let frame = selector.select(&table, &Enricher::default(), t0 + Duration::from_secs(30));
        assert_eq!(frame.series.len(), 2);
        assert_eq!(frame.series[0].values.active, 3);
        assert_eq!(
            frame.overflow().map(|s| s.values.active),
            Some(2),
            "the unselected pair's gauge"
        );
        table.apply_poll(&[quiet, other], &FlowCounters::default(), Instant::now());
        let again = selector.select(&table, &Enricher::default(), t0 + Duration::from_secs(60));
        assert_eq!(again.series[0].values.active, 3, "a gauge, not a running sum");
    }
}

#[cfg(test)]
mod monitor_tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::enrich::monitors::{LocalSelector, RemoteSelector};
    use crate::enrich::resources::{NetworkEntry, ResourcesSection};
    use crate::enrich::{Category, MonitorSection};
    use crate::flows::{FlowTableConfig, Owner, PairDelta, Role};

    fn delta(peer: [u8; 4], bytes: u64, active: u64) -> PairDelta {
        PairDelta {
            key: FlowKey {
                local: IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1)),
                remote: IpAddr::V4(Ipv4Addr::from(peer)),
                service_port: 5432,
                role: Role::Client,
            },
            counters: FlowCounters {
                bytes_sent: bytes,
                segs_sent: 1,
                active,
                ..Default::default()
            },
            owner: Owner::default(),
        }
    }

    #[test]
    fn monitors_roll_up_every_matching_pair_even_outside_the_top_k() {
        let mut resources = ResourcesSection::default();
        for (cidr, name, zone) in [("10.0.1.0/24", "app", "z1"), ("10.0.2.0/24", "db", "z2")] {
            resources.networks.insert(
                cidr.into(),
                NetworkEntry {
                    name: name.into(),
                    vpc: None,
                    zone: Some(zone.into()),
                    region: None,
                },
            );
        }
        let monitors = vec![
            MonitorSection {
                name: "app-to-db".into(),
                local: vec![LocalSelector::Subnet("app".into())],
                remote: vec![RemoteSelector::Subnet("db".into())],
            },
            MonitorSection {
                name: "idle".into(),
                local: vec![LocalSelector::Subnet("db".into())],
                remote: vec![RemoteSelector::Everywhere],
            },
        ];
        let enricher = Enricher::new(&resources, None, &monitors).expect("enricher");
        let t0 = SystemTime::UNIX_EPOCH;
        let i0 = Instant::now();
        let mut table = FlowTable::new(FlowTableConfig {
            idle_timeout: Duration::from_secs(5),
            ..Default::default()
        });
        let mut selector = SeriesSelector::new(
            SelectionConfig {
                top_k: 1,
                rank_by: RankBy::Bytes,
                ..Default::default()
            },
            t0,
        );
        table.apply_poll(
            &[
                delta([10, 0, 2, 5], 100, 1),
                delta([10, 0, 2, 6], 50, 2),
                delta([8, 8, 8, 8], 1000, 0),
            ],
            &FlowCounters::default(),
            i0,
        );
        let first = selector.select(&table, &enricher, t0 + Duration::from_secs(30));
        assert_eq!(first.series.len(), 1 + 1 + 2, "one pair, the overflow, two monitors");
        let Some(SeriesId::Pair(_, context)) = first.series.first().map(|s| &s.id) else {
            panic!("the top pair comes first")
        };
        assert_eq!(
            context.category,
            Category::Internet,
            "the selected pair carries its category"
        );
        let m = first.monitor("app-to-db").expect("monitor series");
        assert_eq!(
            (m.values.bytes_sent, m.delta.bytes_sent, m.values.active),
            (150, 150, 3),
            "both db pairs, neither of them in the top 1"
        );
        assert_eq!(first.monitor("idle").map(|s| s.values.bytes_sent), Some(0));

        // the pairs go idle and are evicted; the monitor's total stays
        table.apply_poll(&[], &FlowCounters::default(), i0 + Duration::from_secs(1));
        table.evict_idle(i0 + Duration::from_secs(60));
        table.apply_poll(
            &[delta([10, 0, 2, 5], 7, 0)],
            &FlowCounters::default(),
            i0 + Duration::from_secs(61),
        );
        let second = selector.select(&table, &enricher, t0 + Duration::from_secs(60));
        let m = second.monitor("app-to-db").expect("monitor series");
        assert_eq!((m.values.bytes_sent, m.delta.bytes_sent, m.values.active), (157, 7, 0));
        assert_eq!(m.start, t0, "a monitor's series counts from the start");
    }
}
