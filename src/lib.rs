//! flowtel: TCP flow pairs from the kernel, exported as OpenTelemetry metrics.
//!
//! The pipeline reads top to bottom: [`sampler`] (kernel) -> [`flows`] (pure table) ->
//! [`monitor`] (one poll) -> [`report`]; [`agent`] wires tasks, [`config`] and [`cli`] are the
//! edge.
pub mod agent;
pub mod cli;
pub mod config;
pub mod export;
pub mod flows;
pub mod health;
pub mod monitor;
pub mod process_stats;
pub mod report;
pub mod sampler;
