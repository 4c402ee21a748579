//! The `outbox-relay` binary: parse, start logging, dispatch, map errors to
//! exit codes (0 success, 1 runtime failure, 2 invalid configuration,
//! including proto services the gRPC ingress cannot serve).

use clap::Parser;
use outbox_relay::config::{Cli, Command};
use outbox_relay::{App, commands, telemetry};
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    // Kill points of the fault-injection suite, configured by FAILPOINTS.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let cli = Cli::parse();
    if let Err(e) = telemetry::init(&cli.log) {
        eprintln!("error: {e:#}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "outbox-relay failed");
            let invalid_config = e
                .downcast_ref::<outbox_relay::config::ConfigError>()
                .is_some()
                || e.downcast_ref::<outbox_relay::grpc::TopologyError>()
                    .is_some();
            if invalid_config {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run(args) => {
            let app = App::build(*args).await?;
            let stop = CancellationToken::new();
            tokio::spawn(cancel_on_signal(stop.clone()));
            app.run_until_stopped(stop).await
        }
        Command::Migrate(args) => commands::migrate_cmd(&args).await,
        Command::Send(args) => commands::send_cmd(&args).await,
        Command::Stats(db) => commands::stats_cmd(&db).await,
        Command::Show(args) => commands::show_cmd(&args).await,
        Command::Dead(args) => commands::dead_cmd(&args).await,
        Command::Replay(args) => commands::replay_cmd(&args).await,
        Command::Tail(args) => commands::tail_cmd(&args).await,
    }
}

/// Cancels `stop` on SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
async fn cancel_on_signal(stop: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutdown requested"),
        _ = tokio::signal::ctrl_c() => tracing::info!(signal = "SIGINT", "shutdown requested"),
    }
    stop.cancel();
}
