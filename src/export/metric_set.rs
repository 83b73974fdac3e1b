//! One export as typed series: the single model that OTLP, the file output and `/metrics` render.
//!
//! [`build`] walks an [`ExportFrame`], the latest health findings and the agent's own figures
//! once and returns every metric family (name, unit, kind, description) with its points
//! (attributes, start time, value or histogram). Renderers translate names and encode values;
//! they never decide which families, points or attributes exist, so every output carries the same
//! families. Pure: time and figures come in.
//!
//! Each flow series' attributes are built once and shared by its points ([`Point::attributes`]
//! indexes [`MetricSet::attributes`]); a point adds only what tells it apart from its siblings
//! (direction, phase, outcome).
use std::borrow::Cow;
use std::time::SystemTime;

use super::redact::PeerAddresses;
use super::{ExportFrame, ExportStats, Series, SeriesId};
use crate::enrich::PairContext;
use crate::flows::{ConnectFailure, FlowCounters, Log2Histogram, Phase};
use crate::health::{GroupHealth, GroupId, Status};
use crate::names::{self, unit};
use crate::poller::AgentStats;

/// How sums and histograms report over time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Temporality {
    /// Running totals since each series' start (the default; what Prometheus expects).
    #[default]
    Cumulative,
    /// What happened since the previous export.
    Delta,
}

/// An attribute value, typed as OTLP carries it.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue<'a> {
    Str(Cow<'a, str>),
    Int(i64),
    Bool(bool),
}

impl AttrValue<'_> {
    /// The value as text (Prometheus labels are strings).
    pub fn text(&self) -> Cow<'_, str> {
        match self {
            AttrValue::Str(s) => Cow::Borrowed(s),
            AttrValue::Int(i) => Cow::Owned(i.to_string()),
            AttrValue::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
        }
    }
}

impl<'a> From<&'a str> for AttrValue<'a> {
    fn from(s: &'a str) -> Self {
        AttrValue::Str(Cow::Borrowed(s))
    }
}

impl From<String> for AttrValue<'_> {
    fn from(s: String) -> Self {
        AttrValue::Str(Cow::Owned(s))
    }
}

pub type Attributes<'a> = Vec<(&'static str, AttrValue<'a>)>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A monotonic sum.
    Counter,
    Gauge,
    /// Seconds, in flowtel's log2 buckets.
    Histogram,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Int(u64),
    Double(f64),
    Histogram(&'a Log2Histogram),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Point<'a> {
    /// Index into [`MetricSet::attributes`]: the series' own attributes.
    pub attributes: usize,
    /// What tells this point apart from the other points of its series.
    pub extra: Attributes<'a>,
    /// Start of a cumulative or delta window; `None` for gauges.
    pub start: Option<SystemTime>,
    pub value: Value<'a>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Family<'a> {
    pub name: &'static str,
    pub unit: &'static str,
    pub description: &'static str,
    pub kind: Kind,
    /// Counters and histograms only; gauges ignore it.
    pub temporality: Temporality,
    pub points: Vec<Point<'a>>,
}

/// Every family of one export, none of them empty.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSet<'a> {
    pub time: SystemTime,
    pub attributes: Vec<Attributes<'a>>,
    pub families: Vec<Family<'a>>,
}

impl MetricSet<'_> {
    pub fn family(&self, name: &str) -> Option<&Family<'_>> {
        self.families.iter().find(|f| f.name == name)
    }
}

/// The agent's own figures, exported with every request. Cumulative since `started`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AgentMetrics {
    pub started: Option<SystemTime>,
    pub flow_pairs: u64,
    /// Most entries the kernel pair map held in one poll since the last export.
    pub pair_map_entries: u64,
    pub pair_map_capacity: u64,
    /// Events that lost detail or data, by reason.
    pub dropped: Vec<(&'static str, u64)>,
    /// DNATed connections keyed by their real peer, by path; empty when NAT reversal is off.
    pub nat_reversals: Vec<(&'static str, u64)>,
    /// Address records learned and addresses cached; `None` when the DNS capture is off.
    pub dns: Option<(u64, u64)>,
    pub export_failures: u64,
    pub cpu_user_seconds: f64,
    pub cpu_system_seconds: f64,
    pub rss_bytes: u64,
}

impl AgentMetrics {
    /// The figures of the poller, the outputs and the process, in one place.
    pub fn collect(
        stats: &AgentStats,
        export: &ExportStats,
        process: &crate::agent::process_stats::ProcessStats,
        started: SystemTime,
    ) -> Self {
        let c = &stats.counters;
        let dns = stats.dns.unwrap_or_default();
        Self {
            started: Some(started),
            flow_pairs: stats.table.pairs as u64,
            pair_map_entries: stats.pair_map_peak_entries as u64,
            pair_map_capacity: u64::from(stats.pair_map_capacity),
            dropped: vec![
                ("pair_map_full", c.pair_map_full),
                ("sock_storage_failed", c.sock_storage_failed),
                ("listener_map_full", c.listener_map_full),
                ("flow_table_full", stats.table.overflowed_deltas),
                ("flow_table_evicted_for_room", stats.table.evicted_for_room),
                ("undecodable_pair", c.undecodable_pairs),
                ("nat_unresolved", stats.nat.unresolved + stats.nat.failed),
                ("nat_unstored", c.nat_unstored),
                ("close_fold_skipped", c.close_fold_skipped),
                ("no_tcp_sock", c.no_tcp_sock),
                ("dns_ring_full", c.dns_ring_full),
                ("dns_unreadable", c.dns_capture_failed + c.dns_undecodable),
                ("dns_malformed", dns.malformed),
                ("dns_too_long", dns.too_long),
                ("dns_cache_full", dns.cache_full),
                ("export_superseded", export.otlp_superseded),
                ("export_undelivered", export.otlp_dropped),
            ],
            nat_reversals: if stats.nat.enabled {
                vec![("kernel", c.nat_reversed), ("conntrack", stats.nat.translated)]
            } else {
                Vec::new()
            },
            dns: stats.dns.map(|d| (d.answers, d.cache_entries)),
            export_failures: export.otlp_failures,
            cpu_user_seconds: process.cpu_user_seconds,
            cpu_system_seconds: process.cpu_system_seconds,
            rss_bytes: process.rss_bytes,
        }
    }
}

/// The resource attributes of a pair: its category, then each end's placement where known.
pub fn context_attributes(context: &PairContext) -> Vec<(&'static str, &str)> {
    let mut attrs = vec![(names::FLOW_CATEGORY, context.category.as_str())];
    for (end, placement) in [("local", &context.local), ("peer", &context.peer)] {
        for (field, value) in placement.known() {
            let key = match (end, field) {
                ("local", "subnet") => names::LOCAL_SUBNET,
                ("local", "vpc") => names::LOCAL_VPC,
                ("local", "zone") => names::LOCAL_ZONE,
                ("local", _) => names::LOCAL_REGION,
                (_, "subnet") => names::PEER_SUBNET,
                (_, "vpc") => names::PEER_VPC,
                (_, "zone") => names::PEER_ZONE,
                _ => names::PEER_REGION,
            };
            attrs.push((key, &**value));
        }
    }
    if let Some(service) = &context.peer_service {
        attrs.push((names::PEER_SERVICE, &**service));
    }
    attrs
}

fn borrowed<'a>(attrs: Vec<(&'static str, &'a str)>) -> impl Iterator<Item = (&'static str, AttrValue<'a>)> {
    attrs.into_iter().map(|(k, v)| (k, AttrValue::from(v)))
}

fn series_attributes<'a>(series: &'a Series, peer_addresses: &PeerAddresses) -> Attributes<'a> {
    let mut attrs: Attributes<'a> = vec![(names::NETWORK_TRANSPORT, "tcp".into())];
    match &series.id {
        SeriesId::Pair(key, context) => {
            let network_type = if key.local.is_ipv4() { "ipv4" } else { "ipv6" };
            attrs.extend([
                (names::NETWORK_TYPE, network_type.into()),
                (names::LOCAL_ADDRESS, key.local.to_string().into()),
                (names::PEER_ADDRESS, peer_addresses.show(key.remote).into()),
                (names::SERVER_PORT, AttrValue::Int(i64::from(key.service_port))),
                (names::HANDSHAKE_ROLE, key.role.as_str().into()),
            ]);
            if let Some(process) = &series.process {
                attrs.push((names::PROCESS_NAME, process.as_str().into()));
            }
            attrs.extend(borrowed(context_attributes(context)));
            if let Some(original) = series.original {
                attrs.push((names::PEER_ORIGINAL_ADDRESS, peer_addresses.show(original.ip()).into()));
                attrs.push((names::PEER_ORIGINAL_PORT, AttrValue::Int(i64::from(original.port()))));
            }
            if let Some(name) = &series.dns_name {
                attrs.push((names::PEER_DNS_NAME, peer_addresses.show_name(name).into()));
            }
            if let Some(k8s) = &series.kubernetes {
                attrs.extend(borrowed(k8s.attributes()));
            }
        }
        SeriesId::Overflow => attrs.push((names::OVERFLOW, AttrValue::Bool(true))),
        SeriesId::Monitor(name) => attrs.push((names::MONITOR, (&**name).into())),
        SeriesId::Workload(workload) => {
            attrs.push((names::SERVER_PORT, AttrValue::Int(i64::from(workload.service_port))));
            attrs.push((names::HANDSHAKE_ROLE, workload.role.as_str().into()));
            attrs.extend(borrowed(workload.attributes()));
        }
    }
    attrs
}

/// The health attributes of one group: scope, identity (with a peer's placement: category,
/// subnets, zones...), reason ("none" when not degraded) and attribution.
fn health_attributes(h: &GroupHealth, peer_addresses: &PeerAddresses) -> Attributes<'static> {
    let mut attrs: Attributes<'static> = vec![(names::HEALTH_SCOPE, h.group.scope().into())];
    match &h.group {
        GroupId::Peer { address, port } => {
            attrs.push((names::PEER_ADDRESS, peer_addresses.show(*address).into()));
            attrs.push((names::SERVER_PORT, AttrValue::Int(i64::from(*port))));
        }
        GroupId::Monitor(name) => attrs.push((names::MONITOR, name.to_string().into())),
        GroupId::Host => {}
    }
    if let Some(context) = &h.context {
        attrs.extend(
            context_attributes(context)
                .into_iter()
                .map(|(k, v)| (k, AttrValue::from(v.to_string()))),
        );
    }
    let reasons: Vec<&str> = h.reasons.iter().map(|r| r.as_str()).collect();
    let reason = if reasons.is_empty() {
        "none".to_string()
    } else {
        reasons.join(",")
    };
    attrs.push((names::HEALTH_REASON, reason.into()));
    attrs.push((names::HEALTH_ATTRIBUTION, h.attribution.as_str().into()));
    attrs
}

/// Builds families point by point.
struct Builder<'a> {
    set: MetricSet<'a>,
}

impl<'a> Builder<'a> {
    fn family(&mut self, name: &'static str, unit: &'static str, kind: Kind, description: &'static str) -> usize {
        self.family_with(name, unit, kind, Temporality::Cumulative, description)
    }

    fn family_with(
        &mut self,
        name: &'static str,
        unit: &'static str,
        kind: Kind,
        temporality: Temporality,
        description: &'static str,
    ) -> usize {
        self.set.families.push(Family {
            name,
            unit,
            description,
            kind,
            temporality,
            points: Vec::new(),
        });
        self.set.families.len() - 1
    }

    fn attributes(&mut self, attrs: Attributes<'a>) -> usize {
        self.set.attributes.push(attrs);
        self.set.attributes.len() - 1
    }

    fn point(
        &mut self,
        family: usize,
        attributes: usize,
        extra: Attributes<'a>,
        start: Option<SystemTime>,
        value: Value<'a>,
    ) {
        self.set.families[family].points.push(Point {
            attributes,
            extra,
            start,
            value,
        });
    }
}

/// What a frame's flow series report, by family.
struct FlowFamilies {
    bytes: usize,
    segments: usize,
    retransmits: usize,
    timeouts: usize,
    rtt: usize,
    rtt_receiver: usize,
    connect: usize,
    connections: usize,
    active: usize,
}

impl FlowFamilies {
    fn new(b: &mut Builder<'_>, temporality: Temporality) -> Self {
        let mut family = |name, unit, kind, description| b.family_with(name, unit, kind, temporality, description);
        Self {
            bytes: family(
                names::BYTES,
                unit::BYTES,
                Kind::Counter,
                "Application bytes: acknowledged by the peer (transmit), received in order (receive)",
            ),
            segments: family(
                names::SEGMENTS,
                unit::SEGMENT,
                Kind::Counter,
                "Segments carrying data, retransmissions included",
            ),
            retransmits: family(
                names::RETRANSMITS,
                unit::SEGMENT,
                Kind::Counter,
                "Retransmitted segments, by connection phase",
            ),
            timeouts: family(
                names::TIMEOUTS,
                unit::TIMEOUT,
                Kind::Counter,
                "Retransmission timer expiries, by connection phase",
            ),
            rtt: family(
                names::RTT,
                unit::SECONDS,
                Kind::Histogram,
                "Smoothed round-trip time: one sample at each close and one per live connection per poll",
            ),
            rtt_receiver: family(
                names::RTT_RECEIVER,
                unit::SECONDS,
                Kind::Histogram,
                "Receiver-side RTT estimate (tcpi_rcv_rtt), sampled where flowtel.tcp.rtt is: the path data comes in over",
            ),
            connect: family(
                names::CONNECT_DURATION,
                unit::SECONDS,
                Kind::Histogram,
                "Client side: from connect() to established",
            ),
            connections: family(
                names::CONNECTIONS,
                unit::CONNECTION,
                Kind::Counter,
                "Connections by outcome",
            ),
            active: family(
                names::CONNECTIONS_ACTIVE,
                unit::CONNECTION,
                Kind::Gauge,
                "Established connections alive at the last poll",
            ),
        }
    }

    /// The points of one series. Counters with a zero value for a phase or an outcome are left
    /// out; every series always reports bytes, segments and its active gauge.
    fn add<'a>(&self, b: &mut Builder<'a>, series: usize, start: SystemTime, v: &'a FlowCounters, active: u64) {
        let start = Some(start);
        let direction = |d: &'static str| vec![(names::IO_DIRECTION, AttrValue::from(d))];
        let int = Value::Int;
        b.point(self.bytes, series, direction("transmit"), start, int(v.bytes_sent));
        b.point(self.bytes, series, direction("receive"), start, int(v.bytes_received));
        b.point(self.segments, series, direction("transmit"), start, int(v.segs_sent));
        b.point(self.segments, series, direction("receive"), start, int(v.segs_received));
        for phase in Phase::ALL {
            let attr = || vec![(names::PHASE, AttrValue::from(phase.as_str()))];
            if v.retransmits(phase) > 0 {
                b.point(self.retransmits, series, attr(), start, int(v.retransmits(phase)));
            }
            if v.timeouts(phase) > 0 {
                b.point(self.timeouts, series, attr(), start, int(v.timeouts(phase)));
            }
        }
        let outcome = |o: &'static str| (names::OUTCOME, AttrValue::from(o));
        for (name, n) in [
            ("established", v.conn_established),
            ("closed", v.conn_closed),
            ("reset", v.conn_reset),
        ] {
            if n > 0 {
                b.point(self.connections, series, vec![outcome(name)], start, int(n));
            }
        }
        for why in ConnectFailure::ALL {
            if v.failed(why) > 0 {
                let extra = vec![outcome("failed"), (names::ERROR_TYPE, why.as_str().into())];
                b.point(self.connections, series, extra, start, int(v.failed(why)));
            }
        }
        b.point(self.active, series, Vec::new(), None, int(active));
        for (family, h) in [
            (self.rtt, &v.rtt),
            (self.rtt_receiver, &v.rtt_receiver),
            (self.connect, &v.connect_duration),
        ] {
            if h.buckets.iter().any(|n| *n > 0) {
                b.point(family, series, Vec::new(), start, Value::Histogram(h));
            }
        }
    }
}

/// One export's metric set. Flow series report in `temporality`; the agent's own counters are
/// always cumulative; health groups without enough data (status unknown) are left out.
pub fn build<'a>(
    frame: &'a ExportFrame,
    health: &[GroupHealth],
    agent: &AgentMetrics,
    temporality: Temporality,
    peer_addresses: &PeerAddresses,
) -> MetricSet<'a> {
    let mut b = Builder {
        set: MetricSet {
            time: frame.time,
            attributes: vec![Vec::new()],
            families: Vec::new(),
        },
    };
    let flows = FlowFamilies::new(&mut b, temporality);
    for s in &frame.series {
        let (start, values) = match temporality {
            Temporality::Cumulative => (s.start, &s.values),
            Temporality::Delta => (frame.previous_time, &s.delta),
        };
        let attributes = b.attributes(series_attributes(s, peer_addresses));
        flows.add(&mut b, attributes, start, values, s.values.active);
    }
    agent_families(&mut b, agent);
    health_families(&mut b, health, peer_addresses);
    let mut set = b.set;
    set.families.retain(|f| !f.points.is_empty());
    set
}

/// Agent metrics are always cumulative: they describe the agent, not an interval of flows.
fn agent_families(b: &mut Builder<'_>, agent: &AgentMetrics) {
    const NONE: usize = 0;
    let one = |value| vec![(Vec::new(), value)];
    let by = |key: &'static str, values: Vec<(&'static str, Value<'static>)>| {
        values
            .into_iter()
            .map(|(v, value)| (vec![(key, AttrValue::from(v))], value))
            .collect::<Vec<_>>()
    };
    let families = [
        (
            names::AGENT_FLOW_PAIRS,
            unit::PAIR,
            Kind::Gauge,
            "Flow pairs held in memory",
            one(Value::Int(agent.flow_pairs)),
        ),
        (
            names::AGENT_PAIR_MAP_ENTRIES,
            unit::ENTRY,
            Kind::Gauge,
            "Most kernel pair-map entries used in one poll",
            one(Value::Int(agent.pair_map_entries)),
        ),
        (
            names::AGENT_PAIR_MAP_CAPACITY,
            unit::ENTRY,
            Kind::Gauge,
            "Kernel pair-map capacity per poll",
            one(Value::Int(agent.pair_map_capacity)),
        ),
        (
            names::AGENT_DROPPED,
            unit::EVENT,
            Kind::Counter,
            "Events that lost detail or data, by reason",
            by(
                names::DROP_REASON,
                agent
                    .dropped
                    .iter()
                    .map(|(reason, n)| (*reason, Value::Int(*n)))
                    .collect(),
            ),
        ),
        (
            names::AGENT_NAT_REVERSALS,
            unit::CONNECTION,
            Kind::Counter,
            "DNATed connections keyed by their real peer, by path",
            by(
                names::NAT_PATH,
                agent
                    .nat_reversals
                    .iter()
                    .map(|(path, n)| (*path, Value::Int(*n)))
                    .collect(),
            ),
        ),
        (
            names::AGENT_DNS_ANSWERS,
            unit::RECORD,
            Kind::Counter,
            "Address records learned from DNS answers",
            agent
                .dns
                .map(|(answers, _)| one(Value::Int(answers)))
                .unwrap_or_default(),
        ),
        (
            names::AGENT_DNS_CACHE_ENTRIES,
            unit::ENTRY,
            Kind::Gauge,
            "Addresses the DNS name cache holds",
            agent
                .dns
                .map(|(_, entries)| one(Value::Int(entries)))
                .unwrap_or_default(),
        ),
        (
            names::AGENT_EXPORT_FAILURES,
            unit::EXPORT,
            Kind::Counter,
            "OTLP export attempts that failed",
            one(Value::Int(agent.export_failures)),
        ),
        (
            names::PROCESS_CPU_TIME,
            unit::SECONDS,
            Kind::Counter,
            "CPU time of the agent",
            by(
                names::CPU_MODE,
                vec![
                    ("user", Value::Double(agent.cpu_user_seconds)),
                    ("system", Value::Double(agent.cpu_system_seconds)),
                ],
            ),
        ),
        (
            names::PROCESS_MEMORY_USAGE,
            unit::BYTES,
            Kind::Gauge,
            "Resident memory of the agent",
            one(Value::Int(agent.rss_bytes)),
        ),
    ];
    for (name, unit, kind, description, points) in families {
        let family = b.family(name, unit, kind, description);
        let start = agent.started.filter(|_| kind == Kind::Counter);
        for (extra, value) in points {
            b.point(family, NONE, extra, start, value);
        }
    }
}

fn health_families(b: &mut Builder<'_>, health: &[GroupHealth], peer_addresses: &PeerAddresses) {
    let status = b.family(
        names::HEALTH_STATUS,
        unit::STATUS,
        Kind::Gauge,
        "0 = healthy, 1 = degraded; groups without enough data are left out",
    );
    let rtt = b.family(
        names::HEALTH_RTT_RATIO,
        unit::RATIO,
        Kind::Gauge,
        "RTT p50 over its baseline",
    );
    let retransmit = b.family(
        names::HEALTH_RETRANSMIT_RATIO,
        unit::RATIO,
        Kind::Gauge,
        "Retransmitted over data segments sent in the last evaluation interval",
    );
    for h in health.iter().filter(|h| h.status != Status::Unknown) {
        let group = b.attributes(health_attributes(h, peer_addresses));
        let degraded = if h.status == Status::Degraded { 1.0 } else { 0.0 };
        b.point(status, group, Vec::new(), None, Value::Double(degraded));
        if let Some(r) = h.rtt_ratio {
            b.point(rtt, group, Vec::new(), None, Value::Double(r));
        }
        if let Some(r) = h.retransmit_ratio {
            b.point(retransmit, group, Vec::new(), None, Value::Double(r));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::testing::{self, series};

    fn plain(frame: &ExportFrame, temporality: Temporality) -> MetricSet<'_> {
        build(frame, &[], &AgentMetrics::default(), temporality, &PeerAddresses::Plain)
    }

    fn attrs<'s>(set: &'s MetricSet<'_>, p: &'s Point<'_>) -> Vec<(&'static str, Cow<'s, str>)> {
        set.attributes[p.attributes]
            .iter()
            .chain(&p.extra)
            .map(|(k, v)| (*k, v.text()))
            .collect()
    }

    #[test]
    fn families_points_and_attributes_of_a_pair_and_the_overflow() {
        let frame = testing::frame();
        let set = plain(&frame, Temporality::Cumulative);
        let bytes = set.family(names::BYTES).expect("bytes");
        assert_eq!((bytes.unit, bytes.kind), ("By", Kind::Counter));
        assert_eq!(bytes.points.len(), 4, "two directions for the pair and the overflow");
        let pair = attrs(&set, &bytes.points[0]);
        for expected in [
            (names::LOCAL_ADDRESS, "10.0.0.1"),
            (names::PEER_ADDRESS, "10.0.0.2"),
            (names::SERVER_PORT, "5432"),
            (names::HANDSHAKE_ROLE, "client"),
            (names::PROCESS_NAME, "psql"),
            (names::FLOW_CATEGORY, "inter_zone"),
            (names::PEER_ZONE, "zone-b"),
            (names::IO_DIRECTION, "transmit"),
        ] {
            assert!(
                pair.contains(&(expected.0, Cow::Borrowed(expected.1))),
                "{expected:?} in {pair:?}"
            );
        }
        assert_eq!(bytes.points[0].value, Value::Int(1200));
        let overflow = attrs(&set, &bytes.points[2]);
        assert!(
            overflow.contains(&(names::OVERFLOW, Cow::Borrowed("true"))),
            "{overflow:?}"
        );
        assert!(!overflow.iter().any(|(k, _)| *k == names::PEER_ADDRESS));
        let retransmits = set.family(names::RETRANSMITS).expect("retransmits");
        assert_eq!(retransmits.points.len(), 1, "zero phases are left out");
        assert_eq!(
            set.family(names::RTT).map(|f| f.points.len()),
            Some(1),
            "the overflow has no RTT"
        );
        assert!(set.family(names::TIMEOUTS).is_none(), "an empty family is left out");
    }

    #[test]
    fn delta_reports_the_interval_from_the_previous_export() {
        let mut frame = testing::frame();
        frame.series[0].delta.bytes_sent = 7;
        let set = plain(&frame, Temporality::Delta);
        let bytes = set.family(names::BYTES).expect("bytes");
        assert_eq!(bytes.temporality, Temporality::Delta);
        assert_eq!(bytes.points[0].value, Value::Int(7));
        assert_eq!(bytes.points[0].start, Some(frame.previous_time));
        let active = set.family(names::CONNECTIONS_ACTIVE).expect("active");
        assert_eq!(
            (active.points[0].start, &active.points[0].value),
            (None, &Value::Int(1))
        );
    }

    #[test]
    fn agent_families_stay_cumulative_under_delta() {
        let frame = ExportFrame {
            series: vec![series::overflow(FlowCounters::default())],
            ..testing::frame()
        };
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(5);
        let agent = AgentMetrics {
            started: Some(t0),
            dropped: vec![("pair_map_full", 3)],
            cpu_user_seconds: 1.5,
            ..Default::default()
        };
        let set = build(&frame, &[], &agent, Temporality::Delta, &PeerAddresses::Plain);
        let dropped = set.family(names::AGENT_DROPPED).expect("dropped");
        assert_eq!(dropped.temporality, Temporality::Cumulative);
        assert_eq!(
            (dropped.points[0].start, &dropped.points[0].value),
            (Some(t0), &Value::Int(3))
        );
        let cpu = set.family(names::PROCESS_CPU_TIME).expect("cpu");
        assert_eq!(cpu.points[0].value, Value::Double(1.5));
    }
}
