//! The thresholds and the per-interval judgement.
use super::baseline::Baseline;
use super::IntervalStats;

/// Why a group is degraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    Rtt,
    Retransmits,
    Timeouts,
    ConnectFailures,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Rtt => "rtt",
            Reason::Retransmits => "retransmits",
            Reason::Timeouts => "timeouts",
            Reason::ConnectFailures => "connect_failures",
        }
    }
}

/// Every knob of the health rules, as `[health.thresholds]` in the configuration. The README
/// explains each one and how to tune it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthThresholds {
    /// Bad intervals in a row to become degraded.
    pub enter_intervals: u32,
    /// Good intervals in a row to become healthy again.
    pub exit_intervals: u32,
    /// Healthy intervals a baseline keeps (its window).
    pub baseline_window: usize,
    /// Healthy intervals before a baseline is used (until then: the absolute thresholds).
    pub baseline_min_intervals: usize,
    /// Data segments an interval needs before its retransmission ratio counts.
    pub min_segments: u64,
    /// RTT samples an interval needs before its RTT counts.
    pub min_rtt_samples: u64,
    /// Connection attempts an interval needs before its failure ratio counts.
    pub min_connect_attempts: u64,
    /// Cold start: retransmission ratio that is bad.
    pub retransmit_ratio_absolute: f64,
    /// Warm: bad above this multiple of the baseline ratio...
    pub retransmit_ratio_factor: f64,
    /// ...and never below this ratio.
    pub retransmit_ratio_floor: f64,
    /// Timeouts in one interval that are bad.
    pub timeouts: u64,
    /// Warm: RTT p50 over its baseline that is bad...
    pub rtt_ratio: f64,
    /// ...when it also grew by at least this many seconds (sub-millisecond noise never alarms).
    pub rtt_min_increase_seconds: f64,
    /// Cold start: RTT p50 that is bad, in seconds.
    pub rtt_absolute_seconds: f64,
    /// Failed connects over attempts that is bad.
    pub connect_failure_ratio: f64,
    /// Peer groups tracked at most (memory bound); the rest are counted, not judged.
    pub max_groups: usize,
    /// Active peer groups needed to attribute a degradation to host or peer.
    pub min_groups_for_attribution: usize,
}

impl Default for HealthThresholds {
    fn default() -> Self {
        Self {
            enter_intervals: 2,
            exit_intervals: 3,
            baseline_window: 360,
            baseline_min_intervals: 6,
            min_segments: 50,
            min_rtt_samples: 3,
            min_connect_attempts: 5,
            retransmit_ratio_absolute: 0.02,
            retransmit_ratio_factor: 4.0,
            retransmit_ratio_floor: 0.01,
            timeouts: 2,
            rtt_ratio: 2.0,
            rtt_min_increase_seconds: 0.005,
            rtt_absolute_seconds: 1.0,
            connect_failure_ratio: 0.2,
            max_groups: 1000,
            min_groups_for_attribution: 2,
        }
    }
}

/// One interval's judgement.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Verdict {
    /// `None`: not enough data for any rule; else whether any rule fired.
    pub bad: Option<bool>,
    pub reasons: Vec<Reason>,
    pub retransmit_ratio: Option<f64>,
    pub rtt_p50: Option<f64>,
    pub rtt_ratio: Option<f64>,
    pub failure_ratio: Option<f64>,
}

pub(super) fn judge(t: &HealthThresholds, s: &IntervalStats, retrans: &Baseline, rtt: &Baseline) -> Verdict {
    let mut known = false;
    let mut reasons = Vec::new();

    let retransmit_ratio = (s.segs_sent >= t.min_segments).then(|| s.retrans as f64 / s.segs_sent as f64);
    if let Some(ratio) = retransmit_ratio {
        known = true;
        let limit = match retrans.median(t.baseline_min_intervals) {
            Some(base) => (base * t.retransmit_ratio_factor).max(t.retransmit_ratio_floor),
            None => t.retransmit_ratio_absolute,
        };
        if ratio >= limit {
            reasons.push(Reason::Retransmits);
        }
    }

    if s.segs_sent > 0 {
        known = true;
        if s.timeouts >= t.timeouts {
            reasons.push(Reason::Timeouts);
        }
    }

    let rtt_p50 = (s.rtt.count >= t.min_rtt_samples)
        .then(|| s.rtt.quantile_seconds(0.5))
        .flatten();
    let mut rtt_ratio = None;
    if let Some(p50) = rtt_p50 {
        known = true;
        match rtt.median(t.baseline_min_intervals) {
            Some(base) if base > 0.0 => {
                rtt_ratio = Some(p50 / base);
                if p50 / base >= t.rtt_ratio && p50 - base >= t.rtt_min_increase_seconds {
                    reasons.push(Reason::Rtt);
                }
            }
            _ => {
                if p50 >= t.rtt_absolute_seconds {
                    reasons.push(Reason::Rtt);
                }
            }
        }
    }

    let attempts = s.established + s.failed;
    let failure_ratio = (attempts >= t.min_connect_attempts).then(|| s.failed as f64 / attempts as f64);
    if let Some(ratio) = failure_ratio {
        known = true;
        if ratio >= t.connect_failure_ratio {
            reasons.push(Reason::ConnectFailures);
        }
    }

    Verdict {
        bad: known.then_some(!reasons.is_empty()),
        reasons,
        retransmit_ratio,
        rtt_p50,
        rtt_ratio,
        failure_ratio,
    }
}
