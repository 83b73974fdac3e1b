use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{FlowCounters, FlowKey, Owner};

/// One pair's deltas for one poll interval, as the sampler reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairDelta {
    pub key: FlowKey,
    /// Additive fields are deltas; `active` is the walk's live-connection gauge.
    pub counters: FlowCounters,
    pub owner: Owner,
}

/// Pairs with no activity and no live connection for this long are dropped from the table.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Memory bound: at most this many pairs (about 850 bytes each with the map entry). A new pair
/// arriving at a full table first makes room by evicting the longest-idle pairs that have no
/// live connection; when every pair is busy, it folds into the overflow bucket.
pub const DEFAULT_MAX_PAIRS: usize = 20_000;
/// A full table evicts this fraction of its capacity at a time, so that a stream of new pairs
/// pays for one scan per batch, not one per pair.
const ROOM_BATCH_DIVISOR: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowTableConfig {
    pub idle_timeout: Duration,
    pub max_pairs: usize,
}

impl Default for FlowTableConfig {
    fn default() -> Self {
        Self {
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_pairs: DEFAULT_MAX_PAIRS,
        }
    }
}

/// One pair's running totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlowPair {
    pub key: FlowKey,
    pub counters: FlowCounters,
    pub owner: Owner,
    #[serde(skip)]
    pub last_active: Instant,
    /// Distinguishes a pair evicted and seen again from its earlier self, whose counters it
    /// does not continue: consumers keeping per-pair state compare it.
    #[serde(skip)]
    pub incarnation: u64,
    /// For a client pair whose peer was found through NAT reversal: the address the client
    /// connected to (a Kubernetes ClusterIP, say). The latest one seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original: Option<std::net::SocketAddr>,
}

/// Each pair's counters as an interval-reporting consumer (export, health, `top`) last saw
/// them. A pair evicted and seen again is a new incarnation and counts from zero.
#[derive(Debug, Default)]
pub struct PairSnapshots(HashMap<FlowKey, (u64, FlowCounters)>);

impl PairSnapshots {
    /// The pair's counters at the last snapshot, if it is the same incarnation.
    pub fn of(&self, pair: &FlowPair) -> Option<&FlowCounters> {
        self.0
            .get(&pair.key)
            .filter(|(incarnation, _)| *incarnation == pair.incarnation)
            .map(|(_, c)| c)
    }

    /// What the pair counted since the last snapshot.
    pub fn since(&self, pair: &FlowPair) -> FlowCounters {
        pair.counters.since(self.of(pair))
    }

    /// A snapshot of `pairs`, replacing the previous one.
    pub fn take<'a>(pairs: impl IntoIterator<Item = &'a FlowPair>) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|p| (p.key, (p.incarnation, p.counters.clone())))
                .collect(),
        )
    }
}

/// What the table did, for the agent's own metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct FlowTableStats {
    pub pairs: usize,
    /// Pair deltas that arrived while the table was full of busy pairs and went to the
    /// overflow bucket.
    pub overflowed_deltas: u64,
    /// Pairs evicted after the idle timeout.
    pub evicted_pairs: u64,
    /// Idle pairs evicted early to make room for new ones in a full table.
    pub evicted_for_room: u64,
}

/// Running totals per flow pair, plus an overflow bucket and the totals of evicted pairs, so
/// that `pairs + overflow + evicted == totals` always holds: nothing the kernel counted is lost.
#[derive(Debug)]
pub struct FlowTable {
    config: FlowTableConfig,
    pairs: HashMap<FlowKey, FlowPair>,
    overflow: FlowCounters,
    evicted: FlowCounters,
    totals: FlowCounters,
    stats: FlowTableStats,
    next_incarnation: u64,
}

impl FlowTable {
    pub fn new(config: FlowTableConfig) -> Self {
        Self {
            config,
            pairs: HashMap::new(),
            overflow: FlowCounters::default(),
            evicted: FlowCounters::default(),
            totals: FlowCounters::default(),
            stats: FlowTableStats::default(),
            next_incarnation: 0,
        }
    }

    /// Adds one poll's deltas. `active` in each delta is the live-connection gauge from the walk
    /// that ended the poll; pairs without a delta had none alive.
    pub fn apply_poll<'a>(
        &mut self,
        deltas: impl IntoIterator<Item = &'a PairDelta>,
        kernel_overflow: &FlowCounters,
        now: Instant,
    ) {
        self.apply(deltas, kernel_overflow, now, true);
    }

    /// Adds the deltas of a poll that did not walk the sockets: the live-connection gauges keep
    /// the last walk's values.
    pub fn apply_poll_between_walks<'a>(
        &mut self,
        deltas: impl IntoIterator<Item = &'a PairDelta>,
        kernel_overflow: &FlowCounters,
        now: Instant,
    ) {
        self.apply(deltas, kernel_overflow, now, false);
    }

    fn apply<'a>(
        &mut self,
        deltas: impl IntoIterator<Item = &'a PairDelta>,
        kernel_overflow: &FlowCounters,
        now: Instant,
        walked: bool,
    ) {
        if walked {
            for pair in self.pairs.values_mut() {
                pair.counters.active = 0;
            }
        }
        // once a full table found nothing to evict, it will not find any until the next poll
        let mut no_room_left = false;
        for PairDelta {
            key,
            counters: delta,
            owner,
        } in deltas
        {
            self.totals.add(delta);
            let full = self.pairs.len() >= self.config.max_pairs
                && !self.pairs.contains_key(key)
                && (no_room_left || self.make_room(now) == 0);
            no_room_left |= full;
            match self.pairs.get_mut(key) {
                Some(pair) => Self::merge(pair, delta, owner, now, walked),
                None if full => {
                    self.overflow.add(delta);
                    self.stats.overflowed_deltas += 1;
                }
                None => {
                    let mut pair = FlowPair {
                        key: *key,
                        counters: FlowCounters::default(),
                        owner: Owner::default(),
                        last_active: now,
                        incarnation: self.next_incarnation,
                        original: None,
                    };
                    self.next_incarnation += 1;
                    Self::merge(&mut pair, delta, owner, now, walked);
                    self.pairs.insert(*key, pair);
                }
            }
        }
        self.totals.add(kernel_overflow);
        self.overflow.add(kernel_overflow);
        self.stats.pairs = self.pairs.len();
    }

    fn merge(pair: &mut FlowPair, delta: &FlowCounters, owner: &Owner, now: Instant, walked: bool) {
        pair.counters.add(delta);
        if walked {
            pair.counters.active = delta.active;
        }
        pair.owner.update(owner);
        if delta.has_activity() || delta.active > 0 {
            pair.last_active = now;
        }
    }

    /// Records the original destination of pairs that NAT reversal translated.
    pub fn note_originals(&mut self, originals: &[(FlowKey, std::net::SocketAddr)]) {
        for (key, original) in originals {
            if let Some(pair) = self.pairs.get_mut(key) {
                pair.original = Some(*original);
            }
        }
    }

    /// Evicts up to a batch of the longest-idle pairs with no live connection and no activity in
    /// this poll (`now`); their totals move to the evicted bucket. Returns how many went.
    fn make_room(&mut self, now: Instant) -> usize {
        let batch = (self.config.max_pairs / ROOM_BATCH_DIVISOR).max(1);
        let mut idle: Vec<(Instant, FlowKey)> = self
            .pairs
            .values()
            .filter(|p| p.counters.active == 0 && p.last_active < now)
            .map(|p| (p.last_active, p.key))
            .collect();
        if idle.len() > batch {
            idle.select_nth_unstable(batch - 1);
            idle.truncate(batch);
        }
        for (_, key) in &idle {
            if let Some(pair) = self.pairs.remove(key) {
                self.evicted.add(&pair.counters);
            }
        }
        self.stats.evicted_for_room += idle.len() as u64;
        idle.len()
    }

    /// Drops pairs idle for the configured time with no live connection; their totals move to
    /// the evicted bucket.
    pub fn evict_idle(&mut self, now: Instant) -> usize {
        let idle_timeout = self.config.idle_timeout;
        let before = self.pairs.len();
        let evicted = &mut self.evicted;
        self.pairs.retain(|_, pair| {
            let keep = pair.counters.active > 0 || now.saturating_duration_since(pair.last_active) < idle_timeout;
            if !keep {
                evicted.add(&pair.counters);
            }
            keep
        });
        let dropped = before - self.pairs.len();
        self.stats.evicted_pairs += dropped as u64;
        self.stats.pairs = self.pairs.len();
        dropped
    }

    pub fn get(&self, key: &FlowKey) -> Option<&FlowPair> {
        self.pairs.get(key)
    }

    /// Pairs in no particular order, without sorting or allocating (per-poll bookkeeping).
    pub fn iter(&self) -> impl Iterator<Item = &FlowPair> {
        self.pairs.values()
    }

    /// Pairs in key order.
    pub fn pairs(&self) -> Vec<&FlowPair> {
        let mut pairs: Vec<&FlowPair> = self.pairs.values().collect();
        pairs.sort_by_key(|p| p.key);
        pairs
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Deltas that found no room, here or in the kernel's pair map.
    pub fn overflow(&self) -> &FlowCounters {
        &self.overflow
    }

    /// Totals of pairs evicted as idle.
    pub fn evicted(&self) -> &FlowCounters {
        &self.evicted
    }

    /// Everything ever applied.
    pub fn totals(&self) -> &FlowCounters {
        &self.totals
    }

    pub fn stats(&self) -> FlowTableStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::flows::{Phase, Role};

    fn key(remote_last: u8, port: u16, role: Role) -> FlowKey {
        FlowKey {
            local: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            remote: IpAddr::V4(Ipv4Addr::new(10, 0, 0, remote_last)),
            service_port: port,
            role,
        }
    }

    fn delta(bytes_sent: u64) -> FlowCounters {
        FlowCounters {
            bytes_sent,
            segs_sent: 1,
            conn_established: 1,
            ..Default::default()
        }
    }

    fn pd(key: FlowKey, counters: FlowCounters, owner: &Owner) -> PairDelta {
        PairDelta {
            key,
            counters,
            owner: owner.clone(),
        }
    }

    fn sum_of(table: &FlowTable) -> FlowCounters {
        let mut sum = FlowCounters::default();
        for pair in table.pairs() {
            sum.add(&pair.counters);
        }
        sum.add(table.overflow());
        sum.add(table.evicted());
        sum
    }

    #[test]
    fn deltas_accumulate_per_pair() {
        let t0 = Instant::now();
        let mut table = FlowTable::new(FlowTableConfig::default());
        let k = key(2, 443, Role::Client);
        let none = Owner::default();
        table.apply_poll([&pd(k, delta(100), &none)], &FlowCounters::default(), t0);
        table.apply_poll(
            [&pd(k, delta(50), &none)],
            &FlowCounters::default(),
            t0 + Duration::from_secs(1),
        );
        let pair = table.get(&k).expect("pair present");
        assert_eq!(pair.counters.bytes_sent, 150);
        assert_eq!(pair.counters.conn_established, 2);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn client_and_server_ends_are_distinct_pairs() {
        let t0 = Instant::now();
        let mut table = FlowTable::new(FlowTableConfig::default());
        let none = Owner::default();
        let d = delta(1);
        table.apply_poll(
            [
                &pd(key(2, 80, Role::Client), d.clone(), &none),
                &pd(key(2, 80, Role::Server), d, &none),
            ],
            &FlowCounters::default(),
            t0,
        );
        assert_eq!(table.len(), 2);
    }

    /// A table evicting pairs idle for `idle_secs`, holding at most `max_pairs`.
    fn table_of(idle_secs: u64, max_pairs: usize) -> FlowTable {
        FlowTable::new(FlowTableConfig {
            idle_timeout: Duration::from_secs(idle_secs),
            max_pairs,
        })
    }

    #[test]
    fn totals_stay_exact_through_overflow_and_eviction() {
        let t0 = Instant::now();
        let mut table = table_of(10, 3);
        let none = Owner::default();
        let kernel_overflow = FlowCounters {
            bytes_received: 7,
            retrans: [0, 2, 0],
            ..Default::default()
        };
        let deltas: Vec<(FlowKey, FlowCounters)> = (1..=5)
            .map(|i| (key(i, 80, Role::Server), delta(u64::from(i) * 10)))
            .collect();
        let deltas: Vec<PairDelta> = deltas.into_iter().map(|(k, d)| pd(k, d, &none)).collect();
        table.apply_poll(&deltas, &kernel_overflow, t0);
        assert_eq!(table.len(), 3);
        assert_eq!(table.stats().overflowed_deltas, 2);
        assert_eq!(table.overflow().bytes_sent, 40 + 50);
        assert_eq!(table.overflow().bytes_received, 7);

        let later = t0 + Duration::from_secs(11);
        table.apply_poll(
            [&pd(key(1, 80, Role::Server), delta(1), &none)],
            &FlowCounters::default(),
            later,
        );
        assert_eq!(table.evict_idle(later), 2);
        assert_eq!(table.len(), 1);
        assert_eq!(table.evicted().bytes_sent, 20 + 30);

        assert_eq!(&sum_of(&table), table.totals());
        assert_eq!(table.totals().bytes_sent, 10 + 20 + 30 + 40 + 50 + 1);
        assert_eq!(table.totals().retransmits(Phase::Established), 2);
    }

    #[test]
    fn a_full_table_evicts_the_longest_idle_pairs_first_then_overflows() {
        let t0 = Instant::now();
        let mut table = table_of(300, 16);
        let none = Owner::default();
        let live = FlowCounters { active: 1, ..delta(1) };
        // 15 idle pairs, the older the lower the number, and one with a live connection
        for i in 1..=15u8 {
            let at = t0 + Duration::from_secs(u64::from(i));
            table.apply_poll(
                [&pd(key(i, 80, Role::Server), delta(10), &none)],
                &FlowCounters::default(),
                at,
            );
        }
        let busy = key(100, 80, Role::Server);
        let t1 = t0 + Duration::from_secs(20);
        let walk = |table: &mut FlowTable, extra: Vec<PairDelta>, at| {
            let mut deltas = vec![pd(busy, live.clone(), &none)];
            deltas.extend(extra);
            table.apply_poll(&deltas, &FlowCounters::default(), at);
        };
        walk(&mut table, vec![], t1);
        assert_eq!(table.len(), 16, "full");

        // a new pair makes room: one batch (16/16 = 1) of the longest idle, pair 1
        let t2 = t1 + Duration::from_secs(1);
        walk(&mut table, vec![pd(key(200, 80, Role::Server), delta(5), &none)], t2);
        assert!(table.get(&key(1, 80, Role::Server)).is_none(), "the longest idle went");
        assert!(table.get(&key(2, 80, Role::Server)).is_some());
        assert!(
            table.get(&key(200, 80, Role::Server)).is_some(),
            "the new pair has its own row"
        );
        assert_eq!(table.stats().evicted_for_room, 1);
        assert_eq!(table.stats().overflowed_deltas, 0);

        // 20 new pairs in one poll: the 15 idle ones (2..=15 and 200) make room, the busy one and
        // this poll's new ones stay, the rest overflow
        let t3 = t2 + Duration::from_secs(1);
        let storm: Vec<PairDelta> = (0..20u8)
            .map(|i| pd(key(i, 443, Role::Client), delta(3), &none))
            .collect();
        walk(&mut table, storm, t3);
        assert_eq!(table.len(), 16, "never beyond the budget");
        assert!(
            table.get(&busy).is_some(),
            "a pair with a live connection is never evicted for room"
        );
        assert_eq!(table.stats().evicted_for_room, 1 + 15);
        assert_eq!(table.stats().overflowed_deltas, 20 - 15);
        assert_eq!(&sum_of(&table), table.totals(), "nothing lost");
    }

    #[test]
    fn live_connections_keep_an_idle_pair() {
        let t0 = Instant::now();
        let mut table = table_of(10, 10);
        let none = Owner::default();
        let k = key(9, 5432, Role::Client);
        let gauge_only = FlowCounters {
            active: 1,
            ..Default::default()
        };
        table.apply_poll([&pd(k, delta(1), &none)], &FlowCounters::default(), t0);
        table.apply_poll(
            [&pd(k, gauge_only, &none)],
            &FlowCounters::default(),
            t0 + Duration::from_secs(20),
        );
        assert_eq!(table.evict_idle(t0 + Duration::from_secs(40)), 0);
        assert_eq!(table.get(&k).map(|p| p.counters.active), Some(1));
        // the walk stops seeing it: the gauge drops to zero, and the pair ages out
        table.apply_poll(
            std::iter::empty(),
            &FlowCounters::default(),
            t0 + Duration::from_secs(41),
        );
        assert_eq!(table.get(&k).map(|p| p.counters.active), Some(0));
        assert_eq!(table.evict_idle(t0 + Duration::from_secs(60)), 1);
    }

    #[test]
    fn polls_between_walks_keep_the_gauges_and_add_the_counts() {
        let t0 = Instant::now();
        let mut table = FlowTable::new(FlowTableConfig::default());
        let none = Owner::default();
        let (long, short) = (key(9, 5432, Role::Client), key(8, 80, Role::Client));
        let walked = FlowCounters { active: 3, ..delta(10) };
        table.apply_poll([&pd(long, walked, &none)], &FlowCounters::default(), t0);
        // a poll without a walk: a short connection closed, the long-lived pair was not visited
        table.apply_poll_between_walks([&pd(short, delta(5), &none)], &FlowCounters::default(), t0);
        assert_eq!(table.get(&long).map(|p| p.counters.active), Some(3), "gauge kept");
        assert_eq!(table.get(&short).map(|p| p.counters.active), Some(0));
        assert_eq!(table.totals().bytes_sent, 15);
        // the next walk sets every gauge again
        table.apply_poll(std::iter::empty(), &FlowCounters::default(), t0);
        assert_eq!(table.get(&long).map(|p| p.counters.active), Some(0));
    }

    #[test]
    fn owner_keeps_what_later_deltas_do_not_know() {
        let t0 = Instant::now();
        let mut table = FlowTable::new(FlowTableConfig::default());
        let k = FlowKey {
            local: IpAddr::V6(Ipv6Addr::LOCALHOST),
            remote: IpAddr::V6(Ipv6Addr::LOCALHOST),
            service_port: 8080,
            role: Role::Client,
        };
        let curl = Owner {
            pid: Some(42),
            comm: Some("curl".into()),
            cgroup_id: Some(1),
        };
        let cgroup_only = Owner {
            pid: None,
            comm: None,
            cgroup_id: Some(7),
        };
        table.apply_poll([&pd(k, delta(1), &curl)], &FlowCounters::default(), t0);
        table.apply_poll([&pd(k, delta(1), &cgroup_only)], &FlowCounters::default(), t0);
        let owner = &table.get(&k).expect("pair").owner;
        assert_eq!(owner.pid, Some(42));
        assert_eq!(owner.comm.as_deref(), Some("curl"));
        assert_eq!(owner.cgroup_id, Some(7));
    }
}
