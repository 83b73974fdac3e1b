//! Export: which flow pairs become series ([`select`]), then the outputs. The selection is pure;
//! outputs only convert what it decides.
pub mod file;
pub mod otlp;
pub mod pipeline;
pub mod prometheus;
pub mod redact;
pub mod select;

pub use pipeline::{ExportConfig, ExportError, ExportPipeline, ExportStats};
pub use select::{
    ExportFrame, RankBy, SelectionConfig, Series, SeriesId, SeriesSelector, DEFAULT_STALE_AFTER, DEFAULT_TOP_K,
};
