//! Synthetic interval series against the rules.
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use super::*;

fn peer(last: u8) -> GroupId {
    GroupId::Peer {
        address: IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)),
        port: 443,
    }
}

/// One interval: `segs` data segments with `loss` of them retransmitted, RTT samples around
/// `rtt_ms`, a few clean connects.
fn interval(segs: u64, loss: f64, rtt_ms: f64, timeouts: u64) -> IntervalStats {
    let mut s = IntervalStats {
        segs_sent: segs,
        retrans: (segs as f64 * loss).round() as u64,
        timeouts,
        established: 10,
        ..Default::default()
    };
    for jitter in [0.9, 1.0, 1.1, 1.0, 0.95] {
        s.rtt.record((rtt_ms * jitter * 1000.0) as u64);
    }
    s
}

fn healthy() -> IntervalStats {
    interval(2000, 0.001, 10.0, 0)
}

/// A run whose peer 1 has learnt its baselines over `n` healthy intervals.
fn warmed(n: usize) -> (Run, GroupId) {
    let mut run = Run::new();
    let a = peer(1);
    run.warm_up(&a, n);
    (run, a)
}

struct Run {
    eval: HealthEvaluator,
}

impl Run {
    fn new() -> Self {
        Self {
            eval: HealthEvaluator::new(HealthThresholds::default()),
        }
    }

    /// Feeds one interval for each given group; returns the status of the first.
    fn step(&mut self, groups: &[(GroupId, IntervalStats)]) -> GroupHealth {
        let stats: HashMap<GroupId, IntervalStats> = groups.iter().cloned().collect();
        let (findings, _) = self.eval.apply(stats);
        findings
            .into_iter()
            .find(|h| h.group == groups[0].0)
            .expect("finding for the group")
    }

    fn warm_up(&mut self, id: &GroupId, n: usize) {
        for _ in 0..n {
            assert_eq!(self.step(&[(id.clone(), healthy())]).status, Status::Healthy);
        }
    }
}

#[test]
fn a_loss_step_degrades_within_the_hysteresis() {
    let (mut run, a) = warmed(20);
    let first = run.step(&[(a.clone(), interval(2000, 0.05, 10.0, 0))]);
    assert_eq!(first.status, Status::Healthy, "one bad interval is not enough");
    let second = run.step(&[(a.clone(), interval(2000, 0.05, 10.0, 0))]);
    assert_eq!(second.status, Status::Degraded);
    assert_eq!(second.reasons, vec![Reason::Retransmits]);
    assert!((second.retransmit_ratio.expect("ratio") - 0.05).abs() < 1e-9);
}

#[test]
fn an_rtt_step_degrades_with_reason_rtt() {
    let (mut run, a) = warmed(10);
    run.step(&[(a.clone(), interval(2000, 0.001, 40.0, 0))]);
    let h = run.step(&[(a.clone(), interval(2000, 0.001, 40.0, 0))]);
    assert_eq!((h.status, h.reasons.clone()), (Status::Degraded, vec![Reason::Rtt]));
    let ratio = h.rtt_ratio.expect("ratio");
    assert!((3.0..=5.0).contains(&ratio), "about 4x: {ratio}");
}

#[test]
fn timeouts_and_failures_are_reasons_too() {
    let (mut run, a) = warmed(10);
    let mut failing = interval(2000, 0.001, 10.0, 3);
    failing.failed = 5;
    run.step(&[(a.clone(), failing.clone())]);
    let h = run.step(&[(a.clone(), failing)]);
    assert_eq!(h.reasons, vec![Reason::Timeouts, Reason::ConnectFailures]);
}

#[test]
fn single_spikes_and_slow_drift_do_not_alarm() {
    let (mut run, a) = warmed(10);
    for i in 0..400 {
        // diurnal-like drift: RTT wanders between 8 and 14 ms over 200 intervals
        let rtt = 11.0 + 3.0 * (i as f64 * std::f64::consts::TAU / 200.0).sin();
        // and an isolated spike every 25 intervals
        let stats = if i % 25 == 0 {
            interval(2000, 0.10, rtt * 3.0, 2)
        } else {
            interval(2000, 0.001, rtt, 0)
        };
        assert_eq!(run.step(&[(a.clone(), stats)]).status, Status::Healthy, "interval {i}");
    }
}

#[test]
fn a_degraded_period_does_not_poison_the_baseline() {
    let (mut run, a) = warmed(10);
    for _ in 0..60 {
        run.step(&[(a.clone(), interval(2000, 0.001, 40.0, 0))]);
    }
    assert_eq!(
        run.step(&[(a.clone(), interval(2000, 0.001, 40.0, 0))]).status,
        Status::Degraded,
        "still slow"
    );
    let exit = HealthThresholds::default().exit_intervals;
    for i in 1..=exit {
        let h = run.step(&[(a.clone(), healthy())]);
        let expected = if i < exit { Status::Degraded } else { Status::Healthy };
        assert_eq!(h.status, expected, "leaves after exit_intervals good intervals ({i})");
    }
    run.step(&[(a.clone(), interval(2000, 0.001, 40.0, 0))]);
    let again = run.step(&[(a.clone(), interval(2000, 0.001, 40.0, 0))]);
    assert_eq!(again.status, Status::Degraded, "the baseline still says 10 ms");
}

#[test]
fn a_flapping_link_does_not_chatter() {
    let (mut run, a) = warmed(10);
    let bad = interval(2000, 0.05, 10.0, 0);
    let mut transitions = 0;
    for i in 0..40 {
        let stats = if i < 2 || i % 2 == 0 { bad.clone() } else { healthy() };
        let (_, t) = run.eval.apply([(a.clone(), stats)].into_iter().collect());
        transitions += t.len();
    }
    assert_eq!(transitions, 1, "entered once, never left while flapping");
}

#[test]
fn quiet_groups_stay_unknown() {
    let mut run = Run::new();
    let a = peer(1);
    for _ in 0..20 {
        let quiet = IntervalStats {
            segs_sent: 0,
            ..Default::default()
        };
        let h = run.step(&[(a.clone(), quiet)]);
        assert_eq!(h.status, Status::Unknown);
        assert_eq!(h.retransmit_ratio, None);
    }
}

#[test]
fn cold_start_uses_absolute_thresholds() {
    let mut run = Run::new();
    let a = peer(1);
    run.step(&[(a.clone(), interval(2000, 0.05, 10.0, 0))]);
    assert_eq!(
        run.step(&[(a.clone(), interval(2000, 0.05, 10.0, 0))]).status,
        Status::Degraded,
        "5% > 2% cold"
    );
    let mut slow = Run::new();
    slow.step(&[(a.clone(), interval(2000, 0.0, 300.0, 0))]);
    assert_eq!(
        slow.step(&[(a.clone(), interval(2000, 0.0, 300.0, 0))]).status,
        Status::Healthy,
        "no RTT baseline, 300 ms < 1 s"
    );
}

#[test]
fn attribution_host_peer_or_unknown() {
    let (a, b) = (peer(1), peer(2));
    let lossy = || interval(2000, 0.05, 10.0, 0);
    let mut one = Run::new();
    one.warm_up(&a, 1);
    for _ in 0..2 {
        one.step(&[(a.clone(), lossy()), (b.clone(), healthy())]);
    }
    let h = one.step(&[(a.clone(), lossy()), (b.clone(), healthy())]);
    assert_eq!((h.status, h.attribution), (Status::Degraded, Attribution::Peer));

    let mut both = Run::new();
    for _ in 0..3 {
        both.step(&[(a.clone(), lossy()), (b.clone(), lossy())]);
    }
    assert_eq!(
        both.step(&[(a.clone(), lossy()), (b.clone(), lossy())]).attribution,
        Attribution::Host
    );

    let mut alone = Run::new();
    for _ in 0..3 {
        alone.step(&[(a.clone(), lossy())]);
    }
    assert_eq!(alone.step(&[(a.clone(), lossy())]).attribution, Attribution::Unknown);
}

#[test]
fn interpolated_p50_moves_smoothly() {
    let mut h = crate::flows::Log2Histogram::default();
    for _ in 0..10 {
        h.record(10_000);
    }
    let p50 = h.quantile_seconds(0.5).expect("p50");
    assert!((0.008..=0.016).contains(&p50), "{p50}");
}

#[test]
fn a_monitor_is_its_own_group_over_the_pairs_it_selects_and_is_tracked_before_peers() {
    use std::time::Instant;

    use crate::enrich::monitors::{LocalSelector, RemoteSelector};
    use crate::enrich::resources::{NetworkEntry, ResourcesSection};
    use crate::enrich::{Enricher, MonitorSection};
    use crate::flows::FlowTable;
    use crate::flows::FlowTableConfig;

    let mut resources = ResourcesSection::default();
    resources.networks.insert(
        "10.0.2.0/24".into(),
        NetworkEntry {
            name: "db".into(),
            vpc: None,
            zone: None,
            region: None,
        },
    );
    let monitors = [MonitorSection {
        name: "to-db".into(),
        local: vec![LocalSelector::Cidr("10.0.0.0/8".into())],
        remote: vec![RemoteSelector::Subnet("db".into())],
    }];
    let enricher = Enricher::new(&resources, None, &monitors).expect("enricher");
    // room for the host and one more group: the monitor must get it, not a peer
    let mut eval = HealthEvaluator::new(HealthThresholds {
        max_groups: 2,
        ..Default::default()
    });
    let mut table = FlowTable::new(FlowTableConfig::default());
    let pair = |remote: [u8; 4], retrans: u64| {
        let counters = FlowCounters {
            segs_sent: 1000,
            retrans: [0, retrans, 0],
            ..Default::default()
        };
        crate::testing::delta(remote, 5432, counters)
    };
    let monitor = GroupId::Monitor("to-db".into());
    let mut statuses = Vec::new();
    for i in 0..6u32 {
        // the db pair loses 20% of its segments from the third interval on
        let loss = if i >= 2 { 200 } else { 0 };
        table.apply_poll(
            &[pair([10, 0, 2, 9], loss), pair([10, 0, 3, 9], 0)],
            &FlowCounters::default(),
            Instant::now(),
        );
        let annotations = crate::testing::annotate(&table, &enricher);
        let (findings, _) = eval.evaluate(&annotations.view(&table), |_| true);
        let m = findings
            .iter()
            .find(|h| h.group == monitor)
            .expect("the monitor is tracked");
        assert_eq!(m.group.scope(), "monitor");
        statuses.push(m.status);
        assert!(!findings.iter().any(|h| matches!(h.group, GroupId::Peer { .. })));
    }
    assert_eq!(statuses[0], Status::Healthy);
    assert_eq!(statuses[5], Status::Degraded, "{statuses:?}");
    assert!(eval.untracked_groups > 0, "the peer groups were counted, not tracked");
}

/// A deterministic stand-in for noise: the ratios of a 1% loss observed over ~3000 segments.
const ONE_PERCENT_LOSS: [f64; 10] = [0.004, 0.018, 0.009, 0.006, 0.013, 0.011, 0.005, 0.016, 0.008, 0.01];

#[test]
fn sustained_low_loss_stays_degraded_while_it_lasts_then_clears() {
    let (mut run, a) = warmed(10);
    let mut statuses = Vec::new();
    for (i, ratio) in ONE_PERCENT_LOSS.iter().cycle().take(40).enumerate() {
        let h = run.step(&[(a.clone(), interval(3000, *ratio, 10.0, 0))]);
        if i >= 1 {
            assert_eq!(h.status, Status::Degraded, "interval {i} at {ratio}: {h:?}");
            assert_eq!(h.reasons, vec![Reason::Retransmits]);
        }
        statuses.push(h.status);
    }
    let clear: Vec<Status> = (0..3).map(|_| run.step(&[(a.clone(), healthy())]).status).collect();
    assert_eq!(
        clear.last(),
        Some(&Status::Healthy),
        "healthy within 3 clean intervals: {clear:?}"
    );
}

#[test]
fn half_a_percent_over_a_clean_baseline_is_detected() {
    let (mut run, a) = warmed(10);
    let h: Vec<Status> = (0..3)
        .map(|_| run.step(&[(a.clone(), interval(3000, 0.005, 10.0, 0))]).status)
        .collect();
    assert_eq!(h.last(), Some(&Status::Degraded), "{h:?}");
}

#[test]
fn a_few_retransmits_over_few_segments_are_no_verdict() {
    let (mut run, a) = warmed(10);
    // 3 of 60 (5%): far above any per-interval threshold, but not enough evidence alone
    let h = run.step(&[(a.clone(), interval(60, 0.05, 10.0, 0))]);
    assert_eq!((h.status, h.reasons.clone()), (Status::Healthy, vec![]), "{h:?}");
    assert!(h.evidence.retransmit_evidence < HealthThresholds::default().retransmit_evidence);
    assert_eq!(run.step(&[(a.clone(), healthy())]).status, Status::Healthy);
    // the same 5% over 2000 segments is
    run.step(&[(a.clone(), interval(2000, 0.05, 10.0, 0))]);
    let h = run.step(&[(a.clone(), interval(2000, 0.05, 10.0, 0))]);
    assert_eq!(h.status, Status::Degraded);
    assert!(h.evidence.retransmit_evidence >= HealthThresholds::default().retransmit_evidence);
    assert_eq!((h.evidence.segments, h.evidence.retransmits), (2000, 100));
}

#[test]
fn receiver_side_rtt_shows_delay_on_the_download_path() {
    let downloading = |rcv_rtt_ms: f64| {
        let mut s = interval(200, 0.0, 1.0, 0);
        s.segs_received = 5000;
        for jitter in [0.9, 1.0, 1.1] {
            s.rtt_receiver.record((rcv_rtt_ms * jitter * 1000.0) as u64);
        }
        s
    };
    let mut run = Run::new();
    let a = peer(1);
    for _ in 0..8 {
        assert_eq!(run.step(&[(a.clone(), downloading(2.0))]).status, Status::Healthy);
    }
    run.step(&[(a.clone(), downloading(60.0))]);
    let h = run.step(&[(a.clone(), downloading(60.0))]);
    assert_eq!((h.status, h.reasons.clone()), (Status::Degraded, vec![Reason::Rtt]));
    assert!(h.rtt_ratio.is_some_and(|r| r > 20.0), "{h:?}");
    assert!(h.evidence.rtt_receiver.baseline.is_some() && h.evidence.rtt_receiver.samples == 3);
}

#[test]
fn collapsed_delivery_with_timeouts_is_a_verdict() {
    let (mut run, a) = warmed(10);
    // a trickle of 40 segments with one timeout against a usual 2000
    let mut collapsed = interval(40, 0.0, 10.0, 1);
    collapsed.rtt = Default::default();
    run.step(&[(a.clone(), collapsed.clone())]);
    let h = run.step(&[(a.clone(), collapsed)]);
    assert_eq!(
        (h.status, h.reasons.clone()),
        (Status::Degraded, vec![Reason::Collapse])
    );
    assert!(h.evidence.delivered_ratio.is_some_and(|r| r < 0.05), "{h:?}");
}
