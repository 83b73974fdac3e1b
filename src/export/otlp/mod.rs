//! OTLP output: encoding export frames as `ExportMetricsServiceRequest`, and the resource that
//! describes this agent.
pub mod encode;
pub mod resource;
pub mod settings;

pub use encode::{encode, names, Temporality};
