//! Drawing `flowtel top`: a header line, the flow table, the monitors pane and the key map, laid
//! out for any terminal from 80x24 up. Columns that do not fit are dropped by priority, and wide
//! terminals give the extra room to the address columns. Also the plain-text table of `--once`.
use std::fmt::Write as _;

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row as TableRow, Table, TableState};
use ratatui::Frame;

use super::model::{duration, rate, status, Column, MonitorRow, TopModel};
use crate::health::Status;

pub const KEY_MAP: &str = "q quit  ←/→ sort column  r reverse  n names  c category  ↑/↓ scroll";

/// Columns that fit in `width` cells, in display order, with their widths.
pub fn layout_columns(width: u16) -> Vec<(Column, u16)> {
    let mut by_priority = Column::ALL.to_vec();
    by_priority.sort_by_key(|c| c.priority());
    let mut chosen = Vec::new();
    let mut used: u16 = 0;
    for c in by_priority {
        let need = c.width() + u16::from(!chosen.is_empty());
        if used + need <= width {
            used += need;
            chosen.push(c);
        }
    }
    let mut spare = width.saturating_sub(used);
    let mut columns: Vec<(Column, u16)> = Column::ALL
        .iter()
        .filter(|c| chosen.contains(c))
        .map(|c| (*c, c.width()))
        .collect();
    // room left over goes to the addresses, up to a full IPv6 address each
    for (target, max) in [(Column::Peer, 45u16), (Column::Local, 39u16)] {
        if let Some((_, w)) = columns.iter_mut().find(|(c, _)| *c == target) {
            let grow = spare.min(max.saturating_sub(*w));
            *w += grow;
            spare -= grow;
        }
    }
    columns
}

fn health_style(s: Status) -> Style {
    match s {
        Status::Healthy => Style::default().fg(Color::Green),
        Status::Degraded => Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
        Status::Unknown => Style::default().fg(Color::DarkGray),
    }
}

fn fit(text: String, width: u16) -> String {
    let width = usize::from(width);
    if text.chars().count() <= width {
        return text;
    }
    let mut s: String = text.chars().take(width.saturating_sub(1)).collect();
    s.push('…');
    s
}

/// The whole screen.
pub fn render(frame: &mut Frame, model: &TopModel, table_state: &mut TableState, host: &str) {
    let area = frame.area();
    let monitor_height = if model.monitors.is_empty() {
        0
    } else {
        // a border, the header and the monitors, never more than a third of the screen
        (model.monitors.len() as u16 + 3).min(area.height / 3).max(4)
    };
    let [header, table_area, monitors_area, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(monitor_height),
        Constraint::Length(1),
    ])
    .areas(area);

    let visible = model.visible();
    let filter = model.filter.map_or("all".to_string(), |c| c.to_string());
    frame.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled("flowtel top ", Style::default().add_modifier(Modifier::BOLD)),
            Span::raw(format!(
                "{host}  {} of {} pairs  category: {filter}  rates/{:.0}s, counts since start",
                visible.len(),
                model.pairs_total,
                model.interval
            )),
        ])),
        header,
    );

    render_table(frame, model, &visible, table_state, table_area);
    if monitor_height > 0 {
        render_monitors(frame, &model.monitors, monitors_area);
    }
    frame.render_widget(
        Paragraph::new(Line::from(Span::styled(KEY_MAP, Style::default().fg(Color::Cyan)))),
        footer,
    );
}

fn render_table(
    frame: &mut Frame,
    model: &TopModel,
    visible: &[&super::model::Row],
    table_state: &mut TableState,
    area: Rect,
) {
    let columns = layout_columns(area.width);
    let arrow = if model.descending { "▼" } else { "▲" };
    let header = TableRow::new(columns.iter().map(|(c, _)| {
        let title = if *c == model.sort {
            format!("{}{arrow}", c.title())
        } else {
            c.title().to_string()
        };
        Cell::from(title)
    }))
    .style(Style::default().add_modifier(Modifier::BOLD | Modifier::REVERSED));
    let rows = visible.iter().map(|row| {
        TableRow::new(columns.iter().map(|(c, w)| {
            let cell = Cell::from(fit(row.cell(*c), *w));
            if *c == Column::Health {
                cell.style(health_style(row.health))
            } else {
                cell
            }
        }))
    });
    let table = Table::new(rows, columns.iter().map(|(_, w)| Constraint::Length(*w)))
        .header(header)
        .column_spacing(1)
        .row_highlight_style(Style::default().add_modifier(Modifier::BOLD));
    frame.render_stateful_widget(table, area, table_state);
}

fn render_monitors(frame: &mut Frame, monitors: &[MonitorRow], area: Rect) {
    let name_width = monitors
        .iter()
        .map(|m| m.name.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(7, 24) as u16;
    let widths = [
        Constraint::Length(name_width),
        Constraint::Length(6),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(6),
        Constraint::Length(5),
        Constraint::Length(8),
        Constraint::Fill(1),
    ];
    let header = TableRow::new(["MONITOR", "PAIRS", "TX/s", "RX/s", "RETR", "TMO", "RTT p50", "HEALTH"])
        .style(Style::default().add_modifier(Modifier::BOLD));
    let rows = monitors.iter().map(|m| {
        let health = if m.reason.is_empty() {
            status(m.health).to_string()
        } else {
            format!("{} {}", status(m.health), m.reason)
        };
        TableRow::new(vec![
            Cell::from(m.name.to_string()),
            Cell::from(m.pairs.to_string()),
            Cell::from(rate(m.tx_per_sec)),
            Cell::from(rate(m.rx_per_sec)),
            Cell::from(m.retransmits.to_string()),
            Cell::from(m.timeouts.to_string()),
            Cell::from(duration(m.rtt_p50)),
            Cell::from(health).style(health_style(m.health)),
        ])
    });
    let table = Table::new(rows, widths)
        .header(header)
        .column_spacing(1)
        .block(Block::default().borders(Borders::TOP).title(" monitors "));
    frame.render_widget(table, area);
}

/// `flowtel top --once`: every column, every visible row, then the monitors.
pub fn plain_text(model: &TopModel, host: &str) -> String {
    let mut out = String::new();
    let rows = model.visible();
    let widths: Vec<usize> = Column::ALL
        .iter()
        .map(|c| {
            rows.iter()
                .map(|r| r.cell(*c).chars().count())
                .chain([c.title().len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| -> String {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}", w = *w))
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    let _ = writeln!(
        out,
        "flowtel top on {host}: {} pairs, rates over {:.1}s",
        model.pairs_total, model.interval
    );
    let _ = writeln!(
        out,
        "{}",
        line(Column::ALL.iter().map(|c| c.title().to_string()).collect())
    );
    for row in &rows {
        let _ = writeln!(out, "{}", line(Column::ALL.iter().map(|c| row.cell(*c)).collect()));
    }
    if !model.monitors.is_empty() {
        let _ = writeln!(out, "\nMONITOR  PAIRS  TX/s  RX/s  RETR  TMO  RTT p50  HEALTH");
        for m in &model.monitors {
            let _ = writeln!(
                out,
                "{}  {}  {}  {}  {}  {}  {}  {}{}",
                m.name,
                m.pairs,
                rate(m.tx_per_sec),
                rate(m.rx_per_sec),
                m.retransmits,
                m.timeouts,
                duration(m.rtt_p50),
                status(m.health),
                if m.reason.is_empty() {
                    String::new()
                } else {
                    format!(" {}", m.reason)
                }
            );
        }
    }
    out
}
