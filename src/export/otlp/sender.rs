//! Delivers export requests in the background, so that a slow or dead collector never delays
//! sampling: a small queue, retries with exponential backoff, one log line per backoff step.
//!
//! Memory stays bounded while the collector is away. Under cumulative temporality the newest
//! request carries every total, so it replaces any older one waiting (counted as superseded,
//! nothing lost). Under delta temporality up to [`QUEUE`] intervals wait and are delivered in
//! order when the collector returns; beyond that the oldest interval is dropped and counted
//! (`flowtel.agent.dropped`, reason `export_undelivered`).
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::settings::OtlpSettings;
use super::transport::{OtlpClient, TransportError};
use crate::export::Temporality;

/// Requests waiting for delivery at most (delta temporality; cumulative keeps one).
pub const QUEUE: usize = 4;
const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Delivery counters, shared with the agent's own metrics.
#[derive(Debug, Default)]
pub struct SenderStats {
    pub exports: AtomicU64,
    pub failures: AtomicU64,
    /// Cumulative requests replaced by newer ones before delivery (no data lost).
    pub superseded: AtomicU64,
    /// Delta requests that could not be delivered (their intervals are lost).
    pub dropped: AtomicU64,
    pub bytes: AtomicU64,
}

pub struct OtlpSender {
    tx: mpsc::Sender<ExportMetricsServiceRequest>,
    task: JoinHandle<()>,
    stats: Arc<SenderStats>,
    temporality: Temporality,
}

impl OtlpSender {
    pub fn spawn(
        settings: &OtlpSettings,
        temporality: Temporality,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Self, TransportError> {
        let client = {
            let _guard = runtime.enter();
            OtlpClient::new(settings)?
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let stats = Arc::new(SenderStats::default());
        let task = runtime.spawn(deliver(
            client,
            rx,
            Arc::clone(&stats),
            settings.url.clone(),
            temporality,
        ));
        tracing::info!(endpoint = %settings.url, protocol = ?settings.protocol, "OTLP export on");
        Ok(Self {
            tx,
            task,
            stats,
            temporality,
        })
    }

    pub fn stats(&self) -> &Arc<SenderStats> {
        &self.stats
    }

    /// Queues a request; never blocks. A full queue means the collector is far behind.
    pub fn submit(&self, request: ExportMetricsServiceRequest) {
        if self.tx.try_send(request).is_err() {
            self.count_lost();
        }
    }

    fn count_lost(&self) {
        match self.temporality {
            Temporality::Cumulative => self.stats.superseded.fetch_add(1, Ordering::Relaxed),
            Temporality::Delta => self.stats.dropped.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// Stops taking requests and waits up to `deadline` for the queue to drain.
    pub fn finish(self, runtime: &tokio::runtime::Handle, deadline: Duration) {
        drop(self.tx);
        let task = self.task;
        let finished = runtime.block_on(async { tokio::time::timeout(deadline, task).await.is_ok() });
        if !finished {
            tracing::warn!(
                "OTLP export did not finish before the shutdown deadline; the last interval was not delivered"
            );
        }
    }
}

/// Delivers requests in order. While the collector fails: each new request is tried as it
/// arrives (so delivery resumes within one export interval of the collector's return), and the
/// same request is retried on a backoff in between; the failure is logged once per backoff step.
/// What waits: under cumulative temporality only the newest request (it carries every total);
/// under delta temporality up to [`QUEUE`] intervals in order, the oldest dropped and counted
/// beyond that.
async fn deliver(
    mut client: OtlpClient,
    mut rx: mpsc::Receiver<ExportMetricsServiceRequest>,
    stats: Arc<SenderStats>,
    endpoint: String,
    temporality: Temporality,
) {
    let mut pending: VecDeque<ExportMetricsServiceRequest> = VecDeque::with_capacity(QUEUE);
    let keep = |pending: &mut VecDeque<ExportMetricsServiceRequest>, request| {
        let (limit, lost) = match temporality {
            Temporality::Cumulative => (1, &stats.superseded),
            Temporality::Delta => (QUEUE, &stats.dropped),
        };
        while pending.len() >= limit {
            pending.pop_front();
            lost.fetch_add(1, Ordering::Relaxed);
        }
        pending.push_back(request);
    };
    let mut failing = Failing::default();
    let mut open = true;
    while open || !pending.is_empty() {
        if pending.is_empty() {
            match rx.recv().await {
                Some(request) => keep(&mut pending, request),
                None => return,
            }
        }
        while let Ok(request) = rx.try_recv() {
            keep(&mut pending, request);
        }
        let Some(request) = pending.front() else { continue };
        match client.export(request).await {
            Ok(bytes) => {
                pending.pop_front();
                stats.exports.fetch_add(1, Ordering::Relaxed);
                stats.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
                if failing.recovered() {
                    tracing::info!(endpoint = %endpoint, "OTLP export resumed");
                }
            }
            Err(e) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                let retry_in = failing.failed();
                if failing.should_log() {
                    tracing::warn!(endpoint = %endpoint, error = %e, retry_in_s = retry_in.as_secs(), queued = pending.len(), "OTLP export failed");
                }
                if !open {
                    // shutting down: the caller's deadline bounds the retries
                    tokio::time::sleep(retry_in.min(Duration::from_secs(1))).await;
                    continue;
                }
                // retry after the backoff, or at once with the next export
                tokio::select! {
                    next = rx.recv() => match next {
                        Some(request) => keep(&mut pending, request),
                        None => open = false,
                    },
                    _ = tokio::time::sleep(retry_in) => {}
                }
            }
        }
        if rx.is_closed() && rx.is_empty() {
            open = false;
        }
    }
}

/// The state of a failing collector: the retry backoff and the log pacing (one line per
/// backoff step, however often exports are attempted).
#[derive(Default)]
struct Failing {
    since: Option<tokio::time::Instant>,
    backoff: Duration,
    next_log: Option<tokio::time::Instant>,
    log_step: Duration,
}

impl Failing {
    /// Records a failure; returns how long to wait before retrying the same request.
    fn failed(&mut self) -> Duration {
        let now = tokio::time::Instant::now();
        if self.since.is_none() {
            self.since = Some(now);
            self.backoff = BACKOFF_START;
            self.log_step = BACKOFF_START;
        } else {
            self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        }
        self.backoff
    }

    fn should_log(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        if self.next_log.is_some_and(|at| now < at) {
            return false;
        }
        self.next_log = Some(now + self.log_step);
        self.log_step = (self.log_step * 2).min(BACKOFF_MAX);
        true
    }

    /// Whether the collector was failing until now; resets.
    fn recovered(&mut self) -> bool {
        let was = self.since.is_some();
        *self = Self::default();
        was
    }
}
