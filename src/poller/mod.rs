//! The one loop every command runs: sampler -> flow table -> annotate -> health. One poll moves
//! one interval of kernel deltas into the running totals, stamps new pairs with their resources,
//! monitors and Kubernetes names, and evaluates health when it is due. `flowtel run`, `top`,
//! `snapshot` and the kernel tests all drive a [`Poller`]; what they do with its [`FlowView`] is
//! theirs.
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::config::Config;
use crate::enrich::dns::{DnsCacheConfig, DnsNames, DnsStats};
use crate::enrich::kubernetes::api::KubeApi;
use crate::enrich::kubernetes::Kubernetes;
use crate::enrich::{cloud_metadata, Annotations, Enricher, FlowView};
use crate::flows::{FlowTable, FlowTableConfig, FlowTableStats};
use crate::health::{GroupHealth, HealthEvaluator, HealthThresholds, Transition};
use crate::sampler::{AgentCounters, Sampler, SamplerConfig, SamplerError};

/// Figures about the agent itself, for its own metrics and the snapshot.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AgentStats {
    pub counters: AgentCounters,
    pub table: FlowTableStats,
    pub polls: u64,
    pub pair_map_capacity: u32,
    /// Most entries the pair map held in one interval.
    pub pair_map_peak_entries: usize,
    pub last_pair_map_entries: usize,
    /// Polls that walked the sockets.
    pub walks: u64,
    pub namespaces_walked: usize,
    /// Processes whose network namespace the walk could not enter.
    pub namespaces_unreadable: usize,
    pub last_walk_us: u64,
    pub last_poll_us: u64,
    /// NAT reversal (conntrack lookups), when on.
    pub nat: crate::sampler::nat::NatStats,
    /// DNS capture, when on.
    pub dns: Option<DnsStats>,
}

/// Health evaluated every `every`, the latest findings kept between evaluations.
#[derive(Debug)]
struct HealthSchedule {
    evaluator: HealthEvaluator,
    every: Duration,
    last: Instant,
    findings: Vec<GroupHealth>,
}

pub struct Poller {
    sampler: Sampler,
    table: FlowTable,
    stats: AgentStats,
    enricher: Arc<Enricher>,
    annotations: Annotations,
    health: Option<HealthSchedule>,
    /// Peers' DNS names, when the sampler captures answers.
    dns: Option<DnsNames>,
}

impl Poller {
    /// Loads and attaches the sampler. No resources, monitors or health until given.
    pub fn start(sampler: SamplerConfig, table: FlowTableConfig) -> Result<Self, SamplerError> {
        let pair_map_capacity = sampler.pair_map_capacity;
        let dns = sampler.dns.then(|| DnsNames::new(DnsCacheConfig::default()));
        Ok(Self {
            sampler: Sampler::start(sampler)?,
            table: FlowTable::new(table),
            stats: AgentStats {
                pair_map_capacity,
                ..Default::default()
            },
            enricher: Arc::new(Enricher::default()),
            annotations: Annotations::default(),
            health: None,
            dns,
        })
    }

    /// Reads the DNS answers waiting in the kernel's ring buffer into the name cache, between
    /// polls (each poll reads them too, first).
    pub fn read_dns_answers(&mut self, now: Instant) {
        let Some(dns) = self.dns.as_mut() else {
            return;
        };
        match self.sampler.read_dns_answers() {
            Ok(captures) => dns.ingest(captures, now),
            Err(e) => tracing::debug!(error = %e, "reading DNS answers failed; the next poll retries"),
        }
    }

    /// The `[dns]` cache limits (when the sampler captures answers).
    pub fn with_dns_cache(mut self, config: DnsCacheConfig) -> Self {
        if self.dns.is_some() {
            self.dns = Some(DnsNames::new(config));
        }
        self
    }

    /// Annotates pairs with `enricher`'s resources, monitors and Kubernetes names.
    pub fn with_enricher(mut self, enricher: Arc<Enricher>) -> Self {
        self.enricher = enricher;
        self
    }

    /// Evaluates health every `every`, the first time `every` after now.
    pub fn with_health(mut self, thresholds: HealthThresholds, every: Duration) -> Self {
        self.health = Some(HealthSchedule {
            evaluator: HealthEvaluator::new(thresholds),
            every,
            last: Instant::now(),
            findings: Vec::new(),
        });
        self
    }

    /// The `[health]` section, when enabled.
    pub fn with_health_from(self, config: &Config) -> Self {
        if config.health.enabled {
            self.with_health(config.health.thresholds, config.health.interval())
        } else {
            self
        }
    }

    /// One interval: drain the kernel, update the table, age out idle pairs, annotate, and
    /// evaluate health when due. Returns the health status changes, to be logged once.
    pub fn poll(&mut self, now: Instant) -> Result<Vec<Transition>, SamplerError> {
        let mut sample = self.sampler.poll()?;
        if sample.walked {
            self.table.apply_poll(&sample.pairs, &sample.overflow, now);
        } else {
            self.table
                .apply_poll_between_walks(&sample.pairs, &sample.overflow, now);
        }
        self.table.note_originals(&sample.nat_originals);
        self.table.evict_idle(now);
        let s = &mut self.stats;
        s.nat = sample.nat;
        s.counters = sample.counters;
        s.table = self.table.stats();
        s.polls += 1;
        s.last_pair_map_entries = sample.pair_map_entries;
        s.pair_map_peak_entries = s.pair_map_peak_entries.max(sample.pair_map_entries);
        if sample.walked {
            s.walks += 1;
            s.namespaces_walked = sample.namespaces_walked;
            s.namespaces_unreadable = sample.namespaces_unreadable;
            s.last_walk_us = duration_us(sample.walk_time);
        }
        s.last_poll_us = duration_us(sample.poll_time);
        self.annotations.refresh(&self.table, &self.enricher, now);
        if let Some(dns) = self.dns.as_mut() {
            dns.ingest(std::mem::take(&mut sample.dns), now);
            self.annotations.name_peers(&self.table, dns, now);
            self.stats.dns = Some(dns.stats());
        }
        let Some(health) = self.health.as_mut() else {
            return Ok(Vec::new());
        };
        if now.duration_since(health.last) < health.every {
            return Ok(Vec::new());
        }
        health.last = now;
        let view = self.annotations.view(&self.table);
        let (findings, transitions) = health.evaluator.evaluate(&view, |_| true);
        health.findings = findings;
        Ok(transitions)
    }

    /// The table's pairs with their annotations, as of the last poll.
    pub fn view(&self) -> FlowView<'_> {
        self.annotations.view(&self.table)
    }

    /// The latest health findings (empty before the first evaluation or with health off).
    pub fn findings(&self) -> &[GroupHealth] {
        self.health.as_ref().map_or(&[], |h| &h.findings)
    }

    pub fn enricher(&self) -> &Arc<Enricher> {
        &self.enricher
    }

    /// The sampler, for changing what it watches while it runs (NAT destinations).
    pub fn sampler_mut(&mut self) -> &mut Sampler {
        &mut self.sampler
    }

    /// Starts a new window for `pair_map_peak_entries` (each export reports its own peak).
    pub fn reset_peak(&mut self) {
        self.stats.pair_map_peak_entries = 0;
    }

    pub fn table(&self) -> &FlowTable {
        &self.table
    }

    pub fn stats(&self) -> &AgentStats {
        &self.stats
    }

    pub fn sampler(&self) -> &Sampler {
        &self.sampler
    }

    /// The cgroup whose sockets are watched.
    pub fn cgroup(&self) -> &std::path::Path {
        &self.sampler.target().path
    }
}

fn duration_us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Resources, service lists, monitors and (when asked) the cloud placement: read once at
/// startup by every command.
pub async fn enricher(config: &Config) -> anyhow::Result<Enricher> {
    let detected = cloud_metadata::detect(&config.resources.cloud_metadata).await;
    Ok(Enricher::new(&config.resources, detected, &config.monitors)?)
}

/// [`enricher`] plus pod attribution when `[kubernetes]` is on (`flowtel run`). The API
/// server's watches run on the current runtime.
pub async fn enricher_with_kubernetes(config: &Config) -> anyhow::Result<Arc<Enricher>> {
    let mut enricher = enricher(config).await?;
    if let Some(k8s) = kubernetes(config)? {
        enricher = enricher.with_kubernetes(k8s);
    }
    Ok(Arc::new(enricher))
}

/// Pod attribution, when `[kubernetes]` is on: the cgroup resolver, and the API server's
/// watches when one is configured.
fn kubernetes(config: &Config) -> anyhow::Result<Option<Arc<Kubernetes>>> {
    let env = |name: &str| std::env::var(name).ok();
    let section = &config.kubernetes;
    if !section.is_enabled(env) {
        return Ok(None);
    }
    let api = match section.client_config(env)? {
        Some(client_config) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let client = kube::Client::try_from(client_config)
                .context("building the Kubernetes API client (kubernetes.api_server)")?;
            let node = section.node(env);
            tracing::info!(
                node = node.as_deref().unwrap_or("-"),
                "watching the Kubernetes API server"
            );
            Some(KubeApi::start(
                client,
                node.as_deref(),
                &tokio::runtime::Handle::current(),
            ))
        }
        None => None,
    };
    // the hierarchy the sampler watches (in a pod: the host's, mounted at sampler.cgroup_path)
    let root = match &config.sampler.cgroup_path {
        Some(path) => path.clone(),
        None => crate::sampler::cgroup2_root()?,
    };
    Ok(Some(Arc::new(Kubernetes::new(root, api, section.rollup))))
}
