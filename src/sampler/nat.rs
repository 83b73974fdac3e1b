//! NAT reversal, user space's part. The kernel reverses every connection whose SYN it sees: its
//! entries arrive keyed by the real peer, with the address the client asked for beside it, and
//! are only merged here. A connection that predates the agent (no SYN seen) to a destination
//! that may be DNATed (a Kubernetes ClusterIP, a configured CIDR) arrives as its own entry, with
//! its client port; this module asks conntrack where it really went and keys it by the real
//! peer, collapsing the client port again.
//!
//! One conntrack lookup per such connection, remembered while the connection lives (a
//! long-lived connection is reported again at every walk). Conntrack keeps an entry for 10 s
//! (reset) to 120 s (TIME_WAIT) after the close, and polls come every second, so a connection is
//! still there when its entry arrives.
use std::collections::HashMap;
use std::net::SocketAddr;

use super::conntrack::{Conntrack, Translation};
use crate::flows::{FlowCounters, FlowKey, Owner, PairDelta};

/// Connections remembered at most; beyond it, lookups are not cached (counted).
const CACHE_CAPACITY: usize = 65_536;
/// A connection not reported for this many polls is forgotten.
const FORGET_AFTER_POLLS: u64 = 300;

/// One entry from the kernel that NAT reversal touched: either reversed already (`original` is
/// the address it connected to, `key` names the real peer), or a connection to look up (its key
/// names the address it connected to, `client_port` is its own port).
#[derive(Debug, Clone)]
pub struct Pending {
    pub key: FlowKey,
    pub client_port: u16,
    pub original: Option<SocketAddr>,
    pub counters: FlowCounters,
    pub owner: Owner,
}

/// What reversal did, cumulative.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct NatStats {
    /// NAT reversal is on.
    pub enabled: bool,
    /// Conntrack lookups (connections that predate the agent).
    pub lookups: u64,
    /// Connections found DNATed and keyed by their real peer.
    pub translated: u64,
    /// Connections conntrack did not know (never tracked, or expired): kept under the address
    /// they connected to.
    pub unresolved: u64,
    /// Lookups that failed (permission, netlink errors): kept as they were.
    pub failed: u64,
    pub cache_full: u64,
}

/// The resolved pairs of one poll, and the original destination of each translated pair.
#[derive(Debug, Default)]
pub struct Resolved {
    pub pairs: Vec<PairDelta>,
    pub originals: Vec<(FlowKey, SocketAddr)>,
}

struct Cached {
    translation: Translation,
    seen: u64,
}

pub struct NatResolver {
    conntrack: Option<Conntrack>,
    cache: HashMap<(FlowKey, u16), Cached>,
    poll: u64,
    warned: bool,
    pub stats: NatStats,
}

impl Default for NatResolver {
    fn default() -> Self {
        Self::new()
    }
}

impl NatResolver {
    pub fn new() -> Self {
        Self {
            conntrack: None,
            cache: HashMap::new(),
            poll: 0,
            warned: false,
            stats: NatStats {
                enabled: true,
                ..NatStats::default()
            },
        }
    }

    /// Keys each pending connection by its real peer and merges those that share a pair.
    pub fn resolve(&mut self, pending: Vec<Pending>) -> Resolved {
        self.poll += 1;
        let mut merged: HashMap<FlowKey, PairDelta> = HashMap::new();
        let mut originals: HashMap<FlowKey, SocketAddr> = HashMap::new();
        for p in pending {
            if let Some(original) = p.original {
                originals.insert(p.key, original);
            }
            let translation = if p.client_port == 0 {
                Translation::None
            } else {
                self.translation(&p.key, p.client_port)
            };
            let key = match translation {
                Translation::To(real) => {
                    let key = FlowKey {
                        remote: real.ip(),
                        service_port: real.port(),
                        ..p.key
                    };
                    originals.insert(key, SocketAddr::new(p.key.remote, p.key.service_port));
                    key
                }
                Translation::None | Translation::Unknown => p.key,
            };
            match merged.get_mut(&key) {
                Some(into) => {
                    let active = into.counters.active + p.counters.active;
                    into.counters.add(&p.counters);
                    into.counters.active = active;
                    into.owner.update(&p.owner);
                }
                None => {
                    merged.insert(
                        key,
                        PairDelta {
                            key,
                            counters: p.counters,
                            owner: p.owner,
                        },
                    );
                }
            }
        }
        if self.poll.is_multiple_of(64) {
            let poll = self.poll;
            self.cache.retain(|_, c| poll - c.seen < FORGET_AFTER_POLLS);
        }
        Resolved {
            pairs: merged.into_values().collect(),
            originals: originals.into_iter().collect(),
        }
    }

    fn translation(&mut self, key: &FlowKey, client_port: u16) -> Translation {
        if let Some(cached) = self.cache.get_mut(&(*key, client_port)) {
            cached.seen = self.poll;
            return cached.translation;
        }
        self.stats.lookups += 1;
        let from = SocketAddr::new(key.local, client_port);
        let to = SocketAddr::new(key.remote, key.service_port);
        let looked_up = match self.conntrack() {
            Some(conntrack) => conntrack.translation(from, to),
            None => Err(std::io::Error::other("conntrack unavailable")),
        };
        let translation = match looked_up {
            Ok(t) => t,
            Err(e) => {
                self.stats.failed += 1;
                if !self.warned {
                    self.warned = true;
                    tracing::warn!(error = %e, "conntrack lookup failed: DNATed flows stay under the address they connected to (CAP_NET_ADMIN is needed)");
                }
                // a failure is not remembered: the next report tries again
                return Translation::Unknown;
            }
        };
        match translation {
            Translation::To(_) => self.stats.translated += 1,
            Translation::Unknown => self.stats.unresolved += 1,
            Translation::None => {}
        }
        if self.cache.len() < CACHE_CAPACITY {
            self.cache.insert(
                (*key, client_port),
                Cached {
                    translation,
                    seen: self.poll,
                },
            );
        } else {
            self.stats.cache_full += 1;
        }
        translation
    }

    fn conntrack(&mut self) -> Option<&mut Conntrack> {
        if self.conntrack.is_none() {
            match Conntrack::open() {
                Ok(c) => self.conntrack = Some(c),
                Err(e) => {
                    if !self.warned {
                        self.warned = true;
                        tracing::warn!(error = %e, "cannot open a conntrack netlink socket: DNATed flows stay under the address they connected to");
                    }
                    return None;
                }
            }
        }
        self.conntrack.as_mut()
    }
}
