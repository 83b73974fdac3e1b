//! Peers' DNS names: the answers the kernel captured ([`crate::sampler::dns_capture`]) are
//! parsed ([`answers`]), TCP streams put back together ([`tcp`]), and each address remembers the
//! names it was resolved from ([`cache`]).
//!
//! Which name a pair gets: its peer's (for a NAT-reversed pair, the address the client
//! connected to), as most recently resolved by the pair owner's cgroup, else by anyone. A pair
//! takes its name when it is first seen; one first seen without a name (a connection older than
//! the agent, say) takes one at the next answer for its address. A named pair keeps its name
//! while it lives: its series change identity at most once, from unnamed to named.
pub mod answers;
pub mod cache;
pub mod tcp;

use std::collections::HashSet;
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
    /// Addresses answered since the last [`DnsNames::take_answered`]: the pairs without a name
    /// that may now get one. Bounded by what one poll interval's ring buffer holds.
    answered: HashSet<IpAddr>,
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
                        self.streams.abandon(key, now);
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
                for a in found {
                    self.answered.insert(a.address);
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

    /// The addresses answered since the last call.
    pub fn take_answered(&mut self) -> HashSet<IpAddr> {
        std::mem::take(&mut self.answered)
    }

    pub fn stats(&self) -> DnsStats {
        DnsStats {
            malformed: self.stats.malformed + self.streams.abandoned,
            ..self.stats
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Message, MessageType, Query};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    fn response(name: &str, address: [u8; 4]) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.message_type = MessageType::Response;
        let name = Name::from_ascii(name).expect("name");
        m.add_query(Query::query(name.clone(), RecordType::A));
        m.add_answer(Record::from_rdata(
            name,
            300,
            RData::A(A(std::net::Ipv4Addr::from(address))),
        ));
        m.to_vec().expect("encode")
    }

    fn capture(transport: DnsTransport, seq: u32, payload: Vec<u8>, wire_len: usize) -> DnsCapture {
        DnsCapture {
            cgroup_id: 7,
            server: "10.0.0.53".parse().expect("ip"),
            client: "10.0.0.1:40000".parse().expect("addr"),
            transport,
            tcp_seq: seq,
            wire_len: wire_len as u32,
            payload,
        }
    }

    #[test]
    fn udp_and_tcp_answers_are_learned_and_bad_ones_counted() {
        let now = Instant::now();
        let mut dns = DnsNames::new(DnsCacheConfig::default());
        let udp = response("udp.test.", [10, 0, 0, 1]);
        let mut tcp = (response("tcp.test.", [10, 0, 0, 2]).len() as u16)
            .to_be_bytes()
            .to_vec();
        tcp.extend(response("tcp.test.", [10, 0, 0, 2]));
        let (head, tail) = tcp.split_at(7);
        dns.ingest(
            vec![
                capture(DnsTransport::Udp, 0, udp.clone(), udp.len()),
                capture(DnsTransport::Tcp, 100, head.to_vec(), head.len()),
                capture(DnsTransport::Tcp, 107, tail.to_vec(), tail.len()),
                capture(DnsTransport::Udp, 0, vec![0xff; 5], 5),
                capture(DnsTransport::Udp, 0, udp[..10].to_vec(), 5000),
            ],
            now,
        );
        let stats = dns.stats();
        assert_eq!((stats.responses, stats.answers), (2, 2));
        assert_eq!((stats.malformed, stats.too_long), (1, 1));
        assert_eq!(stats.cache_entries, 2);
        assert_eq!(
            dns.name("10.0.0.2".parse().expect("ip"), Some(7), now).as_deref(),
            Some("tcp.test")
        );
        let answered = dns.take_answered();
        assert_eq!(answered.len(), 2);
        assert!(dns.take_answered().is_empty(), "taken once");
    }

    #[test]
    fn pairs_are_named_once_by_the_address_asked_for_and_keep_their_name() {
        use crate::flows::{FlowCounters, FlowTable, FlowTableConfig};
        let now = Instant::now();
        let enricher = crate::enrich::Enricher::default();
        let mut table = FlowTable::new(FlowTableConfig::default());
        let one = FlowCounters {
            bytes_sent: 1,
            ..Default::default()
        };
        let mut dns = DnsNames::new(DnsCacheConfig::default());
        let answer = |name: &str, address: [u8; 4]| {
            let payload = response(name, address);
            let len = payload.len();
            capture(DnsTransport::Udp, 0, payload, len)
        };
        // an address resolved before its pair appears; a NAT-reversed pair whose backend has a
        // name of its own, but whose client asked for the service address
        dns.ingest(
            vec![
                answer("api.test.", [10, 0, 2, 1]),
                answer("svc.test.", [10, 96, 0, 10]),
                answer("backend.test.", [10, 0, 2, 3]),
            ],
            now,
        );
        let deltas = [
            crate::testing::delta([10, 0, 2, 1], 443, one.clone()),
            crate::testing::delta([10, 0, 2, 2], 443, one.clone()),
            crate::testing::delta([10, 0, 2, 3], 8080, one.clone()),
        ];
        table.apply_poll(&deltas, &FlowCounters::default(), now);
        let reversed = crate::testing::key([10, 0, 2, 3], 8080);
        table.note_originals(&[(reversed, "10.96.0.10:80".parse().expect("address"))]);
        let mut annotations = crate::testing::annotate(&table, &enricher);
        annotations.name_peers(&table, &mut dns, now);
        let name = |a: &crate::enrich::Annotations, peer: [u8; 4], port: u16| {
            a.get(&crate::testing::key(peer, port))
                .and_then(|a| a.dns_name.as_deref().map(str::to_string))
        };
        assert_eq!(name(&annotations, [10, 0, 2, 1], 443).as_deref(), Some("api.test"));
        assert_eq!(name(&annotations, [10, 0, 2, 2], 443), None, "never resolved");
        assert_eq!(name(&annotations, [10, 0, 2, 3], 8080).as_deref(), Some("svc.test"));
        // later answers: the unnamed pair is named at its address's first answer, a named pair
        // keeps its name
        dns.ingest(
            vec![
                answer("late.test.", [10, 0, 2, 2]),
                answer("other.test.", [10, 0, 2, 1]),
            ],
            now,
        );
        annotations.name_peers(&table, &mut dns, now);
        assert_eq!(name(&annotations, [10, 0, 2, 2], 443).as_deref(), Some("late.test"));
        assert_eq!(name(&annotations, [10, 0, 2, 1], 443).as_deref(), Some("api.test"));
    }
}
