//! Selection over real flow tables: sums, ranking, staleness, gauges and monitor rollups.
use super::*;
use crate::enrich::Enricher;

/// A selector of the top `k` pairs, starting at `t0`.
fn top(k: usize, t0: SystemTime) -> SeriesSelector {
    SeriesSelector::new(
        SelectionConfig {
            top_k: k,
            ..Default::default()
        },
        t0,
    )
}

/// Annotates `table` as the poller would, then selects.
fn select(selector: &mut SeriesSelector, table: &FlowTable, enricher: &Enricher, now: SystemTime) -> ExportFrame {
    selector.select(&crate::testing::annotate(table, enricher).view(table), now)
}

mod pairs {
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::flows::{FlowTableConfig, Owner, PairDelta, Role};

    fn key(peer: u8) -> FlowKey {
        FlowKey {
            local: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            remote: IpAddr::V4(Ipv4Addr::new(10, 0, 1, peer)),
            service_port: 443,
            role: Role::Client,
        }
    }

    fn delta(peer: u8, bytes: u64, retrans: u64) -> PairDelta {
        let mut counters = FlowCounters {
            bytes_sent: bytes,
            segs_sent: 1,
            retrans: [0, retrans, 0],
            ..Default::default()
        };
        counters.rtt.record(100 + u64::from(peer));
        PairDelta {
            key: key(peer),
            counters,
            owner: Owner::default(),
        }
    }

    fn additive(c: &FlowCounters) -> FlowCounters {
        FlowCounters { active: 0, ..c.clone() }
    }

    fn sum(frame: &ExportFrame) -> FlowCounters {
        let mut total = FlowCounters::default();
        for s in &frame.series {
            total.add(&s.values);
        }
        total
    }

    /// A tiny deterministic generator: the tests need varied traffic, not randomness.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, bound: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % bound
        }
    }

    #[test]
    fn top_5_of_50_peers_sum_to_the_totals_and_never_go_backwards() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let i0 = Instant::now();
        let mut table = FlowTable::new(FlowTableConfig::default());
        let mut selector = top(5, t0);
        let mut last: HashMap<(Option<FlowKey>, SystemTime), FlowCounters> = HashMap::new();
        let mut rng = Lcg(7);
        let mut totals_before = FlowCounters::default();
        for interval in 1..=40u64 {
            let mut deltas = Vec::new();
            for peer in 0..50u8 {
                if rng.next(3) > 0 {
                    let retrans = if rng.next(10) == 0 { rng.next(5) } else { 0 };
                    deltas.push(delta(peer, rng.next(10_000), retrans));
                }
            }
            table.apply_poll(&deltas, &FlowCounters::default(), i0 + Duration::from_secs(interval));
            let frame = select(
                &mut selector,
                &table,
                &Enricher::default(),
                t0 + Duration::from_secs(interval * 30),
            );
            assert!(frame.series.len() <= 6, "K pairs plus overflow");
            assert_eq!(
                additive(&sum(&frame)),
                additive(table.totals()),
                "interval {interval}: series sum to the totals"
            );
            let mut deltas = FlowCounters::default();
            for s in &frame.series {
                deltas.add(&s.delta);
            }
            assert_eq!(
                additive(&deltas),
                additive(&table.totals().saturating_sub(&totals_before)),
                "interval {interval}: deltas sum to the interval's change"
            );
            totals_before = table.totals().clone();
            for s in &frame.series {
                let id = (s.key().copied(), s.start);
                if let Some(before) = last.get(&id) {
                    let back = before.saturating_sub(&s.values);
                    assert!(
                        !back.has_activity(),
                        "interval {interval}: series {:?} went backwards",
                        s.key()
                    );
                }
                last.insert(id, s.values.clone());
            }
        }
        // membership changed often, so drops and fresh starts were exercised
        assert!(last.len() > 50, "{} distinct series over 40 exports", last.len());
    }

    #[test]
    fn loss_outranks_bytes() {
        let t0 = SystemTime::UNIX_EPOCH;
        let mut table = FlowTable::new(FlowTableConfig::default());
        table.apply_poll(
            &[delta(1, 5_000_000, 0), delta(2, 10, 1)],
            &FlowCounters::default(),
            Instant::now(),
        );
        let mut selector = top(1, t0);
        let frame = select(
            &mut selector,
            &table,
            &Enricher::default(),
            t0 + Duration::from_secs(30),
        );
        assert_eq!(frame.series[0].key(), Some(&key(2)), "the lossy pair wins the one slot");
        let overflow = frame.overflow().expect("overflow series");
        assert_eq!(overflow.values.bytes_sent, 5_000_000);
        assert_eq!(overflow.id, SeriesId::Overflow);

        let by_bytes = SelectionConfig {
            top_k: 1,
            rank_by: RankBy::Bytes,
            ..Default::default()
        };
        let frame = select(
            &mut SeriesSelector::new(by_bytes, t0),
            &table,
            &Enricher::default(),
            t0 + Duration::from_secs(30),
        );
        assert_eq!(
            frame.series[0].key(),
            Some(&key(1)),
            "ranked by bytes, the bulk pair wins"
        );
    }

    #[test]
    fn idle_pairs_stop_being_exported_and_restart_as_new_series() {
        let t0 = SystemTime::UNIX_EPOCH;
        let i0 = Instant::now();
        let mut table = FlowTable::new(FlowTableConfig::default());
        let config = SelectionConfig {
            stale_after: Duration::from_secs(60),
            ..Default::default()
        };
        let mut selector = SeriesSelector::new(config, t0);
        let at = |n: u64| t0 + Duration::from_secs(30 * n);

        table.apply_poll(&[delta(1, 100, 0)], &FlowCounters::default(), i0);
        let first = select(&mut selector, &table, &Enricher::default(), at(1));
        assert_eq!(first.series.len(), 2);
        assert_eq!(first.series[0].start, t0);
        assert_eq!(first.series[0].values.bytes_sent, 100);

        table.apply_poll(&[], &FlowCounters::default(), i0);
        let quiet = select(&mut selector, &table, &Enricher::default(), at(2));
        assert_eq!(quiet.series.len(), 2, "idle for less than stale_after: still exported");
        assert_eq!((quiet.series[0].start, quiet.series[0].values.bytes_sent), (t0, 100));
        assert_eq!(quiet.series[0].delta.bytes_sent, 0);

        table.apply_poll(&[], &FlowCounters::default(), i0);
        let idle = select(&mut selector, &table, &Enricher::default(), at(3));
        assert_eq!(idle.series.len(), 1, "only the overflow series while the pair is idle");
        assert_eq!(
            idle.overflow().map(|s| s.values.bytes_sent),
            Some(100),
            "its total moved to overflow"
        );

        table.apply_poll(&[delta(1, 50, 0)], &FlowCounters::default(), i0);
        let back = select(&mut selector, &table, &Enricher::default(), at(4));
        assert_eq!(
            back.series[0].start,
            at(3),
            "a new series, counting from the previous export"
        );
        assert_eq!(back.series[0].values.bytes_sent, 50);
        assert_eq!(back.overflow().map(|s| s.values.bytes_sent), Some(100));
    }

    #[test]
    fn live_connections_keep_a_quiet_pair_and_the_gauge_is_not_summed_over_time() {
        let t0 = SystemTime::UNIX_EPOCH;
        let mut table = FlowTable::new(FlowTableConfig::default());
        let mut selector = top(1, t0);
        let mut quiet = delta(1, 0, 0);
        quiet.counters = FlowCounters {
            active: 3,
            ..Default::default()
        };
        let mut other = delta(2, 0, 0);
        other.counters = FlowCounters {
            active: 2,
            ..Default::default()
        };
        table.apply_poll(
            &[quiet.clone(), other.clone()],
            &FlowCounters::default(),
            Instant::now(),
        );
        let frame = select(
            &mut selector,
            &table,
            &Enricher::default(),
            t0 + Duration::from_secs(30),
        );
        assert_eq!(frame.series.len(), 2);
        assert_eq!(frame.series[0].values.active, 3);
        assert_eq!(
            frame.overflow().map(|s| s.values.active),
            Some(2),
            "the unselected pair's gauge"
        );
        table.apply_poll(&[quiet, other], &FlowCounters::default(), Instant::now());
        let again = select(
            &mut selector,
            &table,
            &Enricher::default(),
            t0 + Duration::from_secs(60),
        );
        assert_eq!(again.series[0].values.active, 3, "a gauge, not a running sum");
    }
}

mod monitors {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::enrich::monitors::{LocalSelector, RemoteSelector};
    use crate::enrich::{Category, Enricher, MonitorSection};
    use crate::flows::{FlowTableConfig, PairDelta};
    use crate::testing;

    fn delta(peer: [u8; 4], bytes: u64, active: u64) -> PairDelta {
        let counters = FlowCounters {
            bytes_sent: bytes,
            segs_sent: 1,
            active,
            ..Default::default()
        };
        testing::delta(peer, 5432, counters)
    }

    #[test]
    fn monitors_roll_up_every_matching_pair_even_outside_the_top_k() {
        let monitors = vec![
            testing::monitor("app-to-db", "app-a", "db"),
            MonitorSection {
                name: "idle".into(),
                local: vec![LocalSelector::Subnet("db".into())],
                remote: vec![RemoteSelector::Everywhere],
            },
        ];
        let enricher: Enricher = testing::enricher(&monitors);
        let t0 = SystemTime::UNIX_EPOCH;
        let i0 = Instant::now();
        let mut table = FlowTable::new(FlowTableConfig {
            idle_timeout: Duration::from_secs(5),
            ..Default::default()
        });
        let mut selector = SeriesSelector::new(
            SelectionConfig {
                top_k: 1,
                rank_by: RankBy::Bytes,
                ..Default::default()
            },
            t0,
        );
        table.apply_poll(
            &[
                delta([10, 0, 2, 5], 100, 1),
                delta([10, 0, 2, 6], 50, 2),
                delta([8, 8, 8, 8], 1000, 0),
            ],
            &FlowCounters::default(),
            i0,
        );
        let first = select(&mut selector, &table, &enricher, t0 + Duration::from_secs(30));
        assert_eq!(first.series.len(), 1 + 1 + 2, "one pair, the overflow, two monitors");
        let Some(SeriesId::Pair(_, context)) = first.series.first().map(|s| &s.id) else {
            panic!("the top pair comes first")
        };
        assert_eq!(
            context.category,
            Category::Internet,
            "the selected pair carries its category"
        );
        let m = first.monitor("app-to-db").expect("monitor series");
        assert_eq!(
            (m.values.bytes_sent, m.delta.bytes_sent, m.values.active),
            (150, 150, 3),
            "both db pairs, neither of them in the top 1"
        );
        assert_eq!(first.monitor("idle").map(|s| s.values.bytes_sent), Some(0));

        // the pairs go idle and are evicted; the monitor's total stays
        table.apply_poll(&[], &FlowCounters::default(), i0 + Duration::from_secs(1));
        table.evict_idle(i0 + Duration::from_secs(60));
        table.apply_poll(
            &[delta([10, 0, 2, 5], 7, 0)],
            &FlowCounters::default(),
            i0 + Duration::from_secs(61),
        );
        let second = select(&mut selector, &table, &enricher, t0 + Duration::from_secs(60));
        let m = second.monitor("app-to-db").expect("monitor series");
        assert_eq!((m.values.bytes_sent, m.delta.bytes_sent, m.values.active), (157, 7, 0));
        assert_eq!(m.start, t0, "a monitor's series counts from the start");
    }
}
