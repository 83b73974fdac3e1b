//! OTLP output: a metric set rendered as an `ExportMetricsServiceRequest`, the resource that
//! describes this agent, its settings (`OTEL_*`) and delivery over gRPC or HTTP.
pub mod encode;
pub mod resource;
pub mod sender;
pub mod settings;
pub mod transport;

pub use encode::{encode, HistogramFormat};
