//! What `flowtel top` shows, computed from the flow table: one row per pair with its rates over
//! the last refresh, its counts and RTT since `top` started, and its peer group's health; one
//! row per monitor. Pure: the terminal is in `view` and `mod`.
use std::collections::HashMap;
use std::sync::Arc;

use crate::enrich::{Category, FlowView};
use crate::flows::{FlowCounters, FlowKey, PairSnapshots, Role};
use crate::health::{GroupHealth, GroupId, Status};

/// A table column; every one sorts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Local,
    Peer,
    Port,
    Role,
    Category,
    TxRate,
    RxRate,
    Retransmits,
    Timeouts,
    RttP50,
    RttP99,
    Health,
}

impl Column {
    /// Display order.
    pub const ALL: [Column; 12] = [
        Column::Local,
        Column::Peer,
        Column::Port,
        Column::Role,
        Column::Category,
        Column::TxRate,
        Column::RxRate,
        Column::Retransmits,
        Column::Timeouts,
        Column::RttP50,
        Column::RttP99,
        Column::Health,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Column::Local => "LOCAL",
            Column::Peer => "PEER",
            Column::Port => "PORT",
            Column::Role => "ROLE",
            Column::Category => "CATEGORY",
            Column::TxRate => "TX/s",
            Column::RxRate => "RX/s",
            Column::Retransmits => "RETR",
            Column::Timeouts => "TMO",
            Column::RttP50 => "RTT p50",
            Column::RttP99 => "RTT p99",
            Column::Health => "HEALTH",
        }
    }

    /// Width in cells when shown.
    pub fn width(self) -> u16 {
        match self {
            Column::Local => 15,
            Column::Peer => 18,
            Column::Port => 5,
            Column::Role => 6,
            Column::Category => 12,
            Column::TxRate | Column::RxRate => 9,
            Column::Retransmits => 6,
            Column::Timeouts => 5,
            Column::RttP50 | Column::RttP99 => 8,
            Column::Health => 8,
        }
    }

    /// Lower keeps its place longer when the terminal is narrow.
    pub fn priority(self) -> u8 {
        match self {
            Column::Peer => 0,
            Column::Port => 1,
            Column::Category => 2,
            Column::TxRate => 3,
            Column::RxRate => 4,
            Column::Health => 5,
            Column::Retransmits => 6,
            Column::RttP50 => 7,
            Column::Timeouts => 8,
            Column::RttP99 => 9,
            Column::Local => 10,
            Column::Role => 11,
        }
    }

    /// Numbers sort largest first by default; names A to Z.
    pub fn descending_by_default(self) -> bool {
        !matches!(
            self,
            Column::Local | Column::Peer | Column::Port | Column::Role | Column::Category
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub key: FlowKey,
    /// What the peer column shows: its DNS name, or its address.
    pub peer: String,
    /// The peer's address, and its subnet or service name when known.
    pub peer_address: String,
    /// The name the peer's address was resolved from, where known.
    pub peer_dns_name: Option<Arc<str>>,
    pub category: Category,
    pub tx_per_sec: f64,
    pub rx_per_sec: f64,
    pub retransmits: u64,
    pub timeouts: u64,
    pub rtt_p50: Option<f64>,
    pub rtt_p99: Option<f64>,
    pub health: Status,
}

impl Row {
    /// The peer column's text: the DNS name when asked for and known, else the address.
    fn peer_text(&self, names: bool) -> String {
        match (&self.peer_dns_name, names) {
            (Some(name), true) => name.to_string(),
            _ => self.peer_address.clone(),
        }
    }

    pub fn cell(&self, column: Column) -> String {
        match column {
            Column::Local => self.key.local.to_string(),
            Column::Peer => self.peer.clone(),
            Column::Port => self.key.service_port.to_string(),
            Column::Role => self.key.role.as_str().to_string(),
            Column::Category => self.category.as_str().to_string(),
            Column::TxRate => rate(self.tx_per_sec),
            Column::RxRate => rate(self.rx_per_sec),
            Column::Retransmits => self.retransmits.to_string(),
            Column::Timeouts => self.timeouts.to_string(),
            Column::RttP50 => duration(self.rtt_p50),
            Column::RttP99 => duration(self.rtt_p99),
            Column::Health => status(self.health).to_string(),
        }
    }

    fn compare(&self, other: &Row, column: Column) -> std::cmp::Ordering {
        let f = |v: Option<f64>| v.unwrap_or(-1.0);
        match column {
            Column::Local => self.key.local.cmp(&other.key.local),
            Column::Peer => self.peer.cmp(&other.peer),
            Column::Port => self.key.service_port.cmp(&other.key.service_port),
            Column::Role => (self.key.role == Role::Server).cmp(&(other.key.role == Role::Server)),
            Column::Category => self.category.cmp(&other.category),
            Column::TxRate => self.tx_per_sec.total_cmp(&other.tx_per_sec),
            Column::RxRate => self.rx_per_sec.total_cmp(&other.rx_per_sec),
            Column::Retransmits => self.retransmits.cmp(&other.retransmits),
            Column::Timeouts => self.timeouts.cmp(&other.timeouts),
            Column::RttP50 => f(self.rtt_p50).total_cmp(&f(other.rtt_p50)),
            Column::RttP99 => f(self.rtt_p99).total_cmp(&f(other.rtt_p99)),
            Column::Health => severity(self.health).cmp(&severity(other.health)),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct MonitorRow {
    pub name: Arc<str>,
    pub pairs: usize,
    pub tx_per_sec: f64,
    pub rx_per_sec: f64,
    pub retransmits: u64,
    pub timeouts: u64,
    pub rtt_p50: Option<f64>,
    pub health: Status,
    /// Why it is degraded ("rtt,retransmits"), empty otherwise.
    pub reason: String,
}

fn severity(s: Status) -> u8 {
    match s {
        Status::Unknown => 0,
        Status::Healthy => 1,
        Status::Degraded => 2,
    }
}

pub fn status(s: Status) -> &'static str {
    match s {
        Status::Unknown => "-",
        Status::Healthy => "healthy",
        Status::Degraded => "DEGRADED",
    }
}

/// Bytes per second, in binary units.
pub fn rate(bytes_per_sec: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes_per_sec;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0}B")
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}

pub fn duration(seconds: Option<f64>) -> String {
    match seconds {
        None => "-".into(),
        Some(s) if s < 1e-3 => format!("{:.0}us", s * 1e6),
        Some(s) if s < 1.0 => format!("{:.1}ms", s * 1e3),
        Some(s) => format!("{s:.2}s"),
    }
}

/// Sorting, filtering and the rows of one refresh.
#[derive(Debug, Clone)]
pub struct TopModel {
    pub rows: Vec<Row>,
    pub monitors: Vec<MonitorRow>,
    pub sort: Column,
    pub descending: bool,
    pub filter: Option<Category>,
    /// Seconds the rates are over.
    pub interval: f64,
    pub pairs_total: usize,
    /// The peer column shows DNS names where known (`dns.top_shows_names`; the n key).
    pub show_names: bool,
}

impl Default for TopModel {
    fn default() -> Self {
        Self {
            rows: Vec::new(),
            monitors: Vec::new(),
            sort: Column::TxRate,
            descending: true,
            filter: None,
            interval: 0.0,
            pairs_total: 0,
            show_names: true,
        }
    }
}

impl TopModel {
    /// The rows to show: filtered, then sorted (ties by key, so rows do not jump around).
    pub fn visible(&self) -> Vec<&Row> {
        let mut rows: Vec<&Row> = self
            .rows
            .iter()
            .filter(|r| self.filter.is_none_or(|c| r.category == c))
            .collect();
        rows.sort_by(|a, b| {
            let o = a.compare(b, self.sort);
            let o = if self.descending { o.reverse() } else { o };
            o.then_with(|| a.key.cmp(&b.key))
        });
        rows
    }

    pub fn sort_by(&mut self, column: Column) {
        if self.sort == column {
            self.descending = !self.descending;
        } else {
            self.sort = column;
            self.descending = column.descending_by_default();
        }
    }

    /// The next (or previous) column in display order becomes the sort column.
    pub fn cycle_sort(&mut self, forward: bool) {
        let i = Column::ALL.iter().position(|c| *c == self.sort).unwrap_or(0);
        let n = Column::ALL.len();
        let next = if forward { (i + 1) % n } else { (i + n - 1) % n };
        self.sort = Column::ALL[next];
        self.descending = self.sort.descending_by_default();
    }

    /// Switches the peer column between DNS names and addresses.
    pub fn toggle_names(&mut self) {
        self.show_names = !self.show_names;
        for row in &mut self.rows {
            row.peer = row.peer_text(self.show_names);
        }
    }

    /// All categories, then each one in turn.
    pub fn cycle_filter(&mut self) {
        self.filter = match self.filter {
            None => Some(Category::ALL[0]),
            Some(c) => Category::ALL
                .iter()
                .position(|x| *x == c)
                .and_then(|i| Category::ALL.get(i + 1).copied()),
        };
    }
}

/// Turns successive flow tables into models: remembers each pair's counters at the previous
/// refresh for its rates.
#[derive(Debug, Default)]
pub struct RowBuilder {
    previous: PairSnapshots,
}

impl RowBuilder {
    /// Rows over `interval` seconds since the last call; `health` is the latest evaluation.
    pub fn build(&mut self, view: &FlowView<'_>, health: &[GroupHealth], interval: f64, model: &mut TopModel) {
        let status_of: HashMap<&GroupId, &GroupHealth> = health.iter().map(|h| (&h.group, h)).collect();
        let per_sec = |n: u64| if interval > 0.0 { n as f64 / interval } else { 0.0 };
        let mut monitor_rows: Vec<(MonitorRow, FlowCounters)> = view
            .monitors
            .iter()
            .map(|name| {
                let h = status_of.get(&GroupId::Monitor(Arc::clone(name)));
                (
                    MonitorRow {
                        name: Arc::clone(name),
                        pairs: 0,
                        tx_per_sec: 0.0,
                        rx_per_sec: 0.0,
                        retransmits: 0,
                        timeouts: 0,
                        rtt_p50: None,
                        health: h.map_or(Status::Unknown, |h| h.status),
                        reason: h
                            .map(|h| h.reasons.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(","))
                            .unwrap_or_default(),
                    },
                    FlowCounters::default(),
                )
            })
            .collect();
        let mut rows = Vec::new();
        for annotated in &view.pairs {
            let (pair, context) = (annotated.pair, &annotated.annotation.context);
            let delta = self.previous.since(pair);
            for &m in annotated.annotation.monitors.iter() {
                let (row, total) = &mut monitor_rows[m];
                row.pairs += 1;
                row.tx_per_sec += per_sec(delta.bytes_sent);
                row.rx_per_sec += per_sec(delta.bytes_received);
                total.add(&pair.counters);
            }
            let c = &pair.counters;
            let health = status_of
                .get(&GroupId::Peer {
                    address: pair.key.remote,
                    port: pair.key.service_port,
                })
                .map_or(Status::Unknown, |h| h.status);
            let mut row = Row {
                key: pair.key,
                peer: String::new(),
                peer_address: match context.peer_name() {
                    Some(name) => format!("{} {name}", pair.key.remote),
                    None => pair.key.remote.to_string(),
                },
                peer_dns_name: annotated.annotation.dns_name.clone(),
                category: context.category,
                tx_per_sec: per_sec(delta.bytes_sent),
                rx_per_sec: per_sec(delta.bytes_received),
                retransmits: c.retrans_total(),
                timeouts: c.rto_total(),
                rtt_p50: c.rtt.quantile_seconds(0.5),
                rtt_p99: c.rtt.quantile_seconds(0.99),
                health,
            };
            row.peer = row.peer_text(model.show_names);
            rows.push(row);
        }
        self.previous = PairSnapshots::take(view.pairs.iter().map(|p| p.pair));
        model.rows = rows;
        model.pairs_total = view.table.len();
        model.interval = interval;
        model.monitors = monitor_rows
            .into_iter()
            .map(|(mut row, total)| {
                row.retransmits = total.retrans_total();
                row.timeouts = total.rto_total();
                row.rtt_p50 = total.rtt.quantile_seconds(0.5);
                row
            })
            .collect();
    }
}
