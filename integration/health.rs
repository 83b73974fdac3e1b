//! Network health against real faults: this host (a hub namespace) and peers A and B (spoke
//! namespaces) joined by veth, steady request/response traffic, and nftables loss, blackholes
//! and tbf delay on one path or both. Evaluations every 2 s (the agent's default is 10 s); the
//! rules and thresholds are the defaults. Each test prints its detection latency.
mod support;

use std::time::{Duration, Instant};

use flowtel::health::{Attribution, GroupHealth, GroupId, HealthEvaluator, HealthThresholds, Reason, Status};
use flowtel::poller::Poller;
use support::*;

const EVAL_EVERY: Duration = Duration::from_secs(2);
const POLL_EVERY: Duration = Duration::from_millis(500);
const PORT: u16 = 9000;

struct Observer<'a> {
    poller: Poller,
    eval: HealthEvaluator,
    hub: &'a Hub,
}

impl<'a> Observer<'a> {
    fn new(hub: &'a Hub) -> Self {
        let mut poller = poller();
        poller.poll(Instant::now()).expect("poll");
        Self {
            poller,
            eval: HealthEvaluator::new(HealthThresholds::default()),
            hub,
        }
    }

    /// Polls through one evaluation interval, then evaluates the hub's side of its links.
    fn evaluate(&mut self) -> Vec<GroupHealth> {
        let end = Instant::now() + EVAL_EVERY;
        while Instant::now() < end {
            std::thread::sleep(POLL_EVERY);
            self.poller.poll(Instant::now()).expect("poll");
        }
        let hub = self.hub;
        self.eval.evaluate(&self.poller.view(), |k| hub.is_hub_side(k)).0
    }
}

fn peer_health(findings: &[GroupHealth], spoke: &Spoke) -> GroupHealth {
    findings
        .iter()
        .find(|h| {
            h.group
                == GroupId::Peer {
                    address: spoke.addr,
                    port: PORT,
                }
        })
        .cloned()
        .unwrap_or_else(|| panic!("no finding for {}: {findings:?}", spoke.addr))
}

fn loss_rule(spoke: &Spoke, percent: u32) {
    VethPair::nft_input_rule(
        &spoke.ns,
        &format!(
            "ip saddr {} tcp dport {PORT} tcp flags & (syn|fin|rst) == 0 numgen random mod 100 < {percent} counter drop",
            spoke.hub_addr
        ),
    );
}

/// Evaluates until both peers are healthy, at most `n` times.
fn warm_up(obs: &mut Observer<'_>, n: usize) {
    let (a, b) = (&obs.hub.spokes[0], &obs.hub.spokes[1]);
    for i in 0..n {
        let f = obs.evaluate();
        assert_ne!(
            peer_health(&f, a).status,
            Status::Degraded,
            "A degraded during warm-up ({i})"
        );
        assert_ne!(
            peer_health(&f, b).status,
            Status::Degraded,
            "B degraded during warm-up ({i})"
        );
    }
}

/// Evaluations until `done` holds for the findings, at most `max`; returns the count and the
/// findings that satisfied it.
fn evaluations_until(
    obs: &mut Observer<'_>,
    max: usize,
    done: impl Fn(&[GroupHealth]) -> bool,
) -> (usize, Vec<GroupHealth>) {
    let mut last = Vec::new();
    for n in 1..=max {
        last = obs.evaluate();
        if done(&last) {
            return (n, last);
        }
    }
    panic!("not reached within {max} evaluations; last findings: {last:?}");
}

#[test]
fn loss_to_one_peer_degrades_that_peer_only() {
    let hub = Hub::new(216, 2);
    let _traffic = Traffic::start(&hub, PORT, 20_000, 1_000, Duration::from_millis(10));
    let mut obs = Observer::new(&hub);
    warm_up(&mut obs, 3);
    let (a, b) = (&hub.spokes[0], &hub.spokes[1]);
    loss_rule(a, 10);
    let (n, f) = evaluations_until(&mut obs, 2, |f| peer_health(f, a).status == Status::Degraded);
    eprintln!("loss to A: degraded after {n} evaluation(s) of {EVAL_EVERY:?}");
    let ha = peer_health(&f, a);
    assert!(ha.reasons.contains(&Reason::Retransmits), "{ha:?}");
    assert_eq!(ha.attribution, Attribution::Peer);
    assert_eq!(peer_health(&f, b).status, Status::Healthy, "B stays healthy");

    VethPair::nft_flush(&a.ns);
    let (n, _) = evaluations_until(&mut obs, 4, |f| peer_health(f, a).status == Status::Healthy);
    eprintln!("loss to A removed: healthy after {n} evaluation(s)");
}

#[test]
fn loss_on_both_paths_is_attributed_to_the_host() {
    let hub = Hub::new(217, 2);
    let _traffic = Traffic::start(&hub, PORT, 20_000, 1_000, Duration::from_millis(10));
    let mut obs = Observer::new(&hub);
    warm_up(&mut obs, 3);
    let (a, b) = (&hub.spokes[0], &hub.spokes[1]);
    loss_rule(a, 10);
    loss_rule(b, 10);
    let (n, f) = evaluations_until(&mut obs, 2, |f| {
        peer_health(f, a).status == Status::Degraded && peer_health(f, b).status == Status::Degraded
    });
    eprintln!("loss to A and B: both degraded after {n} evaluation(s)");
    assert_eq!(peer_health(&f, a).attribution, Attribution::Host);
    let host = f.iter().find(|h| h.group == GroupId::Host).expect("host group");
    assert_eq!((host.status, host.attribution), (Status::Degraded, Attribution::Host));
}

#[test]
fn a_blackhole_produces_timeouts_then_recovery() {
    let hub = Hub::new(218, 2);
    let _traffic = Traffic::start_with(&hub, PORT, 20_000, 1_000, Duration::from_millis(10), 4);
    let mut obs = Observer::new(&hub);
    warm_up(&mut obs, 3);
    let a = &hub.spokes[0];
    VethPair::nft_input_rule(&a.ns, &format!("ip saddr {} counter drop", a.hub_addr));
    let blackhole_until = Instant::now() + Duration::from_secs(3);
    let first = obs.evaluate();
    // lift the blackhole 3 s after it started, in the middle of the second interval
    let lift = std::thread::spawn({
        let ns = a.ns.clone();
        move || {
            std::thread::sleep(blackhole_until.saturating_duration_since(Instant::now()));
            VethPair::nft_flush(&ns);
        }
    });
    let second = obs.evaluate();
    lift.join().expect("lift");
    let ha = peer_health(&second, a);
    eprintln!(
        "blackhole: first interval {:?}, second {:?}",
        peer_health(&first, a).reasons,
        ha
    );
    assert_eq!(ha.status, Status::Degraded, "degraded after 2 evaluations");
    assert!(ha.reasons.contains(&Reason::Timeouts), "{ha:?}");
    let (n, _) = evaluations_until(&mut obs, 5, |f| peer_health(f, a).status == Status::Healthy);
    eprintln!("blackhole lifted: healthy after {n} evaluation(s) (exit_intervals = 3)");
    assert!(n <= 4, "back within exit_intervals plus the partial interval");
}

#[test]
fn queueing_delay_to_one_peer_degrades_with_reason_rtt() {
    let hub = Hub::new(219, 2);
    let _traffic = Traffic::start_with(&hub, PORT, 2_000, 20_000, Duration::from_millis(10), 2);
    let mut obs = Observer::new(&hub);
    // RTT needs a warm baseline: baseline_min_intervals (6) healthy intervals
    warm_up(&mut obs, 8);
    let a = &hub.spokes[0];
    // 1 Mbit/s with a 30 KB queue on A's side: up to 240 ms behind the responses
    run_in(
        &a.ns,
        "tc",
        &[
            "qdisc",
            "add",
            "dev",
            &a.spoke_if,
            "root",
            "tbf",
            "rate",
            "1mbit",
            "burst",
            "4kb",
            "limit",
            "30000",
        ],
    );
    let (n, f) = evaluations_until(&mut obs, 3, |f| peer_health(f, a).status == Status::Degraded);
    let ha = peer_health(&f, a);
    eprintln!("tbf delay to A: degraded after {n} evaluation(s): {ha:?}");
    assert!(ha.reasons.contains(&Reason::Rtt), "{ha:?}");
    assert!(ha.rtt_ratio.is_some_and(|r| r >= 2.0), "{ha:?}");
    assert_ne!(
        peer_health(&f, &hub.spokes[1]).status,
        Status::Degraded,
        "B is not delayed"
    );
}

#[test]
fn three_minutes_of_clean_bursty_traffic_raise_no_alarm() {
    let hub = Hub::new(220, 2);
    let mut obs = Observer::new(&hub);
    let started = Instant::now();
    let (mut evaluations, mut judged, mut alarms) = (0, 0, 0);
    let mut cycle = 0;
    while started.elapsed() < Duration::from_secs(180) {
        // bulk bursts, idle gaps and light request/response, in turn
        let traffic = match cycle % 3 {
            0 => Some(Traffic::start(
                &hub,
                PORT + cycle as u16,
                1_000,
                4_000_000,
                Duration::ZERO,
            )),
            1 => None,
            _ => Some(Traffic::start(
                &hub,
                PORT + cycle as u16,
                2_000,
                2_000,
                Duration::from_millis(50),
            )),
        };
        for _ in 0..3 {
            let f = obs.evaluate();
            evaluations += 1;
            judged += f.iter().filter(|h| h.status != Status::Unknown).count();
            alarms += f.iter().filter(|h| h.status == Status::Degraded).count();
            assert!(f.iter().all(|h| h.status != Status::Degraded), "false alarm: {f:?}");
        }
        drop(traffic);
        cycle += 1;
    }
    eprintln!("bursty traffic: {evaluations} evaluations, {judged} group verdicts, {alarms} degraded");
    assert!(judged > 50, "the groups were judged, not just unknown");
}
