//! Logging: readable lines in development, JSON lines in production.

use tracing_subscriber::EnvFilter;

use crate::config::{Config, Environment};

/// Installs the global subscriber. `LOG_LEVEL` was checked when the configuration was read.
pub fn init(config: &Config) {
    let filter = EnvFilter::try_new(&config.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let installed = match config.environment {
        Environment::Prod => builder.json().flatten_event(true).try_init(),
        Environment::Dev => builder.try_init(),
    };
    if let Err(e) = installed {
        eprintln!("logging was already set up: {e}");
    }
}
