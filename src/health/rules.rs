//! The thresholds and the per-interval judgement.
//!
//! Retransmissions are judged on evidence, not on one interval's ratio: a one-sided CUSUM of the
//! binomial log-likelihood ratio between "the group's usual rate" (H0) and "a rate `factor` times
//! higher" (H1). Each interval adds `k ln(p1/p0) + (n-k) ln((1-p1)/(1-p0))` for `k` retransmitted
//! of `n` data segments, so many segments weigh more than few, and the sum is kept between 0 and
//! twice the decision level. It crosses the level only when the pooled evidence says H1 is
//! about 1000 times likelier than H0, stays above it for as long as the excess lasts, and falls
//! below it as soon as clean segments outweigh it. docs/health.md explains the
//! choice.
use super::baseline::Baseline;
use super::{Evidence, IntervalStats, RttEvidence};

/// Why a group is degraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    Rtt,
    Retransmits,
    Timeouts,
    ConnectFailures,
    /// Delivered segments fell far below the group's usual volume while it was losing segments.
    Collapse,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Rtt => "rtt",
            Reason::Retransmits => "retransmits",
            Reason::Timeouts => "timeouts",
            Reason::ConnectFailures => "connect_failures",
            Reason::Collapse => "collapse",
        }
    }
}

/// Every knob of the health rules, as `[health.thresholds]` in the configuration.
/// docs/health.md explains each one and how to tune it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthThresholds {
    /// Bad intervals in a row to become degraded.
    pub enter_intervals: u32,
    /// Good intervals in a row to become healthy again.
    pub exit_intervals: u32,
    /// Healthy intervals a baseline keeps (its window).
    pub baseline_window: usize,
    /// Healthy intervals before a baseline is used (until then: the cold thresholds).
    pub baseline_min_intervals: usize,
    /// Data segments an interval needs before its retransmission ratio is reported and learned
    /// (the verdict weighs every segment, however few).
    pub min_segments: u64,
    /// RTT samples an interval needs before its RTT counts.
    pub min_rtt_samples: u64,
    /// Connection attempts an interval needs before its failure ratio counts.
    pub min_connect_attempts: u64,
    /// Cold start: the retransmission ratio taken as bad (H1) before the baseline is warm.
    pub retransmit_ratio_absolute: f64,
    /// H1 is this multiple of the usual ratio (H0).
    pub retransmit_ratio_factor: f64,
    /// The usual ratio (H0) is never taken below this, so that a clean path still needs real
    /// evidence: with 0.001 and factor 5, loss above about 0.25% accumulates evidence.
    pub retransmit_ratio_floor: f64,
    /// Log-likelihood ratio at which the pooled evidence makes retransmissions bad (6.9 = 1000:1).
    pub retransmit_evidence: f64,
    /// Timeouts in one interval that are bad.
    pub timeouts: u64,
    /// Warm: RTT p50 over its baseline that is bad (sender side, and receiver side apart)...
    pub rtt_ratio: f64,
    /// ...when it also grew by at least this many seconds (sub-millisecond noise never alarms).
    pub rtt_min_increase_seconds: f64,
    /// Cold start: RTT p50 that is bad, in seconds.
    pub rtt_absolute_seconds: f64,
    /// Failed connects over attempts that is bad.
    pub connect_failure_ratio: f64,
    /// Warm: delivered segments (both ways) below this fraction of their baseline, with
    /// retransmission timeouts in the same interval, are a collapse.
    pub collapse_ratio: f64,
    /// Peer groups tracked at most (memory bound); the rest are counted, not judged.
    pub max_groups: usize,
    /// Active peer groups needed to attribute a degradation to host or peer.
    pub min_groups_for_attribution: usize,
}

impl Default for HealthThresholds {
    fn default() -> Self {
        Self {
            enter_intervals: 2,
            exit_intervals: 2,
            baseline_window: 360,
            baseline_min_intervals: 6,
            min_segments: 50,
            min_rtt_samples: 3,
            min_connect_attempts: 5,
            retransmit_ratio_absolute: 0.02,
            retransmit_ratio_factor: 5.0,
            retransmit_ratio_floor: 0.001,
            retransmit_evidence: 6.9,
            timeouts: 2,
            rtt_ratio: 2.0,
            rtt_min_increase_seconds: 0.005,
            rtt_absolute_seconds: 1.0,
            connect_failure_ratio: 0.2,
            collapse_ratio: 0.2,
            max_groups: 1000,
            min_groups_for_attribution: 2,
        }
    }
}

/// A group's baselines, learned from its healthy intervals.
#[derive(Debug, Clone)]
pub(super) struct Baselines {
    pub retrans: Baseline,
    pub rtt_p50: Baseline,
    pub rtt_receiver_p50: Baseline,
    pub delivered: Baseline,
}

impl Baselines {
    pub(super) fn new(window: usize) -> Self {
        Self {
            retrans: Baseline::new(window),
            rtt_p50: Baseline::new(window),
            rtt_receiver_p50: Baseline::new(window),
            delivered: Baseline::new(window),
        }
    }

    /// Learns from an interval judged healthy.
    pub(super) fn learn(&mut self, v: &Verdict, s: &IntervalStats) {
        if let Some(r) = v.retransmit_ratio {
            self.retrans.push(r);
        }
        if let Some(p50) = v.evidence.rtt.p50 {
            self.rtt_p50.push(p50);
        }
        if let Some(p50) = v.evidence.rtt_receiver.p50 {
            self.rtt_receiver_p50.push(p50);
        }
        if s.delivered() > 0 {
            self.delivered.push(s.delivered() as f64);
        }
    }
}

/// The retransmission hypotheses for one interval: the usual ratio and the bad one.
fn hypotheses(t: &HealthThresholds, baseline: &Baseline) -> (f64, f64) {
    let factor = t.retransmit_ratio_factor.max(1.01);
    match baseline.median(t.baseline_min_intervals) {
        Some(usual) => {
            let p0 = usual.max(t.retransmit_ratio_floor);
            (p0, (p0 * factor).min(0.99))
        }
        None => {
            let p1 = t.retransmit_ratio_absolute.clamp(1e-6, 0.99);
            (p1 / factor, p1)
        }
    }
}

/// The log-likelihood ratio of H1 (ratio `p1`) over H0 (`p0`) for `k` retransmitted of `n`.
pub(super) fn log_likelihood_ratio(n: u64, k: u64, p0: f64, p1: f64) -> f64 {
    let k = k.min(n) as f64;
    let n = n as f64;
    k * (p1 / p0).ln() + (n - k) * ((1.0 - p1) / (1.0 - p0)).ln()
}

/// One RTT signal's figures (sender side or receiver side), and whether it is bad.
fn judge_rtt(t: &HealthThresholds, h: &crate::flows::Log2Histogram, baseline: &Baseline) -> (RttEvidence, bool) {
    let p50 = (h.count >= t.min_rtt_samples)
        .then(|| h.quantile_seconds(0.5))
        .flatten();
    let mut e = RttEvidence {
        p50,
        samples: h.count,
        ..Default::default()
    };
    let Some(p50) = p50 else {
        return (e, false);
    };
    let bad = match baseline.median(t.baseline_min_intervals) {
        Some(base) if base > 0.0 => {
            e.baseline = Some(base);
            e.ratio = Some(p50 / base);
            p50 / base >= t.rtt_ratio && p50 - base >= t.rtt_min_increase_seconds
        }
        _ => p50 >= t.rtt_absolute_seconds,
    };
    (e, bad)
}

/// What one interval says about a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Not enough data for any rule.
    Quiet,
    /// Every rule with data is satisfied.
    Good,
    /// A rule fired on this interval's own data.
    Bad,
    /// The pooled retransmission evidence is still above its level, but this interval added
    /// none: it neither confirms nor clears.
    Hold,
}

/// One interval's judgement.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Verdict {
    pub outcome: Outcome,
    /// The rules that fired, or hold (the retransmission evidence).
    pub reasons: Vec<Reason>,
    /// This interval's ratio, where it had `min_segments`.
    pub retransmit_ratio: Option<f64>,
    pub failure_ratio: Option<f64>,
    pub evidence: Evidence,
}

/// Judges one interval; `evidence` is the group's retransmission CUSUM, updated in place.
pub(super) fn judge(t: &HealthThresholds, s: &IntervalStats, b: &Baselines, evidence: &mut f64) -> Verdict {
    let mut known = false;
    let mut hold = false;
    let mut reasons = Vec::new();

    let (p0, p1) = hypotheses(t, &b.retrans);
    let level = t.retransmit_evidence.max(0.1);
    if s.segs_sent > 0 {
        known = true;
        let llr = log_likelihood_ratio(s.segs_sent, s.retrans, p0, p1);
        *evidence = (*evidence + llr).clamp(0.0, 2.0 * level);
        if *evidence >= level {
            reasons.push(Reason::Retransmits);
            hold = llr <= 0.0;
        }
        if s.timeouts >= t.timeouts {
            reasons.push(Reason::Timeouts);
        }
    }
    let retransmit_ratio = (s.segs_sent >= t.min_segments).then(|| s.retrans as f64 / s.segs_sent as f64);

    let (rtt, rtt_bad) = judge_rtt(t, &s.rtt, &b.rtt_p50);
    let (rtt_receiver, rtt_receiver_bad) = judge_rtt(t, &s.rtt_receiver, &b.rtt_receiver_p50);
    known |= rtt.p50.is_some() || rtt_receiver.p50.is_some();
    if rtt_bad || rtt_receiver_bad {
        reasons.push(Reason::Rtt);
    }

    let attempts = s.established + s.failed;
    let failure_ratio = (attempts >= t.min_connect_attempts).then(|| s.failed as f64 / attempts as f64);
    if let Some(ratio) = failure_ratio {
        known = true;
        if ratio >= t.connect_failure_ratio {
            reasons.push(Reason::ConnectFailures);
        }
    }

    let delivered_ratio = b
        .delivered
        .median(t.baseline_min_intervals)
        .filter(|base| *base > 0.0)
        .map(|base| s.delivered() as f64 / base);
    // less traffic alone is no fault: only with retransmission timers firing
    if s.timeouts > 0 && delivered_ratio.is_some_and(|r| r < t.collapse_ratio) {
        known = true;
        reasons.push(Reason::Collapse);
    }
    reasons.sort();
    let outcome = if !known {
        Outcome::Quiet
    } else if reasons.is_empty() {
        Outcome::Good
    } else if hold && reasons == [Reason::Retransmits] {
        Outcome::Hold
    } else {
        Outcome::Bad
    };

    Verdict {
        outcome,
        reasons,
        retransmit_ratio,
        failure_ratio,
        evidence: Evidence {
            segments: s.segs_sent,
            retransmits: s.retrans,
            retransmit_baseline: p0,
            retransmit_evidence: *evidence,
            rtt,
            rtt_receiver,
            delivered_ratio,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evidence_weighs_the_sample_size() {
        let (p0, p1) = (0.001, 0.005);
        // the same three retransmits: a verdict over 100 segments is not evidence...
        assert!(log_likelihood_ratio(100, 3, p0, p1) < 6.9);
        // ...1% over 3000 segments is overwhelming, and a clean 3000 clears it
        assert!(log_likelihood_ratio(3000, 30, p0, p1) > 2.0 * 6.9);
        assert!(log_likelihood_ratio(3000, 0, p0, p1) < -6.9 * 1.5);
        // 0.5% accumulates, 0.1% (the usual rate) drains
        assert!(log_likelihood_ratio(3000, 15, p0, p1) > 0.0);
        assert!(log_likelihood_ratio(3000, 3, p0, p1) < 0.0);
    }

    #[test]
    fn cold_hypotheses_put_h1_at_the_absolute_ratio() {
        let t = HealthThresholds::default();
        let (p0, p1) = hypotheses(&t, &Baseline::new(10));
        assert!((p1 - 0.02).abs() < 1e-12);
        assert!((p0 - 0.004).abs() < 1e-12);
        let mut warm = Baseline::new(10);
        for _ in 0..6 {
            warm.push(0.0);
        }
        let (p0, p1) = hypotheses(&t, &warm);
        assert_eq!((p0, p1), (0.001, 0.005), "a clean baseline is floored");
    }
}
