//! Liveness and readiness for orchestrators: `GET /healthz` and `GET /readyz`, opt-in under
//! `[probes]`.
//!
//! - **Live** while the poll loop keeps turning: it finished an iteration (a poll, successful or
//!   not) within `stale_after`, or it is still starting (loading and attaching BPF) within
//!   `startup_grace`. A stuck loop is not live, and a restart is what fixes it.
//! - **Ready** once the programs are attached and the last successful poll is recent. Failing
//!   polls make it not ready, but still live: a restart would not help a kernel that refuses.
//!
//! The collector's health never enters: an unreachable collector must not restart the agent,
//! which buffers and retries on its own.
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use serde::{Deserialize, Serialize};

use crate::agent::http_server::{bind, serve, ServeError};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9465";
/// How long loading and attaching may take before the agent counts as not live.
pub const STARTUP_GRACE: Duration = Duration::from_secs(120);

/// `[probes]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbesSection {
    /// Serve /healthz and /readyz.
    pub enabled: bool,
    /// Loopback by default; a Kubernetes pod sets 0.0.0.0:9465 for the kubelet.
    pub listen: String,
}

impl Default for ProbesSection {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: DEFAULT_LISTEN.to_string(),
        }
    }
}

#[derive(Debug, Default)]
struct Progress {
    attached: bool,
    last_iteration: Option<Instant>,
    last_success: Option<Instant>,
    polls: u64,
    failures_in_a_row: u64,
}

/// What the poll loop reports, and the verdicts drawn from it.
#[derive(Debug)]
pub struct AgentProbe {
    started: Instant,
    stale_after: Duration,
    progress: Mutex<Progress>,
}

/// Why `flowtel probe` failed.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error("probes.listen = {listen:?} is not an address:port: fix [probes] listen (FLOWTEL_PROBES__LISTEN)")]
    Listen { listen: String },
    #[error("no agent answered on {url}: is flowtel run up with [probes] enabled = true?")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered {status}: {body}")]
    NotOk { url: String, status: u16, body: String },
}

/// Asks a running agent's `/readyz` (or `/healthz` when `live`) on `[probes] listen`, as a
/// container health check would: the body when it answers 200, an error otherwise. An agent
/// listening on every address is asked on loopback.
pub async fn ask(probes: &ProbesSection, live: bool) -> Result<String, AskError> {
    let mut addr: std::net::SocketAddr = probes.listen.parse().map_err(|_| AskError::Listen {
        listen: probes.listen.clone(),
    })?;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let url = format!("http://{addr}/{}", if live { "healthz" } else { "readyz" });
    let unreachable = |source| AskError::Unreachable {
        url: url.clone(),
        source,
    };
    // reqwest is built without a default TLS provider; plain HTTP still needs one installed
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(3))
        .no_proxy()
        .build()
        .map_err(unreachable)?;
    let response = client.get(&url).send().await.map_err(unreachable)?;
    let status = response.status().as_u16();
    let body = response.text().await.map_err(unreachable)?;
    if status == 200 {
        Ok(body)
    } else {
        Err(AskError::NotOk { url, status, body })
    }
}

/// One verdict with its reasons, as `/healthz` and `/readyz` return it./// One verdict with its reasons, as `/healthz` and `/readyz` return it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub ok: bool,
    pub reason: String,
    pub attached: bool,
    pub polls: u64,
    pub consecutive_poll_failures: u64,
    pub last_poll_age_seconds: Option<f64>,
}

impl AgentProbe {
    /// `poll_interval` sets how old the last iteration may be: three intervals, at least 5 s.
    pub fn new(poll_interval: Duration, now: Instant) -> Self {
        Self {
            started: now,
            stale_after: (poll_interval * 3).max(Duration::from_secs(5)),
            progress: Mutex::new(Progress::default()),
        }
    }

    fn update(&self, f: impl FnOnce(&mut Progress)) {
        if let Ok(mut p) = self.progress.lock() {
            f(&mut p);
        }
    }

    pub fn attached(&self) {
        self.update(|p| p.attached = true);
    }

    pub fn poll_succeeded(&self, now: Instant) {
        self.update(|p| {
            p.last_iteration = Some(now);
            p.last_success = Some(now);
            p.polls += 1;
            p.failures_in_a_row = 0;
        });
    }

    pub fn poll_failed(&self, now: Instant) {
        self.update(|p| {
            p.last_iteration = Some(now);
            p.failures_in_a_row += 1;
        });
    }

    fn verdict(&self, now: Instant, judge: impl FnOnce(&Progress) -> Result<(), String>) -> Verdict {
        let Ok(p) = self.progress.lock() else {
            return Verdict {
                ok: false,
                reason: "probe state poisoned".into(),
                attached: false,
                polls: 0,
                consecutive_poll_failures: 0,
                last_poll_age_seconds: None,
            };
        };
        let outcome = judge(&p);
        Verdict {
            ok: outcome.is_ok(),
            reason: outcome.err().unwrap_or_else(|| "ok".into()),
            attached: p.attached,
            polls: p.polls,
            consecutive_poll_failures: p.failures_in_a_row,
            last_poll_age_seconds: p.last_success.map(|t| now.saturating_duration_since(t).as_secs_f64()),
        }
    }

    pub fn liveness(&self, now: Instant) -> Verdict {
        self.verdict(now, |p| match p.last_iteration {
            Some(t) if now.saturating_duration_since(t) <= self.stale_after => Ok(()),
            Some(t) => Err(format!(
                "the poll loop has not finished an iteration for {:.0}s",
                now.saturating_duration_since(t).as_secs_f64()
            )),
            None if now.saturating_duration_since(self.started) <= STARTUP_GRACE => Ok(()),
            None => Err(format!("still not polling {}s after start", STARTUP_GRACE.as_secs())),
        })
    }

    pub fn readiness(&self, now: Instant) -> Verdict {
        self.verdict(now, |p| {
            if !p.attached {
                return Err("loading and attaching the BPF programs".into());
            }
            match p.last_success {
                Some(t) if now.saturating_duration_since(t) <= self.stale_after => Ok(()),
                Some(_) => Err(format!("the last {} polls failed", p.failures_in_a_row)),
                None => Err("no successful poll yet".into()),
            }
        })
    }
}

fn respond(req: &Request<hyper::body::Incoming>, probe: &AgentProbe) -> Response<Full<Bytes>> {
    let now = Instant::now();
    let verdict = match req.uri().path() {
        "/healthz" | "/livez" => probe.liveness(now),
        "/readyz" => probe.readiness(now),
        _ => {
            let mut r = Response::new(Full::new(Bytes::from_static(
                b"flowtel: probes are /healthz and /readyz\n",
            )));
            *r.status_mut() = StatusCode::NOT_FOUND;
            return r;
        }
    };
    let body = serde_json::to_vec(&verdict).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    if !verdict.ok {
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    }
    r
}

/// Binds `[probes] listen` now and answers from a task on `runtime`.
pub fn start(
    section: &ProbesSection,
    probe: Arc<AgentProbe>,
    runtime: &tokio::runtime::Handle,
) -> Result<(), ServeError> {
    let (listener, addr) = bind("probes.listen", &section.listen)?;
    serve(listener, runtime, "/healthz", move |req| respond(req, &probe));
    tracing::info!(listen = %addr, "probes on /healthz and /readyz");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starting_then_ready_then_failing_then_stuck() {
        let t0 = Instant::now();
        let probe = AgentProbe::new(Duration::from_secs(1), t0);
        let at = |s: u64| t0 + Duration::from_secs(s);

        assert!(probe.liveness(at(30)).ok, "still starting");
        let r = probe.readiness(at(30));
        assert!(!r.ok && r.reason.contains("attaching"), "{r:?}");
        assert!(!probe.liveness(at(200)).ok, "never polled after the grace");

        probe.attached();
        assert_eq!(probe.readiness(at(31)).reason, "no successful poll yet");
        probe.poll_succeeded(at(32));
        assert!(probe.readiness(at(33)).ok);
        assert!(probe.liveness(at(33)).ok);
        assert_eq!(probe.readiness(at(33)).polls, 1);

        for s in 34..44 {
            probe.poll_failed(at(s));
        }
        let r = probe.readiness(at(44));
        assert!(!r.ok, "failing polls: not ready");
        assert_eq!(r.reason, "the last 10 polls failed");
        assert!(probe.liveness(at(44)).ok, "but live: the loop turns");

        let stuck = probe.liveness(at(60));
        assert!(!stuck.ok, "no iteration for 17 s");
        assert!(stuck.reason.contains("17s"), "{}", stuck.reason);
        probe.poll_succeeded(at(61));
        assert!(probe.readiness(at(61)).ok && probe.liveness(at(61)).ok, "recovers");
    }
}
