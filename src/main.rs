//! The `outbox-relay` binary: parse, start logging, dispatch, map errors to
//! exit codes (0 success, 1 runtime failure, 2 invalid configuration,
//! including proto services the gRPC ingress cannot serve).

use outbox_relay::config::{Cli, Command};
use outbox_relay::{App, commands, manual, telemetry};
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    // Kill points of the fault-injection suite, configured by FAILPOINTS.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let cli = Cli::parse_redacted();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The trace exporter's gRPC channel is made on the runtime; the guard is
    // dropped (spans flushed) before the runtime is.
    let _logs = match runtime.block_on(async { telemetry::init(&cli.log) }) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output went away (`tail | head -1`): done.
        Err(e) if e.downcast_ref::<commands::StdoutClosed>().is_some() => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "outbox-relay failed");
            let invalid_config = e
                .downcast_ref::<outbox_relay::config::ConfigError>()
                .is_some()
                || e.downcast_ref::<outbox_relay::grpc::TopologyError>()
                    .is_some()
                || e.downcast_ref::<outbox_relay::deliver::PlanError>()
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
            let stop = CancellationToken::new();
            tokio::spawn(cancel_on_signal(stop.clone()));
            let app = App::build(*args).await?;
            app.run_until_stopped(stop).await
        }
        Command::Migrate(args) => commands::migrate_cmd(&args).await,
        Command::Send(args) => commands::send_cmd(&args).await,
        Command::Stats(db) => commands::stats_cmd(&db).await,
        Command::Show(args) => commands::show_cmd(&args).await,
        Command::Dead(args) => commands::dead_cmd(&args).await,
        Command::Replay(args) => commands::replay_cmd(&args).await,
        Command::Tail(args) => commands::tail_cmd(&args).await,
        Command::DeadQueue(args) => commands::dead_queue_cmd(&args).await,
        Command::Completions(args) => manual::completions_cmd(&args),
        Command::Man(args) => manual::man_cmd(&args),
    }
}

/// Cancels `stop` on SIGTERM (Kubernetes) or SIGINT (Ctrl-C). SIGHUP,
/// SIGUSR1 and SIGUSR2, whose default action would kill the process like a
/// crash, are logged and ignored: the relay has nothing to reload.
async fn cancel_on_signal(stop: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let listen = |kind: SignalKind, name: &str| {
        signal(kind).inspect_err(
            |e| tracing::error!(error = %e, signal = name, "cannot listen for a signal"),
        )
    };
    let (Ok(mut term), Ok(mut hup), Ok(mut usr1), Ok(mut usr2)) = (
        listen(SignalKind::terminate(), "SIGTERM"),
        listen(SignalKind::hangup(), "SIGHUP"),
        listen(SignalKind::user_defined1(), "SIGUSR1"),
        listen(SignalKind::user_defined2(), "SIGUSR2"),
    ) else {
        return;
    };
    loop {
        let ignored = tokio::select! {
            _ = term.recv() => break tracing::info!(signal = "SIGTERM", "shutdown requested"),
            _ = tokio::signal::ctrl_c() => break tracing::info!(signal = "SIGINT", "shutdown requested"),
            _ = hup.recv() => "SIGHUP",
            _ = usr1.recv() => "SIGUSR1",
            _ = usr2.recv() => "SIGUSR2",
        };
        tracing::info!(
            signal = ignored,
            "signal ignored (SIGTERM or SIGINT stops the relay)"
        );
    }
    stop.cancel();
}
