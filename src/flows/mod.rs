//! Flow pairs: the key connections collapse into, the counters a pair accumulates, and the
//! table that turns per-poll kernel deltas into exact running totals.
//!
//! Pure: no kernel, no clock, no I/O. `now` is always passed in.
mod key;
mod stats;
mod table;

pub use key::{FlowKey, Role};
pub use stats::{ConnectFailure, FlowCounters, Log2Histogram, Owner, Phase, HIST_BUCKETS};
pub use table::{
    FlowPair, FlowTable, FlowTableConfig, FlowTableStats, PairDelta, PairSnapshots, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_PAIRS,
};
