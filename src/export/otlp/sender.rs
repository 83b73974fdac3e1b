//! Delivers export requests in the background, so that a slow or dead collector never delays
//! sampling: a small queue, retries with exponential backoff, one log line per backoff step.
//!
//! Memory stays bounded while the collector is away: at most [`QUEUE`] requests wait. Under
//! cumulative temporality the newest request carries every total, so older waiting requests are
//! replaced by newer ones (counted as superseded, nothing lost). Under delta temporality a
//! replaced request's interval is lost and counted as dropped.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::settings::OtlpSettings;
use super::transport::{OtlpClient, TransportError};
use super::Temporality;

/// Requests waiting for delivery at most.
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

async fn deliver(
    mut client: OtlpClient,
    mut rx: mpsc::Receiver<ExportMetricsServiceRequest>,
    stats: Arc<SenderStats>,
    endpoint: String,
    temporality: Temporality,
) {
    let mut failing = false;
    while let Some(mut request) = rx.recv().await {
        let mut backoff = BACKOFF_START;
        loop {
            match client.export(&request).await {
                Ok(bytes) => {
                    stats.exports.fetch_add(1, Ordering::Relaxed);
                    stats.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
                    if failing {
                        tracing::info!(endpoint = %endpoint, "OTLP export resumed");
                        failing = false;
                    }
                    break;
                }
                Err(e) => {
                    stats.failures.fetch_add(1, Ordering::Relaxed);
                    failing = true;
                    tracing::warn!(endpoint = %endpoint, error = %e, retry_in_s = backoff.as_secs(), "OTLP export failed");
                    if rx.is_closed() && rx.is_empty() {
                        // shutting down: one more try after the backoff, then give up
                        tokio::time::sleep(backoff.min(Duration::from_secs(1))).await;
                        if client.export(&request).await.is_ok() {
                            stats.exports.fetch_add(1, Ordering::Relaxed);
                        }
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    // a newer request supersedes (cumulative) or outlives (delta) this one
                    while let Ok(newer) = rx.try_recv() {
                        match temporality {
                            Temporality::Cumulative => stats.superseded.fetch_add(1, Ordering::Relaxed),
                            Temporality::Delta => stats.dropped.fetch_add(1, Ordering::Relaxed),
                        };
                        request = newer;
                    }
                }
            }
        }
    }
}
