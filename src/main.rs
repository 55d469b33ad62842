//! The `kafka-retry` binary: reads the configuration, starts the service and stops it on SIGTERM
//! or SIGINT.

use std::process::ExitCode;

use kafka_retry::app::App;
use kafka_retry::config::Config;
use kafka_retry::telemetry;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// mimalloc: glibc's allocator took a fifth of the service's CPU under load (malloc, free and
/// chunk consolidation for every request and record), mimalloc much less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("kafka-retry: {e}");
            return ExitCode::from(2);
        }
    };
    let telemetry = telemetry::init(&config);
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let app = match App::build(config).await {
        Ok(app) => app,
        Err(e) => {
            error!(error = format!("{e:#}"), "start-up failed");
            return ExitCode::FAILURE;
        }
    };
    let code = match app.run(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = format!("{e:#}"), "stopped with an error");
            ExitCode::FAILURE
        }
    };
    tokio::task::spawn_blocking(move || telemetry.shutdown())
        .await
        .unwrap_or_default();
    code
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => info!("SIGINT received; shutting down"),
        () = terminate => info!("SIGTERM received; shutting down"),
    }
    shutdown.cancel();
}
