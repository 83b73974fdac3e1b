//! Opt-in Prometheus output: an OpenMetrics `/metrics` endpoint (loopback by default) with the
//! same metrics under Prometheus naming: dots become underscores, counters end in `_total`, and
//! the unit is a suffix (`flowtel_tcp_bytes_total`, `flowtel_tcp_rtt_seconds_bucket`).
//! It serves the latest export (cumulative); the page is re-rendered at every export.
use super::redact::PeerAddresses;
use std::fmt::Write as _;
use std::sync::{Arc, RwLock};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use serde::{Deserialize, Serialize};

use super::otlp::encode::{context_attributes, health_attributes};
use super::{ExportFrame, Series, SeriesId};
use crate::flows::{ConnectFailure, FlowCounters, Log2Histogram, Phase};
use crate::health::{GroupHealth, Status};

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

pub type PrometheusError = crate::http_server::ServeError;

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn labels(series: &Series, peer_addresses: &PeerAddresses, extra: &[(&str, &str)]) -> String {
    let mut pairs: Vec<(String, String)> = vec![("network_transport".into(), "tcp".into())];
    match &series.id {
        SeriesId::Pair(key, context) => {
            pairs.push((
                "network_type".into(),
                if key.local.is_ipv4() { "ipv4" } else { "ipv6" }.into(),
            ));
            pairs.push(("network_local_address".into(), key.local.to_string()));
            pairs.push(("network_peer_address".into(), peer_addresses.show(key.remote)));
            pairs.push(("server_port".into(), key.service_port.to_string()));
            pairs.push(("network_tcp_handshake_role".into(), key.role.as_str().into()));
            if let Some(p) = &series.process {
                pairs.push(("process_executable_name".into(), p.clone()));
            }
            for (k, v) in context_attributes(context) {
                pairs.push((k.replace('.', "_"), v.to_string()));
            }
            if let Some(original) = series.original {
                pairs.push((
                    "flowtel_peer_original_address".into(),
                    peer_addresses.show(original.ip()),
                ));
                pairs.push(("flowtel_peer_original_port".into(), original.port().to_string()));
            }
            if let Some(k8s) = &series.kubernetes {
                pairs.extend(
                    k8s.attributes()
                        .into_iter()
                        .map(|(k, v)| (k.replace('.', "_"), v.to_string())),
                );
            }
        }
        SeriesId::Overflow => pairs.push(("flowtel_flow_overflow".into(), "true".into())),
        SeriesId::Monitor(name) => pairs.push(("flowtel_monitor".into(), name.to_string())),
        SeriesId::Workload(workload) => {
            pairs.push(("server_port".into(), workload.service_port.to_string()));
            pairs.push(("network_tcp_handshake_role".into(), workload.role.as_str().into()));
            pairs.extend(
                workload
                    .attributes()
                    .into_iter()
                    .map(|(k, v)| (k.replace('.', "_"), v.to_string())),
            );
        }
    }
    pairs.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let body: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
    format!("{{{}}}", body.join(","))
}

fn family(out: &mut String, name: &str, kind: &str, unit: Option<&str>, help: &str) {
    let _ = writeln!(out, "# TYPE {name} {kind}");
    if let Some(unit) = unit {
        let _ = writeln!(out, "# UNIT {name} {unit}");
    }
    let _ = writeln!(out, "# HELP {name} {help}");
}

fn counter_family(
    out: &mut String,
    frame: &ExportFrame,
    name: &str,
    unit: Option<&str>,
    help: &str,
    points: impl Fn(&FlowCounters) -> Vec<(Vec<(&'static str, &'static str)>, u64)>,
) {
    family(out, name, "counter", unit, help);
    for s in &frame.series {
        for (extra, value) in points(&s.values) {
            let _ = writeln!(out, "{name}_total{} {value}", labels(s, &frame.peer_addresses, &extra));
        }
    }
}

fn histogram_family(
    out: &mut String,
    frame: &ExportFrame,
    name: &str,
    help: &str,
    pick: impl Fn(&FlowCounters) -> &Log2Histogram,
) {
    family(out, name, "histogram", Some("seconds"), help);
    for s in &frame.series {
        let h = pick(&s.values);
        if h.count == 0 {
            continue;
        }
        let mut cumulative = 0;
        for (k, n) in h.buckets.iter().enumerate() {
            cumulative += n;
            if Log2Histogram::EXPLICIT_BUCKETS.contains(&k) {
                let le = format!("{}", Log2Histogram::bucket_upper_seconds(k));
                let _ = writeln!(
                    out,
                    "{name}_bucket{} {cumulative}",
                    labels(s, &frame.peer_addresses, &[("le", le.as_str())])
                );
            }
        }
        let _ = writeln!(
            out,
            "{name}_bucket{} {cumulative}",
            labels(s, &frame.peer_addresses, &[("le", "+Inf")])
        );
        let _ = writeln!(
            out,
            "{name}_count{} {cumulative}",
            labels(s, &frame.peer_addresses, &[])
        );
        let _ = writeln!(
            out,
            "{name}_sum{} {}",
            labels(s, &frame.peer_addresses, &[]),
            h.sum_us as f64 / 1e6
        );
    }
}

/// The OpenMetrics page for one (cumulative) export frame.
pub fn render(frame: &ExportFrame, health: &[GroupHealth]) -> String {
    let mut out = String::new();
    let directions = |tx: u64, rx: u64| {
        vec![
            (vec![("network_io_direction", "transmit")], tx),
            (vec![("network_io_direction", "receive")], rx),
        ]
    };
    counter_family(
        &mut out,
        frame,
        "flowtel_tcp_bytes",
        Some("bytes"),
        "Application bytes (flowtel.tcp.bytes)",
        |c| directions(c.bytes_sent, c.bytes_received),
    );
    counter_family(
        &mut out,
        frame,
        "flowtel_tcp_segments",
        None,
        "Segments carrying data (flowtel.tcp.segments)",
        |c| directions(c.segs_sent, c.segs_received),
    );
    let by_phase = |f: fn(&FlowCounters, Phase) -> u64| {
        move |c: &FlowCounters| {
            Phase::ALL
                .iter()
                .filter(|p| f(c, **p) > 0)
                .map(|p| (vec![("flowtel_tcp_phase", p.as_str())], f(c, *p)))
                .collect()
        }
    };
    counter_family(
        &mut out,
        frame,
        "flowtel_tcp_retransmits",
        None,
        "Retransmitted segments by phase",
        by_phase(FlowCounters::retransmits),
    );
    counter_family(
        &mut out,
        frame,
        "flowtel_tcp_timeouts",
        None,
        "Retransmission timeouts by phase",
        by_phase(FlowCounters::timeouts),
    );
    counter_family(
        &mut out,
        frame,
        "flowtel_tcp_connections",
        None,
        "Connections by outcome",
        |c| {
            let mut points: Vec<(Vec<(&'static str, &'static str)>, u64)> = [
                ("established", c.conn_established),
                ("closed", c.conn_closed),
                ("reset", c.conn_reset),
            ]
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(o, n)| (vec![("flowtel_tcp_connection_outcome", o)], n))
            .collect();
            for why in ConnectFailure::ALL {
                if c.failed(why) > 0 {
                    points.push((
                        vec![
                            ("flowtel_tcp_connection_outcome", "failed"),
                            ("error_type", why.as_str()),
                        ],
                        c.failed(why),
                    ));
                }
            }
            points
        },
    );
    histogram_family(
        &mut out,
        frame,
        "flowtel_tcp_rtt_seconds",
        "Smoothed round-trip time (flowtel.tcp.rtt)",
        |c| &c.rtt,
    );
    histogram_family(
        &mut out,
        frame,
        "flowtel_tcp_connect_duration_seconds",
        "Connect duration (flowtel.tcp.connect.duration)",
        |c| &c.connect_duration,
    );
    family(
        &mut out,
        "flowtel_tcp_connections_active",
        "gauge",
        None,
        "Established connections alive at the last poll",
    );
    for s in &frame.series {
        let _ = writeln!(
            out,
            "flowtel_tcp_connections_active{} {}",
            labels(s, &frame.peer_addresses, &[]),
            s.values.active
        );
    }
    render_health(&mut out, health, &frame.peer_addresses);
    out.push_str("# EOF\n");
    out
}

fn render_health(out: &mut String, health: &[GroupHealth], peer_addresses: &PeerAddresses) {
    let known: Vec<&GroupHealth> = health.iter().filter(|h| h.status != Status::Unknown).collect();
    let label = |h: &GroupHealth| {
        let body: Vec<String> = health_attributes(h, peer_addresses)
            .iter()
            .map(|(k, v)| format!("{}=\"{}\"", k.replace('.', "_"), escape(v)))
            .collect();
        format!("{{{}}}", body.join(","))
    };
    family(
        out,
        "flowtel_health_status",
        "gauge",
        None,
        "0 = healthy, 1 = degraded (flowtel.health.status)",
    );
    for h in &known {
        let _ = writeln!(
            out,
            "flowtel_health_status{} {}",
            label(h),
            u8::from(h.status == Status::Degraded)
        );
    }
    family(
        out,
        "flowtel_health_rtt_ratio",
        "gauge",
        None,
        "RTT p50 over its baseline",
    );
    for h in &known {
        if let Some(r) = h.rtt_ratio {
            let _ = writeln!(out, "flowtel_health_rtt_ratio{} {r}", label(h));
        }
    }
    family(
        out,
        "flowtel_health_retransmit_ratio",
        "gauge",
        None,
        "Retransmitted over data segments sent",
    );
    for h in &known {
        if let Some(r) = h.retransmit_ratio {
            let _ = writeln!(out, "flowtel_health_retransmit_ratio{} {r}", label(h));
        }
    }
}

/// Serves the latest page on `/metrics` from a task on `runtime`.
pub struct PrometheusOutput {
    page: Arc<RwLock<String>>,
}

impl PrometheusOutput {
    pub fn start(section: &PrometheusSection, runtime: &tokio::runtime::Handle) -> Result<Self, PrometheusError> {
        let (listener, addr) = crate::http_server::bind("export.prometheus.listen", &section.listen)?;
        let page = Arc::new(RwLock::new("# EOF\n".to_string()));
        let served = Arc::clone(&page);
        crate::http_server::serve(listener, runtime, "/metrics", move |req| respond(req, &served));
        tracing::info!(listen = %addr, "Prometheus endpoint on /metrics");
        Ok(Self { page })
    }

    pub fn update(&self, frame: &ExportFrame, health: &[GroupHealth]) {
        let page = render(frame, health);
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
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::{Duration, UNIX_EPOCH};

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

    #[test]
    fn openmetrics_page_with_prometheus_names() {
        let mut values = FlowCounters {
            bytes_sent: 300,
            bytes_received: 7000,
            rto: [0, 1, 0],
            active: 1,
            ..Default::default()
        };
        values.rtt.record(40);
        let key = FlowKey {
            local: IpAddr::V4(Ipv4Addr::LOCALHOST),
            remote: IpAddr::V4(Ipv4Addr::LOCALHOST),
            service_port: 8080,
            role: Role::Client,
        };
        let t = UNIX_EPOCH + Duration::from_secs(1);
        let frame = ExportFrame {
            peer_addresses: Default::default(),
            previous_time: t,
            time: t,
            series: vec![
                Series {
                    id: SeriesId::Pair(key, context()),
                    process: Some("cu\"rl".into()),
                    original: None,
                    kubernetes: None,
                    start: t,
                    values: values.clone(),
                    delta: values,
                },
                Series {
                    id: SeriesId::Overflow,
                    process: None,
                    original: None,
                    kubernetes: None,
                    start: t,
                    values: FlowCounters::default(),
                    delta: FlowCounters::default(),
                },
            ],
        };
        let page = render(&frame, &[]);
        assert!(page.contains("# TYPE flowtel_tcp_bytes counter\n# UNIT flowtel_tcp_bytes bytes\n"));
        assert!(page.contains(
            "flowtel_tcp_bytes_total{network_transport=\"tcp\",network_type=\"ipv4\",network_local_address=\"127.0.0.1\",\
             network_peer_address=\"127.0.0.1\",server_port=\"8080\",network_tcp_handshake_role=\"client\",\
             process_executable_name=\"cu\\\"rl\",flowtel_flow_category=\"inter_zone\",flowtel_local_subnet=\"app-a\",\
             flowtel_local_zone=\"zone-a\",flowtel_peer_subnet=\"db\",flowtel_peer_zone=\"zone-b\",\
             network_io_direction=\"transmit\"} 300\n"
        ));
        assert!(page.contains("flowtel_tcp_bytes_total{network_transport=\"tcp\",flowtel_flow_overflow=\"true\",network_io_direction=\"receive\"} 0\n"));
        assert!(page.contains("flowtel_tcp_timeouts_total{"), "{page}");
        assert!(page.contains(",flowtel_tcp_phase=\"established\"} 1\n"));
        // 40 us is 41 units: counted from the (32, 64] unit bucket, whose bound is 64 / 2^20 s
        assert!(page.contains(&format!(",le=\"{}\"}} 0\n", 32.0 / 1_048_576.0)));
        assert!(page.contains(&format!(",le=\"{}\"}} 1\n", 64.0 / 1_048_576.0)));
        assert!(page.contains(",le=\"+Inf\"} 1\n"));
        assert!(page.contains("flowtel_tcp_rtt_seconds_sum{"));
        assert!(page.ends_with("# EOF\n"));
    }
}
