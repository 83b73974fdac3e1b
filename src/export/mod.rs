//! Export: which flow pairs become series ([`select`]), then the outputs. The selection is pure;
//! outputs only convert what it decides.
pub mod otlp;
pub mod select;

pub use select::{ExportFrame, RankBy, SelectionConfig, Series, SeriesSelector, DEFAULT_TOP_K};
