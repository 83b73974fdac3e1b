//! One export: select series from the flow table, encode them once, hand them to every
//! configured output. The agent calls [`ExportPipeline::export`] each interval and at shutdown.
use super::redact::PeerAddresses;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry_proto::tonic::resource::v1::Resource;

use super::file::{FileOutput, FileOutputError};
use super::otlp::sender::OtlpSender;
use super::otlp::settings::OtlpSettings;
use super::otlp::transport::TransportError;
use super::otlp::{encode, resource, AgentMetrics, Encoding, HistogramFormat, Temporality};
use super::prometheus::{PrometheusError, PrometheusOutput, PrometheusSection};
use super::{SelectionConfig, SeriesSelector};
use crate::enrich::Enricher;
use crate::flows::FlowTable;
use crate::health::GroupHealth;

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
    enricher: Arc<Enricher>,
    resource: Resource,
    encoding: Encoding,
    file: Option<FileOutput>,
    otlp: Option<OtlpSender>,
    prometheus: Option<PrometheusOutput>,
    last_series: usize,
    peer_addresses: PeerAddresses,
}

impl ExportPipeline {
    /// Opens the outputs. `now` starts the overflow series; `runtime` runs OTLP delivery;
    /// `enricher` names resources, defines monitors and places the host on the resource.
    pub fn new(
        config: &ExportConfig,
        enricher: Arc<Enricher>,
        now: SystemTime,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Self, ExportError> {
        let file = config.file_path.as_deref().map(FileOutput::open).transpose()?;
        let otlp = config
            .otlp
            .as_ref()
            .map(|s| OtlpSender::spawn(s, config.temporality, runtime))
            .transpose()?;
        let prometheus = config
            .prometheus
            .as_ref()
            .map(|p| PrometheusOutput::start(p, runtime))
            .transpose()?;
        Ok(Self {
            selector: SeriesSelector::new(config.selection, now),
            resource: (&resource::detect(enricher.classifier().host())).into(),
            enricher,
            encoding: Encoding {
                temporality: config.temporality,
                histograms: config.histograms,
            },
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

    /// Encodes one export and hands it to every output. OTLP delivery happens in the background.
    /// `agent` carries the agent's own figures; the pipeline adds its export counters.
    pub fn export(
        &mut self,
        table: &FlowTable,
        agent: &AgentMetrics,
        health: &[GroupHealth],
        now: SystemTime,
    ) -> Result<(), ExportError> {
        let mut frame = self.selector.select(table, &self.enricher, now);
        frame.peer_addresses = self.peer_addresses;
        self.last_series = frame.series.len();
        if let Some(prometheus) = &self.prometheus {
            prometheus.update(&frame, health);
        }
        let stats = self.stats();
        let mut agent = agent.clone();
        agent.export_failures = stats.otlp_failures;
        agent.dropped.push(("export_superseded", stats.otlp_superseded));
        agent.dropped.push(("export_undelivered", stats.otlp_dropped));
        let request = encode(&frame, &agent, health, &self.resource, self.encoding);
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
