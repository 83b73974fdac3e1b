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
//! Pure: the annotated flows and the time are passed in. One export is four steps: each pair's
//! interval ([`SeriesSelector::interval`]: monitor and workload rollups, candidates), the top K
//! pair series, the workload series, then the overflow and monitor series.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::enrich::kubernetes::{PodAttributes, WorkloadPair};
use crate::enrich::{AnnotatedPair, FlowView, PairContext};
use crate::flows::{FlowCounters, FlowKey, FlowTable, PairSnapshots};

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
    /// The name the peer's address was resolved from, where known.
    pub dns_name: Option<Arc<str>>,
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
    /// A series that stands for many pairs: no process, original address or pod names.
    fn rollup(id: SeriesId, start: SystemTime, values: FlowCounters) -> Self {
        Self {
            id,
            process: None,
            original: None,
            dns_name: None,
            kubernetes: None,
            start,
            values,
            delta: FlowCounters::default(),
        }
    }

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

/// A pair in the running for a series: its score, its interval delta and whether it was busy.
struct Candidate<'a> {
    score: (u128, u128),
    pair: AnnotatedPair<'a>,
    delta: FlowCounters,
    busy: bool,
}

/// One interval of every pair, sorted into what it feeds.
#[derive(Default)]
struct Interval<'a> {
    candidates: Vec<Candidate<'a>>,
    /// Per monitor, in configuration order: the interval's delta, its active gauge in `active`.
    monitors: Vec<FlowCounters>,
    workloads: HashMap<Arc<WorkloadPair>, FlowCounters>,
}

/// Counters in series, cumulative and for this interval, to derive the overflow.
#[derive(Default)]
struct Covered {
    values: FlowCounters,
    delta: FlowCounters,
}

impl Covered {
    fn add(&mut self, values: &FlowCounters, delta: &FlowCounters) {
        self.values.add(values);
        self.delta.add(delta);
    }
}

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

    /// One export's series, from the annotated flows of the latest poll.
    pub fn select(&mut self, view: &FlowView<'_>, now: SystemTime) -> ExportFrame {
        let interval = self.interval(view, now);
        let (mut series, next, mut covered) = self.pair_series(interval.candidates, now);
        let workloads = self.workload_series(interval.workloads, now, &mut covered);
        let overflow_active = view
            .pairs
            .iter()
            .filter(|p| !next.contains_key(&p.pair.key))
            .map(|p| p.pair.counters.active)
            .sum();
        series.push(self.overflow_series(view.table, &covered, overflow_active));
        series.extend(self.monitor_series(view.monitors, interval.monitors));
        series.extend(workloads);
        self.selected = next;
        self.previous = PairSnapshots::take(view.pairs.iter().map(|p| p.pair));
        self.previous_totals = view.table.totals().clone();
        let previous_time = std::mem::replace(&mut self.last_export, now);
        ExportFrame {
            previous_time,
            time: now,
            series,
        }
    }

    /// Each pair's delta since the previous export: added to its monitors' rollups, to its
    /// workload pair's (when rolled up), or entered for a series of its own.
    fn interval<'a>(&self, view: &FlowView<'a>, now: SystemTime) -> Interval<'a> {
        let mut interval = Interval {
            monitors: vec![FlowCounters::default(); view.monitors.len()],
            ..Default::default()
        };
        for &pair in &view.pairs {
            let p = pair.pair;
            let delta = p.counters.since(self.previous.of(p));
            for &m in pair.annotation.monitors.iter() {
                let rollup = &mut interval.monitors[m];
                let active = rollup.active + p.counters.active;
                rollup.add(&delta);
                rollup.active = active;
            }
            if let Some(workload) = self.workload_of(view, &pair, &interval.workloads) {
                let into = interval.workloads.entry(workload).or_default();
                let active = into.active + p.counters.active;
                into.add(&delta);
                into.active = active;
                // its totals are in the workload's series
                continue;
            }
            // pairs idle (no traffic, no live connection) for stale_after stop being exported
            let busy = delta.has_activity() || p.counters.active > 0;
            let recently_selected = self
                .selected
                .get(&p.key)
                .is_some_and(|s| now.duration_since(s.last_active).unwrap_or_default() < self.config.stale_after);
            if busy || recently_selected {
                interval.candidates.push(Candidate {
                    score: self.score(&delta),
                    pair,
                    delta,
                    busy,
                });
            }
        }
        interval
    }

    /// The workload pair `pair` rolls up to under `kubernetes.rollup = "workload"`. Workload
    /// series are bounded like pair series: at most top_k of them.
    fn workload_of(
        &self,
        view: &FlowView<'_>,
        pair: &AnnotatedPair<'_>,
        this_interval: &HashMap<Arc<WorkloadPair>, FlowCounters>,
    ) -> Option<Arc<WorkloadPair>> {
        if !view.workload_rollup {
            return None;
        }
        let attributes = pair.annotation.kubernetes.as_ref()?;
        let workload = Arc::new(attributes.rollup_key(&pair.pair.key)?);
        let room = self.workloads.len() + this_interval.len() < self.config.top_k;
        (self.workloads.contains_key(&workload) || this_interval.contains_key(&workload) || room).then_some(workload)
    }

    /// The top K candidates' series, each counting from where its series began.
    fn pair_series(
        &mut self,
        mut candidates: Vec<Candidate<'_>>,
        now: SystemTime,
    ) -> (Vec<Series>, HashMap<FlowKey, Selected>, Covered) {
        candidates.sort_by(|a, b| {
            b.score
                .cmp(&a.score)
                .then_with(|| a.pair.pair.key.cmp(&b.pair.pair.key))
        });
        candidates.truncate(self.config.top_k);
        let mut next: HashMap<FlowKey, Selected> = HashMap::with_capacity(candidates.len());
        let mut series = Vec::with_capacity(candidates.len() + 1);
        let mut covered = Covered::default();
        for Candidate { pair, delta, busy, .. } in candidates {
            let (p, annotation) = (pair.pair, pair.annotation);
            // a pair evicted and seen again since its series began starts a new series
            let earlier = self.selected.remove(&p.key).filter(|s| s.incarnation == p.incarnation);
            let mut selected = earlier.unwrap_or_else(|| Selected {
                incarnation: p.incarnation,
                base: self.previous.of(p).cloned().unwrap_or_default(),
                start: self.last_export,
                last_active: now,
            });
            if busy {
                selected.last_active = now;
            }
            let values = p.counters.saturating_sub(&selected.base);
            covered.add(&values, &delta);
            series.push(Series {
                id: SeriesId::Pair(p.key, Arc::clone(&annotation.context)),
                process: p.owner.comm.clone(),
                original: p.original,
                dns_name: annotation.dns_name.clone(),
                kubernetes: annotation.kubernetes.clone(),
                start: selected.start,
                values,
                delta,
            });
            next.insert(p.key, selected);
        }
        (series, next, covered)
    }

    /// Workload series: add this interval, drop those idle for stale_after (their totals then
    /// count in the overflow series, as a dropped pair's do).
    fn workload_series(
        &mut self,
        this_interval: HashMap<Arc<WorkloadPair>, FlowCounters>,
        now: SystemTime,
        covered: &mut Covered,
    ) -> Vec<Series> {
        for (values, _, _) in self.workloads.values_mut() {
            values.active = 0;
        }
        let mut delta_in_workloads = FlowCounters::default();
        for (workload, delta) in &this_interval {
            let entry = self
                .workloads
                .entry(Arc::clone(workload))
                .or_insert_with(|| (FlowCounters::default(), self.last_export, now));
            entry.0.add(delta);
            entry.0.active = delta.active;
            if delta.has_activity() || delta.active > 0 {
                entry.2 = now;
            }
            delta_in_workloads.add(delta);
        }
        let stale_after = self.config.stale_after;
        self.workloads
            .retain(|_, (_, _, busy)| now.duration_since(*busy).unwrap_or_default() < stale_after);
        let mut in_workloads = FlowCounters::default();
        let series = self
            .workloads
            .iter()
            .map(|(workload, (values, start, _))| {
                in_workloads.add(values);
                Series {
                    delta: this_interval.get(workload).cloned().unwrap_or_default(),
                    ..Series::rollup(SeriesId::Workload(Arc::clone(workload)), *start, values.clone())
                }
            })
            .collect();
        covered.add(&in_workloads, &delta_in_workloads);
        series
    }

    /// Everything the pair and workload series do not hold.
    fn overflow_series(&self, table: &FlowTable, covered: &Covered, active: u64) -> Series {
        let mut values = table.totals().saturating_sub(&covered.values);
        values.active = active;
        let mut delta = table
            .totals()
            .saturating_sub(&self.previous_totals)
            .saturating_sub(&covered.delta);
        delta.active = active;
        Series {
            delta,
            ..Series::rollup(SeriesId::Overflow, self.started, values)
        }
    }

    /// One series per monitor, counting since the agent started.
    fn monitor_series(&mut self, names: &[Arc<str>], deltas: Vec<FlowCounters>) -> Vec<Series> {
        names
            .iter()
            .zip(deltas)
            .map(|(name, delta)| {
                let total = self.rollups.entry(Arc::clone(name)).or_default();
                total.add(&delta);
                total.active = delta.active;
                Series {
                    delta,
                    ..Series::rollup(SeriesId::Monitor(Arc::clone(name)), self.started, total.clone())
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
