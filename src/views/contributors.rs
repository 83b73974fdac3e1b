//! Top contributors: flow pairs ranked by one metric within each category, as `flowtel snapshot
//! --top` reports them and `flowtel top` sorts them.
use std::collections::BTreeMap;

use serde::Serialize;

use crate::enrich::{AnnotatedPair, Category};
use crate::flows::FlowCounters;

/// What ranks the pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RankMetric {
    /// Bytes both ways.
    #[default]
    Bytes,
    Retransmits,
    Timeouts,
    /// The pair's median smoothed RTT.
    RttP50,
}

impl RankMetric {
    pub const ALL: [RankMetric; 4] = [
        RankMetric::Bytes,
        RankMetric::Retransmits,
        RankMetric::Timeouts,
        RankMetric::RttP50,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RankMetric::Bytes => "bytes",
            RankMetric::Retransmits => "retransmits",
            RankMetric::Timeouts => "timeouts",
            RankMetric::RttP50 => "rtt_p50",
        }
    }

    /// The ranking value; pairs without an RTT sample rank last by RTT.
    pub fn value(self, c: &FlowCounters) -> f64 {
        match self {
            RankMetric::Bytes => (c.bytes_sent + c.bytes_received) as f64,
            RankMetric::Retransmits => c.retrans_total() as f64,
            RankMetric::Timeouts => c.rto_total() as f64,
            RankMetric::RttP50 => c.rtt.quantile_seconds(0.5).unwrap_or(-1.0),
        }
    }
}

impl std::str::FromStr for RankMetric {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RankMetric::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("unknown metric {s:?} (one of bytes, retransmits, timeouts, rtt_p50)"))
    }
}

/// One pair and its counters over the window being ranked.
#[derive(Debug, Clone)]
pub struct Contributor<'a> {
    pub pair: AnnotatedPair<'a>,
    pub counters: FlowCounters,
}

/// The `limit` largest pairs by `metric` in each category (or only in `only`), largest first;
/// ties go to the lower key so that the order is stable. Pairs with nothing to rank by (zero
/// bytes, no retransmits...) are left out.
pub fn top_by_category<'a>(
    pairs: impl IntoIterator<Item = Contributor<'a>>,
    metric: RankMetric,
    limit: usize,
    only: Option<Category>,
) -> BTreeMap<Category, Vec<Contributor<'a>>> {
    let mut by_category: BTreeMap<Category, Vec<(f64, Contributor<'a>)>> = BTreeMap::new();
    for c in pairs {
        let value = metric.value(&c.counters);
        let category = c.pair.annotation.context.category;
        if value <= 0.0 || only.is_some_and(|only| only != category) {
            continue;
        }
        by_category.entry(category).or_default().push((value, c));
    }
    by_category
        .into_iter()
        .map(|(category, mut ranked)| {
            ranked.sort_by(|a, b| {
                b.0.total_cmp(&a.0)
                    .then_with(|| a.1.pair.pair.key.cmp(&b.1.pair.pair.key))
            });
            ranked.truncate(limit);
            (category, ranked.into_iter().map(|(_, c)| c).collect())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::enrich::Enricher;
    use crate::flows::{FlowTable, FlowTableConfig};
    use crate::testing::{self, annotate};

    fn delta(peer: [u8; 4], bytes: u64, retrans: u64, rtt_us: u64) -> crate::flows::PairDelta {
        let mut counters = FlowCounters {
            bytes_sent: bytes,
            retrans: [0, retrans, 0],
            ..Default::default()
        };
        if rtt_us > 0 {
            counters.rtt.record(rtt_us);
        }
        testing::delta(peer, 443, counters)
    }

    #[test]
    fn ranks_within_each_category() {
        let section = testing::networks(&[("10.0.1.0/24", "a", "z1"), ("10.0.2.0/24", "b", "z2")]);
        let enricher = Enricher::new(&section, None, &[]).expect("enricher");
        let mut table = FlowTable::new(FlowTableConfig::default());
        table.apply_poll(
            &[
                delta([10, 0, 1, 2], 500, 0, 100),
                delta([10, 0, 1, 3], 900, 1, 50),
                delta([10, 0, 2, 2], 100, 7, 4000),
                delta([10, 0, 2, 3], 300, 2, 0),
                delta([93, 184, 216, 34], 50, 0, 20_000),
            ],
            &FlowCounters::default(),
            Instant::now(),
        );
        let annotations = annotate(&table, &enricher);
        let view = annotations.view(&table);
        let contributors = || {
            view.pairs.iter().map(|p| Contributor {
                pair: *p,
                counters: p.pair.counters.clone(),
            })
        };
        let peers = |m: RankMetric, only: Option<Category>| -> Vec<(Category, Vec<String>)> {
            top_by_category(contributors(), m, 5, only)
                .into_iter()
                .map(|(c, v)| (c, v.iter().map(|x| x.pair.pair.key.remote.to_string()).collect()))
                .collect()
        };
        assert_eq!(
            peers(RankMetric::Bytes, None),
            vec![
                (Category::IntraZone, vec!["10.0.1.3".into(), "10.0.1.2".into()]),
                (Category::InterZone, vec!["10.0.2.3".into(), "10.0.2.2".into()]),
                (Category::Internet, vec!["93.184.216.34".into()]),
            ]
        );
        assert_eq!(
            peers(RankMetric::Retransmits, Some(Category::InterZone)),
            vec![(Category::InterZone, vec!["10.0.2.2".into(), "10.0.2.3".into()])]
        );
        assert_eq!(
            peers(RankMetric::RttP50, Some(Category::IntraZone)),
            vec![(Category::IntraZone, vec!["10.0.1.2".into(), "10.0.1.3".into()])]
        );
        assert_eq!(peers(RankMetric::Timeouts, None), vec![], "no pair timed out");
        let one = top_by_category(contributors(), RankMetric::Bytes, 1, None);
        assert!(one.values().all(|v| v.len() == 1));
        assert_eq!("rtt_p50".parse::<RankMetric>(), Ok(RankMetric::RttP50));
        assert!("latency".parse::<RankMetric>().is_err());
    }
}
