//! One export: select series from the flow table, encode them once, hand them to every
//! configured output. The agent calls [`ExportPipeline::export`] each interval and at shutdown.
use std::path::PathBuf;
use std::time::SystemTime;

use opentelemetry_proto::tonic::resource::v1::Resource;

use super::file::{FileOutput, FileOutputError};
use super::otlp::{encode, resource, Temporality};
use super::{SelectionConfig, SeriesSelector};
use crate::flows::FlowTable;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportConfig {
    pub selection: SelectionConfig,
    pub temporality: Temporality,
    pub file_path: Option<PathBuf>,
}

/// What one export sent, for logs and the agent's own metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExportReport {
    pub series: usize,
    pub file_bytes: usize,
}

pub struct ExportPipeline {
    selector: SeriesSelector,
    resource: Resource,
    temporality: Temporality,
    file: Option<FileOutput>,
}

impl ExportPipeline {
    /// Opens the outputs. `now` starts the overflow series.
    pub fn new(config: &ExportConfig, now: SystemTime) -> Result<Self, FileOutputError> {
        let file = config.file_path.as_deref().map(FileOutput::open).transpose()?;
        Ok(Self {
            selector: SeriesSelector::new(config.selection, now),
            resource: (&resource::detect()).into(),
            temporality: config.temporality,
            file,
        })
    }

    pub fn has_outputs(&self) -> bool {
        self.file.is_some()
    }

    pub fn export(&mut self, table: &FlowTable, now: SystemTime) -> Result<ExportReport, FileOutputError> {
        let frame = self.selector.select(table, now);
        let request = encode(&frame, &self.resource, self.temporality);
        let mut report = ExportReport {
            series: frame.series.len(),
            ..Default::default()
        };
        if let Some(file) = &mut self.file {
            report.file_bytes = file.write(&request)?;
        }
        Ok(report)
    }
}
