//! Start-up and shutdown: wires the adapters to the domain, serves HTTP and runs the worker until
//! one shutdown signal stops both.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::domain::{BrokerAllowlist, Settings, SystemClock, TaskService};
use crate::http::{ConnectionLimits, HttpSettings};
use crate::kafka_publisher::{KafkaPublisher, KafkaSettings};
use crate::redis_store::{RedisSettings, RedisStore};
use crate::worker::WorkerSettings;
use crate::{http, worker};

/// How long producers get, after the worker stopped, to deliver anything still queued. Every
/// publish the worker started has been answered or withdrawn by then, so this is a safety net.
const FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The service as it runs in production: Redis store, Kafka publisher, system clock.
pub type Service = TaskService<RedisStore, KafkaPublisher>;

/// A service ready to run: adapters made, HTTP port bound.
pub struct App {
    config: Config,
    service: Arc<Service>,
    listener: TcpListener,
}

impl App {
    /// Makes the adapters and binds the HTTP port. Redis and Kafka need not be up yet.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let store = RedisStore::connect(&RedisSettings {
            addr: config.redis_addr.clone(),
            password: Some(config.redis_password.expose().to_owned()),
            db: config.redis_db,
            key_prefix: config.redis_key_prefix.clone(),
            timeout: config.redis_timeout,
            idempotency_ttl: config.idempotency_ttl,
        })
        .context("REDIS_ADDR")?;
        let publisher = KafkaPublisher::new(KafkaSettings {
            message_timeout: config.kafka_message_timeout,
            linger: config.kafka_linger,
            extra: config.kafka_producer.0.clone(),
        });
        if let Err(e) = publisher.prepare(&config.kafka_brokers) {
            warn!(error = %e, "no producer for KAFKA_BROKERS yet; one is made on first publish");
        }
        let allowed_brokers = match &config.kafka_allowed_brokers {
            Some(list) => BrokerAllowlist::parse(list),
            None => BrokerAllowlist::hosts_of(&config.kafka_brokers),
        };
        let settings = Settings {
            max_delay: config.max_retry_delay,
            batch_size: config.worker_batch_size,
            lease: config.lease_duration,
            store_timeout: config.redis_timeout,
            allowed_brokers,
        };
        let service = Arc::new(TaskService::new(
            store,
            publisher,
            Arc::new(SystemClock),
            settings,
        ));
        let address = format!("{}:{}", config.http_host, config.http_port);
        let listener = TcpListener::bind(&address)
            .await
            .with_context(|| format!("cannot listen on {address} (HTTP_HOST, HTTP_PORT)"))?;
        Ok(Self {
            config,
            service,
            listener,
        })
    }

    /// The address the HTTP API listens on.
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// The service behind the API.
    pub fn service(&self) -> Arc<Service> {
        self.service.clone()
    }

    /// Serves HTTP and runs the worker until `shutdown` is cancelled (or either stops), then
    /// lets in-flight publishes finish within the grace period and flushes the producers.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            config,
            service,
            listener,
        } = self;
        info!(address = %listener.local_addr()?, "listening");
        let router = http::router(
            service.clone(),
            &HttpSettings {
                body_limit: config.http_body_limit,
                request_timeout: config.http_request_timeout,
                api_token: config.api_token.as_ref().map(|t| t.expose().to_owned()),
            },
            Some(crate::telemetry::metrics_handle()),
        );
        let limits = ConnectionLimits {
            header_timeout: config.http_header_timeout,
            max_connections: config.http_max_connections,
            shutdown_grace: config.shutdown_grace,
        };
        let mut server = tokio::spawn(http::serve(listener, router, limits, shutdown.clone()));
        let mut worker = tokio::spawn(worker::run(
            service.clone(),
            WorkerSettings {
                poll_interval: config.poll_interval,
                concurrency: config.worker_concurrency,
                grace: config.shutdown_grace,
                dead_task_retention: config.dead_task_retention,
            },
            shutdown.clone(),
        ));

        let grace = config.shutdown_grace;
        let (first, other) = tokio::select! {
            served = &mut server => ("HTTP server", served.map(|()| worker)),
            worked = &mut worker => ("worker", worked.map(|()| server)),
        };
        info!("{first} stopped first");
        shutdown.cancel();
        let other = other.with_context(|| format!("{first} panicked"))?;
        if tokio::time::timeout(grace * 2, other).await.is_err() {
            warn!("the rest did not stop within twice the grace period");
        }
        service.publisher().flush(FLUSH_TIMEOUT).await;
        info!("shutdown complete");
        Ok(())
    }
}
