//! Opt-in Prometheus output: an OpenMetrics `/metrics` endpoint (loopback by default) rendering
//! the same metric set as OTLP under Prometheus naming, as the OpenTelemetry Collector's
//! Prometheus exporter translates it: dots become underscores, counters end in `_total`, and the
//! unit is a suffix (`flowtel_tcp_bytes_total`, `flowtel_tcp_rtt_seconds_bucket`,
//! `process_cpu_time_seconds_total`). It serves the latest export (cumulative); the page is
//! re-rendered at every export.
use std::fmt::Write as _;
use std::sync::{Arc, RwLock};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use serde::{Deserialize, Serialize};

use opentelemetry_proto::tonic::resource::v1::Resource;

use super::metric_set::{Family, Kind, MetricSet, Value};
use crate::flows::Log2Histogram;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrometheusSection {
    /// Serve /metrics.
    pub enabled: bool,
    /// Address to listen on; loopback by default so nothing is exposed by accident.
    pub listen: String,
}

impl Default for PrometheusSection {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: DEFAULT_LISTEN.to_string(),
        }
    }
}

pub type PrometheusError = crate::agent::http_server::ServeError;

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// A Prometheus name for an OpenTelemetry key: every character outside `[a-zA-Z0-9_:]` becomes
/// `_` (`network.peer.address` -> `network_peer_address`).
pub fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The unit suffix the OpenTelemetry-to-Prometheus translation adds, if any: UCUM units spelled
/// out, annotations (`{segment}`) dropped, `1` as `ratio` on gauges.
fn unit_suffix(family: &Family<'_>) -> Option<&'static str> {
    match family.unit {
        "By" => Some("bytes"),
        "s" => Some("seconds"),
        "1" if family.kind == Kind::Gauge => Some("ratio"),
        _ => None,
    }
}

/// The family's Prometheus name and unit, as the OpenTelemetry Collector's Prometheus exporter
/// spells them: `flowtel.tcp.rtt` (s) -> `flowtel_tcp_rtt_seconds`; counters add `_total` to
/// their samples.
pub fn family_name(family: &Family<'_>) -> (String, Option<&'static str>) {
    let mut name = sanitize(family.name);
    let unit = unit_suffix(family);
    if let Some(unit) = unit {
        if !name.ends_with(unit) {
            name = format!("{name}_{unit}");
        }
    }
    (name, unit)
}

fn labels(out: &mut String, series: &str, extra: &[(String, String)]) {
    if series.is_empty() && extra.is_empty() {
        return;
    }
    out.push('{');
    out.push_str(series);
    for (i, (k, v)) in extra.iter().enumerate() {
        if i > 0 || !series.is_empty() {
            out.push(',');
        }
        let _ = write!(out, "{k}=\"{}\"", escape(v));
    }
    out.push('}');
}

fn sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    series: &str,
    extra: &[(String, String)],
    value: &dyn std::fmt::Display,
) {
    out.push_str(name);
    out.push_str(suffix);
    labels(out, series, extra);
    let _ = writeln!(out, " {value}");
}

/// The resource as OpenMetrics' `target` info family (`target_info{host_name=...} 1`), the
/// OpenTelemetry convention for resource attributes on a Prometheus endpoint.
pub fn target_info(resource: &Resource) -> String {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    let labels: Vec<String> = resource
        .attributes
        .iter()
        .filter_map(|kv| {
            let value = match kv.value.as_ref()?.value.as_ref()? {
                Any::StringValue(s) => s.clone(),
                Any::IntValue(i) => i.to_string(),
                Any::BoolValue(b) => b.to_string(),
                Any::DoubleValue(d) => d.to_string(),
                _ => return None,
            };
            Some(format!("{}=\"{}\"", sanitize(&kv.key), escape(&value)))
        })
        .collect();
    format!(
        "# TYPE target info\n# HELP target Target metadata: the OTLP resource\ntarget_info{{{}}} 1\n",
        labels.join(",")
    )
}

/// The OpenMetrics page for one cumulative metric set.
pub fn render(set: &MetricSet<'_>) -> String {
    render_with(set, "")
}

/// The page with `prefix` (the `target_info` family) before the metric set's families.
pub fn render_with(set: &MetricSet<'_>, prefix: &str) -> String {
    let series: Vec<String> = set
        .attributes
        .iter()
        .map(|attrs| {
            let body: Vec<String> = attrs
                .iter()
                .map(|(k, v)| format!("{}=\"{}\"", sanitize(k), escape(&v.text())))
                .collect();
            body.join(",")
        })
        .collect();
    let mut out = String::from(prefix);
    for family in &set.families {
        let (name, unit) = family_name(family);
        let kind = match family.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let _ = writeln!(out, "# TYPE {name} {kind}");
        if let Some(unit) = unit {
            let _ = writeln!(out, "# UNIT {name} {unit}");
        }
        let _ = writeln!(out, "# HELP {name} {} ({})", family.description, family.name);
        for point in &family.points {
            let series = &series[point.attributes];
            let mut extra: Vec<(String, String)> = point
                .extra
                .iter()
                .map(|(k, v)| (sanitize(k), v.text().into_owned()))
                .collect();
            match (&point.value, family.kind) {
                (Value::Int(v), Kind::Counter) => sample(&mut out, &name, "_total", series, &extra, v),
                (Value::Double(v), Kind::Counter) => sample(&mut out, &name, "_total", series, &extra, v),
                (Value::Int(v), _) => sample(&mut out, &name, "", series, &extra, v),
                (Value::Double(v), _) => sample(&mut out, &name, "", series, &extra, v),
                (Value::Histogram(h), _) => {
                    let mut cumulative = 0;
                    for (k, n) in h.buckets.iter().enumerate() {
                        cumulative += n;
                        if Log2Histogram::EXPLICIT_BUCKETS.contains(&k) {
                            extra.push(("le".into(), format!("{}", Log2Histogram::bucket_upper_seconds(k))));
                            sample(&mut out, &name, "_bucket", series, &extra, &cumulative);
                            extra.pop();
                        }
                    }
                    extra.push(("le".into(), "+Inf".into()));
                    sample(&mut out, &name, "_bucket", series, &extra, &cumulative);
                    extra.pop();
                    sample(&mut out, &name, "_count", series, &extra, &cumulative);
                    sample(&mut out, &name, "_sum", series, &extra, &(h.sum_us as f64 / 1e6));
                }
            }
        }
    }
    out.push_str("# EOF\n");
    out
}

/// Serves the latest page on `/metrics` from a task on `runtime`.
pub struct PrometheusOutput {
    page: Arc<RwLock<String>>,
    target_info: String,
}

impl PrometheusOutput {
    /// Serves `/metrics`; `resource` becomes its `target_info`.
    pub fn start(
        section: &PrometheusSection,
        resource: &Resource,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Self, PrometheusError> {
        let (listener, addr) = crate::agent::http_server::bind("export.prometheus.listen", &section.listen)?;
        let page = Arc::new(RwLock::new("# EOF\n".to_string()));
        let served = Arc::clone(&page);
        crate::agent::http_server::serve(listener, runtime, "/metrics", move |req| respond(req, &served));
        tracing::info!(listen = %addr, "Prometheus endpoint on /metrics");
        Ok(Self {
            page,
            target_info: target_info(resource),
        })
    }

    pub fn update(&self, set: &MetricSet<'_>) {
        let page = render_with(set, &self.target_info);
        if let Ok(mut slot) = self.page.write() {
            *slot = page;
        }
    }
}

fn respond(req: &Request<hyper::body::Incoming>, page: &RwLock<String>) -> Response<Full<Bytes>> {
    let mut response = if req.uri().path() == "/metrics" {
        let body = page.read().map(|p| p.clone()).unwrap_or_default();
        let mut r = Response::new(Full::new(Bytes::from(body)));
        if let Ok(v) = hyper::header::HeaderValue::from_str(CONTENT_TYPE) {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        r
    } else {
        Response::new(Full::new(Bytes::from_static(b"flowtel: metrics are on /metrics\n")))
    };
    if req.uri().path() != "/metrics" {
        *response.status_mut() = StatusCode::NOT_FOUND;
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::metric_set::{build, AgentMetrics};
    use crate::export::Temporality;
    use crate::testing;

    #[test]
    fn openmetrics_page_with_prometheus_names() {
        let mut frame = testing::frame();
        frame.series[0].process = Some("cu\"rl".into());
        frame.series[0].values.rto = [0, 1, 0];
        let agent = AgentMetrics {
            cpu_user_seconds: 1.5,
            rss_bytes: 4096,
            dropped: vec![("pair_map_full", 2)],
            ..Default::default()
        };
        let set = build(&frame, &[], &agent, Temporality::Cumulative, &Default::default());
        let page = render(&set);
        assert!(page.contains("# TYPE flowtel_tcp_bytes counter\n# UNIT flowtel_tcp_bytes bytes\n"));
        assert!(page.contains(
            "flowtel_tcp_bytes_total{network_transport=\"tcp\",network_type=\"ipv4\",network_local_address=\"10.0.0.1\",\
             network_peer_address=\"10.0.0.2\",server_port=\"5432\",network_tcp_handshake_role=\"client\",\
             process_executable_name=\"cu\\\"rl\",flowtel_flow_category=\"inter_zone\",flowtel_local_subnet=\"app-a\",\
             flowtel_local_zone=\"zone-a\",flowtel_peer_subnet=\"db\",flowtel_peer_zone=\"zone-b\",\
             network_io_direction=\"transmit\"} 1200\n"
        ), "{page}");
        assert!(page.contains(
            "flowtel_tcp_bytes_total{network_transport=\"tcp\",otel_metric_overflow=\"true\",network_io_direction=\"receive\"} 0\n"
        ));
        assert!(page.contains(",flowtel_tcp_phase=\"established\"} 1\n"));
        // 30 us is 31 units: counted from the (16, 32] unit bucket, whose bound is 32 / 2^20 s
        assert!(page.contains(&format!(",le=\"{}\"}} 1\n", 32.0 / 1_048_576.0)));
        assert!(page.contains(",le=\"+Inf\"} 2\n"));
        assert!(page.contains("# TYPE flowtel_tcp_rtt_seconds histogram\n# UNIT flowtel_tcp_rtt_seconds seconds\n"));
        assert!(page.contains("flowtel_tcp_rtt_seconds_sum{"));
        // the agent's own metrics, under the names the Collector's Prometheus exporter gives them
        assert!(
            page.contains("process_cpu_time_seconds_total{cpu_mode=\"user\"} 1.5\n"),
            "{page}"
        );
        assert!(page.contains("process_memory_usage_bytes 4096\n"));
        assert!(page.contains("# TYPE flowtel_agent_dropped counter\n"));
        assert!(page.contains("flowtel_agent_dropped_total{flowtel_drop_reason=\"pair_map_full\"} 2\n"));
        assert!(page.ends_with("# EOF\n"));
    }
}
