//! Wiring: runs the monitor on its own thread, stops it on SIGINT/SIGTERM. No flow logic here.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;

use crate::config::Config;
use crate::enrich::kubernetes::api::KubeApi;
use crate::enrich::kubernetes::Kubernetes;
use crate::enrich::{cloud_metadata, Enricher};
use crate::export::otlp::AgentMetrics;
use crate::export::ExportPipeline;
use crate::health::{GroupHealth, HealthEvaluator, Status, Transition};
use crate::monitor::Monitor;
use crate::privileges;
use crate::probes::{self, AgentProbe};
use crate::process_stats;
use crate::report::{Snapshot, TopRequest};

/// How often a sleeping poll loop checks for shutdown.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// Resources, service lists, monitors and (when asked) the cloud placement: read once at
/// startup by every command.
pub async fn enricher(config: &Config) -> anyhow::Result<Enricher> {
    let detected = cloud_metadata::detect(&config.resources.cloud_metadata).await;
    Ok(Enricher::new(&config.resources, detected, &config.monitors)?)
}

/// Pod attribution, when `[kubernetes]` is on: the cgroup resolver, and the API server's
/// watches when one is configured. The watches run on the current runtime.
pub fn kubernetes(config: &Config) -> anyhow::Result<Option<Arc<Kubernetes>>> {
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

/// `flowtel run`: poll until a signal arrives, logging a summary now and then.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Handle::current();
    // probes first: an orchestrator sees "starting" while the programs load
    let probe = Arc::new(AgentProbe::new(config.poll_interval(), Instant::now()));
    if config.probes.enabled {
        probes::start(&config.probes, Arc::clone(&probe), &runtime)?;
    }
    let mut enricher = enricher(&config).await?;
    if let Some(k8s) = kubernetes(&config)? {
        enricher = enricher.with_kubernetes(k8s);
    }
    let enricher = Arc::new(enricher);
    let stop = Arc::new(AtomicBool::new(false));
    let loop_stop = Arc::clone(&stop);
    // a thread of its own (not the runtime's): it inherits this thread's capabilities to load and
    // attach, then lowers them itself
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("flowtel-poll".into())
        .spawn(move || {
            let result = run_loop(&config, &enricher, &probe, &loop_stop, &runtime);
            let _ = done_tx.send(result);
        })
        .context("starting the poll thread")?;
    let kept = privileges::drop_to(&[])?;
    tracing::debug!(kept = privileges::names(&kept), "main thread dropped its capabilities");
    let mut poller = done_rx;
    tokio::select! {
        done = &mut poller => return done.context("poll loop panicked")?,
        signal = shutdown_signal() => signal?,
    }
    tracing::info!("shutting down");
    stop.store(true, Ordering::Relaxed);
    poller.await.context("poll loop panicked")?
}

async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}

fn run_loop(
    config: &Config,
    enricher: &Arc<Enricher>,
    probe: &AgentProbe,
    stop: &AtomicBool,
    runtime: &tokio::runtime::Handle,
) -> anyhow::Result<()> {
    let export_config = config.export_config(|name| std::env::var(name).ok())?;
    let mut sampler_config = config.sampler_config();
    // the API server's ClusterIPs join the NAT destinations once its watches have listed them
    sampler_config.nat |= enricher.kubernetes().is_some_and(|k| k.api().is_some());
    let nat_reversal = sampler_config.nat;
    let mut monitor = Monitor::start(sampler_config, config.flow_table_config())?;
    probe.attached();
    let started = SystemTime::now();
    let mut exporter = ExportPipeline::new(&export_config, Arc::clone(enricher), started, runtime)?;
    // attached and every output open: from here on only the namespace walk needs privilege
    let kept = privileges::drop_to(&privileges::poll_thread_keeps(nat_reversal))?;
    tracing::info!(kept = privileges::names(&kept), "capabilities dropped after attaching");
    let summary_every = Duration::from_secs(config.run.summary_interval_secs);
    let export_every = export_config.interval;
    let mut last_summary = Instant::now();
    let mut last_export = Instant::now();
    let mut health = config
        .health
        .enabled
        .then(|| HealthEvaluator::new(config.health.thresholds));
    let mut findings: Vec<GroupHealth> = Vec::new();
    let mut last_health = Instant::now();
    let mut poll_failures: u64 = 0;
    let mut nat_destinations = NatDestinations::new(config);
    while sleep_unless_stopped(config.poll_interval(), stop) {
        let now = Instant::now();
        nat_destinations.refresh(enricher, &mut monitor, now);
        if let Err(e) = monitor.poll(now) {
            probe.poll_failed(now);
            poll_failures += 1;
            // a persistent failure is logged at the 1st, 2nd, 4th, 8th... occurrence, not every poll
            if poll_failures.is_power_of_two() {
                tracing::warn!(
                    error = format!("{:#}", anyhow::Error::from(e)),
                    failures = poll_failures,
                    "poll failed; retrying next interval"
                );
            }
            continue;
        }
        probe.poll_succeeded(now);
        if now.duration_since(last_summary) >= summary_every {
            log_summary(&monitor);
            last_summary = now;
        }
        if let Some(evaluator) = health.as_mut() {
            if now.duration_since(last_health) >= config.health.interval() {
                let (latest, transitions) = evaluator.evaluate(monitor.table(), enricher, |_| true);
                transitions.iter().for_each(log_transition);
                findings = latest;
                last_health = now;
            }
        }
        if exporter.has_outputs() && now.duration_since(last_export) >= export_every {
            export(&mut exporter, &mut monitor, &findings, started);
            last_export = now;
        }
    }
    // final export: what was counted since the last one is not lost at shutdown
    if exporter.has_outputs() {
        match monitor.poll(Instant::now()) {
            Ok(()) => export(&mut exporter, &mut monitor, &findings, started),
            Err(e) => tracing::warn!(error = format!("{:#}", anyhow::Error::from(e)), "final poll failed"),
        }
    }
    exporter.finish(runtime);
    Ok(())
}

fn export(exporter: &mut ExportPipeline, monitor: &mut Monitor, health: &[GroupHealth], started: SystemTime) {
    let agent = agent_metrics(monitor, started);
    monitor.reset_peak();
    match exporter.export(monitor.table(), &agent, health, SystemTime::now()) {
        Ok(()) => tracing::debug!(series = exporter.stats().series, "exported"),
        Err(e) => tracing::warn!(error = format!("{:#}", anyhow::Error::from(e)), "export failed"),
    }
}

/// One structured event per status change, naming the group, the reasons and the numbers.
fn log_transition(t: &Transition) {
    let h = &t.health;
    let reasons: Vec<&str> = h.reasons.iter().map(|r| r.as_str()).collect();
    let (from, to) = (
        format!("{:?}", t.from).to_lowercase(),
        format!("{:?}", t.to).to_lowercase(),
    );
    let numbers = |h: &GroupHealth| {
        format!(
            "retransmit_ratio={} rtt_ratio={} timeouts={} connect_failure_ratio={}",
            h.retransmit_ratio.map_or("-".into(), |r| format!("{r:.4}")),
            h.rtt_ratio.map_or("-".into(), |r| format!("{r:.2}")),
            h.timeouts,
            h.connect_failure_ratio.map_or("-".into(), |r| format!("{r:.3}")),
        )
    };
    if t.to == Status::Degraded {
        tracing::warn!(group = %h.group, scope = h.group.scope(), from, to, reason = reasons.join(","), attribution = h.attribution.as_str(), numbers = numbers(h), "network health degraded");
    } else {
        tracing::info!(group = %h.group, scope = h.group.scope(), from, to, numbers = numbers(h), "network health changed");
    }
}

/// Keeps the kernel's NAT-destination list at the configured CIDRs plus the cluster's
/// ClusterIPs, checked every [`NAT_REFRESH`].
struct NatDestinations {
    configured: Vec<ipnet::IpNet>,
    current: Vec<ipnet::IpNet>,
    last: Option<Instant>,
}

const NAT_REFRESH: Duration = Duration::from_secs(5);

impl NatDestinations {
    fn new(config: &Config) -> Self {
        Self {
            configured: config.nat.destinations.clone(),
            current: config.nat.destinations.clone(),
            last: None,
        }
    }

    fn refresh(&mut self, enricher: &Enricher, monitor: &mut Monitor, now: Instant) {
        let Some(k8s) = enricher.kubernetes().filter(|k| k.api().is_some()) else {
            return;
        };
        if self.last.is_some_and(|t| now.duration_since(t) < NAT_REFRESH) {
            return;
        }
        self.last = Some(now);
        let index = k8s.index(now);
        let mut wanted = self.configured.clone();
        wanted.extend(index.cluster_ips().map(|ip| ipnet::IpNet::from(*ip)));
        wanted.sort();
        wanted.dedup();
        if wanted == self.current {
            return;
        }
        match monitor.sampler_mut().set_nat_destinations(&wanted) {
            Ok(0) => tracing::info!(destinations = wanted.len(), "NAT destinations updated"),
            Ok(left_out) => tracing::warn!(
                left_out,
                "NAT destinations beyond the kernel map's capacity are not reversed"
            ),
            Err(e) => tracing::warn!(error = %e, "updating the NAT destinations failed"),
        }
        self.current = wanted;
    }
}

/// The agent's own figures for the export.
fn agent_metrics(monitor: &Monitor, started: SystemTime) -> AgentMetrics {
    let stats = monitor.stats();
    let c = &stats.counters;
    let process = process_stats::read().unwrap_or_default();
    AgentMetrics {
        started: Some(started),
        flow_pairs: stats.table.pairs as u64,
        pair_map_entries: stats.pair_map_peak_entries as u64,
        pair_map_capacity: u64::from(stats.pair_map_capacity),
        dropped: vec![
            ("pair_map_full", c.pair_map_full),
            ("sock_storage_failed", c.sock_storage_failed),
            ("listener_map_full", c.listener_map_full),
            ("flow_table_full", stats.table.overflowed_deltas),
            ("flow_table_evicted_for_room", stats.table.evicted_for_room),
            ("undecodable_pair", c.undecodable_pairs),
            ("nat_unresolved", stats.nat.unresolved + stats.nat.failed),
            ("close_fold_skipped", c.close_fold_skipped),
        ],
        export_failures: 0,
        cpu_user_seconds: process.cpu_user_seconds,
        cpu_system_seconds: process.cpu_system_seconds,
        rss_bytes: process.rss_bytes,
    }
}

/// Sleeps `total` in small steps; false once `stop` is set.
fn sleep_unless_stopped(total: Duration, stop: &AtomicBool) -> bool {
    let deadline = Instant::now() + total;
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(STOP_CHECK));
    }
}

fn log_summary(monitor: &Monitor) {
    let table = monitor.table();
    let totals = table.totals();
    let stats = monitor.stats();
    tracing::info!(
        pairs = table.len(),
        bytes_sent = totals.bytes_sent,
        bytes_received = totals.bytes_received,
        retransmits = totals.retrans_total(),
        timeouts = totals.rto_total(),
        connections = totals.conn_established,
        failed = totals.failed_total(),
        pair_map_full = stats.counters.pair_map_full,
        last_poll_us = stats.last_poll_us,
        "summary"
    );
    let mut pairs = table.pairs();
    pairs.sort_by_key(|p| std::cmp::Reverse(p.counters.bytes_sent + p.counters.bytes_received));
    for pair in pairs.into_iter().take(5) {
        tracing::info!(
            flow = %pair.key,
            bytes_sent = pair.counters.bytes_sent,
            bytes_received = pair.counters.bytes_received,
            retransmits = pair.counters.retrans_total(),
            active = pair.counters.active,
            "top pair"
        );
    }
}

/// `flowtel snapshot`: sample for `seconds`, then return the table.
pub fn snapshot(
    config: &Config,
    enricher: &Enricher,
    seconds: f64,
    top: Option<TopRequest>,
) -> anyhow::Result<Snapshot> {
    let mut monitor = Monitor::start(config.sampler_config(), config.flow_table_config())?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds.max(0.0));
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        std::thread::sleep(left.min(config.poll_interval()));
        monitor.poll(Instant::now())?;
        if Instant::now() >= deadline {
            break;
        }
    }
    let cgroup = monitor.sampler().target().path.display().to_string();
    Ok(Snapshot::new(
        monitor.table(),
        monitor.stats(),
        started.elapsed().as_secs_f64(),
        cgroup,
        enricher,
        top,
    ))
}
