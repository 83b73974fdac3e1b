//! Command line: parses arguments and configuration, then hands plain config to the agent.
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::enrich::Category;
use crate::views::contributors::RankMetric;
use crate::views::report::TopRequest;

#[derive(Debug, Parser)]
#[command(
    name = "flowtel",
    version,
    about = "TCP flow pairs from eBPF, exported as OpenTelemetry metrics"
)]
pub struct Cli {
    /// TOML configuration file (see config/flowtel.toml)
    #[arg(long, global = true, env = "FLOWTEL_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: sample every poll interval and log a periodic summary
    Run,
    /// Check the configuration (file, FLOWTEL_* and OTEL_* variables, resources, monitors)
    /// without loading anything into the kernel
    Check,
    /// Live view of the busiest flow pairs, their categories and health (no collector needed)
    Top {
        /// Print one plain-text table after one refresh and exit
        #[arg(long)]
        once: bool,
    },
    /// Sample for a while, then print the flow table
    Snapshot {
        /// How long to sample, in seconds
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Print JSON (one object per flow pair plus the agent's counters)
        #[arg(long)]
        json: bool,
        /// Report only the N top contributors per category
        #[arg(long, value_name = "N")]
        top: Option<usize>,
        /// What ranks the top contributors: bytes, retransmits, timeouts or rtt_p50
        #[arg(long, value_name = "METRIC", default_value = "bytes", requires = "top")]
        by: RankMetric,
        /// Only this category: intra_zone, inter_zone, inter_vpc, inter_region, service, internet,
        /// unclassified
        #[arg(long, value_name = "CATEGORY", requires = "top")]
        category: Option<Category>,
    },
    /// Ask a running agent's /readyz (or /healthz) on [probes] listen: exit 0 when it answers
    /// 200, 1 otherwise. For container health checks in images without curl
    Probe {
        /// Ask /healthz (live) instead of /readyz (ready)
        #[arg(long)]
        live: bool,
    },
}

impl Cli {
    /// Whether the command gives up its capabilities once attached (the long-running agent).
    pub fn drops_privileges(&self) -> bool {
        matches!(self.command, Command::Run)
    }
}

pub fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    Ok(Config::load(cli.config.as_deref(), std::env::vars())?)
}

pub async fn execute(cli: Cli) -> anyhow::Result<()> {
    let config = load_config(&cli)?;
    match cli.command {
        Command::Run => crate::agent::run(config).await,
        Command::Check => {
            config.export_config(|name| std::env::var(name).ok())?;
            let enricher = crate::poller::enricher(&config).await?;
            println!(
                "configuration OK: {} networks, {} service prefixes, {} monitors",
                config.resources.networks.len(),
                enricher.classifier().service_prefixes(),
                enricher.monitors().len()
            );
            Ok(())
        }
        Command::Top { once } => crate::views::top::run(config, once).await,
        Command::Probe { live } => {
            let body = crate::agent::probes::ask(&config.probes, live).await?;
            println!("{body}");
            Ok(())
        }
        Command::Snapshot {
            seconds,
            json,
            top,
            by,
            category,
        } => {
            if !(0.0..=86_400.0).contains(&seconds) {
                anyhow::bail!("--seconds must be between 0 and 86400, got {seconds}");
            }
            if top == Some(0) {
                anyhow::bail!("--top must be at least 1");
            }
            let top = top.map(|limit| TopRequest { limit, by, category });
            let enricher = crate::poller::enricher(&config).await?;
            let snapshot =
                tokio::task::spawn_blocking(move || crate::views::report::take(&config, enricher, seconds, top))
                    .await
                    .context("snapshot task panicked")??;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&snapshot).context("encoding the snapshot")?
                );
            } else {
                print!("{}", snapshot.to_text());
            }
            Ok(())
        }
    }
}
