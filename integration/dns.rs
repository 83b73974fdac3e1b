//! DNS names of peers, against a real DNS server: dnsmasq runs in a namespace of its own (the
//! "DNS host") that also serves TCP on every test port, joined by a veth to this host and by
//! another to a "container" namespace. Clients resolve with glibc (python's getaddrinfo) through
//! a resolv.conf bind-mounted for them alone, then connect; `flowtel run` must label the pair
//! with the name the client asked for.
//!
//! Addresses: this host 10.219.<lab>.1, the DNS host 10.219.<lab>.2 (dnsmasq) plus one address
//! per name (.10 up), the container 10.220.<lab>.1 and the DNS host's side 10.220.<lab>.2.
mod support;

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, Query};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use support::agent::{bare, dropped, file_exports, start_agent, start_rotel, stop, wait_listening, FilePoint, BIN};
use support::{free_port, http_get, nft_rule, nft_script, run, run_in, wait_for, ChildCgroup, Reaped, VethPair};

const NAME_ATTR: &str = "flowtel.peer.dns.name";

/// The python client: each argument is `resolve4=NAME`, `resolve6=NAME` (getaddrinfo only) or
/// `connect=HOST,PORT,FAMILY` (getaddrinfo, then connect and send 1,000 bytes).
const CLIENT: &str = r#"
import socket, sys
for action in sys.argv[1:]:
    kind, _, arg = action.partition("=")
    if kind in ("resolve4", "resolve6"):
        socket.getaddrinfo(arg, 80, socket.AF_INET if kind == "resolve4" else socket.AF_INET6, socket.SOCK_STREAM)
    elif kind == "connect":
        host, port, family = arg.rsplit(",", 2)
        family = socket.AF_INET if family == "4" else socket.AF_INET6
        address = socket.getaddrinfo(host, int(port), family, socket.SOCK_STREAM)[0][4]
        s = socket.socket(family, socket.SOCK_STREAM)
        s.connect(address)
        s.sendall(b"x" * 1000)
        s.close()
    else:
        sys.exit("unknown action " + action)
"#;

/// The DNS host's TCP server: accepts on every port given, reads each connection to its end.
const SERVER: &str = r#"
import socket, sys, threading
def serve(listener):
    while True:
        c, _ = listener.accept()
        while c.recv(65536):
            pass
        c.close()
for port in sys.argv[1:]:
    l = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    l.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind(("::", int(port)))
    l.listen(64)
    threading.Thread(target=serve, args=(l,), daemon=True).start()
print("listening", flush=True)
threading.Event().wait()
"#;

/// The lab: two namespaces and their veths, dnsmasq, the TCP server, and the resolv.conf
/// files. Everything is removed on drop, pass or fail: the namespaces take their veths, and
/// the processes are killed (`Reaped`) before them.
struct DnsLab {
    lab: u8,
    dns_ns: String,
    container_ns: String,
    host_if: String,
    dir: tempfile::TempDir,
    processes: Vec<Reaped>,
    /// /etc/netns/<container>/, which `ip netns exec` mounts over /etc
    netns_etc: PathBuf,
}

impl DnsLab {
    /// `records` are dnsmasq options (`--host-record=...`, `--cname=...`); `ports` the TCP
    /// ports the DNS host serves.
    fn new(lab: u8, records: &[String], ports: &[u16]) -> Self {
        let id = format!("{}-{lab}", std::process::id() % 100_000);
        let l = Self {
            lab,
            dns_ns: format!("ftdns-s-{id}"),
            container_ns: format!("ftdns-c-{id}"),
            host_if: format!("fdh{id}"),
            dir: tempfile::tempdir().expect("tempdir"),
            processes: Vec::new(),
            netns_etc: PathBuf::from(format!("/etc/netns/ftdns-c-{id}")),
        };
        let mut l = l;
        l.setup(records, ports);
        l
    }

    fn v4(&self, host: u8) -> String {
        lab_v4(self.lab, host)
    }

    fn v6(&self, host: u8) -> String {
        lab_v6(self.lab, host)
    }

    fn container_v4(&self, host: u8) -> String {
        format!("10.220.{}.{host}", self.lab)
    }

    fn setup(&mut self, records: &[String], ports: &[u16]) {
        let (s, c) = (self.dns_ns.clone(), self.container_ns.clone());
        run("ip", &["netns", "add", &s]);
        run("ip", &["netns", "add", &c]);
        let (to_host, to_container, container_if) = (
            format!("{}s", self.host_if),
            format!("{}d", self.host_if),
            format!("{}c", self.host_if),
        );
        run(
            "ip",
            &[
                "link",
                "add",
                &self.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &to_host,
                "netns",
                &s,
            ],
        );
        run(
            "ip",
            &[
                "link",
                "add",
                &container_if,
                "netns",
                &c,
                "type",
                "veth",
                "peer",
                "name",
                &to_container,
                "netns",
                &s,
            ],
        );
        run(
            "ip",
            &["addr", "add", &format!("{}/24", self.v4(1)), "dev", &self.host_if],
        );
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/64", self.v6(1)),
                "dev",
                &self.host_if,
                "nodad",
            ],
        );
        run("ip", &["link", "set", &self.host_if, "up"]);
        run_in(&s, "ip", &["link", "set", "lo", "up"]);
        for host in [2u8, 10, 11, 12, 13, 14, 15, 16, 17, 18] {
            let prefix = if host == 2 { 24 } else { 32 };
            run_in(
                &s,
                "ip",
                &["addr", "add", &format!("{}/{prefix}", self.v4(host)), "dev", &to_host],
            );
            let prefix6 = if host == 2 { 64 } else { 128 };
            run_in(
                &s,
                "ip",
                &[
                    "addr",
                    "add",
                    &format!("{}/{prefix6}", self.v6(host)),
                    "dev",
                    &to_host,
                    "nodad",
                ],
            );
        }
        run_in(&s, "ip", &["link", "set", &to_host, "up"]);
        run_in(
            &s,
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/24", self.container_v4(2)),
                "dev",
                &to_container,
            ],
        );
        run_in(
            &s,
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/32", self.container_v4(10)),
                "dev",
                &to_container,
            ],
        );
        run_in(&s, "ip", &["link", "set", &to_container, "up"]);
        run_in(&c, "ip", &["link", "set", "lo", "up"]);
        run_in(
            &c,
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/24", self.container_v4(1)),
                "dev",
                &container_if,
            ],
        );
        run_in(&c, "ip", &["link", "set", &container_if, "up"]);

        let mut dnsmasq = Command::new("ip");
        dnsmasq.args([
            "netns",
            "exec",
            &s,
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
        ]);
        dnsmasq.args([
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--user=root",
            "--pid-file",
        ]);
        dnsmasq.arg(format!(
            "--listen-address={},{},{}",
            self.v4(2),
            self.v6(2),
            self.container_v4(2)
        ));
        dnsmasq.args(["--log-facility=-", "--log-queries"]).args(records);
        dnsmasq.arg(format!("--host-record=ready.flowtel.test,{}", self.v4(2)));
        let log = std::fs::File::create(self.dir.path().join("dnsmasq.log")).expect("log");
        self.processes.push(Reaped(
            dnsmasq
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("dnsmasq starts"),
        ));
        let script = self.dir.path().join("server.py");
        std::fs::write(&script, SERVER).expect("server script");
        let mut server = Command::new("ip");
        server.args(["netns", "exec", &s, "python3", &script.display().to_string()]);
        server.args(ports.iter().map(u16::to_string));
        let mut server = Reaped(
            server
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("server starts"),
        );
        let mut first = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(server.0.stdout.take().expect("stdout")),
            &mut first,
        )
        .expect("server says it listens");
        self.processes.push(server);
        std::fs::write(self.dir.path().join("client.py"), CLIENT).expect("client script");
        for (file, options) in [("resolv.conf", ""), ("resolv-tcp.conf", "options use-vc\n")] {
            std::fs::write(
                self.dir.path().join(file),
                format!("nameserver {}\noptions attempts:2 timeout:2\n{options}", self.v4(2)),
            )
            .expect("resolv.conf");
        }
        std::fs::create_dir_all(&self.netns_etc).expect("/etc/netns");
        std::fs::write(
            self.netns_etc.join("resolv.conf"),
            format!("nameserver {}\noptions attempts:2 timeout:2\n", self.container_v4(2)),
        )
        .expect("container resolv.conf");
        // dnsmasq answers once it is up (it ignores names it has no record for)
        let mut probe = Message::query();
        probe.add_query(Query::query(
            Name::from_ascii("ready.flowtel.test.").expect("name"),
            RecordType::A,
        ));
        let probe: String = probe
            .to_vec()
            .expect("query")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        wait_for("dnsmasq answers", Duration::from_secs(10), || {
            Command::new("ip")
                .args(["netns", "exec", &s, "python3", "-c"])
                .arg(format!(
                    "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.5); \
                     s.sendto(bytes.fromhex('{probe}'), ('{}', 53)); s.recv(512)",
                    self.v4(2)
                ))
                .status()
                .is_ok_and(|s| s.success())
        });
    }

    /// Runs the python client on this host with the lab's resolver, in `cgroup` when given.
    fn client(&self, cgroup: Option<&Path>, tcp: bool, actions: &[String]) {
        let resolv = self
            .dir
            .path()
            .join(if tcp { "resolv-tcp.conf" } else { "resolv.conf" });
        let join = cgroup.map_or(String::new(), |c| format!("echo $$ > {}/cgroup.procs && ", c.display()));
        let script = format!(
            "{join}exec unshare -m sh -c 'mount --bind {} /etc/resolv.conf && exec python3 {} \"$@\"' client",
            resolv.display(),
            self.dir.path().join("client.py").display()
        );
        let status = Command::new("sh")
            .args(["-c", &format!("{script} \"$@\""), "sh"])
            .args(actions)
            .status()
            .expect("client runs");
        assert!(status.success(), "client {actions:?} failed");
    }

    /// Runs the python client inside the container namespace (its resolv.conf is the netns one).
    fn container_client(&self, actions: &[String]) {
        let status = Command::new("ip")
            .args(["netns", "exec", &self.container_ns, "python3"])
            .arg(self.dir.path().join("client.py"))
            .args(actions)
            .status()
            .expect("container client runs");
        assert!(status.success(), "container client {actions:?} failed");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dnsmasq.log")).unwrap_or_default()
    }
}

impl Drop for DnsLab {
    fn drop(&mut self) {
        self.processes.clear();
        for ns in [&self.dns_ns, &self.container_ns] {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
        let _ = Command::new("ip").args(["link", "delete", &self.host_if]).status();
        let _ = std::fs::remove_dir_all(&self.netns_etc);
        // /etc/netns itself, when this made it and nothing else is in it
        let _ = std::fs::remove_dir("/etc/netns");
    }
}

/// Lab `lab`'s DNS-host address `host`, IPv4 and IPv6.
fn lab_v4(lab: u8, host: u8) -> String {
    format!("10.219.{lab}.{host}")
}

fn lab_v6(lab: u8, host: u8) -> String {
    format!("fd00:f19:{lab}::{host:x}")
}

fn connect(host: &str, port: u16, family: u8) -> String {
    format!("connect={host},{port},{family}")
}

/// The agent, exporting to a file every second; `extra` adds settings.
fn agent(dir: &Path, extra: &[(&str, String)]) -> (Reaped, PathBuf) {
    let file = dir.join("metrics.jsonl");
    let mut envs = vec![
        ("FLOWTEL_EXPORT__FILE_PATH", file.display().to_string()),
        ("FLOWTEL_EXPORT__INTERVAL_SECS", "1".to_string()),
    ];
    envs.extend(extra.iter().cloned());
    let (agent, _log) = start_agent(&envs);
    (agent, file)
}

/// A byte point of the client pair to `port` in one export.
fn client_point(export: &[FilePoint], port: u16) -> Option<&FilePoint> {
    export.iter().find(|p| {
        p.metric == "flowtel.tcp.bytes"
            && p.attr("server.port") == Some(&port.to_string())
            && p.attr("network.tcp.handshake.role") == Some("client")
    })
}

/// The client pair to `port` in the last export that has it.
fn last_client_point(file: &Path, port: u16) -> Option<FilePoint> {
    file_exports(file)
        .iter()
        .rev()
        .find_map(|export| client_point(export, port).cloned())
}

/// The name on the client pair's byte series to `port` in the last export that has one.
fn client_name(file: &Path, port: u16) -> Option<Option<String>> {
    last_client_point(file, port).map(|p| p.attr(NAME_ATTR).map(str::to_string))
}

/// Waits for the client pair to `port` to be exported, and returns its name.
fn exported_name(file: &Path, port: u16) -> Option<String> {
    let mut name = None;
    wait_for(
        &format!("the pair to port {port} exported"),
        Duration::from_secs(15),
        || {
            name = client_name(file, port);
            name.is_some()
        },
    );
    name.flatten()
}

fn last_export(file: &Path) -> Vec<FilePoint> {
    file_exports(file).pop().unwrap_or_default()
}

fn agent_gauge(export: &[FilePoint], metric: &str) -> Option<i64> {
    export.iter().find(|p| p.metric == metric).map(|p| p.value)
}

#[test]
fn a_resolved_name_labels_the_pair_in_otlp_on_metrics_and_in_the_file() {
    let (p_api, p_api6, p_www) = (free_port(), free_port(), free_port());
    let _serial = support::serial();
    let records = vec![
        format!("--host-record=api.flowtel.test,{},{},300", lab_v4(1, 10), lab_v6(1, 10)),
        format!("--host-record=edge.cdn.flowtel.test,{},300", lab_v4(1, 11)),
        "--cname=www.flowtel.test,edge.cdn.flowtel.test,120".to_string(),
    ];
    let lab = DnsLab::new(1, &records, &[p_api, p_api6, p_www]);
    let rotel_log = lab.dir.path().join("rotel.log");
    let (grpc, http, metrics_port) = (free_port(), free_port(), free_port());
    let _rotel = start_rotel(grpc, http, &rotel_log);
    wait_listening(grpc);
    let (mut agent, file) = agent(
        lab.dir.path(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{grpc}")),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_string()),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1000".to_string()),
            ("FLOWTEL_EXPORT__PROMETHEUS__ENABLED", "true".to_string()),
            (
                "FLOWTEL_EXPORT__PROMETHEUS__LISTEN",
                format!("127.0.0.1:{metrics_port}"),
            ),
        ],
    );
    lab.client(
        None,
        false,
        &[
            connect("api.flowtel.test", p_api, 4),
            connect("api.flowtel.test", p_api6, 6),
            connect("www.flowtel.test", p_www, 4),
        ],
    );
    assert_eq!(
        exported_name(&file, p_api).as_deref(),
        Some("api.flowtel.test"),
        "A record"
    );
    assert_eq!(
        exported_name(&file, p_api6).as_deref(),
        Some("api.flowtel.test"),
        "AAAA record"
    );
    assert_eq!(
        exported_name(&file, p_www).as_deref(),
        Some("www.flowtel.test"),
        "a CNAME chain names the pair by the name asked for, not the target"
    );
    // the same pairs, with the same names, in OTLP and on /metrics
    let otlp_name = |port: u16| {
        let attr = |p: &support::agent::Point, key: &str| p.attributes.get(key).map(|v| bare(v).to_string());
        support::agent::rotel_points(&rotel_log)
            .into_iter()
            .find(|p| {
                p.metric == "flowtel.tcp.bytes"
                    && attr(p, "server.port") == Some(port.to_string())
                    && attr(p, "network.tcp.handshake.role").as_deref() == Some("client")
            })
            .and_then(|p| attr(&p, NAME_ATTR))
    };
    wait_for("rotel has the named pairs", Duration::from_secs(15), || {
        otlp_name(p_www).is_some() && otlp_name(p_api6).is_some()
    });
    assert_eq!(otlp_name(p_api).as_deref(), Some("api.flowtel.test"));
    assert_eq!(otlp_name(p_api6).as_deref(), Some("api.flowtel.test"));
    assert_eq!(otlp_name(p_www).as_deref(), Some("www.flowtel.test"));
    let page = http_get(metrics_port, "/metrics").expect("/metrics answers");
    for (port, name, peer) in [
        (p_api, "api.flowtel.test", lab.v4(10)),
        (p_api6, "api.flowtel.test", lab.v6(10)),
        (p_www, "www.flowtel.test", lab.v4(11)),
    ] {
        let line = page
            .lines()
            .find(|l| {
                l.starts_with("flowtel_tcp_bytes_total{")
                    && l.contains(&format!("server_port=\"{port}\""))
                    && l.contains("network_tcp_handshake_role=\"client\"")
            })
            .unwrap_or_else(|| panic!("no series for port {port} on /metrics"));
        assert!(line.contains(&format!("flowtel_peer_dns_name=\"{name}\"")), "{line}");
        assert!(line.contains(&format!("network_peer_address=\"{peer}\"")), "{line}");
    }
    let export = last_export(&file);
    let answers = agent_gauge(&export, "flowtel.agent.dns.answers");
    assert!(
        answers.is_some_and(|n| n >= 3),
        "the A, the AAAA and the CNAME's A record counted: {answers:?}"
    );
    assert!(agent_gauge(&export, "flowtel.agent.dns.cache.entries").is_some_and(|n| n >= 3));
    stop(&mut agent);
    assert!(
        lab.log().contains("query[A] www.flowtel.test"),
        "dnsmasq answered: {}",
        lab.log()
    );
}

#[test]
fn the_owners_own_resolution_wins_and_an_expired_name_is_not_given() {
    let _serial = support::serial();
    let (p_latest, p_own, p_short, p_expired) = (free_port(), free_port(), free_port(), free_port());
    let records = vec![
        format!("--host-record=a.flowtel.test,{},300", lab_v4(2, 12)),
        format!("--host-record=b.flowtel.test,{},300", lab_v4(2, 12)),
        format!("--host-record=short.flowtel.test,{},1", lab_v4(2, 13)),
    ];
    let lab = DnsLab::new(2, &records, &[p_latest, p_own, p_short, p_expired]);
    let other = ChildCgroup::named("-other");
    let (mut agent, file) = agent(lab.dir.path(), &[("FLOWTEL_DNS__MIN_TTL_SECS", "1".to_string())]);

    // two names for one address: the most recently resolved one
    lab.client(
        None,
        false,
        &[
            "resolve4=a.flowtel.test".into(),
            "resolve4=b.flowtel.test".into(),
            connect(&lab.v4(12), p_latest, 4),
        ],
    );
    assert_eq!(exported_name(&file, p_latest).as_deref(), Some("b.flowtel.test"));

    // ...unless the pair's owner resolved another one itself: a process in another cgroup
    // resolves a, then this one resolves b (now the most recent), then the other connects
    lab.client(Some(&other.0), false, &["resolve4=a.flowtel.test".into()]);
    lab.client(None, false, &["resolve4=b.flowtel.test".into()]);
    lab.client(Some(&other.0), false, &[connect(&lab.v4(12), p_own, 4)]);
    assert_eq!(
        exported_name(&file, p_own).as_deref(),
        Some("a.flowtel.test"),
        "the owner's own resolution wins over a more recent one by another cgroup"
    );

    // a name whose TTL (1 s, the floor set to 1 s) ran out is not given to a new pair
    lab.client(None, false, &[connect("short.flowtel.test", p_short, 4)]);
    assert_eq!(exported_name(&file, p_short).as_deref(), Some("short.flowtel.test"));
    std::thread::sleep(Duration::from_millis(2500));
    lab.client(None, false, &[connect(&lab.v4(13), p_expired, 4)]);
    assert_eq!(exported_name(&file, p_expired), None, "expired: no name");
    // the pair named before the expiry keeps its name, in an export made after it
    let after_expiry = last_export(&file);
    let short = client_point(&after_expiry, p_short).expect("the named pair is still exported");
    assert_eq!(short.attr(NAME_ATTR), Some("short.flowtel.test"));
    stop(&mut agent);
}

#[test]
fn dns_over_tcp_and_a_name_resolved_inside_a_container_namespace() {
    let _serial = support::serial();
    let (p_tcp, p_container) = (free_port(), free_port());
    let records = vec![
        format!("--host-record=tcp.flowtel.test,{},300", lab_v4(3, 15)),
        format!("--host-record=ctr.flowtel.test,10.220.3.10,300"),
    ];
    let lab = DnsLab::new(3, &records, &[p_tcp, p_container]);
    // this host's UDP queries are dropped: only DNS over TCP can answer it
    nft_rule(
        &lab.dns_ns,
        "in",
        "input",
        &format!("ip saddr {} udp dport 53 drop", lab.v4(1)),
    );
    let (mut agent, file) = agent(lab.dir.path(), &[]);
    lab.client(None, true, &[connect("tcp.flowtel.test", p_tcp, 4)]);
    assert_eq!(
        exported_name(&file, p_tcp).as_deref(),
        Some("tcp.flowtel.test"),
        "DNS over TCP"
    );
    lab.container_client(&[connect("ctr.flowtel.test", p_container, 4)]);
    assert_eq!(
        exported_name(&file, p_container).as_deref(),
        Some("ctr.flowtel.test"),
        "resolved and connected inside another network namespace"
    );
    stop(&mut agent);
    let log = lab.log();
    assert!(log.contains("query[A] tcp.flowtel.test"), "{log}");
}

/// A DNS response from `name` to `address` with TTL 300.
fn response(name: &str, address: std::net::Ipv4Addr) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.message_type = MessageType::Response;
    let name = Name::from_ascii(name).expect("name");
    m.add_query(Query::query(name.clone(), RecordType::A));
    m.add_answer(Record::from_rdata(name, 300, RData::A(A(address))));
    m.to_vec().expect("encode")
}

#[test]
fn a_malformed_or_truncated_answer_is_counted_and_changes_nothing() {
    let _serial = support::serial();
    let (p_evil, p_good) = (free_port(), free_port());
    let lab = DnsLab::new(4, &[], &[p_evil, p_good]);
    let (mut agent, file) = agent(lab.dir.path(), &[]);
    wait_for("a first export", Duration::from_secs(10), || {
        !last_export(&file).is_empty()
    });
    let before = dropped(&last_export(&file), "dns_malformed");

    // from port 53 of an address dnsmasq does not hold, to a socket on this host
    let receiver = UdpSocket::bind((lab.v4(1).as_str(), 0)).expect("receiver");
    receiver
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let to = receiver.local_addr().expect("address");
    let evil = response("evil.flowtel.test.", lab.v4(16).parse().expect("v4"));
    let good = response("good.flowtel.test.", lab.v4(17).parse().expect("v4"));
    let sent = [vec![0xff; 7], evil[..evil.len() - 5].to_vec(), good];
    let from = lab.v4(14);
    VethPair::in_ns(&lab.dns_ns, || {
        let sender = UdpSocket::bind((from.as_str(), 53)).expect("port 53 in the DNS host");
        for payload in &sent {
            sender.send_to(payload, to).expect("sent");
        }
    });
    let mut buf = [0u8; 1500];
    for payload in &sent {
        let (n, _) = receiver.recv_from(&mut buf).expect("delivered");
        assert_eq!(n, payload.len());
    }
    lab.client(
        None,
        false,
        &[connect(&lab.v4(16), p_evil, 4), connect(&lab.v4(17), p_good, 4)],
    );
    assert_eq!(
        exported_name(&file, p_good).as_deref(),
        Some("good.flowtel.test"),
        "a well-formed answer after the bad ones is used"
    );
    assert_eq!(exported_name(&file, p_evil), None, "the truncated answer named nothing");
    let after = dropped(&last_export(&file), "dns_malformed");
    assert_eq!(after - before, 2, "the garbage and the truncated answer are counted");
    stop(&mut agent);
}

#[test]
fn a_service_name_stays_with_the_address_the_client_connected_to_after_nat_reversal() {
    let _serial = support::serial();
    let port = free_port();
    let service = lab_v4(5, 50);
    let records = vec![
        format!("--host-record=svc.flowtel.test,{service},300"),
        format!("--host-record=backend.flowtel.test,{},300", lab_v4(5, 18)),
    ];
    let lab = DnsLab::new(5, &records, &[port]);
    let table = format!("flowtel_dns_{}", std::process::id());
    let _nat = NatRule::new(&table, &service, port, &lab.v4(18));
    let (mut agent, file) = agent(
        lab.dir.path(),
        &[("FLOWTEL_NAT__DESTINATIONS", format!("[\"{service}/32\"]"))],
    );
    // the backend's own name is the more recent resolution of its address
    lab.client(
        None,
        false,
        &[
            connect("svc.flowtel.test", port, 4),
            "resolve4=backend.flowtel.test".into(),
        ],
    );
    let mut pair = None;
    wait_for("the reversed pair exported", Duration::from_secs(15), || {
        pair = last_client_point(&file, port);
        pair.is_some()
    });
    let pair = pair.expect("pair");
    assert_eq!(
        pair.attr("network.peer.address"),
        Some(lab.v4(18).as_str()),
        "the backend is the peer"
    );
    assert_eq!(pair.attr("flowtel.peer.original.address"), Some(service.as_str()));
    assert_eq!(
        pair.attr(NAME_ATTR),
        Some("svc.flowtel.test"),
        "the name stays with the address the client connected to"
    );
    stop(&mut agent);
}

/// An nftables DNAT rule on this host's output path, removed on drop.
struct NatRule(String);

impl NatRule {
    fn new(table: &str, service: &str, port: u16, backend: &str) -> Self {
        let rule = Self(table.to_string());
        let script = format!(
            "add table ip {table}\n\
             add chain ip {table} out {{ type nat hook output priority -100; policy accept; }}\n\
             add rule ip {table} out ip daddr {service} tcp dport {port} dnat to {backend}\n"
        );
        nft_script(&script, "the DNAT rule");
        rule
    }
}

impl Drop for NatRule {
    fn drop(&mut self) {
        let _ = Command::new("nft").args(["delete", "table", "ip", &self.0]).status();
    }
}

#[test]
fn snapshot_and_top_show_the_name() {
    let _serial = support::serial();
    let port = free_port();
    let records = vec![format!("--host-record=api.flowtel.test,{},300", lab_v4(6, 10))];
    let lab = DnsLab::new(6, &records, &[port]);
    let spawn = |args: &[&str]| {
        let mut child = Reaped(
            Command::new(BIN)
                .args(args)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("flowtel starts"),
        );
        // attached before the client runs; the rest of its log is drained, never dropped
        let mut rest = support::wait_attached(&mut child.0);
        std::thread::spawn(move || std::io::copy(&mut rest, &mut std::io::sink()));
        child
    };
    let mut snapshot = spawn(&["snapshot", "--seconds", "4", "--json"]);
    let mut top = spawn(&["top", "--once"]);
    lab.client(None, false, &[connect("api.flowtel.test", port, 4)]);
    let output = |child: &mut Reaped| {
        let mut out = String::new();
        std::io::Read::read_to_string(&mut child.0.stdout.take().expect("stdout"), &mut out).expect("output");
        assert!(child.0.wait().expect("exits").success());
        out
    };
    let top_text = output(&mut top);
    let snapshot_json: serde_json::Value = serde_json::from_str(&output(&mut snapshot)).expect("snapshot JSON");
    let pair = snapshot_json["pairs"]
        .as_array()
        .expect("pairs")
        .iter()
        .find(|p| p["service_port"] == port && p["role"] == "client")
        .unwrap_or_else(|| panic!("no client pair to {port}: {snapshot_json}"));
    assert_eq!(pair["peer_dns_name"], "api.flowtel.test");
    assert!(
        top_text
            .lines()
            .any(|l| l.contains("api.flowtel.test") && l.contains(&port.to_string())),
        "top shows the name in the peer column: {top_text}"
    );
}
