//! Kernel tests: real sockets, real TCP, real faults (nftables loss, tbf queues, veth hosts),
//! checked against exact numbers. They need root and fail without it; they never skip.
mod support;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use flowtel::flows::{ConnectFailure, Phase, Role};
use flowtel::sampler::SamplerConfig;
use support::*;

const LO4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const LO6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

fn closed_both(
    m: &flowtel::poller::Poller,
    client: &flowtel::flows::FlowKey,
    server: &flowtel::flows::FlowKey,
    n: u64,
) -> bool {
    let c = counters(m, client);
    let s = counters(m, server);
    c.conn_closed + c.conn_reset >= n && s.conn_closed + s.conn_reset >= n
}

#[test]
fn bytes_are_exact_on_both_ends() {
    let _serial = serial();
    let mut m = poller();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (server_got, client_got) = exchange(&listener, addr, 12_345, 54_321);
    assert_eq!((server_got, client_got), (12_345, 54_321));

    let (ck, sk) = pair_keys(LO4, LO4, addr.port());
    poll_until(&mut m, "both ends closed", |m| closed_both(m, &ck, &sk, 1));
    let c = counters(&m, &ck);
    let s = counters(&m, &sk);
    assert_eq!((c.bytes_sent, c.bytes_received), (12_345, 54_321), "client {c:?}");
    assert_eq!((s.bytes_sent, s.bytes_received), (54_321, 12_345), "server {s:?}");
    assert_eq!((c.conn_established, c.conn_closed, c.conn_reset), (1, 1, 0));
    assert_eq!((s.conn_established, s.conn_closed, s.conn_reset), (1, 1, 0));
    assert!(c.segs_sent > 0 && c.segs_received > 0 && s.segs_sent > 0 && s.segs_received > 0);
    assert_eq!(c.connect_duration.count, 1, "client connect duration recorded once");
    assert_eq!(s.connect_duration.count, 0, "servers have no connect duration");
    assert!(c.rtt.count >= 1 && s.rtt.count >= 1, "srtt sampled at close");
    let owner = &m.table().get(&ck).expect("client pair").owner;
    assert_eq!(owner.pid, Some(std::process::id()), "connecting process recorded");
    assert!(owner.cgroup_id.is_some());
}

#[test]
fn churn_collapses_into_one_pair_per_end_and_loses_nothing() {
    let _serial = serial();
    const N: usize = 500;
    let mut m = poller();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut client_ports = HashSet::new();
    std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..N {
                let (mut conn, _) = listener.accept().expect("accept");
                let got = read_to_end(&mut conn);
                assert_eq!(got, 10);
                write_all_and_finish(&mut conn, 20);
            }
        });
        for _ in 0..N {
            let mut c = TcpStream::connect(addr).expect("connect");
            client_ports.insert(c.local_addr().expect("local").port());
            write_all_and_finish(&mut c, 10);
            assert_eq!(read_to_end(&mut c), 20);
        }
    });

    let (ck, sk) = pair_keys(LO4, LO4, addr.port());
    poll_until(&mut m, "500 closes on both ends", |m| {
        closed_both(m, &ck, &sk, N as u64)
    });
    let c = counters(&m, &ck);
    let s = counters(&m, &sk);
    assert_eq!(
        (c.conn_established, c.conn_closed, c.conn_reset),
        (500, 500, 0),
        "client {c:?}"
    );
    assert_eq!(
        (s.conn_established, s.conn_closed, s.conn_reset),
        (500, 500, 0),
        "server {s:?}"
    );
    assert_eq!((c.bytes_sent, c.bytes_received), (5_000, 10_000));
    assert_eq!((s.bytes_sent, s.bytes_received), (10_000, 5_000));
    assert_eq!(c.connect_duration.count, 500);
    let ours: Vec<_> = m
        .table()
        .pairs()
        .into_iter()
        .filter(|p| p.key.service_port == addr.port())
        .map(|p| p.key)
        .collect();
    assert_eq!(ours, vec![ck, sk], "exactly one pair per end");
    let leaked: Vec<_> = m
        .table()
        .pairs()
        .into_iter()
        .filter(|p| client_ports.contains(&p.key.service_port) && p.key.local == LO4)
        .map(|p| p.key)
        .collect();
    assert!(
        leaked.is_empty(),
        "ephemeral ports must not become service ports: {leaked:?}"
    );
    assert_eq!(m.stats().counters.pair_map_full, 0);
}

/// Server streams `bytes` to a client that sends a small request, in 64 KiB writes with `pace`
/// between them; `during` runs on the calling thread meanwhile. Returns when both are done.
fn stream_from_server(
    server: SocketAddr,
    client_ns: &str,
    server_ns: &str,
    bytes: usize,
    pace: Duration,
    during: impl FnOnce(),
) {
    let listener = VethPair::in_ns(server_ns, || TcpListener::bind(server).expect("bind in server ns"));
    std::thread::scope(|s| {
        s.spawn(|| {
            let (mut conn, _) = listener.accept().expect("accept");
            let mut req = [0u8; 100];
            conn.read_exact(&mut req).expect("request");
            let chunk = [0x5au8; 64 * 1024];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(chunk.len());
                conn.write_all(&chunk[..n]).expect("stream");
                left -= n;
                std::thread::sleep(pace);
            }
            conn.shutdown(std::net::Shutdown::Write).expect("shutdown");
            read_to_end(&mut conn);
        });
        let client = s.spawn(|| {
            VethPair::in_ns(client_ns, || {
                let mut c = TcpStream::connect_timeout(&server, Duration::from_secs(10)).expect("connect across veth");
                c.write_all(&[1u8; 100]).expect("request");
                let got = read_to_end(&mut c);
                assert_eq!(got, bytes, "client received everything");
            })
        });
        during();
        client.join().expect("client thread");
    });
}

#[test]
fn random_loss_retransmits_match_the_kernel_mib() {
    let _serial = serial();
    let mut m = poller();
    let hosts = VethPair::new(3);
    let server = SocketAddr::new(hosts.server_v4, 8000);
    VethPair::nft_input_rule(
        &hosts.client_ns,
        "tcp sport 8000 tcp flags & (syn|fin|rst) == 0 numgen random mod 100 < 5 counter drop",
    );
    let mib_before = VethPair::tcp_mib(&hosts.server_ns, "RetransSegs");
    stream_from_server(
        server,
        &hosts.client_ns,
        &hosts.server_ns,
        4 << 20,
        Duration::ZERO,
        || {},
    );
    let (ck, sk) = pair_keys(hosts.client_v4, hosts.server_v4, 8000);
    poll_until(&mut m, "transfer closed on both ends", |m| closed_both(m, &ck, &sk, 1));
    let kernel = VethPair::tcp_mib(&hosts.server_ns, "RetransSegs") - mib_before;
    let s = counters(&m, &sk);
    assert!(kernel > 0, "the loss rule made the kernel retransmit");
    assert_eq!(
        s.retrans_total(),
        kernel,
        "server retransmits {:?} vs TcpRetransSegs delta {kernel}",
        s.retrans
    );
    assert_eq!(s.bytes_sent, 4 << 20, "retransmissions are not counted as bytes");
    assert_eq!(counters(&m, &ck).retrans_total(), 0, "the client lost nothing");
}

#[test]
fn blackhole_mid_transfer_fires_rto_in_established_phase() {
    let _serial = serial();
    let mut m = poller();
    let hosts = VethPair::new(4);
    let server = SocketAddr::new(hosts.server_v4, 8000);
    let client_ns = hosts.client_ns.clone();
    let timeouts_before = VethPair::tcpext_mib(&hosts.server_ns, "TCPTimeouts");
    // 6 MiB paced over about 6 s: the blackhole lands mid-transfer
    stream_from_server(
        server,
        &hosts.client_ns,
        &hosts.server_ns,
        6 << 20,
        Duration::from_millis(60),
        || {
            std::thread::sleep(Duration::from_millis(1500));
            VethPair::nft_input_rule(&client_ns, "tcp sport 8000 counter drop");
            std::thread::sleep(Duration::from_secs(3));
            VethPair::nft_flush(&client_ns);
        },
    );
    let (ck, sk) = pair_keys(hosts.client_v4, hosts.server_v4, 8000);
    poll_until(&mut m, "transfer closed on both ends", |m| closed_both(m, &ck, &sk, 1));
    let s = counters(&m, &sk);
    let kernel = VethPair::tcpext_mib(&hosts.server_ns, "TCPTimeouts") - timeouts_before;
    assert!(s.timeouts(Phase::Established) >= 1, "server RTOs {:?}", s.rto);
    assert_eq!(s.rto_total(), kernel, "RTOs {:?} vs TCPTimeouts delta {kernel}", s.rto);
    assert_eq!(s.bytes_sent, 6 << 20);
}

#[test]
fn syn_blackhole_counts_syn_phase_retransmits_and_timeouts() {
    let _serial = serial();
    let mut m = poller();
    let hosts = VethPair::new(5);
    let server = SocketAddr::new(hosts.server_v4, 8001);
    VethPair::nft_input_rule(
        &hosts.server_ns,
        "tcp dport 8001 tcp flags & (syn|ack) == syn counter drop",
    );
    let listener = VethPair::in_ns(&hosts.server_ns, || TcpListener::bind(server).expect("bind"));
    let started = Instant::now();
    std::thread::scope(|s| {
        let client = s.spawn(|| {
            VethPair::in_ns(&hosts.client_ns, || {
                let mut c =
                    TcpStream::connect_timeout(&server, Duration::from_secs(20)).expect("connect after the blackhole");
                c.write_all(b"hello").expect("write");
            })
        });
        // the first SYN and its 1 s retransmit are dropped; the next one (2 s with the linear
        // SYN timeouts of recent kernels, 3 s with exponential backoff) gets through
        std::thread::sleep(Duration::from_millis(1500));
        VethPair::nft_flush(&hosts.server_ns);
        let (mut conn, _) = listener.accept().expect("accept");
        client.join().expect("client");
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf).expect("read");
    });
    let (ck, sk) = pair_keys(hosts.client_v4, hosts.server_v4, 8001);
    poll_until(&mut m, "both ends closed", |m| closed_both(m, &ck, &sk, 1));
    let c = counters(&m, &ck);
    assert!(c.retransmits(Phase::Syn) >= 1, "SYN retransmits {:?}", c.retrans);
    assert!(c.timeouts(Phase::Syn) >= 1, "SYN timeouts {:?}", c.rto);
    assert_eq!(c.conn_established, 1);
    let waited_us = started.elapsed().as_micros() as f64;
    eprintln!(
        "SYN retransmits {:?}, timeouts {:?}, connect {:?} us, waited {waited_us} us",
        c.retrans,
        c.rto,
        c.connect_duration.mean_us()
    );
    let connect_us = c.connect_duration.mean_us().expect("connect duration recorded");
    assert!(
        connect_us >= 1_900_000.0 && connect_us <= waited_us,
        "connect took {connect_us} us"
    );
}

#[test]
fn refused_connect_counts_as_failed_refused() {
    let _serial = serial();
    let mut m = poller();
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let err = TcpStream::connect(("127.0.0.1", port)).expect_err("nothing listens there");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    let ck = key(LO4, LO4, port, Role::Client);
    poll_until(&mut m, "the failed connect", |m| counters(m, &ck).failed_total() >= 1);
    let c = counters(&m, &ck);
    assert_eq!(c.failed(ConnectFailure::Refused), 1, "{c:?}");
    assert_eq!(c.failed_total(), 1);
    assert_eq!((c.conn_established, c.conn_closed, c.conn_reset), (0, 0, 0));
    assert_eq!(m.table().get(&ck).expect("pair").owner.pid, Some(std::process::id()));
}

#[test]
fn dropped_syn_with_short_timeout_counts_as_failed_timeout() {
    let _serial = serial();
    let mut m = poller();
    let hosts = VethPair::new(6);
    let server = SocketAddr::new(hosts.server_v4, 8002);
    VethPair::nft_input_rule(&hosts.server_ns, "tcp dport 8002 counter drop");
    let _listener = VethPair::in_ns(&hosts.server_ns, || TcpListener::bind(server).expect("bind"));
    let err = VethPair::in_ns(&hosts.client_ns, || {
        TcpStream::connect_timeout(&server, Duration::from_millis(1500)).expect_err("SYNs are dropped")
    });
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    let ck = key(hosts.client_v4, hosts.server_v4, 8002, Role::Client);
    poll_until(&mut m, "the failed connect", |m| counters(m, &ck).failed_total() >= 1);
    let c = counters(&m, &ck);
    assert_eq!(c.failed(ConnectFailure::Timeout), 1, "{c:?}");
    assert_eq!(c.failed_total(), 1);
    assert_eq!(
        c.retransmits(Phase::Syn),
        1,
        "one SYN retransmit at 1 s before the 1.5 s timeout"
    );
    assert_eq!(c.conn_established, 0);
}

#[test]
fn ipv6_over_loopback_and_veth() {
    let _serial = serial();
    let mut m = poller();
    let listener = TcpListener::bind("[::1]:0").expect("bind ::1");
    let addr = listener.local_addr().expect("addr");
    exchange(&listener, addr, 1_000, 2_000);
    let (ck, sk) = pair_keys(LO6, LO6, addr.port());

    let hosts = VethPair::new(7);
    let server = SocketAddr::new(hosts.server_v6, 8003);
    let v6_listener = VethPair::in_ns(&hosts.server_ns, || TcpListener::bind(server).expect("bind v6 in ns"));
    std::thread::scope(|s| {
        s.spawn(|| {
            let (mut conn, _) = v6_listener.accept().expect("accept");
            assert_eq!(read_to_end(&mut conn), 3_000);
            write_all_and_finish(&mut conn, 4_000);
        });
        VethPair::in_ns(&hosts.client_ns, || {
            let mut c = TcpStream::connect(server).expect("connect v6");
            write_all_and_finish(&mut c, 3_000);
            assert_eq!(read_to_end(&mut c), 4_000);
        });
    });
    let (vck, vsk) = pair_keys(hosts.client_v6, hosts.server_v6, 8003);

    poll_until(&mut m, "both v6 flows closed", |m| {
        closed_both(m, &ck, &sk, 1) && closed_both(m, &vck, &vsk, 1)
    });
    assert_eq!(
        (counters(&m, &ck).bytes_sent, counters(&m, &ck).bytes_received),
        (1_000, 2_000)
    );
    assert_eq!(
        (counters(&m, &sk).bytes_sent, counters(&m, &sk).bytes_received),
        (2_000, 1_000)
    );
    assert_eq!(
        (counters(&m, &vck).bytes_sent, counters(&m, &vck).bytes_received),
        (3_000, 4_000)
    );
    assert_eq!(
        (counters(&m, &vsk).bytes_sent, counters(&m, &vsk).bytes_received),
        (4_000, 3_000)
    );
}

#[test]
fn v4_mapped_ipv6_folds_to_ipv4() {
    let _serial = serial();
    let mut m = poller();
    // a dual-stack listener on :: accepting an IPv4 client: its socket is AF_INET6, v4-mapped
    let listener = TcpListener::bind("[::]:0").expect("bind ::");
    let port = listener.local_addr().expect("addr").port();
    exchange(&listener, SocketAddr::new(LO4, port), 10, 20);
    let (ck, sk) = pair_keys(LO4, LO4, port);
    poll_until(&mut m, "both ends closed", |m| closed_both(m, &ck, &sk, 1));
    assert_eq!(
        counters(&m, &sk).bytes_received,
        10,
        "server end keyed by IPv4 addresses"
    );
    let mapped = m
        .table()
        .pairs()
        .into_iter()
        .filter(|p| p.key.service_port == port && p.key.local.is_ipv6())
        .count();
    assert_eq!(mapped, 0);
}

#[test]
fn tbf_queueing_delay_moves_the_rtt_histogram() {
    let _serial = serial();
    let mut m = poller();
    let hosts = VethPair::new(8);
    let baseline = SocketAddr::new(hosts.server_v4, 8004);
    let delayed = SocketAddr::new(hosts.server_v4, 8005);
    // RTT is sampled by the walk at every poll while a transfer runs, and at close
    let mut poll_for = |d: Duration| {
        let end = Instant::now() + d;
        while Instant::now() < end {
            std::thread::sleep(Duration::from_millis(500));
            m.poll(Instant::now()).expect("poll");
        }
    };
    stream_from_server(
        baseline,
        &hosts.client_ns,
        &hosts.server_ns,
        4 << 20,
        Duration::from_millis(20),
        || poll_for(Duration::from_secs(1)),
    );
    // 4 Mbit/s with a 50 KB queue: a full queue adds 100 ms, and a bulk sender keeps it 70-100%
    // full (it backs off by 30% at each tail drop; the receive window is far larger)
    run_in(
        &hosts.server_ns,
        "tc",
        &[
            "qdisc",
            "add",
            "dev",
            &hosts.server_if,
            "root",
            "tbf",
            "rate",
            "4mbit",
            "burst",
            "16kb",
            "limit",
            "50000",
        ],
    );
    stream_from_server(
        delayed,
        &hosts.client_ns,
        &hosts.server_ns,
        2 << 20,
        Duration::ZERO,
        || poll_for(Duration::from_secs(3)),
    );
    let (_, base_key) = pair_keys(hosts.client_v4, hosts.server_v4, 8004);
    let (_, delayed_key) = pair_keys(hosts.client_v4, hosts.server_v4, 8005);
    poll_until(&mut m, "both transfers closed", |m| {
        counters(m, &base_key).conn_closed >= 1 && counters(m, &delayed_key).conn_closed >= 1
    });
    let base = counters(&m, &base_key).rtt;
    let slow = counters(&m, &delayed_key).rtt;
    let base_p50 = base.quantile_upper_seconds(0.5).expect("baseline samples");
    let slow_max = slow.quantile_upper_seconds(1.0).expect("delayed samples");
    let slow_p50 = slow.quantile_upper_seconds(0.5).expect("delayed samples");
    assert!(
        slow_p50 >= 0.03,
        "the median bucket moved up by at least five octaves: {slow:?}"
    );
    eprintln!(
        "baseline rtt {:?} us mean, p50 <= {base_p50} s; delayed {:?} us mean, p50 <= {slow_p50} s, max <= {slow_max} s",
        base.mean_us(),
        slow.mean_us()
    );
    assert!(
        base.count >= 2 && slow.count >= 4,
        "walk samples while streaming: {base:?} {slow:?}"
    );
    assert!(
        base_p50 <= 0.004,
        "veth baseline RTT stays in the low milliseconds: {base:?}"
    );
    // A full 50 KB queue at 4 Mbit/s is 100 ms. The sender's window saws between about half full
    // and full, so the mean RTT (exact: sum over count) lands between a quarter and all of it,
    // far above the baseline.
    let slow_mean_ms = slow.mean_us().expect("delayed samples") / 1000.0;
    assert!(
        base.mean_us().expect("baseline samples") < 1_000.0,
        "baseline under 1 ms: {base:?}"
    );
    assert!(
        (25.0..=125.0).contains(&slow_mean_ms),
        "delayed mean {slow_mean_ms} ms: {slow:?}"
    );
    assert!(slow_max <= 0.25, "nothing beyond the queue's delay: {slow:?}");
}

/// One connection streams for 10 s with only the server sending; every poll must show the
/// bytes growing on both ends, and the totals must end exact.
fn long_lived(in_namespaces: bool) {
    const SECONDS: u64 = 10;
    const CHUNK: usize = 32 * 1024;
    let mut m = poller();
    let hosts = in_namespaces.then(|| VethPair::new(9));
    let (client_addr, server) = match &hosts {
        Some(h) => (h.client_v4, SocketAddr::new(h.server_v4, 8006)),
        None => (LO4, SocketAddr::new(LO4, 0)),
    };
    let listener = match &hosts {
        Some(h) => VethPair::in_ns(&h.server_ns, || TcpListener::bind(server).expect("bind")),
        None => TcpListener::bind(server).expect("bind"),
    };
    let server = listener.local_addr().expect("addr");
    let (ck, sk) = pair_keys(client_addr, server.ip(), server.port());
    let mut observed = Vec::new();
    let sent = std::thread::scope(|s| {
        let sender = s.spawn(|| {
            let (mut conn, _) = listener.accept().expect("accept");
            let deadline = Instant::now() + Duration::from_secs(SECONDS);
            let mut sent = 0;
            while Instant::now() < deadline {
                conn.write_all(&[7u8; CHUNK]).expect("stream");
                sent += CHUNK;
                std::thread::sleep(Duration::from_millis(20));
            }
            sent
        });
        s.spawn(|| {
            let receive = || {
                let mut c = TcpStream::connect(server).expect("connect");
                read_to_end(&mut c)
            };
            match &hosts {
                Some(h) => VethPair::in_ns(&h.client_ns, receive),
                None => receive(),
            }
        });
        let end = Instant::now() + Duration::from_secs(SECONDS - 1);
        while Instant::now() < end {
            std::thread::sleep(Duration::from_millis(1000));
            m.poll(Instant::now()).expect("poll");
            let c = counters(&m, &ck);
            let srv = counters(&m, &sk);
            observed.push((srv.bytes_sent, c.bytes_received, srv.active, c.active));
        }
        sender.join().expect("sender")
    });
    poll_until(&mut m, "the stream closed on both ends", |m| {
        closed_both(m, &ck, &sk, 1)
    });
    eprintln!("per poll (server sent, client received, active): {observed:?}");
    assert!(observed.len() >= 7, "polled while streaming");
    for w in observed.windows(2) {
        assert!(w[1].0 > w[0].0, "server bytes grow every poll: {observed:?}");
        assert!(
            w[1].1 > w[0].1,
            "client (pure receiver) bytes grow every poll: {observed:?}"
        );
    }
    assert!(
        observed.iter().all(|o| o.2 == 1 && o.3 == 1),
        "one active connection per end: {observed:?}"
    );
    let c = counters(&m, &ck);
    let srv = counters(&m, &sk);
    assert_eq!(srv.bytes_sent, sent as u64, "server total exact");
    assert_eq!(c.bytes_received, sent as u64, "client total exact");
    assert_eq!(
        (c.conn_established, srv.conn_established),
        (1, 1),
        "counted once though walked many times"
    );
    assert_eq!((c.bytes_sent, srv.bytes_received), (0, 0));
}

#[test]
fn long_lived_flow_is_current_every_poll_on_loopback() {
    let _serial = serial();
    long_lived(false);
}

#[test]
fn long_lived_flow_is_current_every_poll_inside_namespaces() {
    let _serial = serial();
    long_lived(true);
}

/// A bash client that joins `cgroup` (when given) before it connects, sends `hello`, and reads
/// the answer: its socket belongs to that cgroup.
fn bash_client(cgroup: Option<&std::path::Path>, port: u16) {
    let join = cgroup.map_or(String::new(), |c| format!("echo $$ > {}/cgroup.procs && ", c.display()));
    let script = format!("{join}exec 3<>/dev/tcp/127.0.0.1/{port} && printf hello >&3 && cat <&3 >/dev/null");
    let status = std::process::Command::new("bash")
        .args(["-c", &script])
        .status()
        .expect("bash runs");
    assert!(status.success(), "bash client: {script}");
}

#[test]
fn a_child_cgroup_sees_only_its_own_sockets() {
    let _serial = serial();
    let child = ChildCgroup::new();
    let mut m = poller_with(SamplerConfig {
        cgroup_path: Some(child.0.clone()),
        ..Default::default()
    });
    assert_eq!(m.sampler().target().path, child.0);
    let inside = TcpListener::bind("127.0.0.1:0").expect("bind");
    let outside = TcpListener::bind("127.0.0.1:0").expect("bind");
    let (p_in, p_out) = (
        inside.local_addr().expect("addr").port(),
        outside.local_addr().expect("addr").port(),
    );
    std::thread::scope(|s| {
        for l in [&inside, &outside] {
            s.spawn(move || {
                let (mut c, _) = l.accept().expect("accept");
                let mut buf = [0u8; 5];
                c.read_exact(&mut buf).expect("hello");
                c.write_all(b"world!").expect("answer");
            });
        }
        bash_client(Some(&child.0), p_in);
        bash_client(None, p_out);
    });
    let ck = key(LO4, LO4, p_in, Role::Client);
    poll_until(&mut m, "the child cgroup's client closed", |m| {
        counters(m, &ck).conn_closed + counters(m, &ck).conn_reset >= 1
    });
    let c = counters(&m, &ck);
    assert_eq!((c.bytes_sent, c.bytes_received), (5, 6));
    assert_eq!(m.table().get(&ck).expect("pair").owner.comm.as_deref(), Some("bash"));
    let others: Vec<_> = m
        .table()
        .pairs()
        .into_iter()
        .filter(|p| p.key != ck && (p.key.service_port == p_in || p.key.service_port == p_out))
        .map(|p| p.key)
        .collect();
    assert!(
        others.is_empty(),
        "sockets outside the cgroup are not watched: {others:?}"
    );
}

/// Two agents on two sibling cgroups (two hosts of a simulated fleet, two pods): the close folds
/// run for every socket of the machine, so each must keep to its own cgroup's sockets.
#[test]
fn agents_on_sibling_cgroups_fold_only_their_own_sockets() {
    let _serial = serial();
    let (one, two) = (ChildCgroup::named("-one"), ChildCgroup::named("-two"));
    let mut pollers: Vec<_> = [&one, &two]
        .iter()
        .map(|c| {
            poller_with(SamplerConfig {
                cgroup_path: Some(c.0.clone()),
                ..Default::default()
            })
        })
        .collect();
    let listeners = [
        TcpListener::bind("127.0.0.1:0").expect("bind"),
        TcpListener::bind("127.0.0.1:0").expect("bind"),
    ];
    let ports: Vec<u16> = listeners.iter().map(|l| l.local_addr().expect("addr").port()).collect();
    std::thread::scope(|s| {
        for l in &listeners {
            s.spawn(move || {
                let (mut c, _) = l.accept().expect("accept");
                let mut buf = [0u8; 5];
                c.read_exact(&mut buf).expect("hello");
                c.write_all(b"world!").expect("answer");
            });
        }
        bash_client(Some(&one.0), ports[0]);
        bash_client(Some(&two.0), ports[1]);
    });
    for (i, m) in pollers.iter_mut().enumerate() {
        let own = key(LO4, LO4, ports[i], Role::Client);
        poll_until(m, "its own client closed", |m| {
            counters(m, &own).conn_closed + counters(m, &own).conn_reset >= 1
        });
        let c = counters(m, &own);
        assert_eq!(
            (c.bytes_sent, c.bytes_received),
            (5, 6),
            "agent {i}: its own pair, exact"
        );
        let other = key(LO4, LO4, ports[1 - i], Role::Client);
        assert!(
            m.table().get(&other).is_none(),
            "agent {i} folded the other cgroup's socket"
        );
    }
}

#[test]
fn connections_opened_before_the_agent_are_adopted() {
    let _serial = serial();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut client = TcpStream::connect(addr).expect("connect");
    let (mut server, _) = listener.accept().expect("accept");
    client.write_all(&[1u8; 1000]).expect("before the agent");
    let mut buf = vec![0u8; 1000];
    server.read_exact(&mut buf).expect("read");

    let mut m = poller();
    let (ck, sk) = pair_keys(LO4, LO4, addr.port());
    // the first walk finds both ends: a listener on the port makes one the server
    poll_until(&mut m, "both ends adopted", |m| {
        counters(m, &sk).active == 1 && counters(m, &ck).active == 1
    });
    server.write_all(&[2u8; 3000]).expect("after the agent");
    client.read_exact(&mut vec![0u8; 3000]).expect("read");
    drop(client);
    assert_eq!(read_to_end(&mut server), 0);
    drop(server);
    poll_until(&mut m, "both ends closed", |m| closed_both(m, &ck, &sk, 1));
    let c = counters(&m, &ck);
    let s = counters(&m, &sk);
    assert_eq!(
        (c.bytes_sent, c.bytes_received),
        (1_000, 3_000),
        "client totals, from before the agent on: {c:?}"
    );
    assert_eq!((s.bytes_sent, s.bytes_received), (3_000, 1_000), "server totals: {s:?}");
    assert_eq!((c.conn_established, c.conn_closed), (1, 1));
    assert_eq!((s.conn_established, s.conn_closed), (1, 1));
}

#[test]
fn abortive_close_counts_as_reset_with_exact_bytes() {
    let _serial = serial();
    let mut m = poller();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut client = TcpStream::connect(addr).expect("connect");
    let (mut server, _) = listener.accept().expect("accept");
    client.write_all(&[1u8; 500]).expect("write");
    server.read_exact(&mut [0u8; 500]).expect("read");
    // SO_LINGER {on, 0}: close() sends a RST and tcp_disconnect() zeroes the counters after
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a valid fd with a correctly sized linger struct.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&client),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::addr_of!(linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    drop(client);
    let _ = read_to_end_or_reset(&mut server);
    drop(server);
    let (ck, sk) = pair_keys(LO4, LO4, addr.port());
    poll_until(&mut m, "both ends closed", |m| closed_both(m, &ck, &sk, 1));
    let c = counters(&m, &ck);
    let s = counters(&m, &sk);
    assert_eq!(c.bytes_sent, 500, "counted before tcp_disconnect zeroed them: {c:?}");
    assert_eq!(s.bytes_received, 500);
    assert_eq!((c.conn_reset, c.conn_closed), (1, 0), "client aborted");
    assert_eq!((s.conn_reset, s.conn_closed), (1, 0), "server got the RST");
}

fn read_to_end_or_reset(stream: &mut TcpStream) -> std::io::Result<usize> {
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf)
}

#[test]
fn two_agents_on_one_cgroup_both_count_exactly() {
    let _serial = serial();
    // another program on the same cgroup, with its own callback flags: here a second agent
    let mut first = poller();
    let mut second = poller();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    for _ in 0..20 {
        exchange(&listener, addr, 100, 200);
    }
    let (ck, sk) = pair_keys(LO4, LO4, addr.port());
    for m in [&mut first, &mut second] {
        poll_until(m, "20 closes on both ends", |m| closed_both(m, &ck, &sk, 20));
        let c = counters(m, &ck);
        let s = counters(m, &sk);
        assert_eq!((c.bytes_sent, c.bytes_received, c.conn_established), (2_000, 4_000, 20));
        assert_eq!((s.bytes_sent, s.bytes_received, s.conn_established), (4_000, 2_000, 20));
        assert!(
            m.table().get(&sk).and_then(|p| p.owner.cgroup_id).is_some(),
            "server pairs carry the cgroup id"
        );
    }
}
