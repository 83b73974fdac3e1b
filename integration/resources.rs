//! Resources, categories, monitors and top contributors from real traffic: a hub namespace
//! ("this host", 10.71.1.10 in subnet app-a, zone-a) talks through veths to four peers placed,
//! by routes, in the same subnet, in subnet app-b of zone-b, in a configured S3 range and on
//! the "internet". `flowtel snapshot --top` and `flowtel run` (OTLP JSON file) both watch it.
mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point, NumberDataPoint};
use serde_json::Value as Json;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_flowtel");
const HUB_ADDR: &str = "10.71.1.10";
const REQUEST: usize = 100;
const CONNECTIONS: usize = 3;

/// One peer service: where it lives and how much each connection gets back.
struct Target {
    spoke: usize,
    addr: &'static str,
    port: u16,
    response: usize,
}

const TARGETS: [Target; 5] = [
    Target {
        spoke: 0,
        addr: "10.71.1.20",
        port: 8080,
        response: 300_000,
    },
    Target {
        spoke: 1,
        addr: "10.71.2.20",
        port: 5432,
        response: 900_000,
    },
    Target {
        spoke: 1,
        addr: "10.71.2.20",
        port: 6379,
        response: 600_000,
    },
    Target {
        spoke: 2,
        addr: "203.0.113.20",
        port: 443,
        response: 400_000,
    },
    Target {
        spoke: 3,
        addr: "198.51.100.20",
        port: 443,
        response: 200_000,
    },
];

const IP_RANGES: &str = r#"{
  "syncToken": "1", "createDate": "2026-11-27-00-00-00",
  "prefixes": [
    { "ip_prefix": "203.0.0.0/16", "region": "us-test-1", "service": "AMAZON", "network_border_group": "us-test-1" },
    { "ip_prefix": "203.0.113.0/24", "region": "us-test-1", "service": "S3", "network_border_group": "us-test-1" },
    { "ip_prefix": "203.0.113.0/24", "region": "us-test-1", "service": "AMAZON", "network_border_group": "us-test-1" }
  ],
  "ipv6_prefixes": []
}"#;

fn config(dir: &std::path::Path) -> std::path::PathBuf {
    let ranges = dir.join("ip-ranges.json");
    std::fs::write(&ranges, IP_RANGES).expect("write ip-ranges.json");
    let path = dir.join("flowtel.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[sampler]
poll_interval_ms = 200

[resources.host]
zone = "zone-a"
region = "r1"

[resources.networks]
"10.71.1.0/24" = {{ name = "app-a", vpc = "vpc-1", zone = "zone-a", region = "r1" }}
"10.71.2.0/24" = {{ name = "app-b", vpc = "vpc-1", zone = "zone-b", region = "r1" }}

[[resources.service_lists]]
path = "{}"
format = "aws"

[[monitors]]
name = "a-to-b"
local = [{{ subnet = "app-a" }}]
remote = [{{ subnet = "app-b" }}]

[[monitors]]
name = "a-to-s3"
local = [{{ zone = "zone-a" }}]
remote = [{{ service = "S3" }}]

[[monitors]]
name = "a-everywhere"
local = [{{ subnet = "app-a" }}]
remote = ["everywhere"]
"#,
            ranges.display()
        ),
    )
    .expect("write config");
    path
}

/// Puts the hub at HUB_ADDR and each target at its address, reachable both ways by routes.
fn place(hub: &Hub) {
    run_in(
        &hub.hub_ns,
        "ip",
        &["addr", "add", &format!("{HUB_ADDR}/32"), "dev", "lo"],
    );
    let mut placed = Vec::new();
    for t in &TARGETS {
        if placed.contains(&t.addr) {
            continue;
        }
        placed.push(t.addr);
        let spoke = &hub.spokes[t.spoke];
        run_in(
            &spoke.ns,
            "ip",
            &["addr", "add", &format!("{}/32", t.addr), "dev", "lo"],
        );
        run_in(
            &spoke.ns,
            "ip",
            &[
                "route",
                "add",
                &format!("{HUB_ADDR}/32"),
                "via",
                &spoke.hub_addr.to_string(),
            ],
        );
        run_in(
            &hub.hub_ns,
            "ip",
            &[
                "route",
                "add",
                &format!("{}/32", t.addr),
                "via",
                &spoke.addr.to_string(),
                "src",
                HUB_ADDR,
            ],
        );
    }
}

/// CONNECTIONS request/response exchanges with every target, one at a time.
fn traffic(hub: &Hub) {
    let listeners: Vec<TcpListener> = TARGETS
        .iter()
        .map(|t| {
            VethPair::in_ns(&hub.spokes[t.spoke].ns, || {
                TcpListener::bind((t.addr.parse::<IpAddr>().expect("ip"), t.port)).expect("bind target")
            })
        })
        .collect();
    std::thread::scope(|s| {
        for (t, listener) in TARGETS.iter().zip(&listeners) {
            s.spawn(move || {
                for _ in 0..CONNECTIONS {
                    let (mut c, _) = listener.accept().expect("accept");
                    let mut buf = vec![0u8; REQUEST];
                    c.read_exact(&mut buf).expect("request");
                    c.write_all(&vec![7u8; t.response]).expect("response");
                }
            });
        }
        VethPair::in_ns(&hub.hub_ns, || {
            for t in &TARGETS {
                let target = SocketAddr::new(t.addr.parse().expect("ip"), t.port);
                for _ in 0..CONNECTIONS {
                    let mut c = TcpStream::connect_timeout(&target, Duration::from_secs(5)).expect("connect");
                    assert_eq!(c.local_addr().expect("local").ip().to_string(), HUB_ADDR);
                    c.write_all(&[1u8; REQUEST]).expect("send");
                    let mut got = Vec::new();
                    c.read_to_end(&mut got).expect("receive");
                    assert_eq!(got.len(), t.response);
                }
            }
        });
    });
}

fn target_json<'a>(pairs: &'a [Json], t: &Target) -> &'a Json {
    pairs
        .iter()
        .find(|p| p["local"] == HUB_ADDR && p["remote"] == t.addr && p["service_port"] == t.port)
        .unwrap_or_else(|| panic!("no client pair to {}:{} in {pairs:?}", t.addr, t.port))
}

fn bytes(p: &Json) -> u64 {
    p["bytes_sent"].as_u64().expect("bytes_sent") + p["bytes_received"].as_u64().expect("bytes_received")
}

/// Both ends' bytes of all exchanges with `t`.
fn exchanged(t: &Target) -> u64 {
    (CONNECTIONS * (REQUEST + t.response)) as u64
}

#[test]
fn categories_monitors_and_top_contributors_from_real_traffic() {
    let _serial = serial();
    let hub = Hub::new(221, 4);
    place(&hub);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path());
    let metrics_file = dir.path().join("metrics.jsonl");

    let mut snapshot = Reaped(
        Command::new(BIN)
            .args(["--config", config.to_str().expect("utf8")])
            .args(["snapshot", "--seconds", "6", "--top", "10", "--by", "bytes", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("snapshot starts"),
    );
    let mut agent = Reaped(
        Command::new(BIN)
            .args(["--config", config.to_str().expect("utf8"), "run"])
            .env("FLOWTEL_EXPORT__FILE_PATH", &metrics_file)
            .env("FLOWTEL_EXPORT__INTERVAL_SECS", "1")
            .stderr(Stdio::piped())
            .spawn()
            .expect("run starts"),
    );
    let _snapshot_log = wait_logged(&mut snapshot.0, "snapshot window opened");
    let _agent_log = wait_attached(&mut agent.0);
    traffic(&hub);
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: signalling our own child process by pid.
    assert_eq!(unsafe { libc::kill(agent.0.id() as i32, libc::SIGTERM) }, 0);
    assert!(agent.0.wait().expect("agent exits").success());
    let mut out = Vec::new();
    snapshot
        .0
        .stdout
        .take()
        .expect("stdout")
        .read_to_end(&mut out)
        .expect("snapshot output");
    assert!(snapshot.0.wait().expect("snapshot exits").success());

    // snapshot --top: categories, resources, order within a category
    let json: Json = serde_json::from_slice(&out).expect("snapshot JSON");
    let top = &json["top"]["categories"];
    let list = |c: &str| top[c].as_array().cloned().unwrap_or_default();
    let expect = [
        (&TARGETS[0], "intra_zone"),
        (&TARGETS[1], "inter_zone"),
        (&TARGETS[2], "inter_zone"),
        (&TARGETS[3], "service"),
        (&TARGETS[4], "internet"),
    ];
    for (t, category) in expect {
        let pair = target_json(&list(category), t).clone();
        assert_eq!(pair["category"], category, "{pair}");
        assert_eq!(pair["role"], "client");
        assert_eq!(bytes(&pair), exchanged(t), "{}:{}", t.addr, t.port);
        assert_eq!(pair["local_resource"]["subnet"], "app-a");
    }
    let s3 = target_json(&list("service"), &TARGETS[3]).clone();
    assert_eq!(s3["peer_service"], "S3", "the specific service, not AMAZON");
    assert_eq!(s3["peer_resource"]["region"], "us-test-1");
    let b = target_json(&list("inter_zone"), &TARGETS[1]).clone();
    assert_eq!(
        (&b["peer_resource"]["subnet"], &b["peer_resource"]["zone"]),
        (&Json::from("app-b"), &Json::from("zone-b"))
    );
    let ports: Vec<u64> = list("inter_zone")
        .iter()
        .filter(|p| p["remote"] == TARGETS[1].addr || p["local"] == TARGETS[1].addr)
        .map(|p| p["service_port"].as_u64().expect("port"))
        .collect();
    assert_eq!(
        ports,
        vec![5432, 5432, 6379, 6379],
        "largest first: both ends of 5432, then 6379"
    );

    // monitor rollups: every matching pair, client side for a-to-b and a-to-s3
    let monitor = |name: &str| -> u64 {
        let m = json["monitors"]
            .as_array()
            .expect("monitors")
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("monitor {name}"))
            .clone();
        bytes(&m)
    };
    assert_eq!(monitor("a-to-b"), exchanged(&TARGETS[1]) + exchanged(&TARGETS[2]));
    assert_eq!(monitor("a-to-s3"), exchanged(&TARGETS[3]));
    // the hub's five client pairs, and the app-a peer's server pair (its local end is app-a)
    let everything: u64 = TARGETS.iter().map(exchanged).sum::<u64>() + exchanged(&TARGETS[0]);
    assert_eq!(monitor("a-everywhere"), everything);

    // the same through OTLP: pair attributes, monitor series, the host on the resource
    let text = std::fs::read_to_string(&metrics_file).expect("metrics file");
    let request: ExportMetricsServiceRequest =
        serde_json::from_str(text.lines().last().expect("an export")).expect("OTLP JSON");
    let resource = request.resource_metrics[0].resource.as_ref().expect("resource");
    let resource_attr = |k: &str| {
        resource
            .attributes
            .iter()
            .find(|a| a.key == k)
            .and_then(|a| a.value.clone())
            .and_then(|v| v.value)
    };
    assert_eq!(
        resource_attr("cloud.availability_zone"),
        Some(Value::StringValue("zone-a".into()))
    );
    assert_eq!(resource_attr("cloud.region"), Some(Value::StringValue("r1".into())));
    let metrics = &request.resource_metrics[0].scope_metrics[0].metrics;
    let Some(metric::Data::Sum(sum)) = &metrics
        .iter()
        .find(|m| m.name == "flowtel.tcp.bytes")
        .expect("bytes metric")
        .data
    else {
        panic!("bytes is a sum")
    };
    let attr = |p: &NumberDataPoint, k: &str| -> Option<String> {
        p.attributes
            .iter()
            .find(|a| a.key == k)
            .and_then(|a| a.value.clone())
            .and_then(|v| v.value)
            .map(|v| match v {
                Value::StringValue(s) => s,
                Value::IntValue(i) => i.to_string(),
                other => format!("{other:?}"),
            })
    };
    let value = |p: &NumberDataPoint| match p.value {
        Some(number_data_point::Value::AsInt(v)) => v as u64,
        _ => 0,
    };
    let s3_points: Vec<&NumberDataPoint> = sum
        .data_points
        .iter()
        .filter(|p| {
            attr(p, "network.peer.address").as_deref() == Some(TARGETS[3].addr)
                && attr(p, "network.local.address").as_deref() == Some(HUB_ADDR)
        })
        .collect();
    assert_eq!(s3_points.len(), 2, "transmit and receive");
    for p in &s3_points {
        assert_eq!(attr(p, "flowtel.flow.category").as_deref(), Some("service"));
        assert_eq!(attr(p, "flowtel.peer.service").as_deref(), Some("S3"));
        assert_eq!(attr(p, "flowtel.peer.region").as_deref(), Some("us-test-1"));
        assert_eq!(attr(p, "flowtel.local.subnet").as_deref(), Some("app-a"));
        assert_eq!(attr(p, "flowtel.local.zone").as_deref(), Some("zone-a"));
    }
    assert_eq!(s3_points.iter().map(|p| value(p)).sum::<u64>(), exchanged(&TARGETS[3]));
    let monitor_points: Vec<&NumberDataPoint> = sum
        .data_points
        .iter()
        .filter(|p| attr(p, "flowtel.monitor").as_deref() == Some("a-to-b"))
        .collect();
    assert_eq!(monitor_points.len(), 2);
    assert!(
        monitor_points.iter().all(|p| attr(p, "network.peer.address").is_none()),
        "monitor series carry no addresses"
    );
    assert_eq!(
        monitor_points.iter().map(|p| value(p)).sum::<u64>(),
        exchanged(&TARGETS[1]) + exchanged(&TARGETS[2])
    );
}

#[test]
fn an_unknown_monitor_resource_is_a_one_line_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("flowtel.toml");
    std::fs::write(
        &path,
        "[resources.networks]\n\"10.0.1.0/24\" = { name = \"app-a\" }\n\n[[monitors]]\nname = \"m\"\nlocal = [{ subnet = \"app-z\" }]\nremote = [\"everywhere\"]\n",
    )
    .expect("write config");
    let out = Command::new(BIN)
        .args(["--config", path.to_str().expect("utf8"), "snapshot", "--seconds", "0"])
        .output()
        .expect("flowtel runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("monitor \"m\": unknown subnet \"app-z\" (known: app-a)"),
        "{stderr}"
    );
}
