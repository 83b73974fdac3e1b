//! The agent's own runtime: `flowtel run` wiring (the poller on its own thread, stopped on
//! SIGINT/SIGTERM), its HTTP endpoints, probes, privileges and process figures. No flow logic.
pub mod http_server;
pub mod privileges;
pub mod probes;
pub mod process_stats;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;

use crate::config::Config;
use crate::enrich::Enricher;
use crate::export::ExportPipeline;
use crate::health::{GroupHealth, Status, Transition};
use crate::poller::Poller;
use probes::AgentProbe;

/// How often a sleeping poll loop checks for shutdown.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// `flowtel run`: poll until a signal arrives, logging a summary now and then.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Handle::current();
    // probes first: an orchestrator sees "starting" while the programs load
    let probe = Arc::new(AgentProbe::new(config.poll_interval(), Instant::now()));
    if config.probes.enabled {
        probes::start(&config.probes, Arc::clone(&probe), &runtime)?;
    }
    let enricher = crate::poller::enricher_with_kubernetes(&config).await?;
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
    let mut poller = Poller::start(sampler_config, config.flow_table_config())?
        .with_dns_cache(config.dns_cache_config())
        .with_enricher(Arc::clone(enricher))
        .with_health_from(config);
    probe.attached();
    let mut exporter = ExportPipeline::new(&export_config, enricher.classifier().host(), SystemTime::now(), runtime)?;
    // attached and every output open: from here on only the namespace walk needs privilege
    let kept = privileges::drop_to(&privileges::poll_thread_keeps(nat_reversal))?;
    tracing::info!(kept = privileges::names(&kept), "capabilities dropped after attaching");
    let summary_every = Duration::from_secs(config.run.summary_interval_secs);
    let export_every = export_config.interval;
    let mut last_summary = Instant::now();
    let mut last_export = Instant::now();
    let mut poll_failures: u64 = 0;
    let mut nat_destinations = NatDestinations::new(config);
    // DNS answers are read every step of the sleep too, so that a burst between two polls
    // does not fill the kernel's ring buffer
    while sleep_unless_stopped(config.poll_interval(), stop, || poller.read_dns_answers(Instant::now())) {
        let now = Instant::now();
        nat_destinations.refresh(enricher, &mut poller, now);
        match poller.poll(now) {
            Ok(transitions) => transitions.iter().for_each(log_transition),
            Err(e) => {
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
        }
        probe.poll_succeeded(now);
        if now.duration_since(last_summary) >= summary_every {
            log_summary(&poller);
            last_summary = now;
        }
        if exporter.has_outputs() && now.duration_since(last_export) >= export_every {
            export(&mut exporter, &mut poller);
            last_export = now;
        }
    }
    // final export: what was counted since the last one is not lost at shutdown
    if exporter.has_outputs() {
        match poller.poll(Instant::now()) {
            Ok(_) => export(&mut exporter, &mut poller),
            Err(e) => tracing::warn!(error = format!("{:#}", anyhow::Error::from(e)), "final poll failed"),
        }
    }
    exporter.finish(runtime);
    Ok(())
}

fn export(exporter: &mut ExportPipeline, poller: &mut Poller) {
    let result = exporter.export(&poller.view(), poller.findings(), poller.stats(), SystemTime::now());
    poller.reset_peak();
    match result {
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
        let e = &h.evidence;
        let ms = |v: Option<f64>| v.map_or("-".into(), |s| format!("{:.2}ms", s * 1e3));
        format!(
            "retransmit_ratio={} retransmits={}/{} usual_ratio={:.4} evidence={:.1} \
             rtt_p50={} rtt_baseline={} rtt_samples={} receiver_rtt_p50={} receiver_rtt_baseline={} \
             receiver_rtt_samples={} rtt_ratio={} timeouts={} delivered_vs_usual={} connect_failure_ratio={}",
            h.retransmit_ratio.map_or("-".into(), |r| format!("{r:.4}")),
            e.retransmits,
            e.segments,
            e.retransmit_baseline,
            e.retransmit_evidence,
            ms(e.rtt.p50),
            ms(e.rtt.baseline),
            e.rtt.samples,
            ms(e.rtt_receiver.p50),
            ms(e.rtt_receiver.baseline),
            e.rtt_receiver.samples,
            h.rtt_ratio.map_or("-".into(), |r| format!("{r:.2}")),
            h.timeouts,
            e.delivered_ratio.map_or("-".into(), |r| format!("{r:.2}")),
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

    fn refresh(&mut self, enricher: &Enricher, poller: &mut Poller, now: Instant) {
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
        match poller.sampler_mut().set_nat_destinations(&wanted) {
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

/// Sleeps `total` in small steps, calling `each_step` after each; false once `stop` is set.
fn sleep_unless_stopped(total: Duration, stop: &AtomicBool, mut each_step: impl FnMut()) -> bool {
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
        each_step();
    }
}

fn log_summary(poller: &Poller) {
    let table = poller.table();
    let totals = table.totals();
    let stats = poller.stats();
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
