//! Address -> the names it was resolved from, each with who resolved it and until when.
//!
//! Bounded twice: at most `max_entries` addresses, and [`NAMES_PER_ADDRESS`] names each. A full
//! cache first forgets what has expired, then the addresses closest to expiry, a batch at a
//! time; each address forgotten early is counted.
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Names kept per address: CDNs and shared hosting put many names on one address, and only the
/// most recent few can matter to a new connection.
pub const NAMES_PER_ADDRESS: usize = 4;
/// A full cache makes room for this fraction of its capacity at a time.
const ROOM_BATCH_DIVISOR: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsCacheConfig {
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    pub max_entries: usize,
}

impl Default for DnsCacheConfig {
    fn default() -> Self {
        Self {
            min_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(3600),
            max_entries: 16_384,
        }
    }
}

#[derive(Debug, Clone)]
struct Resolution {
    name: Arc<str>,
    /// The cgroup of the socket that received the answer.
    cgroup_id: u64,
    resolved: Instant,
    expires: Instant,
}

#[derive(Debug, Default)]
pub struct NameCache {
    config: DnsCacheConfig,
    /// Oldest resolution first.
    by_address: HashMap<IpAddr, Vec<Resolution>>,
    /// Addresses forgotten before their names expired, to make room.
    pub evicted: u64,
}

impl NameCache {
    pub fn new(config: DnsCacheConfig) -> Self {
        Self {
            config,
            by_address: HashMap::new(),
            evicted: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.by_address.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_address.is_empty()
    }

    /// Records that `cgroup_id` resolved `name` to `address`, valid for `ttl` within the floor
    /// and ceiling.
    pub fn insert(&mut self, address: IpAddr, name: &str, cgroup_id: u64, ttl: Duration, now: Instant) {
        let ttl = ttl.clamp(self.config.min_ttl, self.config.max_ttl.max(self.config.min_ttl));
        if !self.by_address.contains_key(&address) && self.by_address.len() >= self.config.max_entries {
            self.make_room(now);
        }
        let names = self.by_address.entry(address).or_default();
        // the same name from the same cgroup again: renewed, and now the most recent
        let name: Arc<str> = match names.iter().position(|r| &*r.name == name && r.cgroup_id == cgroup_id) {
            Some(i) => names.remove(i).name,
            None => Arc::from(name),
        };
        names.push(Resolution {
            name,
            cgroup_id,
            resolved: now,
            expires: now + ttl,
        });
        if names.len() > NAMES_PER_ADDRESS {
            names.remove(0);
        }
    }

    /// The name for a connection to `address` owned by `cgroup_id`: the one most recently
    /// resolved by that cgroup, else the one most recently resolved by anyone. Expired names
    /// are never given.
    pub fn name(&self, address: IpAddr, cgroup_id: Option<u64>, now: Instant) -> Option<&Arc<str>> {
        let live = self.by_address.get(&address)?.iter().filter(|r| r.expires > now);
        let mut newest: Option<&Resolution> = None;
        let mut newest_own: Option<&Resolution> = None;
        for r in live {
            if newest.is_none_or(|n| r.resolved >= n.resolved) {
                newest = Some(r);
            }
            if Some(r.cgroup_id) == cgroup_id && newest_own.is_none_or(|n| r.resolved >= n.resolved) {
                newest_own = Some(r);
            }
        }
        newest_own.or(newest).map(|r| &r.name)
    }

    /// Forgets every expired name, and addresses left with none.
    pub fn expire(&mut self, now: Instant) {
        self.by_address.retain(|_, names| {
            names.retain(|r| r.expires > now);
            !names.is_empty()
        });
    }

    fn make_room(&mut self, now: Instant) {
        self.expire(now);
        let max = self.config.max_entries;
        if self.by_address.len() < max {
            return;
        }
        let target = max - (max / ROOM_BATCH_DIVISOR).max(1);
        let mut by_expiry: Vec<(Instant, IpAddr)> = self
            .by_address
            .iter()
            .map(|(a, names)| (names.iter().map(|r| r.expires).max().unwrap_or(now), *a))
            .collect();
        by_expiry.sort_unstable();
        let excess = self.by_address.len().saturating_sub(target);
        for (_, address) in by_expiry.into_iter().take(excess) {
            self.by_address.remove(&address);
            self.evicted += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn cache(max_entries: usize) -> NameCache {
        NameCache::new(DnsCacheConfig {
            min_ttl: Duration::from_secs(10),
            max_ttl: Duration::from_secs(100),
            max_entries,
        })
    }

    #[test]
    fn ttls_are_held_between_the_floor_and_the_ceiling() {
        let t0 = Instant::now();
        let mut c = cache(8);
        c.insert(ip("10.0.0.1"), "short.test", 1, Duration::from_secs(1), t0);
        c.insert(ip("10.0.0.2"), "long.test", 1, Duration::from_secs(86_400), t0);
        let at = |s| t0 + Duration::from_secs(s);
        assert_eq!(c.name(ip("10.0.0.1"), None, at(9)).map(|n| &**n), Some("short.test"));
        assert_eq!(c.name(ip("10.0.0.1"), None, at(10)), None);
        assert_eq!(c.name(ip("10.0.0.2"), None, at(99)).map(|n| &**n), Some("long.test"));
        assert_eq!(c.name(ip("10.0.0.2"), None, at(100)), None);
        c.expire(at(50));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn the_owners_own_resolution_wins_then_the_most_recent() {
        let t0 = Instant::now();
        let mut c = cache(8);
        let a = ip("10.0.0.9");
        c.insert(a, "mine.test", 7, Duration::from_secs(60), t0);
        c.insert(
            a,
            "theirs.test",
            8,
            Duration::from_secs(60),
            t0 + Duration::from_secs(1),
        );
        let now = t0 + Duration::from_secs(2);
        assert_eq!(c.name(a, Some(7), now).map(|n| &**n), Some("mine.test"));
        assert_eq!(c.name(a, Some(99), now).map(|n| &**n), Some("theirs.test"));
        assert_eq!(c.name(a, None, now).map(|n| &**n), Some("theirs.test"));
        // resolving again makes it the most recent
        c.insert(a, "mine.test", 7, Duration::from_secs(60), t0 + Duration::from_secs(3));
        assert_eq!(
            c.name(a, None, now + Duration::from_secs(2)).map(|n| &**n),
            Some("mine.test")
        );
    }

    #[test]
    fn names_per_address_and_addresses_are_bounded_and_early_evictions_counted() {
        let t0 = Instant::now();
        let mut c = cache(32);
        let a = ip("10.0.0.1");
        for i in 0..10 {
            c.insert(
                a,
                &format!("n{i}.test"),
                1,
                Duration::from_secs(60),
                t0 + Duration::from_millis(i),
            );
        }
        assert_eq!(c.by_address[&a].len(), NAMES_PER_ADDRESS);
        for i in 0..100u32 {
            let address = IpAddr::from(std::net::Ipv4Addr::from(0x0a01_0000 + i));
            c.insert(address, "x.test", 1, Duration::from_secs(10 + u64::from(i)), t0);
        }
        assert!(c.len() <= 32, "{} addresses", c.len());
        assert!(c.evicted >= 69, "{} evicted", c.evicted);
        // the ones closest to expiry went first: the last inserted (longest TTL) is still there
        let last = IpAddr::from(std::net::Ipv4Addr::from(0x0a01_0000 + 99));
        assert!(c.name(last, None, t0).is_some());
    }
}
