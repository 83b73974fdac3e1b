//! Network health per flow group, from the flows' own history: retransmission ratio, RTO
//! timeouts, RTT against a learned baseline, and connect failures.
//!
//! Pure: the table and the evaluation time come in; findings and transitions go out. It never
//! logs or exports itself.
//!
//! The algorithm, every threshold and how to tune it are in docs/health.md.
mod baseline;
mod rules;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use rules::{Baselines, Outcome};
pub use rules::{HealthThresholds, Reason};

use crate::enrich::{FlowView, PairContext};
use crate::flows::{FlowCounters, FlowKey, Log2Histogram, PairSnapshots};

/// The set of flows a health status describes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GroupId {
    /// Every flow in scope.
    Host,
    /// The flows a configured monitor selects (tracked before any peer group).
    Monitor(Arc<str>),
    /// The remote side of a set of flow pairs: peer address and service port.
    Peer { address: IpAddr, port: u16 },
}

impl GroupId {
    pub fn scope(&self) -> &'static str {
        match self {
            GroupId::Host => "host",
            GroupId::Monitor(_) => "monitor",
            GroupId::Peer { .. } => "peer",
        }
    }
}

impl std::fmt::Display for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GroupId::Host => write!(f, "host"),
            GroupId::Monitor(name) => write!(f, "monitor {name}"),
            GroupId::Peer { address, port } => match address {
                IpAddr::V6(a) => write!(f, "[{a}]:{port}"),
                IpAddr::V4(a) => write!(f, "{a}:{port}"),
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Not enough data to say.
    Unknown,
    Healthy,
    Degraded,
}

/// Where the trouble most likely sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attribution {
    /// Most active peer groups degraded together: this host's side.
    Host,
    /// Only some did: those peers or the path to them.
    Peer,
    /// Too few active peer groups to tell.
    Unknown,
}

impl Attribution {
    pub fn as_str(self) -> &'static str {
        match self {
            Attribution::Host => "host",
            Attribution::Peer => "peer",
            Attribution::Unknown => "unknown",
        }
    }
}

/// One group's figures for one evaluation interval.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IntervalStats {
    pub segs_sent: u64,
    pub segs_received: u64,
    pub retrans: u64,
    pub timeouts: u64,
    /// Sender-side smoothed RTT samples.
    pub rtt: Log2Histogram,
    /// Receiver-side RTT estimates: what a host that mostly receives sees of its download path.
    pub rtt_receiver: Log2Histogram,
    pub established: u64,
    pub failed: u64,
}

impl IntervalStats {
    fn add(&mut self, d: &FlowCounters) {
        self.segs_sent += d.segs_sent;
        self.segs_received += d.segs_received;
        self.retrans += d.retrans_total();
        self.timeouts += d.rto_total();
        self.rtt.add(&d.rtt);
        self.rtt_receiver.add(&d.rtt_receiver);
        self.established += d.conn_established;
        self.failed += d.failed_total();
    }

    /// Segments that moved, both ways.
    pub fn delivered(&self) -> u64 {
        self.segs_sent + self.segs_received
    }
}

/// One RTT signal's figures: the interval's p50, its baseline, their ratio, the samples.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RttEvidence {
    pub p50: Option<f64>,
    pub baseline: Option<f64>,
    pub ratio: Option<f64>,
    pub samples: u64,
}

/// The numbers behind a verdict, for logs and explanations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Evidence {
    /// Data segments sent and retransmitted in the interval.
    pub segments: u64,
    pub retransmits: u64,
    /// The usual retransmission ratio the interval was weighed against (H0).
    pub retransmit_baseline: f64,
    /// The pooled log-likelihood ratio of "bad" over "usual" (bad from `retransmit_evidence`).
    pub retransmit_evidence: f64,
    /// Sender side and receiver side.
    pub rtt: RttEvidence,
    pub rtt_receiver: RttEvidence,
    /// Delivered segments over their baseline.
    pub delivered_ratio: Option<f64>,
}

/// One group's verdict after an evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupHealth {
    pub group: GroupId,
    pub status: Status,
    /// Why it is degraded (empty otherwise).
    pub reasons: Vec<Reason>,
    pub attribution: Attribution,
    /// Interval RTT p50 over its baseline, where both are known: the larger of the sender-side
    /// and the receiver-side ratios.
    pub rtt_ratio: Option<f64>,
    /// Retransmitted / data segments sent in the interval, where enough segments were sent.
    pub retransmit_ratio: Option<f64>,
    pub timeouts: u64,
    pub connect_failure_ratio: Option<f64>,
    pub evidence: Evidence,
    /// A peer group's placement (category, both ends' subnet, VPC, zone, region, service), so
    /// that a fleet can place each verdict; `None` for the host and monitor groups.
    pub context: Option<Arc<PairContext>>,
}

/// A status change, to be logged once.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub from: Status,
    pub to: Status,
    pub health: GroupHealth,
}

#[derive(Debug)]
struct GroupState {
    status: Status,
    bad_streak: u32,
    good_streak: u32,
    baselines: Baselines,
    /// The retransmission CUSUM (see `rules`).
    evidence: f64,
    last_reasons: Vec<Reason>,
}

impl GroupState {
    fn new(window: usize) -> Self {
        Self {
            status: Status::Unknown,
            bad_streak: 0,
            good_streak: 0,
            baselines: Baselines::new(window),
            evidence: 0.0,
            last_reasons: Vec::new(),
        }
    }
}

/// Evaluates health each interval and remembers baselines and hysteresis per group.
#[derive(Debug)]
pub struct HealthEvaluator {
    thresholds: HealthThresholds,
    groups: HashMap<GroupId, GroupState>,
    /// Each pair's incarnation and counters at the previous evaluation.
    previous: PairSnapshots,
    /// Each tracked peer group's placement, from its pairs' annotations.
    contexts: HashMap<GroupId, Arc<PairContext>>,
    /// Peer groups beyond `max_groups` are not tracked (counted here).
    pub untracked_groups: u64,
}

impl HealthEvaluator {
    pub fn new(thresholds: HealthThresholds) -> Self {
        Self {
            thresholds,
            groups: HashMap::new(),
            previous: PairSnapshots::default(),
            contexts: HashMap::new(),
            untracked_groups: 0,
        }
    }

    /// One evaluation over the annotated pairs that `in_scope` accepts, using what they
    /// counted since the previous evaluation. Their monitors are the monitor groups.
    pub fn evaluate(
        &mut self,
        view: &FlowView<'_>,
        in_scope: impl Fn(&FlowKey) -> bool,
    ) -> (Vec<GroupHealth>, Vec<Transition>) {
        let mut stats: HashMap<GroupId, IntervalStats> = HashMap::new();
        let pairs: Vec<_> = view.pairs.iter().filter(|p| in_scope(&p.pair.key)).collect();
        for annotated in &pairs {
            let pair = annotated.pair;
            let delta = self.previous.since(pair);
            if !delta.has_activity() {
                continue;
            }
            stats.entry(GroupId::Host).or_default().add(&delta);
            for name in view.monitors_of(annotated) {
                stats.entry(GroupId::Monitor(Arc::clone(name))).or_default().add(&delta);
            }
            let peer = GroupId::Peer {
                address: pair.key.remote,
                port: pair.key.service_port,
            };
            if self.groups.contains_key(&peer) || self.groups.len() < self.thresholds.max_groups {
                self.contexts
                    .entry(peer.clone())
                    .or_insert_with(|| Arc::clone(&annotated.annotation.context));
            }
            stats.entry(peer).or_default().add(&delta);
        }
        self.previous = PairSnapshots::take(pairs.iter().map(|p| p.pair));
        self.apply(stats)
    }

    /// The rules over one interval's per-group figures (separate from `evaluate` for tests).
    pub fn apply(&mut self, stats: HashMap<GroupId, IntervalStats>) -> (Vec<GroupHealth>, Vec<Transition>) {
        let t = self.thresholds;
        let mut findings = Vec::new();
        let mut transitions = Vec::new();
        let mut ids: Vec<&GroupId> = self.groups.keys().chain(stats.keys()).collect();
        ids.sort();
        ids.dedup();
        let ids: Vec<GroupId> = ids.into_iter().cloned().collect();
        for id in ids {
            if !self.groups.contains_key(&id) {
                if self.groups.len() >= t.max_groups {
                    self.untracked_groups += 1;
                    continue;
                }
                self.groups.insert(id.clone(), GroupState::new(t.baseline_window));
            }
            let Some(state) = self.groups.get_mut(&id) else {
                continue;
            };
            let interval = stats.get(&id).cloned().unwrap_or_default();
            let verdict = rules::judge(&t, &interval, &state.baselines, &mut state.evidence);
            let before = state.status;
            match verdict.outcome {
                Outcome::Quiet => {
                    // quiet: nothing to judge; a silence forgets the status and the evidence
                    state.good_streak = 0;
                    state.bad_streak = 0;
                    state.evidence = 0.0;
                    state.status = Status::Unknown;
                }
                Outcome::Hold => {
                    // neither confirms nor clears: a degraded group stays so, and does not
                    // count towards leaving
                    state.good_streak = 0;
                    state.last_reasons.clone_from(&verdict.reasons);
                }
                Outcome::Bad => {
                    state.bad_streak += 1;
                    state.good_streak = 0;
                    state.last_reasons.clone_from(&verdict.reasons);
                    if state.bad_streak >= t.enter_intervals {
                        state.status = Status::Degraded;
                    } else if state.status == Status::Unknown {
                        state.status = Status::Healthy;
                    }
                }
                Outcome::Good => {
                    state.good_streak += 1;
                    state.bad_streak = 0;
                    // baselines learn from healthy intervals only
                    if state.status != Status::Degraded {
                        state.baselines.learn(&verdict, &interval);
                    }
                    if state.status != Status::Degraded || state.good_streak >= t.exit_intervals {
                        state.status = Status::Healthy;
                    }
                }
            }
            let reasons = if state.status == Status::Degraded {
                state.last_reasons.clone()
            } else {
                Vec::new()
            };
            let health = GroupHealth {
                group: id.clone(),
                status: state.status,
                reasons,
                attribution: Attribution::Unknown,
                rtt_ratio: match (verdict.evidence.rtt.ratio, verdict.evidence.rtt_receiver.ratio) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                },
                retransmit_ratio: verdict.retransmit_ratio,
                timeouts: interval.timeouts,
                connect_failure_ratio: verdict.failure_ratio,
                evidence: verdict.evidence,
                context: self.contexts.get(&id).cloned(),
            };
            if before != state.status {
                transitions.push(Transition {
                    from: before,
                    to: state.status,
                    health: health.clone(),
                });
            }
            findings.push(health);
        }
        let attribution = attribute(&findings, t.min_groups_for_attribution);
        for h in findings.iter_mut().chain(transitions.iter_mut().map(|t| &mut t.health)) {
            h.attribution = attribution;
        }
        (findings, transitions)
    }
}

/// Host when most active peer groups are degraded, peer when only some are, unknown with too
/// few active peer groups to tell (or nothing degraded).
fn attribute(findings: &[GroupHealth], min_groups: usize) -> Attribution {
    let peers: Vec<&GroupHealth> = findings
        .iter()
        .filter(|h| matches!(h.group, GroupId::Peer { .. }) && h.status != Status::Unknown)
        .collect();
    let degraded = peers.iter().filter(|h| h.status == Status::Degraded).count();
    if degraded == 0 || peers.len() < min_groups {
        Attribution::Unknown
    } else if degraded * 2 > peers.len() {
        Attribution::Host
    } else {
        Attribution::Peer
    }
}

#[cfg(test)]
mod tests;
