use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let filter = EnvFilter::try_from_env("FLOWTEL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        // colour codes only for a person at a terminal, never in a log file or journald
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(|| -> Box<dyn std::io::Write> {
            if flowtel::top::TERMINAL_IN_USE.load(std::sync::atomic::Ordering::Relaxed) {
                Box::new(std::io::sink())
            } else {
                Box::new(std::io::stderr())
            }
        })
        .init();
    let cli = flowtel::cli::Cli::parse();
    match flowtel::cli::execute(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // one line: the error and its causes
            eprintln!("flowtel: {e:#}");
            ExitCode::FAILURE
        }
    }
}
