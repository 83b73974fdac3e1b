//! flowtel: TCP flow pairs from the kernel, exported as OpenTelemetry metrics.
//!
//! The pipeline reads top to bottom: [`sampler`] (kernel) -> [`flows`] (pure table) ->
//! [`monitor`] (one poll) -> [`enrich`] (resources, categories, monitors) -> [`health`] ->
//! [`export`] and [`report`] / [`top`]; [`agent`] wires tasks, [`config`] and [`cli`] are the
//! edge.
pub mod agent;
pub mod cli;
pub mod config;
pub mod contributors;
pub mod enrich;
pub mod export;
pub mod flows;
pub mod health;
pub mod http_server;
pub mod monitor;
pub mod privileges;
pub mod probes;
pub mod process_stats;
pub mod report;
pub mod sampler;
pub mod top;
