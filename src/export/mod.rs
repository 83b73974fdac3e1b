//! Export: which flow pairs become series ([`select`]), one typed [`metric_set`] built from them,
//! the health findings and the agent's own figures, then the outputs that render it (OTLP, the
//! file, `/metrics`). Selection and the metric set are pure; outputs only render.
pub mod file;
pub mod metric_set;
pub mod otlp;
pub mod pipeline;
pub mod prometheus;
pub mod redact;
pub mod select;

pub use metric_set::{AgentMetrics, MetricSet, Temporality};
pub use pipeline::{ExportConfig, ExportError, ExportPipeline, ExportStats};
pub use select::{
    ExportFrame, RankBy, SelectionConfig, Series, SeriesId, SeriesSelector, DEFAULT_STALE_AFTER, DEFAULT_TOP_K,
};
