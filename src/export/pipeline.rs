//! One export: select series from the annotated flows, build one [`MetricSet`], hand it to every
//! configured output to render. The agent calls [`ExportPipeline::export`] each interval and at
//! shutdown.
use super::redact::PeerAddresses;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use opentelemetry_proto::tonic::resource::v1::Resource;

use super::file::{FileOutput, FileOutputError};
use super::metric_set::{self, AgentMetrics, Temporality};
use super::otlp::sender::OtlpSender;
use super::otlp::settings::OtlpSettings;
use super::otlp::transport::TransportError;
use super::otlp::{encode, resource, HistogramFormat};
use super::prometheus::{PrometheusError, PrometheusOutput, PrometheusSection};
use super::{SelectionConfig, SeriesSelector};
use crate::enrich::{FlowView, HostPlacement};
use crate::health::GroupHealth;
use crate::poller::AgentStats;

/// How long shutdown waits for the last export to reach the collector.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportConfig {
    pub selection: SelectionConfig,
    pub temporality: Temporality,
    pub histograms: HistogramFormat,
    pub interval: Duration,
    pub file_path: Option<PathBuf>,
    pub otlp: Option<OtlpSettings>,
    pub prometheus: Option<PrometheusSection>,
    pub peer_addresses: PeerAddresses,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    File(#[from] FileOutputError),
    #[error(transparent)]
    Otlp(#[from] TransportError),
    #[error(transparent)]
    Prometheus(#[from] PrometheusError),
}

/// What the outputs did, for logs and the agent's own metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExportStats {
    pub series: usize,
    pub otlp_exports: u64,
    pub otlp_failures: u64,
    pub otlp_superseded: u64,
    pub otlp_dropped: u64,
    pub otlp_bytes: u64,
}

pub struct ExportPipeline {
    selector: SeriesSelector,
    started: SystemTime,
    resource: Resource,
    temporality: Temporality,
    histograms: HistogramFormat,
    file: Option<FileOutput>,
    otlp: Option<OtlpSender>,
    prometheus: Option<PrometheusOutput>,
    last_series: usize,
    peer_addresses: PeerAddresses,
}

impl ExportPipeline {
    /// Opens the outputs. `now` starts the overflow series and the agent's counters; `runtime`
    /// runs OTLP delivery; `host` places the agent on the resource.
    pub fn new(
        config: &ExportConfig,
        host: &HostPlacement,
        now: SystemTime,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Self, ExportError> {
        let file = config.file_path.as_deref().map(FileOutput::open).transpose()?;
        let otlp = config
            .otlp
            .as_ref()
            .map(|s| OtlpSender::spawn(s, config.temporality, runtime))
            .transpose()?;
        let resource: Resource = (&resource::detect(host)).into();
        let prometheus = config
            .prometheus
            .as_ref()
            .map(|p| PrometheusOutput::start(p, &resource, runtime))
            .transpose()?;
        Ok(Self {
            selector: SeriesSelector::new(config.selection, now),
            started: now,
            resource,
            temporality: config.temporality,
            histograms: config.histograms,
            file,
            otlp,
            prometheus,
            last_series: 0,
            peer_addresses: config.peer_addresses,
        })
    }

    pub fn has_outputs(&self) -> bool {
        self.file.is_some() || self.otlp.is_some() || self.prometheus.is_some()
    }

    /// Builds one export and hands it to every output. OTLP delivery happens in the background.
    /// `agent` is the poller's figures; the pipeline adds its own and the process's.
    pub fn export(
        &mut self,
        view: &FlowView<'_>,
        health: &[GroupHealth],
        agent: &AgentStats,
        now: SystemTime,
    ) -> Result<(), ExportError> {
        let frame = self.selector.select(view, now);
        self.last_series = frame.series.len();
        let process = crate::agent::process_stats::read().unwrap_or_default();
        let agent = AgentMetrics::collect(agent, &self.stats(), &process, self.started);
        let build = |temporality| metric_set::build(&frame, health, &agent, temporality, &self.peer_addresses);
        let set = build(self.temporality);
        if let Some(prometheus) = &self.prometheus {
            // a scrape reads running totals, whatever OTLP sends
            match self.temporality {
                Temporality::Cumulative => prometheus.update(&set),
                Temporality::Delta => prometheus.update(&build(Temporality::Cumulative)),
            }
        }
        if self.file.is_none() && self.otlp.is_none() {
            return Ok(());
        }
        let request = encode(&set, &self.resource, self.histograms);
        if let Some(file) = &mut self.file {
            file.write(&request)?;
        }
        if let Some(otlp) = &self.otlp {
            otlp.submit(request);
        }
        Ok(())
    }

    pub fn stats(&self) -> ExportStats {
        let mut stats = ExportStats {
            series: self.last_series,
            ..Default::default()
        };
        if let Some(otlp) = &self.otlp {
            let s = otlp.stats();
            stats.otlp_exports = s.exports.load(Ordering::Relaxed);
            stats.otlp_failures = s.failures.load(Ordering::Relaxed);
            stats.otlp_superseded = s.superseded.load(Ordering::Relaxed);
            stats.otlp_dropped = s.dropped.load(Ordering::Relaxed);
            stats.otlp_bytes = s.bytes.load(Ordering::Relaxed);
        }
        stats
    }

    /// Waits (bounded) for queued OTLP requests to be delivered.
    pub fn finish(self, runtime: &tokio::runtime::Handle) {
        if let Some(otlp) = self.otlp {
            otlp.finish(runtime, SHUTDOWN_DEADLINE);
        }
    }
}
