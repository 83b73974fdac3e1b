//! Peers' DNS names: the answers the kernel captured ([`crate::sampler::dns_capture`]) are
//! parsed ([`answers`]), TCP streams put back together ([`tcp`]), and each address remembers the
//! names it was resolved from ([`cache`]).
//!
//! Which name a pair gets: its peer's (for a NAT-reversed pair, the address the client
//! connected to), as most recently resolved by the pair owner's cgroup, else by anyone. A pair
//! takes its name when it is first seen, or later when its address is first resolved, and keeps
//! it while it lives, so that its series never change identity.
pub mod answers;
pub mod cache;
pub mod tcp;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::sampler::dns_capture::{DnsCapture, DnsTransport};
pub use cache::{DnsCacheConfig, NameCache};
use tcp::{StreamKey, TcpStreams};

/// Expired names are swept at most this often (lookups skip them meanwhile).
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// What the DNS capture did, cumulative, for the agent's metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DnsStats {
    /// Responses parsed.
    pub responses: u64,
    /// Address records learned (after following CNAME chains).
    pub answers: u64,
    /// Payloads that were not a DNS response, or did not parse.
    pub malformed: u64,
    /// Payloads longer than the kernel hands up, not parsed.
    pub too_long: u64,
    /// Addresses forgotten before their names expired, to make room.
    pub cache_full: u64,
    /// Addresses the cache holds now.
    pub cache_entries: u64,
}

#[derive(Debug, Default)]
pub struct DnsNames {
    cache: NameCache,
    streams: TcpStreams,
    stats: DnsStats,
    /// Moves whenever an answer is learned: pairs still without a name look again.
    generation: u64,
    last_sweep: Option<Instant>,
}

impl DnsNames {
    pub fn new(config: DnsCacheConfig) -> Self {
        Self {
            cache: NameCache::new(config),
            ..Default::default()
        }
    }

    /// Learns what one poll's captures answered.
    pub fn ingest(&mut self, captures: Vec<DnsCapture>, now: Instant) {
        if self.last_sweep.is_none_or(|t| now.duration_since(t) >= SWEEP_EVERY) {
            self.cache.expire(now);
            self.last_sweep = Some(now);
        }
        for capture in captures {
            match capture.transport {
                DnsTransport::Udp => {
                    if capture.cut_short() {
                        self.stats.too_long += 1;
                    } else {
                        self.learn(&capture.payload, capture.cgroup_id, now);
                    }
                }
                DnsTransport::Tcp => {
                    let key = StreamKey {
                        cgroup_id: capture.cgroup_id,
                        server: capture.server,
                        client: capture.client,
                    };
                    if capture.cut_short() {
                        self.streams.abandon(&key);
                        self.stats.too_long += 1;
                        continue;
                    }
                    for message in self.streams.segment(key, capture.tcp_seq, &capture.payload, now) {
                        self.learn(&message, capture.cgroup_id, now);
                    }
                }
            }
        }
        self.stats.cache_full = self.cache.evicted;
        self.stats.cache_entries = self.cache.len() as u64;
    }

    fn learn(&mut self, message: &[u8], cgroup_id: u64, now: Instant) {
        match answers::answers(message) {
            Ok(found) => {
                self.stats.responses += 1;
                self.stats.answers += found.len() as u64;
                if !found.is_empty() {
                    self.generation += 1;
                }
                for a in found {
                    let ttl = Duration::from_secs(u64::from(a.ttl_secs));
                    self.cache.insert(a.address, &a.name, cgroup_id, ttl, now);
                }
            }
            Err(e) => {
                self.stats.malformed += 1;
                tracing::debug!(error = %e, "DNS payload not used");
            }
        }
    }

    /// The name for a connection to `address` owned by `cgroup_id`.
    pub fn name(&self, address: IpAddr, cgroup_id: Option<u64>, now: Instant) -> Option<Arc<str>> {
        self.cache.name(address, cgroup_id, now).cloned()
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn stats(&self) -> DnsStats {
        DnsStats {
            malformed: self.stats.malformed + self.streams.abandoned,
            ..self.stats
        }
    }
}
