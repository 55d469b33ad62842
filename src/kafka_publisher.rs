//! The publisher on Kafka: one idempotent producer per distinct `kafka_conn_string`, made on first
//! use and kept, each with a bounded message timeout so an unreachable cluster fails an attempt in
//! seconds rather than librdkafka's five minutes.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer, PurgeConfig};
use rdkafka::util::Timeout;
use tracing::{Instrument, info, warn};

use crate::domain::{Destination, Message, PublishError, Publisher};

/// How producers are configured.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// How long librdkafka may try to deliver one message before the attempt fails.
    pub message_timeout: Duration,
    /// How long a producer waits to batch messages together.
    pub linger: Duration,
    /// Extra librdkafka properties applied to every producer (for example SASL or TLS settings);
    /// they cannot change the brokers, idempotence, acks or the message timeout.
    pub extra: Vec<(String, String)>,
}

/// Publishes payloads with acks=all and the idempotent producer.
#[derive(Clone)]
pub struct KafkaPublisher {
    settings: Arc<KafkaSettings>,
    producers: Arc<RwLock<HashMap<String, FutureProducer>>>,
}

impl KafkaPublisher {
    /// A publisher with no producers yet.
    pub fn new(settings: KafkaSettings) -> Self {
        Self {
            settings: Arc::new(settings),
            producers: Arc::default(),
        }
    }

    /// Makes the producer for `brokers` now rather than on the first publish, so that its
    /// connections and its idempotent producer id (which librdkafka fetches on a 500 ms timer)
    /// are ready before the first task falls due.
    pub fn prepare(&self, brokers: &str) -> Result<(), PublishError> {
        self.producer(brokers).map(|_| ())
    }

    /// The producer for `brokers`, made on first use.
    fn producer(&self, brokers: &str) -> Result<FutureProducer, PublishError> {
        if let Some(producer) = self.read_producers().get(brokers) {
            return Ok(producer.clone());
        }
        let mut producers = self
            .producers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(producer) = producers.get(brokers) {
            return Ok(producer.clone());
        }
        let producer = self.make_producer(brokers)?;
        info!(brokers, "kafka producer created");
        producers.insert(brokers.to_owned(), producer.clone());
        Ok(producer)
    }

    fn make_producer(&self, brokers: &str) -> Result<FutureProducer, PublishError> {
        let settings = &self.settings;
        let mut config = ClientConfig::new();
        config
            .set("linger.ms", settings.linger.as_millis().to_string())
            .set("reconnect.backoff.max.ms", "1000")
            .set("topic.metadata.refresh.interval.ms", "30000");
        for (key, value) in &settings.extra {
            config.set(key, value);
        }
        config
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                settings.message_timeout.as_millis().to_string(),
            );
        config.create().map_err(|e| {
            PublishError::Rejected(format!("cannot create a producer for {brokers}: {e}"))
        })
    }

    fn read_producers(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, FutureProducer>> {
        self.producers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits up to `timeout` for every producer to deliver what it holds.
    pub async fn flush(&self, timeout: Duration) {
        let producers: Vec<(String, FutureProducer)> = self
            .read_producers()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let flushed = tokio::task::spawn_blocking(move || {
            for (brokers, producer) in producers {
                if let Err(e) = producer.flush(Timeout::After(timeout)) {
                    warn!(brokers, error = %e, "producer flush incomplete");
                }
            }
        })
        .await;
        if let Err(e) = flushed {
            warn!(error = %e, "producer flush failed");
        }
    }
}

impl Publisher for KafkaPublisher {
    fn withdraw_unsent(&self) {
        for producer in self.read_producers().values() {
            producer.purge(PurgeConfig::default().queue().non_blocking());
        }
    }

    async fn publish(
        &self,
        destination: &Destination,
        message: &Message<'_>,
    ) -> Result<(), PublishError> {
        let span = tracing::info_span!(
            "kafka.publish",
            topic = %destination.topic,
            partition = destination.partition
        );
        let traceparent = message
            .headers
            .iter()
            .find(|(name, _)| *name == "traceparent")
            .map(|(_, value)| value.as_str());
        crate::telemetry::continue_trace(&span, traceparent);
        self.send(destination, message).instrument(span).await
    }
}

impl KafkaPublisher {
    async fn send(
        &self,
        destination: &Destination,
        message: &Message<'_>,
    ) -> Result<(), PublishError> {
        let producer = self.producer(&destination.kafka_conn_string)?;
        let headers = message.headers.iter().fold(
            OwnedHeaders::new_with_capacity(message.headers.len()),
            |headers, (key, value)| {
                headers.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                })
            },
        );
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(destination.topic.as_str())
            .partition(destination.partition)
            .payload(message.payload)
            .headers(headers);
        if let Some(key) = message.key {
            record = record.key(key);
        }
        producer
            .send(record, Timeout::After(self.settings.message_timeout))
            .await
            .map(|_| ())
            .map_err(|(e, _)| match e.rdkafka_error_code() {
                Some(RDKafkaErrorCode::PurgeQueue) => PublishError::Withdrawn,
                _ => PublishError::Rejected(e.to_string()),
            })
    }
}
