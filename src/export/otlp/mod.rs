//! OTLP output: encoding export frames as `ExportMetricsServiceRequest`, and the resource that
//! describes this agent.
pub mod encode;
pub mod resource;
pub mod sender;
pub mod settings;
pub mod transport;

pub use encode::{encode, names, AgentMetrics, Encoding, HistogramFormat, Temporality};
