//! Export frames as OTLP `ExportMetricsServiceRequest`s. Metric names, units and attribute keys
//! are a contract with dashboards: they live in [`names`] and nowhere else.
//!
//! Each per-pair value is exactly what the sampler counted; the overflow series carries
//! `flowtel.flow.overflow=true` and no addresses. Counters with a zero value for a phase or an
//! outcome are left out; every series always reports bytes, segments and its active gauge.
use crate::export::redact::PeerAddresses;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::exponential_histogram_data_point::Buckets;
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge,
    Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

use crate::enrich::PairContext;
use crate::export::{ExportFrame, Series, SeriesId};
use crate::flows::{ConnectFailure, FlowCounters, Log2Histogram, Phase};
use crate::health::{GroupHealth, GroupId, Status};

/// Metric names and attribute keys (OpenTelemetry semantic conventions where one exists).
pub mod names {
    pub const BYTES: &str = "flowtel.tcp.bytes";
    pub const SEGMENTS: &str = "flowtel.tcp.segments";
    pub const RETRANSMITS: &str = "flowtel.tcp.retransmits";
    pub const TIMEOUTS: &str = "flowtel.tcp.timeouts";
    pub const RTT: &str = "flowtel.tcp.rtt";
    pub const CONNECT_DURATION: &str = "flowtel.tcp.connect.duration";
    pub const CONNECTIONS: &str = "flowtel.tcp.connections";
    pub const CONNECTIONS_ACTIVE: &str = "flowtel.tcp.connections.active";

    pub const NETWORK_TRANSPORT: &str = "network.transport";
    pub const NETWORK_TYPE: &str = "network.type";
    pub const LOCAL_ADDRESS: &str = "network.local.address";
    pub const PEER_ADDRESS: &str = "network.peer.address";
    pub const SERVER_PORT: &str = "server.port";
    pub const HANDSHAKE_ROLE: &str = "network.tcp.handshake.role";
    pub const PROCESS_NAME: &str = "process.executable.name";
    pub const IO_DIRECTION: &str = "network.io.direction";
    pub const PHASE: &str = "flowtel.tcp.phase";
    pub const OUTCOME: &str = "flowtel.tcp.connection.outcome";
    pub const ERROR_TYPE: &str = "error.type";
    pub const OVERFLOW: &str = "flowtel.flow.overflow";
    pub const FLOW_CATEGORY: &str = "flowtel.flow.category";
    pub const LOCAL_SUBNET: &str = "flowtel.local.subnet";
    pub const LOCAL_VPC: &str = "flowtel.local.vpc";
    pub const LOCAL_ZONE: &str = "flowtel.local.zone";
    pub const LOCAL_REGION: &str = "flowtel.local.region";
    pub const PEER_SUBNET: &str = "flowtel.peer.subnet";
    pub const PEER_VPC: &str = "flowtel.peer.vpc";
    pub const PEER_ZONE: &str = "flowtel.peer.zone";
    pub const PEER_REGION: &str = "flowtel.peer.region";
    pub const PEER_SERVICE: &str = "flowtel.peer.service";
    pub const MONITOR: &str = "flowtel.monitor";
    pub const PEER_ORIGINAL_ADDRESS: &str = "flowtel.peer.original.address";
    pub const PEER_ORIGINAL_PORT: &str = "flowtel.peer.original.port";

    pub const AGENT_FLOW_PAIRS: &str = "flowtel.agent.flow_pairs";
    pub const AGENT_PAIR_MAP_ENTRIES: &str = "flowtel.agent.pair_map.entries";
    pub const AGENT_PAIR_MAP_CAPACITY: &str = "flowtel.agent.pair_map.capacity";
    pub const AGENT_DROPPED: &str = "flowtel.agent.dropped";
    pub const AGENT_EXPORT_FAILURES: &str = "flowtel.agent.export.failures";
    pub const PROCESS_CPU_TIME: &str = "process.cpu.time";
    pub const PROCESS_MEMORY_USAGE: &str = "process.memory.usage";
    pub const DROP_REASON: &str = "flowtel.drop.reason";

    pub const HEALTH_STATUS: &str = "flowtel.health.status";
    pub const HEALTH_RTT_RATIO: &str = "flowtel.health.rtt.ratio";
    pub const HEALTH_RETRANSMIT_RATIO: &str = "flowtel.health.retransmit.ratio";
    pub const HEALTH_SCOPE: &str = "flowtel.health.scope";
    pub const HEALTH_REASON: &str = "flowtel.health.reason";
    pub const HEALTH_ATTRIBUTION: &str = "flowtel.health.attribution";
    pub const CPU_MODE: &str = "cpu.mode";
}

/// The agent's own figures, exported with every request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AgentMetrics {
    /// When the agent started: the start of its cumulative counters.
    pub started: Option<SystemTime>,
    pub flow_pairs: u64,
    /// Most entries the kernel pair map held in one poll since the last export.
    pub pair_map_entries: u64,
    pub pair_map_capacity: u64,
    /// Events that lost detail or data, cumulative, by reason.
    pub dropped: Vec<(&'static str, u64)>,
    pub export_failures: u64,
    pub cpu_user_seconds: f64,
    pub cpu_system_seconds: f64,
    pub rss_bytes: u64,
}

/// How histograms are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HistogramFormat {
    /// Base-2 exponential histograms at scale 0: exact, compact (the default).
    #[default]
    Exponential,
    /// Explicit bounds, the same `le` values as flowtel's own /metrics (30.5 us .. 256 s): for
    /// pipelines that drop exponential histograms, such as the Collector's Prometheus exporter.
    Explicit,
}

/// How one request is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Encoding {
    pub temporality: Temporality,
    pub histograms: HistogramFormat,
}

impl From<Temporality> for Encoding {
    fn from(temporality: Temporality) -> Self {
        Self {
            temporality,
            histograms: HistogramFormat::default(),
        }
    }
}

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

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn kv_str(key: &str, value: impl Into<String>) -> KeyValue {
    kv(key, any_value::Value::StringValue(value.into()))
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

fn series_attributes(series: &Series, peer_addresses: &PeerAddresses) -> Vec<KeyValue> {
    let mut attrs = vec![kv_str(names::NETWORK_TRANSPORT, "tcp")];
    match &series.id {
        SeriesId::Pair(key, context) => {
            attrs.push(kv_str(
                names::NETWORK_TYPE,
                if key.local.is_ipv4() { "ipv4" } else { "ipv6" },
            ));
            attrs.push(kv_str(names::LOCAL_ADDRESS, key.local.to_string()));
            attrs.push(kv_str(names::PEER_ADDRESS, peer_addresses.show(key.remote)));
            attrs.push(kv(
                names::SERVER_PORT,
                any_value::Value::IntValue(i64::from(key.service_port)),
            ));
            attrs.push(kv_str(names::HANDSHAKE_ROLE, key.role.as_str()));
            if let Some(process) = &series.process {
                attrs.push(kv_str(names::PROCESS_NAME, process.clone()));
            }
            attrs.extend(context_attributes(context).into_iter().map(|(k, v)| kv_str(k, v)));
            if let Some(original) = series.original {
                attrs.push(kv_str(names::PEER_ORIGINAL_ADDRESS, peer_addresses.show(original.ip())));
                attrs.push(kv(
                    names::PEER_ORIGINAL_PORT,
                    any_value::Value::IntValue(i64::from(original.port())),
                ));
            }
            if let Some(k8s) = &series.kubernetes {
                attrs.extend(k8s.attributes().into_iter().map(|(k, v)| kv_str(k, v)));
            }
        }
        SeriesId::Overflow => attrs.push(kv(names::OVERFLOW, any_value::Value::BoolValue(true))),
        SeriesId::Monitor(name) => attrs.push(kv_str(names::MONITOR, &**name)),
        SeriesId::Workload(workload) => {
            attrs.push(kv(
                names::SERVER_PORT,
                any_value::Value::IntValue(i64::from(workload.service_port)),
            ));
            attrs.push(kv_str(names::HANDSHAKE_ROLE, workload.role.as_str()));
            attrs.extend(workload.attributes().into_iter().map(|(k, v)| kv_str(k, v)));
        }
    }
    attrs
}

/// The window and values one series reports in one export.
struct Point<'a> {
    attributes: Vec<KeyValue>,
    start: u64,
    time: u64,
    values: &'a FlowCounters,
    active: u64,
}

fn number(point: &Point<'_>, extra: &[KeyValue], value: u64) -> NumberDataPoint {
    let mut attributes = point.attributes.clone();
    attributes.extend_from_slice(extra);
    NumberDataPoint {
        attributes,
        start_time_unix_nano: point.start,
        time_unix_nano: point.time,
        value: Some(number_data_point::Value::AsInt(
            i64::try_from(value).unwrap_or(i64::MAX),
        )),
        ..Default::default()
    }
}

fn explicit_histogram(point: &Point<'_>, h: &Log2Histogram) -> Option<HistogramDataPoint> {
    let count: u64 = h.buckets.iter().sum();
    (count > 0).then(|| HistogramDataPoint {
        attributes: point.attributes.clone(),
        start_time_unix_nano: point.start,
        time_unix_nano: point.time,
        count,
        sum: Some(h.sum_us as f64 / 1e6),
        bucket_counts: h.explicit_counts(),
        explicit_bounds: Log2Histogram::explicit_bounds(),
        ..Default::default()
    })
}

fn histogram(point: &Point<'_>, h: &Log2Histogram) -> Option<ExponentialHistogramDataPoint> {
    let first = h.buckets.iter().position(|n| *n > 0)?;
    let last = h.buckets.iter().rposition(|n| *n > 0)?;
    let count: u64 = h.buckets.iter().sum();
    Some(ExponentialHistogramDataPoint {
        attributes: point.attributes.clone(),
        start_time_unix_nano: point.start,
        time_unix_nano: point.time,
        count,
        sum: Some(h.sum_us as f64 / 1e6),
        scale: 0,
        zero_count: 0,
        positive: Some(Buckets {
            offset: first as i32 + Log2Histogram::OTEL_INDEX_OFFSET,
            bucket_counts: h.buckets[first..=last].to_vec(),
        }),
        ..Default::default()
    })
}

fn sum_metric(name: &str, unit: &str, description: &str, temporality: i32, points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name: name.to_string(),
        description: description.to_string(),
        unit: unit.to_string(),
        data: Some(metric::Data::Sum(Sum {
            data_points: points,
            aggregation_temporality: temporality,
            is_monotonic: true,
        })),
        ..Default::default()
    }
}

/// The points of one histogram metric, in the chosen format.
enum HistogramPoints {
    Exponential(Vec<ExponentialHistogramDataPoint>),
    Explicit(Vec<HistogramDataPoint>),
}

impl HistogramPoints {
    fn new(format: HistogramFormat) -> Self {
        match format {
            HistogramFormat::Exponential => Self::Exponential(Vec::new()),
            HistogramFormat::Explicit => Self::Explicit(Vec::new()),
        }
    }

    fn push(&mut self, point: &Point<'_>, h: &Log2Histogram) {
        match self {
            Self::Exponential(v) => v.extend(histogram(point, h)),
            Self::Explicit(v) => v.extend(explicit_histogram(point, h)),
        }
    }
}

fn histogram_metric(name: &str, description: &str, temporality: i32, points: HistogramPoints) -> Metric {
    let data = match points {
        HistogramPoints::Exponential(data_points) => metric::Data::ExponentialHistogram(ExponentialHistogram {
            data_points,
            aggregation_temporality: temporality,
        }),
        HistogramPoints::Explicit(data_points) => metric::Data::Histogram(Histogram {
            data_points,
            aggregation_temporality: temporality,
        }),
    };
    Metric {
        name: name.to_string(),
        description: description.to_string(),
        unit: "s".to_string(),
        data: Some(data),
        ..Default::default()
    }
}

/// One request with every metric of the frame.
pub fn encode(
    frame: &ExportFrame,
    agent: &AgentMetrics,
    health: &[GroupHealth],
    resource: &Resource,
    encoding: impl Into<Encoding>,
) -> ExportMetricsServiceRequest {
    let Encoding {
        temporality,
        histograms,
    } = encoding.into();
    let time = unix_nanos(frame.time);
    let temporality_code = match temporality {
        Temporality::Cumulative => AggregationTemporality::Cumulative as i32,
        Temporality::Delta => AggregationTemporality::Delta as i32,
    };
    let points: Vec<Point<'_>> = frame
        .series
        .iter()
        .map(|s| {
            let (start, values) = match temporality {
                Temporality::Cumulative => (unix_nanos(s.start), &s.values),
                Temporality::Delta => (unix_nanos(frame.previous_time), &s.delta),
            };
            Point {
                attributes: series_attributes(s, &frame.peer_addresses),
                start,
                time,
                values,
                active: s.values.active,
            }
        })
        .collect();

    let direction = |d: &str| kv_str(names::IO_DIRECTION, d);
    let mut bytes = Vec::new();
    let mut segments = Vec::new();
    let mut retransmits = Vec::new();
    let mut timeouts = Vec::new();
    let mut connections = Vec::new();
    let mut active = Vec::new();
    let mut rtt = HistogramPoints::new(histograms);
    let mut connect = HistogramPoints::new(histograms);
    for p in &points {
        let v = p.values;
        bytes.push(number(p, &[direction("transmit")], v.bytes_sent));
        bytes.push(number(p, &[direction("receive")], v.bytes_received));
        segments.push(number(p, &[direction("transmit")], v.segs_sent));
        segments.push(number(p, &[direction("receive")], v.segs_received));
        for phase in Phase::ALL {
            let attr = [kv_str(names::PHASE, phase.as_str())];
            if v.retransmits(phase) > 0 {
                retransmits.push(number(p, &attr, v.retransmits(phase)));
            }
            if v.timeouts(phase) > 0 {
                timeouts.push(number(p, &attr, v.timeouts(phase)));
            }
        }
        let outcome = |o: &str| kv_str(names::OUTCOME, o);
        for (name, n) in [
            ("established", v.conn_established),
            ("closed", v.conn_closed),
            ("reset", v.conn_reset),
        ] {
            if n > 0 {
                connections.push(number(p, &[outcome(name)], n));
            }
        }
        for why in ConnectFailure::ALL {
            if v.failed(why) > 0 {
                connections.push(number(
                    p,
                    &[outcome("failed"), kv_str(names::ERROR_TYPE, why.as_str())],
                    v.failed(why),
                ));
            }
        }
        active.push(NumberDataPoint {
            start_time_unix_nano: 0,
            ..number(p, &[], p.active)
        });
        rtt.push(p, &v.rtt);
        connect.push(p, &v.connect_duration);
    }

    let mut metrics = vec![
        sum_metric(
            names::BYTES,
            "By",
            "Application bytes: acknowledged by the peer (transmit), received in order (receive)",
            temporality_code,
            bytes,
        ),
        sum_metric(
            names::SEGMENTS,
            "{segment}",
            "Segments carrying data, retransmissions included",
            temporality_code,
            segments,
        ),
        sum_metric(
            names::RETRANSMITS,
            "{segment}",
            "Retransmitted segments, by connection phase",
            temporality_code,
            retransmits,
        ),
        sum_metric(
            names::TIMEOUTS,
            "{timeout}",
            "Retransmission timer expiries, by connection phase",
            temporality_code,
            timeouts,
        ),
        histogram_metric(
            names::RTT,
            "Smoothed round-trip time: one sample at each close and one per live connection per poll",
            temporality_code,
            rtt,
        ),
        histogram_metric(
            names::CONNECT_DURATION,
            "Client side: from connect() to established",
            temporality_code,
            connect,
        ),
        sum_metric(
            names::CONNECTIONS,
            "{connection}",
            "Connections by outcome",
            temporality_code,
            connections,
        ),
        Metric {
            name: names::CONNECTIONS_ACTIVE.to_string(),
            description: "Established connections alive at the last poll".to_string(),
            unit: "{connection}".to_string(),
            data: Some(metric::Data::Gauge(Gauge { data_points: active })),
            ..Default::default()
        },
    ];
    metrics.extend(agent_metrics(agent, time));
    metrics.extend(health_metrics(health, &frame.peer_addresses, time));
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource.clone()),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "flowtel".to_string(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    ..Default::default()
                }),
                metrics: metrics.into_iter().filter(has_points).collect(),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// The health attributes of one group: scope, identity, reason ("none" when not degraded) and
/// attribution.
pub fn health_attributes(h: &GroupHealth, peer_addresses: &PeerAddresses) -> Vec<(&'static str, String)> {
    let mut attrs = vec![(names::HEALTH_SCOPE, h.group.scope().to_string())];
    match &h.group {
        GroupId::Peer { address, port } => {
            attrs.push((names::PEER_ADDRESS, peer_addresses.show(*address)));
            attrs.push((names::SERVER_PORT, port.to_string()));
        }
        GroupId::Monitor(name) => attrs.push((names::MONITOR, name.to_string())),
        GroupId::Host => {}
    }
    let reasons: Vec<&str> = h.reasons.iter().map(|r| r.as_str()).collect();
    attrs.push((
        names::HEALTH_REASON,
        if reasons.is_empty() {
            "none".to_string()
        } else {
            reasons.join(",")
        },
    ));
    attrs.push((names::HEALTH_ATTRIBUTION, h.attribution.as_str().to_string()));
    attrs
}

/// Health gauges; groups without enough data (status unknown) are left out.
fn health_metrics(health: &[GroupHealth], peer_addresses: &PeerAddresses, time: u64) -> Vec<Metric> {
    let known: Vec<&GroupHealth> = health.iter().filter(|h| h.status != Status::Unknown).collect();
    let point = |h: &GroupHealth, value: f64| {
        let attributes = health_attributes(h, peer_addresses)
            .into_iter()
            .map(|(k, v)| {
                if k == names::SERVER_PORT {
                    kv(k, any_value::Value::IntValue(v.parse().unwrap_or_default()))
                } else {
                    kv_str(k, v)
                }
            })
            .collect();
        NumberDataPoint {
            attributes,
            time_unix_nano: time,
            value: Some(number_data_point::Value::AsDouble(value)),
            ..Default::default()
        }
    };
    let gauge = |name: &str, unit: &str, description: &str, points: Vec<NumberDataPoint>| Metric {
        name: name.to_string(),
        description: description.to_string(),
        unit: unit.to_string(),
        data: Some(metric::Data::Gauge(Gauge { data_points: points })),
        ..Default::default()
    };
    vec![
        gauge(
            names::HEALTH_STATUS,
            // not "1": Prometheus translators suffix a unit-1 gauge with _ratio, and the name
            // must be flowtel_health_status on every path
            "{status}",
            "0 = healthy, 1 = degraded; groups without enough data are left out",
            known
                .iter()
                .map(|h| point(h, if h.status == Status::Degraded { 1.0 } else { 0.0 }))
                .collect(),
        ),
        gauge(
            names::HEALTH_RTT_RATIO,
            "1",
            "RTT p50 over its baseline",
            known.iter().filter_map(|h| h.rtt_ratio.map(|r| point(h, r))).collect(),
        ),
        gauge(
            names::HEALTH_RETRANSMIT_RATIO,
            "1",
            "Retransmitted over data segments sent in the last evaluation interval",
            known
                .iter()
                .filter_map(|h| h.retransmit_ratio.map(|r| point(h, r)))
                .collect(),
        ),
    ]
}

/// Agent metrics are always cumulative: they describe the agent, not an interval of flows.
fn agent_metrics(agent: &AgentMetrics, time: u64) -> Vec<Metric> {
    let start = agent.started.map_or(0, unix_nanos);
    let point = |attributes: Vec<KeyValue>, value: number_data_point::Value, start: u64| NumberDataPoint {
        attributes,
        start_time_unix_nano: start,
        time_unix_nano: time,
        value: Some(value),
        ..Default::default()
    };
    let int = |v: u64| number_data_point::Value::AsInt(i64::try_from(v).unwrap_or(i64::MAX));
    let gauge = |name: &str, unit: &str, description: &str, value: u64| Metric {
        name: name.to_string(),
        description: description.to_string(),
        unit: unit.to_string(),
        data: Some(metric::Data::Gauge(Gauge {
            data_points: vec![point(vec![], int(value), 0)],
        })),
        ..Default::default()
    };
    let cumulative = AggregationTemporality::Cumulative as i32;
    vec![
        gauge(
            names::AGENT_FLOW_PAIRS,
            "{pair}",
            "Flow pairs held in memory",
            agent.flow_pairs,
        ),
        gauge(
            names::AGENT_PAIR_MAP_ENTRIES,
            "{entry}",
            "Most kernel pair-map entries used in one poll",
            agent.pair_map_entries,
        ),
        gauge(
            names::AGENT_PAIR_MAP_CAPACITY,
            "{entry}",
            "Kernel pair-map capacity per poll",
            agent.pair_map_capacity,
        ),
        sum_metric(
            names::AGENT_DROPPED,
            "{event}",
            "Events that lost detail or data, by reason",
            cumulative,
            agent
                .dropped
                .iter()
                .map(|(reason, n)| point(vec![kv_str(names::DROP_REASON, *reason)], int(*n), start))
                .collect(),
        ),
        sum_metric(
            names::AGENT_EXPORT_FAILURES,
            "{export}",
            "OTLP export attempts that failed",
            cumulative,
            vec![point(vec![], int(agent.export_failures), start)],
        ),
        sum_metric(
            names::PROCESS_CPU_TIME,
            "s",
            "CPU time of the agent",
            cumulative,
            vec![
                point(
                    vec![kv_str(names::CPU_MODE, "user")],
                    number_data_point::Value::AsDouble(agent.cpu_user_seconds),
                    start,
                ),
                point(
                    vec![kv_str(names::CPU_MODE, "system")],
                    number_data_point::Value::AsDouble(agent.cpu_system_seconds),
                    start,
                ),
            ],
        ),
        gauge(
            names::PROCESS_MEMORY_USAGE,
            "By",
            "Resident memory of the agent",
            agent.rss_bytes,
        ),
    ]
}

fn has_points(m: &Metric) -> bool {
    match &m.data {
        Some(metric::Data::Sum(s)) => !s.data_points.is_empty(),
        Some(metric::Data::Gauge(g)) => !g.data_points.is_empty(),
        Some(metric::Data::ExponentialHistogram(h)) => !h.data_points.is_empty(),
        Some(metric::Data::Histogram(h)) => !h.data_points.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::Duration;

    use super::*;
    use crate::flows::{FlowKey, Role};

    fn context() -> std::sync::Arc<crate::enrich::PairContext> {
        use crate::enrich::{Category, PairContext, Placement};
        std::sync::Arc::new(PairContext {
            category: Category::InterZone,
            local: Placement {
                subnet: Some("app-a".into()),
                zone: Some("zone-a".into()),
                ..Default::default()
            },
            peer: Placement {
                subnet: Some("db".into()),
                zone: Some("zone-b".into()),
                ..Default::default()
            },
            peer_service: None,
        })
    }

    fn frame() -> ExportFrame {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut pair = FlowCounters {
            bytes_sent: 1200,
            bytes_received: 3400,
            segs_sent: 3,
            segs_received: 4,
            retrans: [0, 2, 0],
            conn_established: 5,
            conn_closed: 4,
            conn_failed: [1, 0, 0, 0],
            active: 1,
            ..Default::default()
        };
        pair.rtt.record(30); // 31 units: bucket 5, OpenTelemetry index -16
        pair.rtt.record(1000); // 1048 units: bucket 11, index -10
        let overflow = FlowCounters {
            bytes_sent: 10,
            active: 2,
            ..Default::default()
        };
        let key = FlowKey {
            local: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            remote: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            service_port: 5432,
            role: Role::Client,
        };
        ExportFrame {
            peer_addresses: Default::default(),
            previous_time: t0 + Duration::from_secs(30),
            time: t0 + Duration::from_secs(60),
            series: vec![
                Series {
                    id: SeriesId::Pair(key, context()),
                    process: Some("psql".into()),
                    original: None,
                    kubernetes: None,
                    start: t0,
                    values: pair.clone(),
                    delta: pair,
                },
                Series {
                    id: SeriesId::Overflow,
                    process: None,
                    original: None,
                    kubernetes: None,
                    start: t0,
                    values: overflow.clone(),
                    delta: overflow,
                },
            ],
        }
    }

    fn metric<'a>(req: &'a ExportMetricsServiceRequest, name: &str) -> &'a Metric {
        req.resource_metrics[0].scope_metrics[0]
            .metrics
            .iter()
            .find(|m| m.name == name)
            .expect(name)
    }

    fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
        attrs
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.as_ref())
    }

    fn sums(m: &Metric) -> &[NumberDataPoint] {
        match &m.data {
            Some(metric::Data::Sum(s)) => {
                assert!(s.is_monotonic);
                &s.data_points
            }
            other => panic!("{} is not a sum: {other:?}", m.name),
        }
    }

    fn int(p: &NumberDataPoint) -> i64 {
        match p.value {
            Some(number_data_point::Value::AsInt(v)) => v,
            ref other => panic!("not an int: {other:?}"),
        }
    }

    #[test]
    fn names_units_and_flow_pair_attributes() {
        let req = encode(
            &frame(),
            &AgentMetrics::default(),
            &[],
            &Resource::default(),
            Temporality::Cumulative,
        );
        let bytes = metric(&req, names::BYTES);
        assert_eq!(bytes.unit, "By");
        let points = sums(bytes);
        assert_eq!(
            points.len(),
            4,
            "two directions for the pair and for the overflow series"
        );
        let tx = &points[0];
        assert_eq!(int(tx), 1200);
        assert_eq!(
            attr(&tx.attributes, names::IO_DIRECTION),
            Some(&any_value::Value::StringValue("transmit".into()))
        );
        assert_eq!(
            attr(&tx.attributes, names::NETWORK_TRANSPORT),
            Some(&any_value::Value::StringValue("tcp".into()))
        );
        assert_eq!(
            attr(&tx.attributes, names::NETWORK_TYPE),
            Some(&any_value::Value::StringValue("ipv4".into()))
        );
        assert_eq!(
            attr(&tx.attributes, names::LOCAL_ADDRESS),
            Some(&any_value::Value::StringValue("10.0.0.1".into()))
        );
        assert_eq!(
            attr(&tx.attributes, names::PEER_ADDRESS),
            Some(&any_value::Value::StringValue("10.0.0.2".into()))
        );
        assert_eq!(
            attr(&tx.attributes, names::SERVER_PORT),
            Some(&any_value::Value::IntValue(5432))
        );
        assert_eq!(
            attr(&tx.attributes, names::HANDSHAKE_ROLE),
            Some(&any_value::Value::StringValue("client".into()))
        );
        assert_eq!(
            attr(&tx.attributes, names::PROCESS_NAME),
            Some(&any_value::Value::StringValue("psql".into()))
        );
        assert_eq!(tx.start_time_unix_nano, 1_700_000_000_000_000_000);
        assert_eq!(tx.time_unix_nano, 1_700_000_060_000_000_000);
        assert_eq!(int(&points[1]), 3400);

        let overflow = &points[2];
        assert_eq!(int(overflow), 10);
        assert_eq!(
            attr(&overflow.attributes, names::OVERFLOW),
            Some(&any_value::Value::BoolValue(true))
        );
        assert_eq!(
            attr(&overflow.attributes, names::PEER_ADDRESS),
            None,
            "no addresses on the overflow series"
        );

        assert_eq!(metric(&req, names::SEGMENTS).unit, "{segment}");
        let retrans = sums(metric(&req, names::RETRANSMITS));
        assert_eq!(retrans.len(), 1, "zero phases are left out");
        assert_eq!(
            attr(&retrans[0].attributes, names::PHASE),
            Some(&any_value::Value::StringValue("established".into()))
        );
        assert_eq!(int(&retrans[0]), 2);
        assert!(req.resource_metrics[0].scope_metrics[0]
            .metrics
            .iter()
            .all(|m| m.name != names::TIMEOUTS));

        let conns = sums(metric(&req, names::CONNECTIONS));
        let failed = conns
            .iter()
            .find(|p| attr(&p.attributes, names::OUTCOME) == Some(&any_value::Value::StringValue("failed".into())))
            .expect("failed outcome");
        assert_eq!(
            attr(&failed.attributes, names::ERROR_TYPE),
            Some(&any_value::Value::StringValue("refused".into()))
        );
        assert_eq!(int(failed), 1);

        let Some(metric::Data::Gauge(active)) = &metric(&req, names::CONNECTIONS_ACTIVE).data else {
            panic!("active is a gauge")
        };
        assert_eq!(active.data_points.iter().map(int).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn rtt_is_an_exact_base2_exponential_histogram_in_seconds() {
        let req = encode(
            &frame(),
            &AgentMetrics::default(),
            &[],
            &Resource::default(),
            Temporality::Cumulative,
        );
        let rtt = metric(&req, names::RTT);
        assert_eq!(rtt.unit, "s");
        let Some(metric::Data::ExponentialHistogram(h)) = &rtt.data else {
            panic!("exponential histogram")
        };
        assert_eq!(h.aggregation_temporality, AggregationTemporality::Cumulative as i32);
        assert_eq!(h.data_points.len(), 1, "the overflow series has no samples");
        let p = &h.data_points[0];
        assert_eq!((p.count, p.scale), (2, 0));
        assert_eq!(p.sum, Some(0.00103));
        let buckets = p.positive.as_ref().expect("positive buckets");
        assert_eq!(buckets.offset, -16);
        assert_eq!(buckets.bucket_counts, vec![1, 0, 0, 0, 0, 0, 1]);
        // index -16 at scale 0 is (2^-16, 2^-15] s = (15.3, 30.5] us: it holds the 30 us sample
        assert!(2f64.powi(-16) < 30e-6 && 30e-6 <= 2f64.powi(-15));
        assert!(2f64.powi(-10) < 1000e-6 && 1000e-6 <= 2f64.powi(-9));
    }

    #[test]
    fn explicit_histograms_use_the_prometheus_bounds() {
        let req = encode(
            &frame(),
            &AgentMetrics::default(),
            &[],
            &Resource::default(),
            Encoding {
                temporality: Temporality::Cumulative,
                histograms: HistogramFormat::Explicit,
            },
        );
        let Some(metric::Data::Histogram(h)) = &metric(&req, names::RTT).data else {
            panic!("explicit histogram")
        };
        assert_eq!(h.data_points.len(), 1);
        let p = &h.data_points[0];
        assert_eq!(p.explicit_bounds.len(), 24);
        assert_eq!(p.bucket_counts.len(), 25, "one per bound, then +Inf");
        assert_eq!(p.explicit_bounds[0], 32.0 / 1_048_576.0, "30.5 us");
        assert_eq!(p.explicit_bounds[23], 256.0);
        // 31 units (<= 32) is in the first bucket; 1048 units in (1024, 2048], bound index 6
        assert_eq!(p.bucket_counts[0], 1);
        assert_eq!(p.bucket_counts[6], 1);
        assert_eq!(p.bucket_counts.iter().sum::<u64>(), p.count);
        assert_eq!(p.sum, Some(0.00103));
    }

    #[test]
    fn delta_temporality_reports_the_interval() {
        let mut f = frame();
        f.series[0].delta = FlowCounters {
            bytes_sent: 7,
            ..Default::default()
        };
        let req = encode(
            &f,
            &AgentMetrics::default(),
            &[],
            &Resource::default(),
            Temporality::Delta,
        );
        let Some(metric::Data::Sum(bytes)) = &metric(&req, names::BYTES).data else {
            panic!("sum")
        };
        assert_eq!(bytes.aggregation_temporality, AggregationTemporality::Delta as i32);
        assert_eq!(int(&bytes.data_points[0]), 7);
        assert_eq!(bytes.data_points[0].start_time_unix_nano, 1_700_000_030_000_000_000);
    }
}

#[cfg(test)]
mod agent_tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn agent_metrics_ride_along() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let frame = ExportFrame {
            peer_addresses: Default::default(),
            previous_time: t0,
            time: t0 + Duration::from_secs(30),
            series: vec![],
        };
        let agent = AgentMetrics {
            started: Some(t0),
            flow_pairs: 12,
            pair_map_entries: 40,
            pair_map_capacity: 8192,
            dropped: vec![("pair_map_full", 3)],
            export_failures: 2,
            cpu_user_seconds: 1.5,
            cpu_system_seconds: 0.25,
            rss_bytes: 9_000_000,
        };
        let req = encode(&frame, &agent, &[], &Resource::default(), Temporality::Delta);
        let metrics = &req.resource_metrics[0].scope_metrics[0].metrics;
        let find = |name: &str| {
            metrics
                .iter()
                .find(|m| m.name == name)
                .unwrap_or_else(|| panic!("{name}"))
        };
        let Some(metric::Data::Sum(dropped)) = &find(names::AGENT_DROPPED).data else {
            panic!("sum")
        };
        assert_eq!(
            dropped.aggregation_temporality,
            AggregationTemporality::Cumulative as i32,
            "agent counters stay cumulative"
        );
        assert_eq!(dropped.data_points[0].value, Some(number_data_point::Value::AsInt(3)));
        assert_eq!(dropped.data_points[0].start_time_unix_nano, 1_700_000_000_000_000_000);
        let Some(metric::Data::Sum(cpu)) = &find(names::PROCESS_CPU_TIME).data else {
            panic!("sum")
        };
        assert_eq!(cpu.data_points[0].value, Some(number_data_point::Value::AsDouble(1.5)));
        assert_eq!(find(names::PROCESS_MEMORY_USAGE).unit, "By");
        let Some(metric::Data::Gauge(pairs)) = &find(names::AGENT_FLOW_PAIRS).data else {
            panic!("gauge")
        };
        assert_eq!(pairs.data_points[0].value, Some(number_data_point::Value::AsInt(12)));
        assert!(metrics.iter().any(|m| m.name == names::AGENT_EXPORT_FAILURES));
    }
}

#[cfg(test)]
mod health_tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::Duration;

    use super::*;
    use crate::health::{Attribution, Reason};

    #[test]
    fn health_gauges_leave_unknown_groups_out() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let frame = ExportFrame {
            peer_addresses: Default::default(),
            previous_time: t0,
            time: t0,
            series: vec![],
        };
        let peer = GroupId::Peer {
            address: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)),
            port: 443,
        };
        let degraded = GroupHealth {
            group: peer,
            status: Status::Degraded,
            reasons: vec![Reason::Rtt, Reason::Retransmits],
            attribution: Attribution::Peer,
            rtt_ratio: Some(3.5),
            retransmit_ratio: Some(0.04),
            timeouts: 0,
            connect_failure_ratio: None,
        };
        let unknown = GroupHealth {
            group: GroupId::Host,
            status: Status::Unknown,
            reasons: vec![],
            ..degraded.clone()
        };
        let req = encode(
            &frame,
            &AgentMetrics::default(),
            &[degraded, unknown],
            &Resource::default(),
            Temporality::Cumulative,
        );
        let metrics = &req.resource_metrics[0].scope_metrics[0].metrics;
        let status = metrics.iter().find(|m| m.name == names::HEALTH_STATUS).expect("status");
        let Some(metric::Data::Gauge(g)) = &status.data else {
            panic!("gauge")
        };
        assert_eq!(g.data_points.len(), 1, "the unknown group is left out");
        let p = &g.data_points[0];
        assert_eq!(p.value, Some(number_data_point::Value::AsDouble(1.0)));
        let attr = |k: &str| {
            p.attributes
                .iter()
                .find(|a| a.key == k)
                .and_then(|a| a.value.clone())
                .and_then(|v| v.value)
        };
        assert_eq!(
            attr(names::HEALTH_SCOPE),
            Some(any_value::Value::StringValue("peer".into()))
        );
        assert_eq!(
            attr(names::HEALTH_REASON),
            Some(any_value::Value::StringValue("rtt,retransmits".into()))
        );
        assert_eq!(
            attr(names::HEALTH_ATTRIBUTION),
            Some(any_value::Value::StringValue("peer".into()))
        );
        assert_eq!(
            attr(names::PEER_ADDRESS),
            Some(any_value::Value::StringValue("10.0.0.9".into()))
        );
        assert_eq!(attr(names::SERVER_PORT), Some(any_value::Value::IntValue(443)));
        assert!(metrics.iter().any(|m| m.name == names::HEALTH_RTT_RATIO));
        assert!(metrics.iter().any(|m| m.name == names::HEALTH_RETRANSMIT_RATIO));
    }
}
