//! Logging (readable lines in development, JSON lines in production), optional OpenTelemetry
//! trace export over OTLP, and the Prometheus recorder.

use std::collections::HashMap;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{Config, Environment};

/// What must be shut down at exit: the trace exporter, when there is one.
#[must_use = "call shutdown() at exit so that the last spans are exported"]
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered.
    pub fn shutdown(self) {
        if let Some(Err(e)) = self.tracer_provider.map(|provider| provider.shutdown()) {
            tracing::warn!(error = %e, "exporting the last spans failed");
        }
    }
}

/// Installs the global subscriber: log lines filtered by `LOG_LEVEL` (checked when the
/// configuration was read), plus, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, the service's spans
/// exported over OTLP whatever the log level.
pub fn init(config: &Config) -> Telemetry {
    let filter = EnvFilter::try_new(&config.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_target(false);
    let fmt = match config.environment {
        Environment::Prod => fmt.json().flatten_event(true).with_filter(filter).boxed(),
        Environment::Dev => fmt.with_filter(filter).boxed(),
    };
    let (tracer_provider, otel_error) = match config.otel_exporter_otlp_endpoint.as_deref() {
        Some(endpoint) => match tracer_provider(endpoint) {
            Ok(provider) => (Some(provider), None),
            Err(e) => (None, Some(e)),
        },
        None => (None, None),
    };
    let otel = tracer_provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("kafka-retry"))
            .with_filter(Targets::new().with_target("kafka_retry", Level::INFO))
    });
    let installed = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init();
    if let Err(e) = installed {
        eprintln!("logging was already set up: {e}");
    }
    if let Some(e) = otel_error {
        tracing::error!(error = %e, "OTLP trace export is off: the exporter could not be made");
    }
    Telemetry { tracer_provider }
}

fn tracer_provider(endpoint: &str) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .build()
        .map_err(|e| e.to_string())?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("kafka-retry")
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Makes `span` a child of the W3C `traceparent` given, so that the spans of one task join the
/// trace of the request that submitted it. Without trace export this does nothing.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent else {
        return;
    };
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(context);
}

/// Histogram buckets, in seconds: from a millisecond to five minutes.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new();
            let builder = builder
                .set_buckets(BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
            }
            handle
        })
        .clone()
}
