use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let filter = EnvFilter::try_from_env("FLOWTEL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        // colour codes only for a person at a terminal, never in a log file or journald
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(|| -> Box<dyn std::io::Write> {
            if flowtel::views::top::TERMINAL_IN_USE.load(std::sync::atomic::Ordering::Relaxed) {
                Box::new(std::io::sink())
            } else {
                Box::new(std::io::stderr())
            }
        })
        .init();
    let cli = flowtel::cli::Cli::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if cli.drops_privileges() {
        // the runtime's threads serve HTTP and send OTLP: they never need a capability
        runtime.on_thread_start(flowtel::agent::privileges::drop_runtime_thread);
    }
    let runtime = match runtime.build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("flowtel: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(flowtel::cli::execute(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // one line: the error and its causes
            eprintln!("flowtel: {e:#}");
            ExitCode::FAILURE
        }
    }
}
