use std::time::Instant;

use ratatui::backend::TestBackend;
use ratatui::Terminal;

use super::model::{Column, RowBuilder, TopModel};
use super::*;
use crate::enrich::Category;
use crate::flows::{FlowCounters, FlowTable, FlowTableConfig, PairDelta};
use crate::health::{Attribution, GroupHealth, GroupId, Reason, Status};
use crate::testing;

fn enricher() -> Enricher {
    testing::enricher(&[testing::monitor("app-to-db", "app-a", "db")])
}

fn delta(peer: [u8; 4], port: u16, sent: u64, retrans: u64) -> PairDelta {
    let counters = FlowCounters {
        bytes_sent: sent,
        bytes_received: sent / 2,
        retrans: [0, retrans, 0],
        ..Default::default()
    };
    testing::delta(peer, port, counters)
}

/// Two refreshes over three pairs: the db pair is degraded, the internet pair moves the most.
fn model() -> TopModel {
    let enricher = enricher();
    let mut table = FlowTable::new(FlowTableConfig::default());
    let mut builder = RowBuilder::default();
    let mut model = TopModel::default();
    table.apply_poll(
        &[delta([10, 0, 2, 9], 5432, 1000, 0)],
        &FlowCounters::default(),
        Instant::now(),
    );
    builder.build(&testing::annotate(&table, &enricher).view(&table), &[], 0.0, &mut model);
    table.apply_poll(
        &[
            delta([10, 0, 2, 9], 5432, 2048, 9),
            delta([10, 0, 1, 7], 8080, 512, 0),
            delta([93, 184, 216, 34], 443, 4096, 1),
        ],
        &FlowCounters::default(),
        Instant::now(),
    );
    let degraded = GroupHealth {
        group: GroupId::Peer {
            address: "10.0.2.9".parse().expect("ip"),
            port: 5432,
        },
        status: Status::Degraded,
        reasons: vec![Reason::Retransmits],
        attribution: Attribution::Peer,
        rtt_ratio: None,
        retransmit_ratio: Some(0.2),
        timeouts: 0,
        connect_failure_ratio: None,
        evidence: Default::default(),
        context: None,
    };
    let monitor = GroupHealth {
        group: GroupId::Monitor("app-to-db".into()),
        ..degraded.clone()
    };
    let annotations = testing::annotate(&table, &enricher);
    builder.build(&annotations.view(&table), &[degraded, monitor], 2.0, &mut model);
    model
}

fn screen(model: &TopModel, width: u16, height: u16) -> Vec<String> {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("terminal");
    let mut state = TableState::default();
    terminal
        .draw(|f| view::render(f, model, &mut state, "node-1"))
        .expect("draw");
    let buffer = terminal.backend().buffer().clone();
    (0..height)
        .map(|y| {
            (0..width)
                .map(|x| buffer[(x, y)].symbol().to_string())
                .collect::<String>()
        })
        .collect()
}

fn row_of(lines: &[String], needle: &str) -> usize {
    lines
        .iter()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle} not on screen:\n{}", lines.join("\n")))
}

#[test]
fn rates_counts_health_and_monitors() {
    let m = model();
    assert_eq!(m.rows.len(), 3);
    let db = m.rows.iter().find(|r| r.key.service_port == 5432).expect("db row");
    assert_eq!(db.tx_per_sec, 1024.0, "2048 bytes over 2 s");
    assert_eq!(db.retransmits, 9);
    assert_eq!(db.category, Category::InterZone);
    assert_eq!(db.peer, "10.0.2.9 db");
    assert_eq!(db.health, Status::Degraded);
    let monitor = &m.monitors[0];
    assert_eq!((monitor.pairs, monitor.tx_per_sec), (1, 1024.0));
    assert_eq!(monitor.retransmits, 9);
    assert_eq!(
        (monitor.health, monitor.reason.as_str()),
        (Status::Degraded, "retransmits")
    );
}

#[test]
fn an_80x24_terminal_shows_the_key_columns_rows_and_key_map() {
    let lines = screen(&model(), 80, 24);
    for line in &lines {
        assert!(line.chars().count() <= 80);
    }
    let header = &lines[row_of(&lines, "PEER")];
    for title in ["PEER", "PORT", "CATEGORY", "TX/s", "RX/s", "HEALTH", "RETR"] {
        assert!(header.contains(title), "{title} in {header}");
    }
    assert!(!header.contains("RTT p99"), "dropped first when narrow: {header}");
    // sorted by TX/s, largest first
    let internet = row_of(&lines, "93.184.216.34");
    let db = row_of(&lines, "10.0.2.9 db");
    let local = row_of(&lines, "10.0.1.7 app-a");
    assert!(internet < db && db < local, "{}", lines.join("\n"));
    assert!(lines[db].contains("DEGRADED") && lines[db].contains("inter_zone"));
    assert!(lines[db].contains("1.0KiB"), "{}", lines[db]);
    assert!(
        lines[row_of(&lines, "app-to-db")].contains("retransmits"),
        "{}",
        lines.join("\n")
    );
    assert!(lines[23].contains("q quit"), "the key map is on the last line");
}

#[test]
fn a_large_terminal_shows_every_column() {
    let lines = screen(&model(), 200, 50);
    let header = &lines[row_of(&lines, "PEER")];
    for c in Column::ALL {
        assert!(header.contains(c.title()), "{} in {header}", c.title());
    }
}

#[test]
fn keys_sort_filter_and_quit() {
    let mut m = model();
    let mut state = TableState::default();
    let key = |code, m: &mut TopModel, s: &mut TableState| handle_key(code, KeyModifiers::NONE, m, s);
    // → from TX/s is RX/s; ← twice from there is Category, A to Z
    key(KeyCode::Right, &mut m, &mut state);
    assert_eq!((m.sort, m.descending), (Column::RxRate, true));
    key(KeyCode::Left, &mut m, &mut state);
    key(KeyCode::Left, &mut m, &mut state);
    assert_eq!((m.sort, m.descending), (Column::Category, false));
    let order: Vec<Category> = m.visible().iter().map(|r| r.category).collect();
    assert_eq!(
        order,
        vec![Category::IntraZone, Category::InterZone, Category::Internet]
    );
    key(KeyCode::Char('r'), &mut m, &mut state);
    assert_eq!(m.visible()[0].category, Category::Internet, "reversed");

    // c: all -> intra_zone -> inter_zone ...
    key(KeyCode::Char('c'), &mut m, &mut state);
    assert_eq!(m.filter, Some(Category::IntraZone));
    key(KeyCode::Char('c'), &mut m, &mut state);
    let lines = screen(&m, 80, 24);
    assert!(
        lines[0].contains("1 of 3 pairs") && lines[0].contains("category: inter_zone"),
        "{}",
        lines[0]
    );
    assert!(!lines.iter().any(|l| l.contains("93.184.216.34")), "filtered out");
    for _ in 0..6 {
        key(KeyCode::Char('c'), &mut m, &mut state);
    }
    assert_eq!(m.filter, None, "back to all after the last category");

    assert_eq!(key(KeyCode::Char('x'), &mut m, &mut state), Action::Continue);
    assert_eq!(key(KeyCode::Char('q'), &mut m, &mut state), Action::Quit);
    assert_eq!(key(KeyCode::Esc, &mut m, &mut state), Action::Quit);
    assert_eq!(
        handle_key(KeyCode::Char('c'), KeyModifiers::CONTROL, &mut m, &mut state),
        Action::Quit
    );
}

#[test]
fn once_prints_every_column_and_the_monitors() {
    let text = view::plain_text(&model(), "node-1");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("flowtel top on node-1: 3 pairs"));
    for c in Column::ALL {
        assert!(lines[1].contains(c.title()));
    }
    assert!(lines[2].contains("93.184.216.34"), "TX/s order: {text}");
    assert!(text.contains("app-to-db  1  1.0KiB"), "{text}");
}

#[test]
fn the_n_key_switches_the_peer_column_between_names_and_addresses() {
    let mut m = model();
    let mut state = TableState::default();
    let address = m.rows[0].peer_address.clone();
    m.rows[0].peer_dns_name = Some("db.example.com".into());
    // rows built with names shown: the toggle renders every row again
    handle_key(KeyCode::Char('n'), KeyModifiers::NONE, &mut m, &mut state);
    assert!(!m.show_names);
    assert_eq!(m.rows[0].cell(Column::Peer), address);
    handle_key(KeyCode::Char('n'), KeyModifiers::NONE, &mut m, &mut state);
    assert!(m.show_names);
    assert_eq!(m.rows[0].cell(Column::Peer), "db.example.com");
    // a row without a name shows its address either way
    assert_eq!(m.rows[1].cell(Column::Peer), m.rows[1].peer_address);
}
