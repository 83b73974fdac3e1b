//! The benchmark's load generator: loopback TCP with its own server, so that one process is
//! the whole load. Prints one JSON object on stdout.
//!
//!   loadgen churn SECONDS WORKERS   closed loop: connect, 64-byte request, 256-byte response,
//!                                   close; reports connections per second
//!   loadgen idle COUNT SECONDS RATE COUNT connections held open for SECONDS, with RATE one-byte
//!                                   writes per second spread over them (a slow trickle)
//!
//! For churn through a DNAT rule: LOADGEN_PORT fixes the server's port and LOADGEN_CONNECT
//! (address:port) is where the clients connect; the benchmark's nftables rule maps the one to the
//! other.
//!
//! Built as a cargo example: `cargo build --release --example loadgen`.
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const REQUEST: [u8; 64] = [b'q'; 64];
const RESPONSE: [u8; 256] = [b'r'; 256];

fn usage() -> ! {
    eprintln!("usage: loadgen churn SECONDS WORKERS | loadgen idle COUNT SECONDS RATE");
    std::process::exit(2)
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize) -> T {
    args.get(i).and_then(|s| s.parse().ok()).unwrap_or_else(|| usage())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("churn") => churn(Duration::from_secs_f64(arg(&args, 2)), arg(&args, 3)),
        Some("idle") => idle(arg(&args, 2), Duration::from_secs_f64(arg(&args, 3)), arg(&args, 4)),
        _ => usage(),
    }
}

fn listener() -> TcpListener {
    let port = std::env::var("LOADGEN_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap_or_else(|e| {
        eprintln!("loadgen: cannot listen on loopback: {e}");
        std::process::exit(1)
    })
}

fn churn(duration: Duration, workers: usize) {
    let server = listener();
    let listening = server.local_addr().expect("local address");
    let addr: SocketAddr = match std::env::var("LOADGEN_CONNECT") {
        Ok(to) => to.parse().unwrap_or_else(|_| usage()),
        Err(_) => listening,
    };
    let stop = Arc::new(AtomicBool::new(false));
    for _ in 0..workers.max(1) {
        let server = server.try_clone().expect("listener clone");
        std::thread::spawn(move || loop {
            let Ok((mut c, _)) = server.accept() else { continue };
            let mut buf = [0u8; 64];
            if c.read_exact(&mut buf).is_ok() {
                let _ = c.write_all(&RESPONSE);
            }
        });
    }
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let clients: Vec<_> = (0..workers.max(1))
        .map(|_| {
            let (stop, done, errors) = (Arc::clone(&stop), Arc::clone(&done), Arc::clone(&errors));
            std::thread::spawn(move || {
                let mut buf = [0u8; 512];
                while !stop.load(Ordering::Relaxed) {
                    let ok = (|| -> std::io::Result<()> {
                        let mut c = TcpStream::connect(addr)?;
                        c.write_all(&REQUEST)?;
                        let mut got = 0;
                        loop {
                            match c.read(&mut buf)? {
                                0 => break,
                                n => got += n,
                            }
                        }
                        if got == RESPONSE.len() {
                            Ok(())
                        } else {
                            Err(std::io::Error::new(ErrorKind::UnexpectedEof, "short response"))
                        }
                    })();
                    match ok {
                        Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    let secs = started.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    println!(
        "{{\"mode\":\"churn\",\"port\":{},\"connections\":{n},\"errors\":{},\"seconds\":{secs:.3},\"rate\":{:.1}}}",
        listening.port(),
        errors.load(Ordering::Relaxed),
        n as f64 / secs
    );
}

/// Destinations 127.0.0.1..=127.0.0.N spread the client ports: one (source, destination) pair
/// has only the ephemeral range (about 28k ports).
fn idle(count: usize, duration: Duration, rate: f64) {
    let server = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("listen");
    let port = server.local_addr().expect("address").port();
    let accepted = Arc::new(AtomicU64::new(0));
    {
        let accepted = Arc::clone(&accepted);
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while let Ok((c, _)) = server.accept() {
                held.push(c);
                accepted.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let started = Instant::now();
    let mut clients = Vec::with_capacity(count);
    let mut errors = 0u64;
    for i in 0..count {
        let dst = Ipv4Addr::new(127, 0, 0, 1 + (i / 20_000) as u8);
        match TcpStream::connect(SocketAddr::from((dst, port))) {
            Ok(c) => clients.push(c),
            Err(_) => errors += 1,
        }
    }
    let open_seconds = started.elapsed().as_secs_f64();
    // tells the benchmark that the sockets are open and the holding window starts
    eprintln!("loadgen: {} connections open", clients.len());
    // the trickle: one byte on the next connection, RATE times a second
    let hold = Instant::now();
    let mut i = 0usize;
    let pause = if rate > 0.0 {
        Duration::from_secs_f64(1.0 / rate)
    } else {
        duration
    };
    while hold.elapsed() < duration {
        if rate > 0.0 && !clients.is_empty() {
            let n = clients.len();
            let _ = clients[i % n].write_all(b"t");
            i += 1;
        }
        std::thread::sleep(pause.min(duration.saturating_sub(hold.elapsed())));
    }
    println!(
        "{{\"mode\":\"idle\",\"connections\":{},\"accepted\":{},\"errors\":{errors},\"open_seconds\":{open_seconds:.3},\"held_seconds\":{:.3},\"writes\":{i}}}",
        clients.len(),
        accepted.load(Ordering::Relaxed),
        hold.elapsed().as_secs_f64()
    );
}
