//! The sampler feeding the flow table: one poll moves one interval of kernel deltas into the
//! running totals. Used by `flowtel run`, `flowtel snapshot` and the kernel tests.
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::flows::{FlowTable, FlowTableConfig, FlowTableStats};
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
}

pub struct Monitor {
    sampler: Sampler,
    table: FlowTable,
    stats: AgentStats,
}

impl Monitor {
    pub fn start(sampler: SamplerConfig, table: FlowTableConfig) -> Result<Self, SamplerError> {
        let pair_map_capacity = sampler.pair_map_capacity;
        Ok(Self {
            sampler: Sampler::start(sampler)?,
            table: FlowTable::new(table),
            stats: AgentStats {
                pair_map_capacity,
                ..Default::default()
            },
        })
    }

    /// One interval: drain the kernel, update the table, age out idle pairs.
    pub fn poll(&mut self, now: Instant) -> Result<(), SamplerError> {
        let sample = self.sampler.poll()?;
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
        Ok(())
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
}

fn duration_us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
