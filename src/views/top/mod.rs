//! `flowtel top`: the live view of flow pairs that needs no collector. Refreshes every second;
//! sorts by any column, filters by category, colours health; a monitors pane when monitors are
//! configured. `--once` (or a stdout that is not a terminal) prints one plain-text table.
//!
//! The terminal is restored on q, Esc, Ctrl-C, SIGTERM and on a panic (ratatui's hook).
pub mod model;
pub mod view;

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::widgets::TableState;

use crate::config::Config;
use crate::enrich::Enricher;
use crate::poller::Poller;
use model::{RowBuilder, TopModel};

/// True while the full-screen view owns the terminal: log lines written to stderr then would
/// land in the middle of the picture, so the binary's log writer drops them.
pub static TERMINAL_IN_USE: AtomicBool = AtomicBool::new(false);

/// How often the view refreshes its numbers.
pub const REFRESH: Duration = Duration::from_secs(1);
/// How long a key wait may block before signals are checked again.
const INPUT_WAIT: Duration = Duration::from_millis(200);

/// The poller and the rows: one refresh at a time.
struct Session {
    poller: Poller,
    builder: RowBuilder,
    last_refresh: Instant,
    /// `dns.top_shows_names`: the peer column's starting mode.
    show_names: bool,
}

impl Session {
    fn start(config: &Config, enricher: Enricher) -> anyhow::Result<Self> {
        let mut poller = Poller::start(config.sampler_config_walking_every_poll(), config.flow_table_config())?
            .with_dns_cache(config.dns_cache_config())
            .with_enricher(Arc::new(enricher))
            .with_health_from(config);
        let now = Instant::now();
        poller.poll(now)?;
        let mut builder = RowBuilder::default();
        // the first build only sets each pair's baseline for the rates
        builder.build(&poller.view(), &[], 0.0, &mut TopModel::default());
        Ok(Self {
            poller,
            builder,
            last_refresh: now,
            show_names: config.dns.top_shows_names,
        })
    }

    fn model(&self) -> TopModel {
        TopModel {
            show_names: self.show_names,
            ..TopModel::default()
        }
    }

    fn refresh(&mut self, model: &mut TopModel) -> anyhow::Result<()> {
        let now = Instant::now();
        self.poller.poll(now)?;
        let interval = now.duration_since(self.last_refresh).as_secs_f64();
        self.last_refresh = now;
        self.builder
            .build(&self.poller.view(), self.poller.findings(), interval, model);
        Ok(())
    }
}

/// `flowtel top [--once]`.
pub async fn run(config: Config, once: bool) -> anyhow::Result<()> {
    let enricher = crate::poller::enricher(&config).await?;
    let interactive = !once && std::io::stdout().is_terminal();
    if !once && !interactive {
        tracing::info!("stdout is not a terminal: printing one table, as with --once");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let signal_stop = Arc::clone(&stop);
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            term.recv().await;
            signal_stop.store(true, Ordering::Relaxed);
        }
    });
    tokio::task::spawn_blocking(move || {
        let session = Session::start(&config, enricher)?;
        if interactive {
            interactive_loop(session, &stop)
        } else {
            print_once(session)
        }
    })
    .await
    .context("top task panicked")?
}

fn print_once(mut session: Session) -> anyhow::Result<()> {
    std::thread::sleep(REFRESH);
    let mut model = session.model();
    session.refresh(&mut model)?;
    print!(
        "{}",
        view::plain_text(&model, &crate::enrich::host_name().unwrap_or_default())
    );
    Ok(())
}

fn interactive_loop(mut session: Session, stop: &AtomicBool) -> anyhow::Result<()> {
    let mut terminal = ratatui::try_init().context("cannot set up the terminal (try --once)")?;
    TERMINAL_IN_USE.store(true, Ordering::Relaxed);
    let result = drive(&mut terminal, &mut session, stop);
    ratatui::restore();
    TERMINAL_IN_USE.store(false, Ordering::Relaxed);
    result
}

fn drive(terminal: &mut ratatui::DefaultTerminal, session: &mut Session, stop: &AtomicBool) -> anyhow::Result<()> {
    let host = crate::enrich::host_name().unwrap_or_default();
    let mut model = session.model();
    let mut table_state = TableState::default();
    let mut next_refresh = Instant::now();
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        if Instant::now() >= next_refresh {
            session.refresh(&mut model)?;
            next_refresh = Instant::now() + REFRESH;
        }
        terminal
            .draw(|frame| view::render(frame, &model, &mut table_state, &host))
            .context("drawing the terminal")?;
        let wait = next_refresh.saturating_duration_since(Instant::now()).min(INPUT_WAIT);
        if !event::poll(wait).context("reading the terminal")? {
            continue;
        }
        let Event::Key(key) = event::read().context("reading the terminal")? else {
            continue;
        };
        if key.kind != KeyEventKind::Press {
            continue;
        }
        if handle_key(key.code, key.modifiers, &mut model, &mut table_state) == Action::Quit {
            return Ok(());
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Action {
    Continue,
    Quit,
}

fn handle_key(code: KeyCode, modifiers: KeyModifiers, model: &mut TopModel, table: &mut TableState) -> Action {
    match code {
        KeyCode::Char('q') | KeyCode::Esc => return Action::Quit,
        KeyCode::Char('c') if modifiers.contains(KeyModifiers::CONTROL) => return Action::Quit,
        KeyCode::Right | KeyCode::Char('>') => model.cycle_sort(true),
        KeyCode::Left | KeyCode::Char('<') => model.cycle_sort(false),
        KeyCode::Char('r') => model.descending = !model.descending,
        KeyCode::Char('n') => model.toggle_names(),
        KeyCode::Char('c') => {
            model.cycle_filter();
            table.select(None);
        }
        KeyCode::Down | KeyCode::Char('j') => table.select_next(),
        KeyCode::Up | KeyCode::Char('k') => table.select_previous(),
        _ => {}
    }
    Action::Continue
}

#[cfg(test)]
mod tests;
