//! A [`MetricSet`] rendered as one OTLP `ExportMetricsServiceRequest`: counters become monotonic
//! sums, gauges gauges, histograms base-2 exponential (scale 0, exact) or explicit-bucket
//! histograms with the `/metrics` bounds. Names, units and attributes come from the set as they
//! are; this module decides nothing about which series exist.
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::exponential_histogram_data_point::Buckets;
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge,
    Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

use crate::export::metric_set::{AttrValue, Family, Kind, MetricSet, Point, Temporality, Value};
use crate::flows::Log2Histogram;

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

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn key_value(key: &str, value: &AttrValue<'_>) -> KeyValue {
    let value = match value {
        AttrValue::Str(s) => any_value::Value::StringValue(s.to_string()),
        AttrValue::Int(i) => any_value::Value::IntValue(*i),
        AttrValue::Bool(b) => any_value::Value::BoolValue(*b),
    };
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// Shared by every point of one request: the series' attributes, converted once.
struct Context {
    attributes: Vec<Vec<KeyValue>>,
    time: u64,
    histograms: HistogramFormat,
}

impl Context {
    fn attributes(&self, point: &Point<'_>) -> Vec<KeyValue> {
        let mut attrs = self.attributes[point.attributes].clone();
        attrs.extend(point.extra.iter().map(|(k, v)| key_value(k, v)));
        attrs
    }

    fn number(&self, point: &Point<'_>) -> NumberDataPoint {
        let value = match point.value {
            Value::Int(v) => number_data_point::Value::AsInt(i64::try_from(v).unwrap_or(i64::MAX)),
            Value::Double(v) => number_data_point::Value::AsDouble(v),
            Value::Histogram(h) => number_data_point::Value::AsInt(i64::try_from(h.count).unwrap_or(i64::MAX)),
        };
        NumberDataPoint {
            attributes: self.attributes(point),
            start_time_unix_nano: point.start.map_or(0, unix_nanos),
            time_unix_nano: self.time,
            value: Some(value),
            ..Default::default()
        }
    }

    fn exponential(&self, point: &Point<'_>, h: &Log2Histogram) -> Option<ExponentialHistogramDataPoint> {
        let first = h.buckets.iter().position(|n| *n > 0)?;
        let last = h.buckets.iter().rposition(|n| *n > 0)?;
        Some(ExponentialHistogramDataPoint {
            attributes: self.attributes(point),
            start_time_unix_nano: point.start.map_or(0, unix_nanos),
            time_unix_nano: self.time,
            count: h.buckets.iter().sum(),
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

    fn explicit(&self, point: &Point<'_>, h: &Log2Histogram) -> HistogramDataPoint {
        HistogramDataPoint {
            attributes: self.attributes(point),
            start_time_unix_nano: point.start.map_or(0, unix_nanos),
            time_unix_nano: self.time,
            count: h.buckets.iter().sum(),
            sum: Some(h.sum_us as f64 / 1e6),
            bucket_counts: h.explicit_counts(),
            explicit_bounds: Log2Histogram::explicit_bounds(),
            ..Default::default()
        }
    }

    fn metric(&self, family: &Family<'_>) -> Metric {
        let temporality = match family.temporality {
            Temporality::Cumulative => AggregationTemporality::Cumulative as i32,
            Temporality::Delta => AggregationTemporality::Delta as i32,
        };
        let histograms = || {
            family.points.iter().filter_map(|p| match p.value {
                Value::Histogram(h) => Some((p, h)),
                _ => None,
            })
        };
        let data = match family.kind {
            Kind::Counter => metric::Data::Sum(Sum {
                data_points: family.points.iter().map(|p| self.number(p)).collect(),
                aggregation_temporality: temporality,
                is_monotonic: true,
            }),
            Kind::Gauge => metric::Data::Gauge(Gauge {
                data_points: family.points.iter().map(|p| self.number(p)).collect(),
            }),
            Kind::Histogram => match self.histograms {
                HistogramFormat::Exponential => metric::Data::ExponentialHistogram(ExponentialHistogram {
                    data_points: histograms().filter_map(|(p, h)| self.exponential(p, h)).collect(),
                    aggregation_temporality: temporality,
                }),
                HistogramFormat::Explicit => metric::Data::Histogram(Histogram {
                    data_points: histograms().map(|(p, h)| self.explicit(p, h)).collect(),
                    aggregation_temporality: temporality,
                }),
            },
        };
        Metric {
            name: family.name.to_string(),
            description: family.description.to_string(),
            unit: family.unit.to_string(),
            data: Some(data),
            ..Default::default()
        }
    }
}

/// One request with every family of the set.
pub fn encode(set: &MetricSet<'_>, resource: &Resource, histograms: HistogramFormat) -> ExportMetricsServiceRequest {
    let context = Context {
        attributes: set
            .attributes
            .iter()
            .map(|attrs| attrs.iter().map(|(k, v)| key_value(k, v)).collect())
            .collect(),
        time: unix_nanos(set.time),
        histograms,
    };
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource.clone()),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "flowtel".to_string(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    ..Default::default()
                }),
                metrics: set.families.iter().map(|f| context.metric(f)).collect(),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::export::metric_set::{build, AgentMetrics};
    use crate::export::redact::PeerAddresses;
    use crate::flows::FlowCounters;
    use crate::health::{Attribution, GroupHealth, GroupId, Reason, Status};
    use crate::names;
    use crate::testing;

    fn request(temporality: Temporality, histograms: HistogramFormat) -> ExportMetricsServiceRequest {
        let frame = testing::frame();
        let set = build(
            &frame,
            &[],
            &AgentMetrics::default(),
            temporality,
            &PeerAddresses::Plain,
        );
        encode(&set, &Resource::default(), histograms)
    }

    /// The metric `name`, checked to be in `unit`.
    fn metric<'a>(req: &'a ExportMetricsServiceRequest, name: &str, unit: &str) -> &'a Metric {
        let m = req.resource_metrics[0].scope_metrics[0]
            .metrics
            .iter()
            .find(|m| m.name == name)
            .expect(name);
        assert_eq!(m.unit, unit, "{name}");
        m
    }

    fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
        attrs
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.as_ref())
    }

    fn text<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
        match attr(attrs, key) {
            Some(any_value::Value::StringValue(s)) => Some(s),
            _ => None,
        }
    }

    fn int(p: &NumberDataPoint) -> i64 {
        match p.value {
            Some(number_data_point::Value::AsInt(v)) => v,
            ref other => panic!("not an int: {other:?}"),
        }
    }

    #[test]
    fn sums_carry_typed_attributes_and_their_window() {
        let req = request(Temporality::Cumulative, HistogramFormat::Exponential);
        let Some(metric::Data::Sum(sum)) = &metric(&req, names::BYTES, "By").data else {
            panic!("a sum")
        };
        assert!(sum.is_monotonic);
        assert_eq!(sum.aggregation_temporality, AggregationTemporality::Cumulative as i32);
        let tx = &sum.data_points[0];
        assert_eq!(int(tx), 1200);
        assert_eq!(text(&tx.attributes, names::IO_DIRECTION), Some("transmit"));
        assert_eq!(
            attr(&tx.attributes, names::SERVER_PORT),
            Some(&any_value::Value::IntValue(5432))
        );
        assert_eq!(tx.start_time_unix_nano, 1_700_000_000_000_000_000);
        assert_eq!(tx.time_unix_nano, 1_700_000_060_000_000_000);
        assert_eq!(
            attr(&sum.data_points[2].attributes, names::OVERFLOW),
            Some(&any_value::Value::BoolValue(true))
        );
        let Some(metric::Data::Gauge(active)) = &metric(&req, names::CONNECTIONS_ACTIVE, "{connection}").data else {
            panic!("active is a gauge")
        };
        assert_eq!(active.data_points.iter().map(int).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(active.data_points[0].start_time_unix_nano, 0);
    }

    #[test]
    fn rtt_is_an_exact_base2_exponential_histogram_in_seconds() {
        let req = request(Temporality::Cumulative, HistogramFormat::Exponential);
        let Some(metric::Data::ExponentialHistogram(h)) = &metric(&req, names::RTT, "s").data else {
            panic!("exponential histogram")
        };
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
        let req = request(Temporality::Cumulative, HistogramFormat::Explicit);
        let Some(metric::Data::Histogram(h)) = &metric(&req, names::RTT, "s").data else {
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
    fn delta_temporality_reports_the_interval_and_agent_counters_stay_cumulative() {
        let mut frame = testing::frame();
        frame.series[0].delta = FlowCounters {
            bytes_sent: 7,
            ..Default::default()
        };
        let agent = AgentMetrics {
            started: Some(UNIX_EPOCH),
            dropped: vec![("pair_map_full", 3)],
            ..Default::default()
        };
        let set = build(&frame, &[], &agent, Temporality::Delta, &PeerAddresses::Plain);
        let req = encode(&set, &Resource::default(), HistogramFormat::Exponential);
        let Some(metric::Data::Sum(bytes)) = &metric(&req, names::BYTES, "By").data else {
            panic!("sum")
        };
        assert_eq!(bytes.aggregation_temporality, AggregationTemporality::Delta as i32);
        assert_eq!(int(&bytes.data_points[0]), 7);
        assert_eq!(bytes.data_points[0].start_time_unix_nano, 1_700_000_030_000_000_000);
        let Some(metric::Data::Sum(dropped)) = &metric(&req, names::AGENT_DROPPED, "{event}").data else {
            panic!("sum")
        };
        assert_eq!(
            dropped.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        assert_eq!(int(&dropped.data_points[0]), 3);
    }

    #[test]
    fn health_gauges_leave_unknown_groups_out_and_type_the_port() {
        let frame = testing::frame();
        let degraded = GroupHealth {
            group: GroupId::Peer {
                address: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)),
                port: 443,
            },
            status: Status::Degraded,
            reasons: vec![Reason::Rtt, Reason::Retransmits],
            attribution: Attribution::Peer,
            rtt_ratio: Some(3.5),
            retransmit_ratio: Some(0.04),
            timeouts: 0,
            connect_failure_ratio: None,
            evidence: Default::default(),
            context: None,
        };
        let unknown = GroupHealth {
            group: GroupId::Host,
            status: Status::Unknown,
            reasons: vec![],
            ..degraded.clone()
        };
        let set = build(
            &frame,
            &[degraded, unknown],
            &AgentMetrics::default(),
            Temporality::Cumulative,
            &PeerAddresses::Plain,
        );
        let req = encode(&set, &Resource::default(), HistogramFormat::Exponential);
        let Some(metric::Data::Gauge(g)) = &metric(&req, names::HEALTH_STATUS, "{status}").data else {
            panic!("gauge")
        };
        assert_eq!(g.data_points.len(), 1, "the unknown group is left out");
        let p = &g.data_points[0];
        assert_eq!(p.value, Some(number_data_point::Value::AsDouble(1.0)));
        assert_eq!(text(&p.attributes, names::HEALTH_REASON), Some("rtt,retransmits"));
        assert_eq!(
            attr(&p.attributes, names::SERVER_PORT),
            Some(&any_value::Value::IntValue(443))
        );
        metric(&req, names::HEALTH_RTT_RATIO, "1");
        metric(&req, names::HEALTH_RETRANSMIT_RATIO, "1");
    }
}
