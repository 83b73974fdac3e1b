//! Fixtures shared by the unit tests: pair deltas, resources, an enricher, annotated views and an
//! export frame. Builders with overrides, so that each test states only what it is about.
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use crate::enrich::monitors::{LocalSelector, RemoteSelector};
use crate::enrich::resources::{NetworkEntry, ResourcesSection};
use crate::enrich::{Annotations, Category, Enricher, MonitorSection, PairContext, Placement};
use crate::export::{ExportFrame, Series, SeriesId};
use crate::flows::{FlowCounters, FlowKey, FlowTable, Owner, PairDelta, Role};

/// A client pair from 10.0.1.1 to `peer` on `port`.
pub fn key(peer: [u8; 4], port: u16) -> FlowKey {
    FlowKey {
        local: IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1)),
        remote: IpAddr::V4(Ipv4Addr::from(peer)),
        service_port: port,
        role: Role::Client,
    }
}

/// One poll's delta for the client pair to `peer` on `port`.
pub fn delta(peer: [u8; 4], port: u16, counters: FlowCounters) -> PairDelta {
    PairDelta {
        key: key(peer, port),
        counters,
        owner: Owner::default(),
    }
}

/// `[resources.networks]` from (CIDR, name, zone) rows.
pub fn networks(rows: &[(&str, &str, &str)]) -> ResourcesSection {
    let mut resources = ResourcesSection::default();
    for (cidr, name, zone) in rows {
        resources.networks.insert(
            (*cidr).into(),
            NetworkEntry {
                name: (*name).into(),
                vpc: None,
                zone: Some((*zone).into()),
                region: None,
            },
        );
    }
    resources
}

/// A monitor from one local subnet to one remote subnet.
pub fn monitor(name: &str, local: &str, remote: &str) -> MonitorSection {
    MonitorSection {
        name: name.into(),
        local: vec![LocalSelector::Subnet(local.into())],
        remote: vec![RemoteSelector::Subnet(remote.into())],
    }
}

/// Networks `app-a` (10.0.1.0/24, z1) and `db` (10.0.2.0/24, z2), and `monitors`.
pub fn enricher(monitors: &[MonitorSection]) -> Enricher {
    let resources = networks(&[("10.0.1.0/24", "app-a", "z1"), ("10.0.2.0/24", "db", "z2")]);
    Enricher::new(&resources, None, monitors).expect("enricher")
}

/// `table` annotated by `enricher`, as the poller does after each poll.
pub fn annotate(table: &FlowTable, enricher: &Enricher) -> Annotations {
    let mut annotations = Annotations::default();
    annotations.refresh(table, enricher, Instant::now());
    annotations
}

/// An inter-zone context: app-a in zone-a to db in zone-b.
pub fn context() -> Arc<PairContext> {
    Arc::new(PairContext {
        category: Category::InterZone,
        local: Placement {
            subnet: Some("app-a".into()),
            zone: Some("zone-a".into()),
            ..Default::default()
        },
        peer: Placement {
            subnet: Some("db".into()),
            zone: Some("zone-b".into()),
            ..Default::default()
        },
        peer_service: None,
    })
}

pub const T0: u64 = 1_700_000_000;

/// Series for export-frame tests, cumulative since [`T0`].
pub mod series {
    use super::*;

    pub fn pair(key: FlowKey, values: FlowCounters) -> Series {
        Series {
            id: SeriesId::Pair(key, context()),
            process: Some("psql".into()),
            original: None,
            dns_name: None,
            kubernetes: None,
            start: UNIX_EPOCH + Duration::from_secs(T0),
            delta: values.clone(),
            values,
        }
    }

    pub fn overflow(values: FlowCounters) -> Series {
        Series {
            id: SeriesId::Overflow,
            process: None,
            ..pair(key([0, 0, 0, 0], 0), values)
        }
    }
}

/// One pair 10.0.0.1 -> 10.0.0.2:5432 (1200 bytes out, 3400 in, two RTT samples of 30 and
/// 1000 us, 2 retransmits, a refused connect, one live connection) and an overflow series of 10
/// bytes with two live connections; exported at T0 + 60 s, the previous export at T0 + 30 s.
pub fn frame() -> ExportFrame {
    let t0 = UNIX_EPOCH + Duration::from_secs(T0);
    let mut pair = FlowCounters {
        bytes_sent: 1200,
        bytes_received: 3400,
        segs_sent: 3,
        segs_received: 4,
        retrans: [0, 2, 0],
        conn_established: 5,
        conn_closed: 4,
        conn_failed: [1, 0, 0, 0],
        active: 1,
        ..Default::default()
    };
    pair.rtt.record(30); // 31 units: bucket 5, OpenTelemetry index -16
    pair.rtt.record(1000); // 1048 units: bucket 11, index -10
    let key = FlowKey {
        local: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        remote: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
        service_port: 5432,
        role: Role::Client,
    };
    let overflow = FlowCounters {
        bytes_sent: 10,
        active: 2,
        ..Default::default()
    };
    ExportFrame {
        previous_time: t0 + Duration::from_secs(30),
        time: t0 + Duration::from_secs(60),
        series: vec![series::pair(key, pair), series::overflow(overflow)],
    }
}
