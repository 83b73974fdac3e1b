//! Generated skeleton types into domain types. Nothing generated leaves this module.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::skel::types;
use crate::flows::{FlowCounters, FlowKey, Log2Histogram, Owner, Role};

// SAFETY: plain-old-data structs generated from BTF: integers and arrays only, any bit pattern
// is valid.
unsafe impl plain::Plain for types::flowtel_pair_key {}
// SAFETY: as above.
unsafe impl plain::Plain for types::flowtel_pair_stats {}
// SAFETY: as above.
unsafe impl plain::Plain for types::flowtel_dns_event {}

/// One pair-map key: the pair, and what NAT reversal needs of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RawPairKey {
    pub flow: FlowKey,
    /// Non-zero only for a connection that predates the agent to a possible DNAT destination:
    /// user space looks it up in conntrack.
    pub client_port: u16,
    /// The address the client connected to, when the kernel saw DNAT send it to `flow.remote`.
    pub original: Option<SocketAddr>,
}

fn address(family: u8, bytes: &[u8; 16]) -> Option<IpAddr> {
    match family {
        4 => {
            let v4: [u8; 4] = bytes[..4].try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(v4)))
        }
        6 => Some(IpAddr::V6(Ipv6Addr::from(*bytes))),
        _ => None,
    }
}

/// One ring-buffer record: the event's fixed part, then `captured_len` bytes of payload.
pub(super) fn dns_event(record: &[u8]) -> Option<super::dns_capture::DnsCapture> {
    use super::dns_capture::{DnsCapture, DnsTransport, EVENT_BYTES};
    if record.len() > EVENT_BYTES {
        return None;
    }
    // the record is the event cut after its payload: copied over a zeroed event, once
    let mut raw = Box::<types::flowtel_dns_event>::default();
    // SAFETY: a Plain type (above): any bytes written into it make a valid value
    let bytes = unsafe { plain::as_mut_bytes(&mut *raw) };
    bytes[..record.len()].copy_from_slice(record);
    let header = EVENT_BYTES - raw.payload.len();
    let captured = usize::from(raw.captured_len);
    if record.len() < header + captured {
        return None;
    }
    let family = if raw.ipv6 != 0 { 6 } else { 4 };
    let transport = match raw.transport {
        6 => DnsTransport::Tcp,
        17 => DnsTransport::Udp,
        _ => return None,
    };
    Some(DnsCapture {
        cgroup_id: raw.cgroup_id,
        server: address(family, &raw.server)?,
        client: SocketAddr::new(address(family, &raw.client)?, raw.client_port),
        transport,
        tcp_seq: raw.tcp_seq,
        wire_len: raw.wire_len,
        payload: raw.payload[..captured].to_vec(),
    })
}

pub(super) fn pair_key(bytes: &[u8]) -> Option<RawPairKey> {
    let mut raw = types::flowtel_pair_key::default();
    plain::copy_from_bytes(&mut raw, bytes).ok()?;
    let local = address(raw.family, &raw.local_addr)?;
    let remote = address(raw.family, &raw.remote_addr)?;
    let role = match u32::from(raw.role) {
        r if r == types::flowtel_role::FLOWTEL_ROLE_CLIENT.0 => Role::Client,
        r if r == types::flowtel_role::FLOWTEL_ROLE_SERVER.0 => Role::Server,
        _ => return None,
    };
    let original = match raw.original_port {
        0 => None,
        port => Some(SocketAddr::new(address(raw.family, &raw.original_addr)?, port)),
    };
    Some(RawPairKey {
        flow: FlowKey {
            local,
            remote,
            service_port: raw.service_port,
            role,
        },
        client_port: raw.client_port,
        original,
    })
}

fn histogram(count: u64, sum_us: u64, buckets: &[u32]) -> Log2Histogram {
    let mut h = Log2Histogram {
        count,
        sum_us,
        ..Default::default()
    };
    for (dst, src) in h.buckets.iter_mut().zip(buckets) {
        *dst = u64::from(*src);
    }
    h
}

/// Sums one entry's per-CPU values. The owner is taken from whichever CPU recorded one.
pub(super) fn pair_stats_per_cpu<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> (FlowCounters, Owner) {
    let mut counters = FlowCounters::default();
    let mut owner = Owner::default();
    for bytes in values {
        let mut raw = types::flowtel_pair_stats::default();
        if plain::copy_from_bytes(&mut raw, bytes).is_err() {
            continue;
        }
        let one = FlowCounters {
            bytes_sent: raw.bytes_sent,
            bytes_received: raw.bytes_received,
            segs_sent: raw.segs_sent,
            segs_received: raw.segs_received,
            retrans: raw.retrans,
            rto: raw.rto,
            conn_established: raw.conn_established,
            conn_closed: raw.conn_closed,
            conn_reset: raw.conn_reset,
            conn_failed: raw.conn_failed,
            connect_duration: histogram(raw.connect_count, raw.connect_sum_us, &raw.connect_hist),
            rtt: histogram(raw.rtt_count, raw.rtt_sum_us, &raw.rtt_hist),
            rtt_receiver: histogram(raw.rcv_rtt_count, raw.rcv_rtt_sum_us, &raw.rcv_rtt_hist),
            active: 0,
        };
        counters.add(&one);
        counters.active += raw.active;
        if raw.pid != 0 {
            owner.pid = Some(raw.pid);
            let comm: Vec<u8> = raw.comm.iter().map(|c| *c as u8).take_while(|c| *c != 0).collect();
            owner.comm = Some(String::from_utf8_lossy(&comm).into_owned());
        }
        if raw.cgroup_id != 0 {
            owner.cgroup_id = Some(raw.cgroup_id);
        }
    }
    (counters, owner)
}

pub(super) fn counter_per_cpu<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    values
        .into_iter()
        .filter_map(|b| b.get(..8).and_then(|b| b.try_into().ok()))
        .map(u64::from_ne_bytes)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_bytes(raw: &types::flowtel_pair_key) -> Vec<u8> {
        // SAFETY: reading a Plain struct as bytes.
        unsafe { plain::as_bytes(raw) }.to_vec()
    }

    #[test]
    fn ipv4_client_key() {
        let mut raw = types::flowtel_pair_key {
            family: 4,
            role: 1,
            service_port: 443,
            ..Default::default()
        };
        raw.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        raw.remote_addr[..4].copy_from_slice(&[10, 1, 2, 3]);
        let key = pair_key(&key_bytes(&raw)).expect("valid key");
        assert_eq!(key.flow.local, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(key.flow.remote, IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)));
        assert_eq!(key.flow.service_port, 443);
        assert_eq!(key.flow.role, Role::Client);
        assert_eq!(key.original, None);
    }

    #[test]
    fn a_dnat_key_names_the_backend_and_keeps_the_original() {
        let mut raw = types::flowtel_pair_key {
            family: 6,
            role: 1,
            service_port: 8080,
            original_port: 80,
            ..Default::default()
        };
        raw.local_addr = "fd00::1".parse::<Ipv6Addr>().expect("address").octets();
        raw.remote_addr = "fd00::2".parse::<Ipv6Addr>().expect("address").octets();
        raw.original_addr = "fd00:96::a".parse::<Ipv6Addr>().expect("address").octets();
        let key = pair_key(&key_bytes(&raw)).expect("valid key");
        assert_eq!(key.flow.remote, "fd00::2".parse::<IpAddr>().expect("address"));
        assert_eq!(key.flow.service_port, 8080);
        assert_eq!(key.original, Some("[fd00:96::a]:80".parse().expect("address")));
        assert_eq!(key.client_port, 0);
    }

    #[test]
    fn ipv6_server_key_and_bad_family() {
        let mut raw = types::flowtel_pair_key {
            family: 6,
            role: 2,
            service_port: 80,
            ..Default::default()
        };
        raw.local_addr = Ipv6Addr::LOCALHOST.octets();
        raw.remote_addr = Ipv6Addr::LOCALHOST.octets();
        let key = pair_key(&key_bytes(&raw)).expect("valid key");
        assert_eq!(key.flow.local, IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(key.flow.role, Role::Server);
        raw.family = 9;
        assert_eq!(pair_key(&key_bytes(&raw)), None);
    }

    #[test]
    fn per_cpu_values_sum() {
        let a = types::flowtel_pair_stats {
            bytes_sent: 5,
            active: 1,
            rtt_count: 1,
            rtt_sum_us: 40,
            ..Default::default()
        };
        let mut b = types::flowtel_pair_stats {
            bytes_sent: 7,
            active: 2,
            pid: 99,
            cgroup_id: 3,
            ..Default::default()
        };
        b.comm[..4].copy_from_slice(&[b'c' as i8, b'u' as i8, b'r' as i8, b'l' as i8]);
        b.rtt_hist[6] = 1;
        // SAFETY: reading Plain structs as bytes.
        let (ab, bb) = unsafe { (plain::as_bytes(&a).to_vec(), plain::as_bytes(&b).to_vec()) };
        let (counters, owner) = pair_stats_per_cpu([ab.as_slice(), bb.as_slice()]);
        assert_eq!(counters.bytes_sent, 12);
        assert_eq!(counters.active, 3);
        assert_eq!(counters.rtt.count, 1);
        assert_eq!(counters.rtt.buckets[6], 1);
        assert_eq!(owner.pid, Some(99));
        assert_eq!(owner.comm.as_deref(), Some("curl"));
        assert_eq!(owner.cgroup_id, Some(3));
    }
}
