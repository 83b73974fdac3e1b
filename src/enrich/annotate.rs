//! Annotate once: each flow pair is stamped with its category, resources, monitors and
//! Kubernetes metadata when it first appears (and again when the Kubernetes index or the pair's
//! owner changes), and every consumer (export, health, `snapshot`, `top`) reads the stamp.
//! Monitor matching happens here and nowhere else.
//!
//! Bounded by the flow table: an annotation lives exactly as long as its pair.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::dns::DnsNames;
use super::kubernetes::api::ApiIndex;
use super::kubernetes::{PodAttributes, Rollup};
use super::{Enricher, PairContext};
use crate::flows::{FlowKey, FlowPair, FlowTable};

/// What is known about one pair beyond its counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Annotation {
    pub context: Arc<PairContext>,
    /// Indexes into [`FlowView::monitors`] of the monitors that select the pair.
    pub monitors: Box<[usize]>,
    /// Pod, workload and Service names of both ends, where known.
    pub kubernetes: Option<Arc<PodAttributes>>,
    /// The name the peer's address was resolved from, where the DNS capture saw it.
    pub dns_name: Option<Arc<str>>,
    /// The owner's cgroup the Kubernetes names were resolved for.
    cgroup_id: Option<u64>,
    /// The DNS cache was asked for a name at least once.
    dns_asked: bool,
}

/// A pair with its annotation.
#[derive(Debug, Clone, Copy)]
pub struct AnnotatedPair<'a> {
    pub pair: &'a FlowPair,
    pub annotation: &'a Annotation,
}

/// One poll's annotated pairs, in key order, with what the consumers need to group them.
#[derive(Debug)]
pub struct FlowView<'a> {
    pub table: &'a FlowTable,
    pub pairs: Vec<AnnotatedPair<'a>>,
    /// The configured monitors' names, in configuration order.
    pub monitors: &'a [Arc<str>],
    /// Pairs with known workloads at both ends are summed into workload-pair series.
    pub workload_rollup: bool,
}

/// Every pair's annotation, kept in step with the flow table.
#[derive(Debug, Default)]
pub struct Annotations {
    by_key: HashMap<FlowKey, Annotation>,
    monitors: Vec<Arc<str>>,
    workload_rollup: bool,
    /// The Kubernetes index the annotations were made with.
    index: Option<Arc<ApiIndex>>,
    /// The index without an API server (cgroup attribution only): one, so that it never
    /// looks changed.
    no_api: Arc<ApiIndex>,
    /// For a pair the table holds but `refresh` has not seen (never in the poller).
    unannotated: Annotation,
}

impl Annotations {
    /// Annotates new pairs, re-annotates the Kubernetes names of all of them when the API
    /// server's index changed, and forgets pairs the table no longer holds.
    pub fn refresh(&mut self, table: &FlowTable, enricher: &Enricher, now: Instant) {
        let names = enricher.monitors().iter().map(|m| &m.name);
        if !self.monitors.iter().eq(names) {
            self.monitors = enricher.monitors().iter().map(|m| Arc::clone(&m.name)).collect();
        }
        let kubernetes = enricher.kubernetes();
        self.workload_rollup = kubernetes.is_some_and(|k| k.rollup() == Rollup::Workload);
        let index = kubernetes.map(|k| match k.api() {
            Some(_) => k.index(now),
            None => Arc::clone(&self.no_api),
        });
        let index_changed = match (&index, &self.index) {
            (Some(new), Some(old)) => !Arc::ptr_eq(new, old),
            (new, old) => new.is_some() != old.is_some(),
        };
        self.index = index;
        self.by_key.retain(|key, _| table.get(key).is_some());
        for pair in table.iter() {
            let stale = |a: &Annotation| index_changed || a.cgroup_id != pair.owner.cgroup_id;
            match self.by_key.get_mut(&pair.key) {
                None => {
                    let annotation = annotate(pair, enricher, self.index.as_deref(), now);
                    self.by_key.insert(pair.key, annotation);
                }
                Some(a) if kubernetes.is_some() && stale(a) => {
                    a.kubernetes = pod_attributes(pair, enricher, self.index.as_deref(), now);
                    a.cgroup_id = pair.owner.cgroup_id;
                }
                Some(_) => {}
            }
        }
    }

    /// Names peers from the DNS cache: pairs never asked yet, and pairs still without a name
    /// whose address was answered since the last call. A named pair keeps its name (see
    /// [`crate::enrich::dns`]). A NAT-reversed pair is named by the address its client connected
    /// to: that is the one the name resolved to.
    pub fn name_peers(&mut self, table: &FlowTable, dns: &mut DnsNames, now: Instant) {
        let answered = dns.take_answered();
        for pair in table.iter() {
            let Some(a) = self.by_key.get_mut(&pair.key) else {
                continue;
            };
            let address = pair.original.map_or(pair.key.remote, |o| o.ip());
            if a.dns_name.is_some() || (a.dns_asked && !answered.contains(&address)) {
                continue;
            }
            a.dns_asked = true;
            a.dns_name = dns.name(address, pair.owner.cgroup_id, now);
        }
    }

    pub fn get(&self, key: &FlowKey) -> Option<&Annotation> {
        self.by_key.get(key)
    }

    /// The table's pairs with their annotations.
    pub fn view<'a>(&'a self, table: &'a FlowTable) -> FlowView<'a> {
        FlowView {
            table,
            pairs: table
                .pairs()
                .into_iter()
                .map(|pair| AnnotatedPair {
                    pair,
                    annotation: self.by_key.get(&pair.key).unwrap_or(&self.unannotated),
                })
                .collect(),
            monitors: &self.monitors,
            workload_rollup: self.workload_rollup,
        }
    }
}

fn pod_attributes(
    pair: &FlowPair,
    enricher: &Enricher,
    index: Option<&ApiIndex>,
    now: Instant,
) -> Option<Arc<PodAttributes>> {
    let k8s = enricher.kubernetes()?;
    k8s.attributes(pair, index?, now)
}

fn annotate(pair: &FlowPair, enricher: &Enricher, index: Option<&ApiIndex>, now: Instant) -> Annotation {
    let context = enricher.classify(&pair.key);
    let monitors = enricher
        .monitors()
        .iter()
        .enumerate()
        .filter(|(_, m)| m.matches(&pair.key, &context))
        .map(|(i, _)| i)
        .collect();
    Annotation {
        context: Arc::new(context),
        monitors,
        kubernetes: pod_attributes(pair, enricher, index, now),
        dns_name: None,
        cgroup_id: pair.owner.cgroup_id,
        dns_asked: false,
    }
}

impl FlowView<'_> {
    /// The names of the monitors that select `pair`.
    pub fn monitors_of<'s>(&'s self, pair: &'s AnnotatedPair<'_>) -> impl Iterator<Item = &'s Arc<str>> {
        pair.annotation.monitors.iter().filter_map(|i| self.monitors.get(*i))
    }
}
