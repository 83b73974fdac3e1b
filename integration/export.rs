//! Export into real receivers. OTLP: rotel (PyPI `rotel`, which ships `rotel-agent`) receives
//! over gRPC and over HTTP/protobuf and prints every metric it gets; the test reads that back.
//! Prometheus: Debian's `prometheus` scrapes /metrics and answers a PromQL query.
//! Both must be installed (.ci/run does it): without them the tests fail.
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

mod support;

use support::agent::{bare, lines, parse, start_agent, start_agent_with, start_rotel, stop, Point};
use support::{free_port, http_get, runtime, start_prometheus};

fn exchange_known_bytes() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::scope(|s| {
        s.spawn(|| {
            let (mut c, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 300];
            c.read_exact(&mut buf).expect("read");
            c.write_all(&[9u8; 7000]).expect("write");
        });
        let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        c.write_all(&[1u8; 300]).expect("write");
        let mut buf = Vec::new();
        c.read_to_end(&mut buf).expect("read");
        assert_eq!(buf.len(), 7000);
    });
    port
}

fn export_through(protocol: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log_path = dir.path().join("rotel.log");
    let (grpc, http) = (free_port(), free_port());
    let _rotel = start_rotel(grpc, http, &log_path);
    let endpoint = match protocol {
        "grpc" => format!("http://127.0.0.1:{grpc}"),
        _ => format!("http://127.0.0.1:{http}"),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let receiver_port = if protocol == "grpc" { grpc } else { http };
    while TcpStream::connect(("127.0.0.1", receiver_port)).is_err() {
        assert!(Instant::now() < deadline, "rotel never listened");
        std::thread::sleep(Duration::from_millis(100));
    }

    // the configuration file points elsewhere: the standard variables must win over it
    let config = dir.path().join("flowtel.toml");
    std::fs::write(
        &config,
        format!(
            "[export]\ninterval_secs = 60\n[export.otlp]\nendpoint = \"http://127.0.0.1:{}\"\nprotocol = \"grpc\"\n",
            free_port()
        ),
    )
    .expect("config file");
    let (mut agent, _log) = start_agent_with(
        &["--config".to_string(), config.display().to_string()],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.to_string()),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1000".to_string()),
        ],
    );
    let port = exchange_known_bytes();
    std::thread::sleep(Duration::from_millis(2500));
    stop(&mut agent);
    std::thread::sleep(Duration::from_millis(500));

    let (points, resource) = parse(&std::fs::read_to_string(&log_path).expect("rotel log"));
    assert_eq!(
        resource.get("service.name").map(String::as_str),
        Some("Str(flowtel)"),
        "{resource:?}"
    );
    assert!(
        resource.contains_key("host.name") && resource.contains_key("host.id"),
        "{resource:?}"
    );
    let ours = |metric: &str, role: &str, extra: Option<(&str, &str)>| -> Vec<Point> {
        points
            .iter()
            .filter(|p| {
                p.metric == metric
                    && p.attributes.get("server.port") == Some(&format!("Int({port})"))
                    && p.attributes.get("network.tcp.handshake.role") == Some(&format!("Str({role})"))
                    && extra.is_none_or(|(k, v)| p.attributes.get(k) == Some(&format!("Str({v})")))
            })
            .cloned()
            .collect()
    };
    let last_value = |metric: &str, role: &str, extra: Option<(&str, &str)>| {
        ours(metric, role, extra).last().and_then(|p| p.value.clone())
    };
    let transmit = Some(("network.io.direction", "transmit"));
    let receive = Some(("network.io.direction", "receive"));
    assert_eq!(
        last_value("flowtel.tcp.bytes", "client", transmit).as_deref(),
        Some("300"),
        "{protocol}"
    );
    assert_eq!(
        last_value("flowtel.tcp.bytes", "client", receive).as_deref(),
        Some("7000"),
        "{protocol}"
    );
    assert_eq!(
        last_value("flowtel.tcp.bytes", "server", transmit).as_deref(),
        Some("7000"),
        "{protocol}"
    );
    assert_eq!(
        last_value("flowtel.tcp.bytes", "server", receive).as_deref(),
        Some("300"),
        "{protocol}"
    );
    let bytes = ours("flowtel.tcp.bytes", "client", transmit);
    assert_eq!(bytes[0].unit, "By");
    for key in [
        "network.transport",
        "network.type",
        "network.local.address",
        "network.peer.address",
    ] {
        assert!(
            bytes[0].attributes.contains_key(key),
            "{key} on {:?}",
            bytes[0].attributes
        );
    }
    assert_eq!(
        bytes[0].attributes.get("network.peer.address").map(String::as_str),
        Some("Str(127.0.0.1)")
    );
    assert_eq!(
        last_value(
            "flowtel.tcp.connections",
            "client",
            Some(("flowtel.tcp.connection.outcome", "established"))
        )
        .as_deref(),
        Some("1")
    );
    let rtt = ours("flowtel.tcp.rtt", "server", None);
    assert!(!rtt.is_empty(), "RTT histogram exported");
    assert_eq!(rtt[0].unit, "s");
    assert!(
        !ours("flowtel.tcp.connect.duration", "client", None).is_empty(),
        "connect duration exported"
    );
}

#[test]
fn otlp_grpc_into_a_real_collector() {
    export_through("grpc");
}

#[test]
fn otlp_http_protobuf_into_a_real_collector() {
    export_through("http/protobuf");
}

/// The name the OpenTelemetry-to-Prometheus translation gives a family, written out here from
/// the specification (not taken from flowtel): dots to underscores, By/s spelled out as a
/// suffix, `1` on a gauge as `_ratio`, annotations like `{segment}` dropped.
fn prometheus_family(name: &str, unit: &str, kind: &str) -> (String, &'static str) {
    let mut base = name.replace('.', "_");
    let suffix = match (unit, kind) {
        ("By", _) => Some("bytes"),
        ("s", _) => Some("seconds"),
        ("1", "Gauge") => Some("ratio"),
        _ => None,
    };
    if let Some(suffix) = suffix {
        if !base.ends_with(suffix) {
            base = format!("{base}_{suffix}");
        }
    }
    let kind = match kind {
        "Sum" => "counter",
        "Gauge" => "gauge",
        _ => "histogram",
    };
    (base, kind)
}

/// The families with at least one sample on an OpenMetrics page, and each sample's value by
/// (sample name, sorted labels).
type SampleKey = (String, Vec<(String, String)>);
type Samples = HashMap<SampleKey, String>;
fn scrape(page: &str) -> (std::collections::BTreeSet<(String, String)>, Samples) {
    let mut declared = HashMap::new();
    let mut families = std::collections::BTreeSet::new();
    let mut samples = HashMap::new();
    for line in page.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            declared.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample value");
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.trim_end_matches('}')),
            None => (series, ""),
        };
        let family = declared
            .keys()
            .filter(|f| name.starts_with(f.as_str()))
            .max_by_key(|f| f.len())
            .unwrap_or_else(|| panic!("sample {name} outside any declared family"));
        families.insert((family.clone(), declared[family].clone()));
        let mut labels: Vec<(String, String)> = labels
            .split("\",")
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once("=\"").expect("label");
                (k.to_string(), v.trim_end_matches('"').to_string())
            })
            .collect();
        labels.sort();
        samples.insert((name.to_string(), labels), value.to_string());
    }
    (families, samples)
}

/// One model, two outputs: OTLP into a real collector and `/metrics` from the same agent over the
/// same traffic carry the same families, and the same counts.
#[test]
fn otlp_and_metrics_carry_the_same_families_and_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log_path = dir.path().join("rotel.log");
    let (grpc, http, metrics_port) = (free_port(), free_port(), free_port());
    let _rotel = start_rotel(grpc, http, &log_path);
    support::agent::wait_listening(grpc);
    let (mut agent, _log) = start_agent(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{grpc}")),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_string()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "1000".to_string()),
        ("FLOWTEL_EXPORT__PROMETHEUS__ENABLED", "true".to_string()),
        (
            "FLOWTEL_EXPORT__PROMETHEUS__LISTEN",
            format!("127.0.0.1:{metrics_port}"),
        ),
    ]);
    let port = exchange_known_bytes();
    // two exports after the traffic: both outputs hold it. Then one export seen by both: the
    // page is rendered before the same export is sent, so a page fetched between two reads of
    // the collector's log that show the same last export is that export's
    std::thread::sleep(Duration::from_millis(2500));
    let last_export = || {
        let (points, _) = parse(&std::fs::read_to_string(&log_path).unwrap_or_default());
        let time = points.iter().filter_map(|p| p.time.clone()).max();
        let points: Vec<Point> = points
            .into_iter()
            .filter(|p| p.time == time && time.is_some())
            .collect();
        (time, points)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let (page, points) = loop {
        let (before, points) = last_export();
        let page = http_get(metrics_port, "/metrics").expect("/metrics answers");
        std::thread::sleep(Duration::from_millis(300));
        let (after, _) = last_export();
        if before.is_some() && before == after {
            break (page, points);
        }
        assert!(Instant::now() < deadline, "no quiet moment between two exports");
    };
    stop(&mut agent);
    assert!(!points.is_empty(), "rotel received nothing");

    let otlp: std::collections::BTreeSet<(String, String)> = points
        .iter()
        .map(|p| {
            let (name, kind) = prometheus_family(&p.metric, &p.unit, &p.kind);
            (name, kind.to_string())
        })
        .collect();
    let (mut metrics, samples) = scrape(&page);
    // the resource, which OTLP carries beside the metrics, is /metrics' target_info
    assert!(
        metrics.remove(&("target".to_string(), "info".to_string())),
        "target_info on /metrics: {page}"
    );
    assert!(
        samples
            .keys()
            .any(|(name, labels)| name == "target_info" && labels.iter().any(|(k, _)| k == "service_instance_id")),
        "target_info carries the resource"
    );
    assert_eq!(
        otlp, metrics,
        "every OTLP family on /metrics under its Prometheus name, and every /metrics family in OTLP"
    );
    for agent_family in [
        "flowtel_agent_dropped",
        "process_cpu_time_seconds",
        "process_memory_usage_bytes",
    ] {
        assert!(
            metrics.iter().any(|(name, _)| name == agent_family),
            "{agent_family} on /metrics"
        );
    }

    // every counter point of the test's pairs: the last OTLP value equals the scraped one
    let mut last: HashMap<SampleKey, (String, String)> = HashMap::new();
    for p in points.iter().filter(|p| p.kind == "Sum") {
        if p.attributes.get("server.port").map(|v| bare(v)) != Some(port.to_string().as_str()) {
            continue;
        }
        let (name, _) = prometheus_family(&p.metric, &p.unit, &p.kind);
        let mut labels: Vec<(String, String)> = p
            .attributes
            .iter()
            .map(|(k, v)| (k.replace('.', "_"), bare(v).to_string()))
            .collect();
        labels.sort();
        last.insert(
            (format!("{name}_total"), labels),
            (p.metric.clone(), p.value.clone().unwrap_or_default()),
        );
    }
    assert!(last.len() >= 8, "bytes and segments both ways at both ends: {last:?}");
    for (sample, (metric, value)) in &last {
        assert_eq!(
            samples.get(sample),
            Some(value),
            "{metric} {:?}: OTLP says {value}",
            sample.1
        );
    }
    let bytes = |role: &str, direction: &str| {
        last.iter()
            .find(|((name, labels), _)| {
                name == "flowtel_tcp_bytes_total"
                    && labels.contains(&("network_tcp_handshake_role".into(), role.into()))
                    && labels.contains(&("network_io_direction".into(), direction.into()))
            })
            .map(|(_, (_, v))| v.clone())
    };
    assert_eq!(bytes("client", "transmit").as_deref(), Some("300"));
    assert_eq!(bytes("server", "transmit").as_deref(), Some("7000"));
}

#[test]
fn prometheus_scrapes_the_measured_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (metrics_port, web_port) = (free_port(), free_port());
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: flowtel\n    scrape_interval: 1s\n    \
             static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n"
        ),
    )
    .expect("prometheus config");
    let _prometheus = start_prometheus(&config, dir.path(), web_port);
    let (_agent, _log) = start_agent(&[
        ("FLOWTEL_EXPORT__PROMETHEUS__ENABLED", "true".to_string()),
        (
            "FLOWTEL_EXPORT__PROMETHEUS__LISTEN",
            format!("127.0.0.1:{metrics_port}"),
        ),
        ("FLOWTEL_EXPORT__INTERVAL_SECS", "1".to_string()),
    ]);
    let port = exchange_known_bytes();
    let query = format!(
        "flowtel_tcp_bytes_total{{server_port=\"{port}\",network_tcp_handshake_role=\"client\",network_io_direction=\"receive\"}}"
    );
    let url = format!(
        "/api/v1/query?query={}",
        percent_encoding::utf8_percent_encode(&query, percent_encoding::NON_ALPHANUMERIC)
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let value = loop {
        let found = http_get(web_port, &url)
            .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
            .and_then(|json| json["data"]["result"][0]["value"][1].as_str().map(str::to_string));
        if let Some(v) = found {
            break v;
        }
        assert!(Instant::now() < deadline, "Prometheus never returned {query}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(value, "7000", "PromQL {query}");
    let page = http_get(metrics_port, "/metrics").expect("/metrics answers");
    assert!(page.contains("# TYPE flowtel_tcp_rtt_seconds histogram"), "{page}");
}

#[test]
fn top_5_of_50_peers_stays_bounded_exact_and_monotonic() {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("metrics.jsonl");
    let (mut agent, _lines) = start_agent(&[
        ("FLOWTEL_EXPORT__FILE_PATH", path.display().to_string()),
        ("FLOWTEL_EXPORT__INTERVAL_SECS", "1".into()),
        ("FLOWTEL_EXPORT__TOP_K", "5".into()),
    ]);
    let listeners: Vec<TcpListener> = (0..50)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let mut generated = 0u64;
    for round in 0..4u64 {
        std::thread::scope(|s| {
            for (i, l) in listeners.iter().enumerate() {
                let size = 100 + ((i as u64 * 7919 + round * 104_729) % 5000) as usize;
                s.spawn(move || {
                    let (mut c, _) = l.accept().expect("accept");
                    c.write_all(&vec![1u8; size]).expect("write");
                });
                let mut c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
                let mut buf = Vec::new();
                c.read_to_end(&mut buf).expect("read");
                assert_eq!(buf.len(), size);
                generated += 2 * size as u64; // counted at the client and at the server end
            }
        });
        std::thread::sleep(Duration::from_millis(1100));
    }
    std::thread::sleep(Duration::from_millis(1200));
    stop(&mut agent);

    let text = std::fs::read_to_string(&path).expect("metrics file");
    let mut last: HashMap<String, i64> = HashMap::new();
    let mut final_sum = 0;
    let mut exports = 0;
    for line in text.lines() {
        exports += 1;
        let request: ExportMetricsServiceRequest = serde_json::from_str(line).expect("OTLP JSON decodes");
        let metrics = &request.resource_metrics[0].scope_metrics[0].metrics;
        let Some(bytes) = metrics.iter().find(|m| m.name == "flowtel.tcp.bytes") else {
            continue;
        };
        let Some(metric::Data::Sum(sum)) = &bytes.data else {
            panic!("bytes is a sum")
        };
        let mut pairs = std::collections::HashSet::new();
        let mut total = 0;
        for p in &sum.data_points {
            let mut attrs: Vec<String> = p
                .attributes
                .iter()
                .map(|a| format!("{}={:?}", a.key, a.value))
                .collect();
            attrs.sort();
            let overflow = attrs.iter().any(|a| a.starts_with("otel.metric.overflow="));
            if !overflow {
                pairs.insert(
                    attrs
                        .iter()
                        .filter(|a| !a.starts_with("network.io.direction="))
                        .cloned()
                        .collect::<Vec<_>>(),
                );
            }
            let Some(number_data_point::Value::AsInt(v)) = p.value else {
                panic!("int value")
            };
            total += v;
            let id = format!("{attrs:?}@{}", p.start_time_unix_nano);
            if let Some(before) = last.insert(id.clone(), v) {
                assert!(v >= before, "cumulative series {id} went from {before} to {v}");
            }
        }
        assert!(pairs.len() <= 5, "at most K=5 pair series, got {}", pairs.len());
        assert!(total >= final_sum, "the sum over all series never shrinks");
        final_sum = total;
    }
    assert!(exports >= 4, "one export per second");
    assert!(
        final_sum >= generated as i64,
        "every byte generated is in some series: {final_sum} < {generated}"
    );
}

/// An OTLP gRPC receiver with TLS, recording requests and the `x-api-key` header it saw.
mod tls_receiver {
    use std::sync::{Arc, Mutex};

    use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
        MetricsService, MetricsServiceServer,
    };
    use opentelemetry_proto::tonic::collector::metrics::v1::{
        ExportMetricsServiceRequest, ExportMetricsServiceResponse,
    };
    use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
    use tonic::{Request, Response, Status};

    /// A request and the `x-api-key` header that came with it.
    pub type Received = (ExportMetricsServiceRequest, Option<String>);

    #[derive(Clone, Default)]
    pub struct Seen {
        pub requests: Arc<Mutex<Vec<Received>>>,
    }

    #[tonic::async_trait]
    impl MetricsService for Seen {
        async fn export(
            &self,
            request: Request<ExportMetricsServiceRequest>,
        ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
            let key = request
                .metadata()
                .get("x-api-key")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            self.requests
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((request.into_inner(), key));
            Ok(Response::new(ExportMetricsServiceResponse::default()))
        }
    }

    /// Serves on 127.0.0.1:`port` with the server identity in `dir` (see `certificates`); with
    /// `client_ca`, only clients with a certificate signed by it get through (mutual TLS).
    pub fn serve(runtime: &tokio::runtime::Runtime, port: u16, dir: &std::path::Path, client_ca: bool) -> Seen {
        let read = |name: &str| std::fs::read(dir.join(name)).expect("certificate file");
        let (cert, key, ca) = (read("server.pem"), read("server.key"), read("ca.pem"));
        let _ = rustls::crypto::ring::default_provider().install_default();
        let seen = Seen::default();
        let service = MetricsServiceServer::new(seen.clone());
        runtime.spawn(async move {
            let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
            if client_ca {
                tls = tls.client_ca_root(Certificate::from_pem(ca));
            }
            let mut server = Server::builder().tls_config(tls).expect("server TLS config");
            let _ = server.add_service(service).serve(([127, 0, 0, 1], port).into()).await;
        });
        seen
    }

    impl Seen {
        pub fn count(&self) -> usize {
            self.requests.lock().unwrap_or_else(|e| e.into_inner()).len()
        }
    }
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private CA (`ca.pem`), a server certificate for `localhost` and a client certificate, both
/// signed by it, in `dir`.
fn certificates(dir: &std::path::Path) {
    let days = ["-days", "1"];
    openssl(
        dir,
        &[
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-subj",
                "/CN=flowtel-test-ca",
            ][..],
            &days,
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("ext");
    for (name, subject) in [("server", "/CN=localhost"), ("client", "/CN=flowtel-agent")] {
        let (key, csr, pem, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        openssl(
            dir,
            &[
                "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", subject,
            ],
        );
        openssl(
            dir,
            &[
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    &pem,
                    "-extfile",
                    &ext,
                ][..],
                &days,
            ]
            .concat(),
        );
    }
}

/// Waits up to `timeout` for the receiver to get a request; false if none came.
fn received(seen: &tls_receiver::Seen, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while seen.count() == 0 {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    true
}

/// The receiver here has no gzip: flowtel's default compression must fall back to none. The
/// agent logs at trace level: the header's value must appear nowhere in it.
#[test]
fn otlp_grpc_over_tls_with_a_custom_ca_and_headers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    certificates(d);
    let runtime = runtime();
    let port = free_port();
    let seen = tls_receiver::serve(&runtime, port, d, false);
    let (mut agent, log) = start_agent(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("https://localhost:{port}")),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", d.join("ca.pem").display().to_string()),
        ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=s3cret-9f8e7d".to_string()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "1000".to_string()),
        ("FLOWTEL_LOG", "trace".to_string()),
    ]);
    let delivered = received(&seen, Duration::from_secs(20));
    stop(&mut agent);
    let log = lines(&log);
    assert!(delivered, "no request over TLS; agent log: {log:?}");
    let requests = seen.requests.lock().unwrap_or_else(|e| e.into_inner());
    let (request, key) = &requests[0];
    assert_eq!(key.as_deref(), Some("s3cret-9f8e7d"), "custom header delivered");
    assert!(
        log.iter().any(|l| l.contains("does not accept gzip")),
        "the fallback to no compression is logged"
    );
    assert!(
        !log.iter().any(|l| l.contains("OTLP export failed")),
        "the fallback happened within the first export"
    );
    let leaks: Vec<&String> = log.iter().filter(|l| l.contains("s3cret")).collect();
    assert!(leaks.is_empty(), "the header value was logged: {leaks:?}");
    assert!(request.resource_metrics[0].scope_metrics[0]
        .metrics
        .iter()
        .any(|m| m.name == "flowtel.tcp.bytes" || m.name.starts_with("flowtel.agent")));
}

/// Certificates are verified by default: a collector whose CA is not configured gets nothing,
/// and the log says why.
#[test]
fn an_unknown_certificate_authority_is_refused_until_configured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    certificates(d);
    let runtime = runtime();
    let port = free_port();
    let seen = tls_receiver::serve(&runtime, port, d, false);
    let (mut agent, log) = start_agent(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("https://localhost:{port}")),
        ("OTEL_METRIC_EXPORT_INTERVAL", "1000".to_string()),
    ]);
    let delivered = received(&seen, Duration::from_secs(4));
    stop(&mut agent);
    assert!(!delivered, "an unverified collector received a request");
    let failures: Vec<String> = lines(&log)
        .into_iter()
        .filter(|l| l.contains("OTLP export failed"))
        .collect();
    assert!(!failures.is_empty(), "the refusal is logged");
    assert!(
        failures[0].to_lowercase().contains("certificate") || failures[0].contains("UnknownIssuer"),
        "the log names the certificate problem: {failures:?}"
    );
}

/// Mutual TLS: a collector that demands a client certificate accepts the agent with its
/// certificate and key, and refuses it without.
#[test]
fn mutual_tls_with_a_client_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    certificates(d);
    let runtime = runtime();
    let path = |name: &str| d.join(name).display().to_string();
    let tls_env = |port: u16| {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("https://localhost:{port}")),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", path("ca.pem")),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1000".to_string()),
        ]
    };

    let without_port = free_port();
    let without = tls_receiver::serve(&runtime, without_port, d, true);
    let (mut agent, _log) = start_agent(&tls_env(without_port));
    let refused = !received(&without, Duration::from_secs(4));
    stop(&mut agent);
    assert!(refused, "no client certificate, no delivery");

    let with_port = free_port();
    let with = tls_receiver::serve(&runtime, with_port, d, true);
    let mut env = tls_env(with_port);
    env.push(("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", path("client.pem")));
    env.push(("OTEL_EXPORTER_OTLP_CLIENT_KEY", path("client.key")));
    let (mut agent, log) = start_agent(&env);
    let delivered = received(&with, Duration::from_secs(20));
    stop(&mut agent);
    assert!(delivered, "mutual TLS delivery; agent log: {:?}", lines(&log));
}
