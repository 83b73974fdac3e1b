//! Shared harness for the kernel tests: a monitor polled until a condition holds, network
//! namespaces joined by veth that are removed even when a test fails, and traffic endpoints.
#![allow(dead_code)]

use std::io::BufRead;
use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, ChildStderr, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use flowtel::flows::{FlowCounters, FlowKey, FlowTableConfig, Role};
use flowtel::poller::Poller;
use flowtel::sampler::SamplerConfig;

pub mod agent;
pub mod fake_kube;

static SERIAL: Mutex<()> = Mutex::new(());

/// A child cgroup of the watched hierarchy, removed on drop, after the processes moved into it
/// have exited.
pub struct ChildCgroup(pub std::path::PathBuf);

impl ChildCgroup {
    pub fn new() -> Self {
        Self::named("")
    }

    pub fn named(suffix: &str) -> Self {
        let root = flowtel::sampler::cgroup2_root().expect("cgroup v2 mounted");
        let path = root.join(format!("flowtel-test-{}{suffix}", std::process::id()));
        std::fs::create_dir_all(&path).expect("create child cgroup");
        Self(path)
    }
}

impl Drop for ChildCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Applies an nftables script (`nft -f -`); `what` names it in the failure.
pub fn nft_script(script: &str, what: &str) {
    let mut nft = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("nft runs");
    nft.stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("nft script");
    assert!(nft.wait().expect("nft").success(), "{what}");
}

/// Kernel tests run one at a time: each attaches its own programs to the same cgroup, and the
/// fault and timing tests must not share two cores with a churn or bulk test.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How long a test waits for the kernel to report what it expects before failing.
pub const SETTLE: Duration = Duration::from_secs(15);

pub fn poller() -> Poller {
    poller_with(SamplerConfig::default())
}

pub fn poller_with(config: SamplerConfig) -> Poller {
    Poller::start(config, FlowTableConfig::default()).expect("sampler starts (run the kernel tests as root)")
}

/// Polls until `done` holds for the table; panics with the last state otherwise.
pub fn poll_until(monitor: &mut Poller, what: &str, mut done: impl FnMut(&Poller) -> bool) {
    let deadline = Instant::now() + SETTLE;
    loop {
        monitor.poll(Instant::now()).expect("poll");
        if done(monitor) {
            return;
        }
        if Instant::now() > deadline {
            let pairs: Vec<String> = monitor
                .table()
                .pairs()
                .iter()
                .map(|p| format!("{} {:?}", p.key, p.counters))
                .collect();
            panic!("timed out waiting for {what}; table:\n{}", pairs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn counters(monitor: &Poller, key: &FlowKey) -> FlowCounters {
    monitor.table().get(key).map(|p| p.counters.clone()).unwrap_or_default()
}

pub fn key(local: IpAddr, remote: IpAddr, service_port: u16, role: Role) -> FlowKey {
    FlowKey {
        local,
        remote,
        service_port,
        role,
    }
}

/// Both ends of a connection set as flow keys.
pub fn pair_keys(client: IpAddr, server: IpAddr, port: u16) -> (FlowKey, FlowKey) {
    (
        key(client, server, port, Role::Client),
        key(server, client, port, Role::Server),
    )
}

pub fn write_all_and_finish(stream: &mut TcpStream, bytes: usize) {
    let chunk = vec![0x5au8; 64 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        stream.write_all(&chunk[..n]).expect("write");
        left -= n;
    }
    stream.shutdown(Shutdown::Write).expect("shutdown write");
}

pub fn read_to_end(stream: &mut TcpStream) -> usize {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return total,
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// One request/response exchange: the client sends `request` bytes and half-closes; the server
/// reads them all, answers `response` bytes and closes. Returns what each side received.
pub fn exchange(listener: &TcpListener, server_addr: SocketAddr, request: usize, response: usize) -> (usize, usize) {
    std::thread::scope(|s| {
        let server = s.spawn(|| {
            let (mut conn, _) = listener.accept().expect("accept");
            let got = read_to_end(&mut conn);
            write_all_and_finish(&mut conn, response);
            got
        });
        let mut client = TcpStream::connect(server_addr).expect("connect");
        write_all_and_finish(&mut client, request);
        let client_got = read_to_end(&mut client);
        drop(client);
        (server.join().expect("server thread"), client_got)
    })
}

static NEXT_NS: AtomicU32 = AtomicU32::new(0);

pub fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} not runnable: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn run_in(ns: &str, cmd: &str, args: &[&str]) {
    let mut full = vec!["netns", "exec", ns, cmd];
    full.extend_from_slice(args);
    run("ip", &full);
}

/// Two network namespaces ("hosts") joined by a veth pair, with IPv4 and IPv6 addresses.
/// Dropping it deletes both namespaces, and with them the veths, nftables rules and qdiscs the
/// test put inside: nothing is left behind, pass or fail.
pub struct VethPair {
    pub client_ns: String,
    pub server_ns: String,
    pub client_v4: IpAddr,
    pub server_v4: IpAddr,
    pub client_v6: IpAddr,
    pub server_v6: IpAddr,
    pub client_if: String,
    pub server_if: String,
}

impl VethPair {
    /// `subnet` picks 10.213.<subnet>.0/24 and fd00:f10:<subnet>::/64, unique per test.
    pub fn new(subnet: u8) -> Self {
        let id = format!(
            "{}-{}",
            std::process::id() % 100_000,
            NEXT_NS.fetch_add(1, Ordering::Relaxed)
        );
        let pair = Self {
            client_ns: format!("ftl-c-{id}"),
            server_ns: format!("ftl-s-{id}"),
            client_v4: format!("10.213.{subnet}.1").parse().expect("v4"),
            server_v4: format!("10.213.{subnet}.2").parse().expect("v4"),
            client_v6: format!("fd00:f10:{subnet}::1").parse().expect("v6"),
            server_v6: format!("fd00:f10:{subnet}::2").parse().expect("v6"),
            client_if: format!("vc{id}"),
            server_if: format!("vs{id}"),
        };
        // constructed first so that a failing setup step still cleans up
        pair.setup();
        pair
    }

    fn setup(&self) {
        run("ip", &["netns", "add", &self.client_ns]);
        run("ip", &["netns", "add", &self.server_ns]);
        run(
            "ip",
            &[
                "link",
                "add",
                &self.client_if,
                "netns",
                &self.client_ns,
                "type",
                "veth",
                "peer",
                "name",
                &self.server_if,
                "netns",
                &self.server_ns,
            ],
        );
        for (ns, ifname, v4, v6) in [
            (&self.client_ns, &self.client_if, self.client_v4, self.client_v6),
            (&self.server_ns, &self.server_if, self.server_v4, self.server_v6),
        ] {
            run_in(ns, "ip", &["link", "set", "lo", "up"]);
            run_in(ns, "ip", &["addr", "add", &format!("{v4}/24"), "dev", ifname]);
            run_in(ns, "ip", &["addr", "add", &format!("{v6}/64"), "dev", ifname, "nodad"]);
            run_in(ns, "ip", &["link", "set", ifname, "up"]);
        }
    }

    /// Runs `f` on a thread inside namespace `ns`: sockets it creates live there.
    pub fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{ns}");
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                // SAFETY: setns on a valid nsfs fd; affects only this scoped thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("namespace thread")
        })
    }

    /// Adds an nftables input-hook rule inside `ns` (table `inet flowtel_test`, chain `in`).
    pub fn nft_input_rule(ns: &str, rule: &str) {
        nft_rule(ns, "in", "input", rule);
    }

    pub fn nft_flush(ns: &str) {
        run_in(ns, "nft", &["delete", "table", "inet", "flowtel_test"]);
    }

    /// The kernel's own TCP MIB counter (e.g. RetransSegs) in namespace `ns`.
    pub fn tcp_mib(ns: &str, name: &str) -> u64 {
        Self::mib(ns, "snmp", "Tcp:", name)
    }

    /// The kernel's own TcpExt counter (e.g. TCPTimeouts) in namespace `ns`.
    pub fn tcpext_mib(ns: &str, name: &str) -> u64 {
        Self::mib(ns, "netstat", "TcpExt:", name)
    }

    /// One counter from /proc/net/`file` as seen inside `ns`: a header line of names followed
    /// by a line of values, both starting with `prefix`.
    fn mib(ns: &str, file: &str, prefix: &str, name: &str) -> u64 {
        let path = format!("/proc/thread-self/net/{file}");
        let text = Self::in_ns(ns, || {
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
        });
        let mut lines = text.lines().filter(|l| l.starts_with(prefix));
        let header = lines.next().unwrap_or_else(|| panic!("no {prefix} header in {file}"));
        let values = lines.next().unwrap_or_else(|| panic!("no {prefix} values in {file}"));
        let idx = header
            .split_whitespace()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("no {prefix} {name}"));
        values
            .split_whitespace()
            .nth(idx)
            .and_then(|v| v.parse().ok())
            .expect("numeric MIB value")
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        for ns in [&self.client_ns, &self.server_ns] {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
    }
}

/// A hub namespace ("this host") joined by one veth to each spoke namespace ("peers").
/// Spoke i has 10.<net>.<i+1>.2, the hub 10.<net>.<i+1>.1 on that link. Removed on drop.
pub struct Hub {
    pub hub_ns: String,
    pub spokes: Vec<Spoke>,
}

pub struct Spoke {
    pub ns: String,
    pub hub_addr: IpAddr,
    pub addr: IpAddr,
    /// The spoke's end of its veth (for qdiscs on the spoke-to-hub direction).
    pub spoke_if: String,
}

impl Hub {
    pub fn new(net: u8, spokes: usize) -> Self {
        let id = format!(
            "{}-{}",
            std::process::id() % 100_000,
            NEXT_NS.fetch_add(1, Ordering::Relaxed)
        );
        let mut hub = Self {
            hub_ns: format!("ftl-h-{id}"),
            spokes: Vec::new(),
        };
        run("ip", &["netns", "add", &hub.hub_ns]);
        run_in(&hub.hub_ns, "ip", &["link", "set", "lo", "up"]);
        for i in 0..spokes {
            let spoke = Spoke {
                ns: format!("ftl-p{i}-{id}"),
                hub_addr: format!("10.{net}.{}.1", i + 1).parse().expect("v4"),
                addr: format!("10.{net}.{}.2", i + 1).parse().expect("v4"),
                spoke_if: format!("vp{i}{id}"),
            };
            let hub_if = format!("vh{i}{id}");
            run("ip", &["netns", "add", &spoke.ns]);
            // pushed first so that a failing step below still removes it
            let (ns, spoke_if, hub_addr, addr) = (spoke.ns.clone(), spoke.spoke_if.clone(), spoke.hub_addr, spoke.addr);
            hub.spokes.push(spoke);
            run(
                "ip",
                &[
                    "link",
                    "add",
                    &hub_if,
                    "netns",
                    &hub.hub_ns,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &spoke_if,
                    "netns",
                    &ns,
                ],
            );
            run_in(&ns, "ip", &["link", "set", "lo", "up"]);
            run_in(
                &hub.hub_ns,
                "ip",
                &["addr", "add", &format!("{hub_addr}/24"), "dev", &hub_if],
            );
            run_in(&ns, "ip", &["addr", "add", &format!("{addr}/24"), "dev", &spoke_if]);
            run_in(&hub.hub_ns, "ip", &["link", "set", &hub_if, "up"]);
            run_in(&ns, "ip", &["link", "set", &spoke_if, "up"]);
        }
        hub
    }

    /// Whether a flow key belongs to the hub's side of its links.
    pub fn is_hub_side(&self, key: &FlowKey) -> bool {
        self.spokes.iter().any(|s| s.hub_addr == key.local)
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        for ns in self.spokes.iter().map(|s| &s.ns).chain(std::iter::once(&self.hub_ns)) {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
    }
}

/// Steady request/response traffic from the hub to a server in each spoke, until dropped.
pub struct Traffic {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Traffic {
    pub fn start(hub: &Hub, port: u16, request: usize, response: usize, pause: Duration) -> Self {
        Self::start_with(hub, port, request, response, pause, 1)
    }

    /// As `start`, with `clients` concurrent client loops per spoke.
    pub fn start_with(hub: &Hub, port: u16, request: usize, response: usize, pause: Duration, clients: usize) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut threads = Vec::new();
        for spoke in &hub.spokes {
            let listener = VethPair::in_ns(&spoke.ns, || {
                TcpListener::bind((spoke.addr, port)).expect("bind in spoke")
            });
            listener.set_nonblocking(true).expect("nonblocking");
            let stop_server = std::sync::Arc::clone(&stop);
            threads.push(std::thread::spawn(move || {
                while !stop_server.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut conn, _)) => {
                            // one thread per connection, so that concurrent clients overlap
                            std::thread::spawn(move || {
                                let _ = conn.set_nonblocking(false);
                                let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                                let mut buf = vec![0u8; request];
                                if conn.read_exact(&mut buf).is_ok() {
                                    let _ = conn.write_all(&vec![7u8; response]);
                                }
                            });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            }));
            for _ in 0..clients {
                let ns = hub.hub_ns.clone();
                let target = SocketAddr::new(spoke.addr, port);
                let stop_client = std::sync::Arc::clone(&stop);
                threads.push(std::thread::spawn(move || {
                    VethPair::in_ns(&ns, || {
                        while !stop_client.load(Ordering::Relaxed) {
                            if let Ok(mut c) = TcpStream::connect_timeout(&target, Duration::from_secs(5)) {
                                let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
                                let _ = c.write_all(&vec![1u8; request]);
                                let mut buf = Vec::new();
                                let _ = c.read_to_end(&mut buf);
                            }
                            std::thread::sleep(pause);
                        }
                    })
                }));
            }
        }
        Self { stop, threads }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Adds `rule` to chain `chain` on `hook` of table `inet flowtel_test` in `ns`, creating both;
/// deleting the table (or the namespace) removes them.
pub fn nft_rule(ns: &str, chain: &str, hook: &str, rule: &str) {
    run_in(ns, "nft", &["add", "table", "inet", "flowtel_test"]);
    run_in(
        ns,
        "nft",
        &[
            "add",
            "chain",
            "inet",
            "flowtel_test",
            chain,
            &format!("{{ type filter hook {hook} priority 0; policy accept; }}"),
        ],
    );
    run_in(ns, "nft", &[&format!("add rule inet flowtel_test {chain} {rule}")]);
}

/// Debian's Prometheus with `config`, its data under `dir`, its API on 127.0.0.1:`web_port`.
pub fn start_prometheus(config: &std::path::Path, dir: &std::path::Path, web_port: u16) -> Reaped {
    Reaped(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{web_port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prometheus is installed (apt-get install prometheus)"),
    )
}

/// A child process killed and reaped when the test ends, pass or fail.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits for the "sampler attached" log line of a child started with a piped stderr, and hands
/// back the rest of its stderr.
pub fn wait_attached(child: &mut Child) -> std::io::BufReader<ChildStderr> {
    wait_logged(child, "sampler attached")
}

/// Reads the child's stderr until a line contains `needle` (30 s at most); the rest is the
/// caller's to read or drop.
pub fn wait_logged(child: &mut Child, needle: &str) -> std::io::BufReader<ChildStderr> {
    let mut stderr = std::io::BufReader::new(child.stderr.take().expect("stderr"));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut line = String::new();
    while !line.contains(needle) {
        line.clear();
        assert!(
            stderr.read_line(&mut line).expect("read stderr") > 0,
            "flowtel exited before logging {needle:?}"
        );
        assert!(Instant::now() < deadline, "no {needle:?} line");
    }
    stderr
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// GET on 127.0.0.1:`port`: the status code and the body.
pub fn http_status(port: u16, path_and_query: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(stream, "GET {path_and_query} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// GET on 127.0.0.1:`port`: the body, whatever the status.
pub fn http_get(port: u16, path_and_query: &str) -> Option<String> {
    http_status(port, path_and_query).map(|(_, body)| body)
}

/// Polls `done` every 100 ms until it holds; fails the test after `timeout`. Returns how long
/// it took.
pub fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

/// Accepts every connection on `listener` and reads each to its end, on threads of their own.
pub fn drain_connections(listener: TcpListener) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut conn, &mut std::io::sink());
            });
        }
    })
}

/// A multi-threaded tokio runtime for the in-process servers (fake API server, TLS receiver).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}
