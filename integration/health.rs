//! Network health against real faults: this host (a hub namespace) and peers A and B (spoke
//! namespaces) joined by veth, steady request/response traffic, and nftables loss, blackholes
//! and tbf delay on one path or both. Evaluations every 2 s (the agent's default is 10 s); the
//! rules and thresholds are the defaults. Each test prints evaluations to detect, whether the
//! verdict held, evaluations to clear and false alarms.
//!
//! `FLOWTEL_LONG_TESTS=1` runs the clean-traffic test for 10 minutes instead of 3.
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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

/// Queueing delay on the spoke's way to the hub: a 1 Mbit/s tbf with `burst` and a `limit`-byte
/// queue on the spoke's end of its veth.
fn queue(spoke: &Spoke, burst: &str, limit: &str) {
    run_in(
        &spoke.ns,
        "tc",
        &[
            "qdisc",
            "add",
            "dev",
            &spoke.spoke_if,
            "root",
            "tbf",
            "rate",
            "1mbit",
            "burst",
            burst,
            "limit",
            limit,
        ],
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
    eprintln!("blackhole lifted: healthy after {n} evaluation(s) (exit_intervals = 2)");
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
    queue(a, "4kb", "30000");
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
fn clean_bursty_traffic_with_idle_gaps_raises_no_alarm() {
    let long = std::env::var("FLOWTEL_LONG_TESTS").is_ok_and(|v| v == "1");
    let duration = Duration::from_secs(if long { 600 } else { 180 });
    let hub = Hub::new(220, 2);
    let mut obs = Observer::new(&hub);
    let started = Instant::now();
    let (mut evaluations, mut judged, mut alarms) = (0, 0, 0);
    let mut cycle = 0;
    while started.elapsed() < duration {
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
    eprintln!(
        "clean bursty traffic for {duration:?}: {evaluations} evaluations, {judged} group verdicts, {alarms} degraded"
    );
    assert!(judged > 50, "the groups were judged, not just unknown");
}

/// Evaluates `n` times while a fault is on; returns each evaluation's status of `spoke`, and
/// counts degraded verdicts of the other peers (false alarms).
fn statuses_while(obs: &mut Observer<'_>, spoke: &Spoke, others: &[&Spoke], n: usize) -> (Vec<Status>, usize) {
    let mut statuses = Vec::new();
    let mut false_alarms = 0;
    for _ in 0..n {
        let f = obs.evaluate();
        statuses.push(peer_health(&f, spoke).status);
        false_alarms += others
            .iter()
            .filter(|o| peer_health(&f, o).status == Status::Degraded)
            .count();
    }
    (statuses, false_alarms)
}

#[test]
fn sustained_low_loss_is_degraded_for_as_long_as_it_lasts() {
    let hub = Hub::new(223, 2);
    let _traffic = Traffic::start(&hub, PORT, 20_000, 1_000, Duration::from_millis(10));
    let mut obs = Observer::new(&hub);
    // warm baselines (baseline_min_intervals = 6): the usual ratio, not the cold guess
    warm_up(&mut obs, 8);
    let (a, b) = (&hub.spokes[0], &hub.spokes[1]);
    loss_rule(a, 1);
    let (statuses, false_alarms) = statuses_while(&mut obs, a, &[b], 12);
    let detected = statuses
        .iter()
        .position(|s| *s == Status::Degraded)
        .unwrap_or_else(|| panic!("1% loss never detected: {statuses:?}"));
    let held = statuses[detected..].iter().all(|s| *s == Status::Degraded);
    VethPair::nft_flush(&a.ns);
    let (n, f) = evaluations_until(&mut obs, 3, |f| peer_health(f, a).status == Status::Healthy);
    eprintln!(
        "1% loss to A for 24 s: degraded at evaluation {}, held: {held} ({statuses:?}); healthy {n} evaluation(s) \
         after it stopped; false alarms on B: {false_alarms}",
        detected + 1
    );
    assert!(detected < 3, "degraded within 3 evaluations: {statuses:?}");
    assert!(
        held,
        "degraded at every evaluation until the loss stopped: {statuses:?}"
    );
    assert_eq!(false_alarms, 0, "B has no loss");
    assert_ne!(peer_health(&f, b).status, Status::Degraded);
}

#[test]
fn severe_loss_degrades_within_two_evaluations() {
    let hub = Hub::new(224, 2);
    let _traffic = Traffic::start_with(&hub, PORT, 20_000, 1_000, Duration::from_millis(10), 2);
    let mut obs = Observer::new(&hub);
    warm_up(&mut obs, 3);
    let (a, b) = (&hub.spokes[0], &hub.spokes[1]);
    loss_rule(a, 25);
    let (n, f) = evaluations_until(&mut obs, 2, |f| peer_health(f, a).status == Status::Degraded);
    let ha = peer_health(&f, a);
    eprintln!(
        "25% loss to A: degraded after {n} evaluation(s): {:?} {:?}",
        ha.reasons, ha.evidence
    );
    assert_eq!(ha.attribution, Attribution::Peer);
    assert_ne!(peer_health(&f, b).status, Status::Degraded, "B has no loss");
    VethPair::nft_flush(&a.ns);
    let (n, _) = evaluations_until(&mut obs, 4, |f| peer_health(f, a).status == Status::Healthy);
    eprintln!("25% loss to A removed: healthy after {n} evaluation(s)");
}

/// Long-lived connections on which the hub mostly receives: `clients` per spoke send a 100-byte
/// request and read a `response`-byte answer, over and over, until dropped.
struct Download {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Download {
    fn start(hub: &Hub, port: u16, response: usize, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for spoke in &hub.spokes {
            let listener = VethPair::in_ns(&spoke.ns, || TcpListener::bind((spoke.addr, port)).expect("bind"));
            listener.set_nonblocking(true).expect("nonblocking");
            let stop_server = Arc::clone(&stop);
            threads.push(std::thread::spawn(move || {
                let mut served = Vec::new();
                while !stop_server.load(Ordering::Relaxed) {
                    let Ok((mut conn, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    served.push(std::thread::spawn(move || {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                        let mut request = [0u8; 100];
                        let answer = vec![7u8; response];
                        while conn.read_exact(&mut request).is_ok() && conn.write_all(&answer).is_ok() {}
                    }));
                }
                served.into_iter().for_each(|t| drop(t.join()));
            }));
            for _ in 0..clients {
                let (ns, target) = (hub.hub_ns.clone(), SocketAddr::new(spoke.addr, port));
                let stop_client = Arc::clone(&stop);
                threads.push(std::thread::spawn(move || {
                    VethPair::in_ns(&ns, || {
                        let Ok(mut c) = TcpStream::connect_timeout(&target, Duration::from_secs(5)) else {
                            return;
                        };
                        let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
                        let mut answer = vec![0u8; response];
                        while !stop_client.load(Ordering::Relaxed)
                            && c.write_all(&[1u8; 100]).is_ok()
                            && c.read_exact(&mut answer).is_ok()
                        {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    })
                }));
            }
        }
        Self { stop, threads }
    }
}

impl Drop for Download {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Delay on the path towards a host that mostly receives: its own requests' ACKs come back at
/// once, so only the receiver-side RTT sees the queue its downloads wait in.
#[test]
fn queueing_delay_towards_a_receiving_host_degrades_its_group_with_reason_rtt() {
    let hub = Hub::new(222, 2);
    // one connection per peer: each request's ACK rides the first answer segment, ahead of the
    // queue, so the hub's sender-side RTT stays flat
    let _download = Download::start(&hub, PORT, 128 * 1024, 1);
    let mut obs = Observer::new(&hub);
    warm_up(&mut obs, 8);
    let (a, b) = (&hub.spokes[0], &hub.spokes[1]);
    // 1 Mbit/s with a 60 KB queue on A's egress: A's answers to the hub wait up to 480 ms
    queue(a, "8kb", "60000");
    let (n, f) = evaluations_until(&mut obs, 3, |f| peer_health(f, a).status == Status::Degraded);
    let ha = peer_health(&f, a);
    let e = &ha.evidence;
    eprintln!(
        "tbf delay towards the hub from A: degraded after {n} evaluation(s), reasons {:?}; receiver RTT p50 {:?} \
         (baseline {:?}), sender RTT p50 {:?} (baseline {:?})",
        ha.reasons, e.rtt_receiver.p50, e.rtt_receiver.baseline, e.rtt.p50, e.rtt.baseline
    );
    assert!(ha.reasons.contains(&Reason::Rtt), "{ha:?}");
    let receiver_ratio = e.rtt_receiver.ratio;
    assert!(
        receiver_ratio.is_some_and(|r| r >= 2.0),
        "the receiver side saw the delay: {ha:?}"
    );
    assert_ne!(peer_health(&f, b).status, Status::Degraded, "B is not delayed");
    run_in(&a.ns, "tc", &["qdisc", "del", "dev", &a.spoke_if, "root"]);
    let (n, _) = evaluations_until(&mut obs, 4, |f| peer_health(f, a).status == Status::Healthy);
    eprintln!("tbf delay removed: healthy after {n} evaluation(s)");
}
