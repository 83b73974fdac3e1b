//! flowtel: TCP flow pairs from the kernel, exported as OpenTelemetry metrics.
//!
//! The pipeline reads top to bottom: [`sampler`] (kernel) -> [`flows`] (pure table) ->
//! [`enrich`] (resources, categories, monitors, Kubernetes: annotated once per pair) ->
//! [`health`] -> [`export`] (one [`export::metric_set`] rendered as OTLP, file and `/metrics`)
//! and [`views`] (`snapshot`, `top`). [`poller`] is the one loop that runs sampler -> table ->
//! annotate -> health for every command; [`agent`] is `flowtel run`'s wiring and runtime pieces;
//! [`config`] and [`cli`] are the edge; [`names`] holds every exported name.
pub mod agent;
pub mod cli;
pub mod config;
pub mod enrich;
pub mod export;
pub mod flows;
pub mod health;
pub mod names;
pub mod poller;
pub mod sampler;
pub mod views;

#[cfg(test)]
pub(crate) mod testing;
