//! Address -> the names it was resolved from: the newest per cgroup that resolved it, each with
//! when and until when.
//!
//! Bounded twice: at most `max_entries` addresses, and [`CGROUPS_PER_ADDRESS`] resolutions each.
//! A full cache first forgets what has expired, then the addresses closest to expiry, a batch at
//! a time; each address or resolution forgotten before it expired is counted.
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Cgroups whose resolution of one address is kept: the owner's own name must survive other
/// workloads resolving the same address, but not without bound.
pub const CGROUPS_PER_ADDRESS: usize = 8;
pub const DEFAULT_MIN_TTL_SECS: u64 = 60;
pub const DEFAULT_MAX_TTL_SECS: u64 = 3600;
pub const DEFAULT_MAX_ENTRIES: usize = 16_384;
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
            min_ttl: Duration::from_secs(DEFAULT_MIN_TTL_SECS),
            max_ttl: Duration::from_secs(DEFAULT_MAX_TTL_SECS),
            max_entries: DEFAULT_MAX_ENTRIES,
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
    /// Oldest resolution first; one per cgroup.
    by_address: HashMap<IpAddr, Vec<Resolution>>,
    /// Addresses forgotten before their names expired, to make room, and resolutions pushed out
    /// by more than [`CGROUPS_PER_ADDRESS`] cgroups resolving one address.
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
        // a cgroup's newest resolution replaces its earlier one, and is now the most recent
        let name: Arc<str> = match names.iter().position(|r| r.cgroup_id == cgroup_id) {
            Some(i) => Some(names.remove(i).name)
                .filter(|n| &**n == name)
                .unwrap_or_else(|| Arc::from(name)),
            None => Arc::from(name),
        };
        names.push(Resolution {
            name,
            cgroup_id,
            resolved: now,
            // a far-off expiry is as good as none
            expires: now
                .checked_add(ttl)
                .unwrap_or(now + Duration::from_secs(DEFAULT_MAX_TTL_SECS)),
        });
        if names.len() > CGROUPS_PER_ADDRESS {
            names.remove(0);
            self.evicted += 1;
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
    fn a_cgroup_keeps_its_newest_name_only() {
        let t0 = Instant::now();
        let mut c = cache(8);
        let a = ip("10.0.0.3");
        c.insert(a, "a.test", 1, Duration::from_secs(60), t0);
        c.insert(a, "b.test", 1, Duration::from_secs(60), t0 + Duration::from_secs(1));
        assert_eq!(c.by_address[&a].len(), 1);
        assert_eq!(
            c.name(a, Some(1), t0 + Duration::from_secs(2)).map(|n| &**n),
            Some("b.test")
        );
        assert_eq!(c.evicted, 0);
    }

    #[test]
    fn a_huge_ttl_does_not_overflow() {
        let t0 = Instant::now();
        let mut c = NameCache::new(DnsCacheConfig {
            min_ttl: Duration::from_secs(u64::MAX / 2),
            max_ttl: Duration::from_secs(u64::MAX / 2),
            max_entries: 4,
        });
        c.insert(ip("10.0.0.4"), "far.test", 1, Duration::from_secs(1), t0);
        assert!(c.name(ip("10.0.0.4"), None, t0).is_some());
    }

    #[test]
    fn cgroups_per_address_and_addresses_are_bounded_and_early_evictions_counted() {
        let t0 = Instant::now();
        let mut c = cache(32);
        let a = ip("10.0.0.1");
        for i in 0..10 {
            c.insert(
                a,
                &format!("n{i}.test"),
                i,
                Duration::from_secs(60),
                t0 + Duration::from_millis(i),
            );
        }
        assert_eq!(c.by_address[&a].len(), CGROUPS_PER_ADDRESS);
        assert_eq!(c.evicted, 2, "two cgroups' resolutions pushed out");
        c.evicted = 0;
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
