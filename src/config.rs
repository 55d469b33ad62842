//! Configuration, read once from the environment at start-up. The first eight variables are the Go
//! service's, with its defaults; the rest are documented extras.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

/// A value that must never be printed.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

/// Which logging format to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    /// Human-readable log lines.
    Dev,
    /// One JSON object per log line.
    Prod,
}

/// Every setting of the service.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    /// `HTTP_PORT`: the port the HTTP API listens on.
    #[serde(default = "defaults::http_port")]
    pub http_port: u16,
    /// `HTTP_HOST`: the address the HTTP API binds.
    #[serde(default = "defaults::http_host")]
    pub http_host: String,
    /// `REDIS_ADDR`: `host:port`, or a `redis://` / `rediss://` URL.
    #[serde(default = "defaults::redis_addr")]
    pub redis_addr: String,
    /// `REDIS_PASSWORD`: empty for none.
    #[serde(default)]
    pub redis_password: Secret,
    /// `REDIS_DB`: the database number.
    #[serde(default)]
    pub redis_db: i64,
    /// `KAFKA_BROKERS`: the default cluster, comma-separated; its producer is made at start-up.
    #[serde(default = "defaults::kafka_brokers")]
    pub kafka_brokers: String,
    /// `POLL_INTERVAL`: the longest the worker sleeps between two looks at the schedule.
    #[serde(default = "defaults::poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// `LOG_LEVEL`: `debug`, `info`, `warn` or `error` (or any `tracing` filter).
    #[serde(default = "defaults::log_level")]
    pub log_level: String,
    /// `ENVIRONMENT`: `dev` for readable logs, `prod` for JSON lines.
    #[serde(default = "defaults::environment")]
    pub environment: Environment,
    /// `HTTP_BODY_LIMIT`: the largest request body accepted, in bytes.
    #[serde(default = "defaults::http_body_limit")]
    pub http_body_limit: usize,
    /// `LEASE_DURATION`: how long a claimed task stays away from other instances.
    #[serde(default = "defaults::lease_duration", with = "humantime_serde")]
    pub lease_duration: Duration,
    /// `KAFKA_MESSAGE_TIMEOUT`: how long one publish may take before the attempt fails.
    #[serde(default = "defaults::kafka_message_timeout", with = "humantime_serde")]
    pub kafka_message_timeout: Duration,
    /// `KAFKA_LINGER`: how long a producer waits to batch messages.
    #[serde(default = "defaults::kafka_linger", with = "humantime_serde")]
    pub kafka_linger: Duration,
    /// `MAX_RETRY_DELAY`: the longest single delay between two attempts.
    #[serde(default = "defaults::max_retry_delay", with = "humantime_serde")]
    pub max_retry_delay: Duration,
    /// `SHUTDOWN_GRACE`: how long in-flight publishes may take to finish on shutdown.
    #[serde(default = "defaults::shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// `REDIS_TIMEOUT`: how long connecting to Redis or one Redis call may take.
    #[serde(default = "defaults::redis_timeout", with = "humantime_serde")]
    pub redis_timeout: Duration,
    /// `REDIS_KEY_PREFIX`: the prefix of every Redis key.
    #[serde(default = "defaults::redis_key_prefix")]
    pub redis_key_prefix: String,
    /// `WORKER_BATCH_SIZE`: how many due tasks one worker step claims at most.
    #[serde(default = "defaults::worker_batch_size")]
    pub worker_batch_size: usize,
    /// `WORKER_CONCURRENCY`: how many claimed batches may be delivering at once.
    #[serde(default = "defaults::worker_concurrency")]
    pub worker_concurrency: usize,
    /// `KAFKA_ALLOWED_BROKERS`: hosts or `host:port`s tasks may name, comma-separated; `*` for any.
    /// Unset: the hosts of `KAFKA_BROKERS`.
    #[serde(default)]
    pub kafka_allowed_brokers: Option<String>,
    /// `API_TOKEN`: when set, every route but `/health` needs `Authorization: Bearer <token>`.
    #[serde(default)]
    pub api_token: Option<Secret>,
    /// `HTTP_REQUEST_TIMEOUT`: the longest a request may take, body upload included.
    #[serde(default = "defaults::http_request_timeout", with = "humantime_serde")]
    pub http_request_timeout: Duration,
    /// `HTTP_HEADER_TIMEOUT`: the longest a client may take to send its request headers, and the
    /// longest an idle keep-alive connection is kept.
    #[serde(default = "defaults::http_header_timeout", with = "humantime_serde")]
    pub http_header_timeout: Duration,
    /// `HTTP_MAX_CONNECTIONS`: open connections beyond this are closed at once.
    #[serde(default = "defaults::http_max_connections")]
    pub http_max_connections: usize,
    /// `IDEMPOTENCY_TTL`: how long an idempotency key answers with its first task.
    #[serde(default = "defaults::idempotency_ttl", with = "humantime_serde")]
    pub idempotency_ttl: Duration,
    /// `DEAD_TASK_RETENTION`: how long dead tasks are kept before they are removed (and counted
    /// in `kafka_retry_dead_tasks_expired_total`). Unset: kept until an operator removes them.
    #[serde(default, with = "humantime_serde")]
    pub dead_task_retention: Option<Duration>,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: when set, spans are exported there over OTLP/HTTP
    /// (`<endpoint>/v1/traces`); unset, nothing is exported.
    #[serde(default)]
    pub otel_exporter_otlp_endpoint: Option<String>,
    /// `KAFKA_PRODUCER_*`: librdkafka properties for every producer, such as
    /// `KAFKA_PRODUCER_SECURITY_PROTOCOL=SASL_SSL` for `security.protocol`. Values are never printed.
    #[serde(skip)]
    pub kafka_producer: ProducerProperties,
}

/// librdkafka properties passed through from `KAFKA_PRODUCER_*` variables; `Debug` shows names only.
#[derive(Clone, Default)]
pub struct ProducerProperties(pub Vec<(String, String)>);

impl fmt::Debug for ProducerProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| format!("{name}=***")))
            .finish()
    }
}

impl ProducerProperties {
    const PREFIX: &'static str = "KAFKA_PRODUCER_";

    fn from_vars(vars: &[(String, String)]) -> Self {
        Self(
            vars.iter()
                .filter_map(|(name, value)| {
                    let property = name.strip_prefix(Self::PREFIX)?;
                    Some((
                        property.to_ascii_lowercase().replace('_', "."),
                        value.clone(),
                    ))
                })
                .collect(),
        )
    }
}

/// A setting with a value the service cannot run with.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

/// The largest batch a worker step may claim; Lua's stack bounds the script's arguments.
const MAX_BATCH_SIZE: usize = 3_000;

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars())
    }

    /// Reads the configuration from `vars`, as if they were the environment.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let vars: Vec<(String, String)> = vars.into_iter().collect();
        let mut config: Self = envy::from_iter(vars.iter().cloned())
            .map_err(|e| ConfigError(name_the_variable(&e.to_string(), &vars)))?;
        config.kafka_producer = ProducerProperties::from_vars(&vars);
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let positive = [
            ("POLL_INTERVAL", self.poll_interval),
            ("LEASE_DURATION", self.lease_duration),
            ("KAFKA_MESSAGE_TIMEOUT", self.kafka_message_timeout),
            ("MAX_RETRY_DELAY", self.max_retry_delay),
            ("REDIS_TIMEOUT", self.redis_timeout),
            ("HTTP_REQUEST_TIMEOUT", self.http_request_timeout),
            ("HTTP_HEADER_TIMEOUT", self.http_header_timeout),
        ];
        for (name, value) in positive {
            if value.is_zero() {
                return Err(ConfigError(format!("{name} must be longer than zero")));
            }
        }
        if self.lease_duration <= self.kafka_message_timeout {
            return Err(ConfigError(
                "LEASE_DURATION must be longer than KAFKA_MESSAGE_TIMEOUT".into(),
            ));
        }
        if !(1..=MAX_BATCH_SIZE).contains(&self.worker_batch_size) {
            return Err(ConfigError(format!(
                "WORKER_BATCH_SIZE must be from 1 to {MAX_BATCH_SIZE}"
            )));
        }
        if self
            .api_token
            .as_ref()
            .is_some_and(|t| t.expose().len() < 16)
        {
            return Err(ConfigError(
                "API_TOKEN must be at least 16 characters".into(),
            ));
        }
        if !(1..=64).contains(&self.worker_concurrency) {
            return Err(ConfigError(
                "WORKER_CONCURRENCY must be from 1 to 64".into(),
            ));
        }
        if self.http_max_connections == 0 {
            return Err(ConfigError(
                "HTTP_MAX_CONNECTIONS must be at least 1".into(),
            ));
        }
        if self.http_body_limit == 0 {
            return Err(ConfigError("HTTP_BODY_LIMIT must be at least 1".into()));
        }
        if self.redis_key_prefix.is_empty() {
            return Err(ConfigError("REDIS_KEY_PREFIX must not be empty".into()));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log_level).map_err(|e| {
            ConfigError(format!(
                "LOG_LEVEL {:?} is not a level: {e}",
                self.log_level
            ))
        })?;
        Ok(())
    }
}

/// envy names the field for some errors but not for others (a custom deserializer's message has
/// no name); make sure the message names the environment variable.
fn name_the_variable(message: &str, vars: &[(String, String)]) -> String {
    if let Some(field) = message.strip_prefix("missing value for field ") {
        return format!("{} is required", field.trim_matches('`').to_uppercase());
    }
    let known = Config::variables();
    let named = known
        .iter()
        .find(|name| message.contains(*name) || message.contains(&name.to_lowercase()));
    match named {
        Some(name) => format!("{name}: {message}"),
        None => {
            let suspects: Vec<&str> = vars
                .iter()
                .filter(|(k, v)| known.contains(&k.as_str()) && message.contains(v.as_str()))
                .map(|(k, _)| k.as_str())
                .collect();
            if suspects.is_empty() {
                message.to_owned()
            } else {
                format!("{}: {message}", suspects.join(" or "))
            }
        }
    }
}

impl Config {
    /// The names of every variable the service reads.
    pub fn variables() -> &'static [&'static str] {
        &[
            "HTTP_PORT",
            "HTTP_HOST",
            "REDIS_ADDR",
            "REDIS_PASSWORD",
            "REDIS_DB",
            "KAFKA_BROKERS",
            "POLL_INTERVAL",
            "LOG_LEVEL",
            "ENVIRONMENT",
            "HTTP_BODY_LIMIT",
            "LEASE_DURATION",
            "KAFKA_MESSAGE_TIMEOUT",
            "KAFKA_LINGER",
            "MAX_RETRY_DELAY",
            "SHUTDOWN_GRACE",
            "REDIS_TIMEOUT",
            "REDIS_KEY_PREFIX",
            "WORKER_BATCH_SIZE",
            "WORKER_CONCURRENCY",
            "KAFKA_ALLOWED_BROKERS",
            "API_TOKEN",
            "HTTP_REQUEST_TIMEOUT",
            "HTTP_HEADER_TIMEOUT",
            "HTTP_MAX_CONNECTIONS",
            "IDEMPOTENCY_TTL",
            "DEAD_TASK_RETENTION",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ]
    }
}

mod defaults {
    use super::Environment;
    use std::time::Duration;

    pub(super) fn http_port() -> u16 {
        8080
    }
    pub(super) fn http_host() -> String {
        "0.0.0.0".into()
    }
    pub(super) fn redis_addr() -> String {
        "localhost:6379".into()
    }
    pub(super) fn kafka_brokers() -> String {
        "localhost:9092".into()
    }
    pub(super) fn poll_interval() -> Duration {
        Duration::from_secs(1)
    }
    pub(super) fn log_level() -> String {
        "info".into()
    }
    pub(super) fn environment() -> Environment {
        Environment::Dev
    }
    pub(super) fn http_body_limit() -> usize {
        1024 * 1024
    }
    pub(super) fn lease_duration() -> Duration {
        Duration::from_secs(30)
    }
    pub(super) fn kafka_message_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub(super) fn kafka_linger() -> Duration {
        Duration::from_millis(5)
    }
    pub(super) fn max_retry_delay() -> Duration {
        Duration::from_secs(24 * 3600)
    }
    pub(super) fn shutdown_grace() -> Duration {
        Duration::from_secs(10)
    }
    pub(super) fn redis_timeout() -> Duration {
        Duration::from_secs(2)
    }
    pub(super) fn redis_key_prefix() -> String {
        "kafkaretry".into()
    }
    pub(super) fn worker_batch_size() -> usize {
        1000
    }
    pub(super) fn worker_concurrency() -> usize {
        4
    }
    pub(super) fn http_request_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub(super) fn http_header_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub(super) fn http_max_connections() -> usize {
        10_000
    }
    pub(super) fn idempotency_ttl() -> Duration {
        Duration::from_secs(24 * 3600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn defaults_match_the_go_service() {
        let config = config(&[]).expect("defaults are valid");
        assert_eq!(config.http_port, 8080);
        assert_eq!(config.redis_addr, "localhost:6379");
        assert_eq!(config.redis_password.expose(), "");
        assert_eq!(config.redis_db, 0);
        assert_eq!(config.kafka_brokers, "localhost:9092");
        assert_eq!(config.poll_interval, Duration::from_secs(1));
        assert_eq!(config.log_level, "info");
        assert_eq!(config.environment, Environment::Dev);
        assert_eq!(config.http_body_limit, 1024 * 1024);
        assert_eq!(config.shutdown_grace, Duration::from_secs(10));
    }

    #[test]
    fn durations_accept_human_units() {
        let config =
            config(&[("POLL_INTERVAL", "250ms"), ("LEASE_DURATION", "2m")]).expect("valid");
        assert_eq!(config.poll_interval, Duration::from_millis(250));
        assert_eq!(config.lease_duration, Duration::from_secs(120));
    }

    #[test]
    fn an_invalid_value_names_its_variable() {
        for (name, value) in [
            ("HTTP_PORT", "eighty"),
            ("POLL_INTERVAL", "soon"),
            ("REDIS_DB", "x"),
            ("ENVIRONMENT", "staging"),
            ("LOG_LEVEL", "loud=[["),
            ("WORKER_BATCH_SIZE", "0"),
            ("LEASE_DURATION", "1s"),
        ] {
            let error = config(&[(name, value)]).expect_err("invalid").to_string();
            assert!(error.contains(name), "{name}={value}: {error}");
        }
    }

    #[test]
    fn secrets_are_never_printed() {
        let config = config(&[
            ("REDIS_PASSWORD", "hunter2"),
            ("API_TOKEN", "0123456789abcdef-token"),
            ("KAFKA_PRODUCER_SASL_PASSWORD", "kafka-secret"),
        ])
        .expect("valid");
        let printed = format!("{config:?}");
        for secret in ["hunter2", "0123456789abcdef-token", "kafka-secret"] {
            assert!(!printed.contains(secret), "{secret} printed in {printed}");
        }
        assert_eq!(config.redis_password.expose(), "hunter2");
    }

    #[test]
    fn producer_properties_come_from_prefixed_variables() {
        let config = config(&[
            ("KAFKA_PRODUCER_SECURITY_PROTOCOL", "SASL_SSL"),
            ("KAFKA_PRODUCER_SASL_MECHANISM", "SCRAM-SHA-512"),
        ])
        .expect("valid");
        let mut properties = config.kafka_producer.0.clone();
        properties.sort();
        assert_eq!(
            properties,
            [
                ("sasl.mechanism".to_owned(), "SCRAM-SHA-512".to_owned()),
                ("security.protocol".to_owned(), "SASL_SSL".to_owned()),
            ]
        );
    }

    #[test]
    fn a_short_api_token_is_refused() {
        let error = config(&[("API_TOKEN", "short")]).expect_err("too short");
        assert!(error.to_string().contains("API_TOKEN"));
    }
}
