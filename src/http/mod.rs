//! The HTTP API: tasks (submit, batch, inspect, list, cancel, retry), health, metrics and the
//! dashboard, with every error as JSON, an optional bearer token and a deadline on every request.
//! [`serve`] runs it with connection limits.

mod error;
mod server;
mod tasks;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tower_http::trace::TraceLayer;

pub use error::ApiError;
pub use server::{ConnectionLimits, MAX_HEADER_BYTES, serve};
pub use tasks::{MAX_BATCH, MAX_PAGE, parse_task_request};

use crate::domain::{Publisher, TaskService, TaskStore};

/// How the API treats requests.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// The largest body accepted, in bytes.
    pub body_limit: usize,
    /// The longest a request may take, body included.
    pub request_timeout: Duration,
    /// When set, every route but `/health` (and the dashboard's static page) needs
    /// `Authorization: Bearer <token>`.
    pub api_token: Option<String>,
}

/// What the handlers share.
struct AppState<S, P> {
    service: Arc<TaskService<S, P>>,
    body_limit: usize,
    metrics: Option<PrometheusHandle>,
}

impl<S, P> Clone for AppState<S, P> {
    fn clone(&self) -> Self {
        Self {
            service: self.service.clone(),
            body_limit: self.body_limit,
            metrics: self.metrics.clone(),
        }
    }
}

/// Counted for every request, by method, matched route and status.
const HTTP_REQUESTS: &str = "kafka_retry_http_requests_total";
/// Seconds every request took, by method and matched route.
const HTTP_DURATION: &str = "kafka_retry_http_request_duration_seconds";

/// The API's routes over `service`; `/metrics` renders `metrics` when given.
pub fn router<S: TaskStore, P: Publisher>(
    service: Arc<TaskService<S, P>>,
    settings: &HttpSettings,
    metrics: Option<PrometheusHandle>,
) -> Router {
    let token = settings.api_token.clone().map(Arc::<str>::from);
    let protected = Router::new()
        .route(
            "/tasks",
            post(tasks::create::<S, P>).get(tasks::list::<S, P>),
        )
        .route("/tasks/batch", post(tasks::create_batch::<S, P>))
        .route("/tasks/dead/retry", post(tasks::retry_dead::<S, P>))
        .route(
            "/tasks/{id}",
            get(tasks::find::<S, P>).delete(tasks::cancel::<S, P>),
        )
        .route("/tasks/{id}/retry", post(tasks::retry::<S, P>))
        .route("/metrics", get(render_metrics::<S, P>))
        .route_layer(middleware::from_fn_with_state(token, authorize));
    let timeout = settings.request_timeout;
    Router::new()
        .merge(protected)
        .route("/health", get(health::<S, P>))
        .route(
            "/ui",
            get(|| async { Html(include_str!("dashboard.html")) }),
        )
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(settings.body_limit))
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            edge(timeout, request, next)
        }))
        .layer(TraceLayer::new_for_http())
        .with_state(AppState {
            service,
            body_limit: settings.body_limit,
            metrics,
        })
}

/// Lets a request through only with the right bearer token, when one is configured. The
/// comparison takes the same time wherever the tokens differ.
async fn authorize(
    State(token): State<Option<Arc<str>>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(token) = token {
        let offered = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or_default();
        let matches: bool =
            subtle::ConstantTimeEq::ct_eq(offered.as_bytes(), token.as_bytes()).into();
        if !matches {
            return Err(ApiError::Unauthorized);
        }
    }
    Ok(next.run(request).await)
}

/// Every request passes here once: a deadline (408 once `timeout` passes, body upload included),
/// JSON for every error, and the HTTP metrics.
async fn edge(timeout: Duration, request: Request, next: Next) -> Response {
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let started = Instant::now();
    let response = tokio::time::timeout(timeout, next.run(request))
        .await
        .unwrap_or_else(|_| ApiError::RequestTimeout.into_response());
    let response = errors_as_json(response).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!(HTTP_DURATION, "method" => method.clone(), "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!(HTTP_REQUESTS, "method" => method, "route" => route, "status" => status)
        .increment(1);
    response
}

/// Turns the plain-text errors of axum's own extractors (a malformed query string, an undecodable
/// path) into the API's JSON errors, so that every error a client sees has the same shape.
async fn errors_as_json(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let text = axum::body::to_bytes(response.into_body(), 4096)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text
    };
    (status, Json(json!({ "error": message }))).into_response()
}

async fn health<S: TaskStore, P: Publisher>(
    State(state): State<AppState<S, P>>,
) -> impl IntoResponse {
    match state.service.health().await {
        Ok(()) => (StatusCode::OK, Json(json!({ "status": "healthy" }))),
        Err(e) => {
            tracing::warn!(error = %e, "health check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "unhealthy", "error": "redis connection failed" })),
            )
        }
    }
}

/// Gauges of where tasks are, read from the store at scrape time, then every metric.
async fn render_metrics<S: TaskStore, P: Publisher>(
    State(state): State<AppState<S, P>>,
) -> Result<Response, ApiError> {
    let Some(handle) = &state.metrics else {
        return Err(ApiError::NotFound);
    };
    match state.service.counts().await {
        Ok(counts) => {
            metrics::gauge!("kafka_retry_tasks_scheduled").set(counts.scheduled as f64);
            metrics::gauge!("kafka_retry_tasks_in_flight").set(counts.in_flight as f64);
            metrics::gauge!("kafka_retry_tasks_dead").set(counts.dead as f64);
            metrics::gauge!("kafka_retry_store_up").set(1.0);
        }
        Err(e) => {
            tracing::warn!(error = %e, "task counts unavailable for /metrics");
            metrics::gauge!("kafka_retry_store_up").set(0.0);
        }
    }
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        Bytes::from(handle.render()),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::{HeaderMap, Request};
    use http_body_util::BodyExt;
    use serde_json::Value;
    use tower::ServiceExt;

    use super::*;
    use crate::domain::Settings;
    use crate::domain::fakes::{FakePublisher, ManualClock, MemoryStore};

    type Service = TaskService<MemoryStore, FakePublisher>;

    const LIMIT: usize = 4096;
    const TOKEN: &str = "a-long-enough-test-token";

    fn app() -> (Router, Arc<Service>) {
        app_with(None)
    }

    fn app_with(api_token: Option<&str>) -> (Router, Arc<Service>) {
        app_configured(api_token, LIMIT)
    }

    fn app_with_limit(limit: Option<usize>) -> (Router, Arc<Service>) {
        app_configured(None, limit.unwrap_or(LIMIT))
    }

    fn app_configured(api_token: Option<&str>, body_limit: usize) -> (Router, Arc<Service>) {
        let settings = Settings {
            max_delay: Duration::from_secs(86_400),
            batch_size: 10,
            lease: Duration::from_secs(30),
            store_timeout: Duration::from_millis(500),
            allowed_brokers: crate::domain::BrokerAllowlist::hosts_of("localhost:9092"),
        };
        let service = Arc::new(TaskService::new(
            MemoryStore::default(),
            FakePublisher::default(),
            Arc::new(ManualClock::default()),
            settings,
        ));
        let http = HttpSettings {
            body_limit,
            request_timeout: Duration::from_secs(5),
            api_token: api_token.map(str::to_owned),
        };
        (router(service.clone(), &http, None), service)
    }

    fn valid_body() -> Value {
        json!({
            "payload": "{\"user_id\": 123}",
            "destination": {"topic": "orders", "partition": 0, "kafka_conn_string": "localhost:9092"},
            "dead_destination": {"topic": "orders-dlq", "partition": 0, "kafka_conn_string": "localhost:9092"},
            "max_retries": 3,
            "retry_delay_seconds": 5,
            "something_else": true
        })
    }

    async fn send(app: Router, request: Request<Body>) -> (StatusCode, HeaderMap, Value) {
        let response = app.oneshot(request).await.expect("router answers");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, headers, body)
    }

    fn post(body: impl Into<Body>) -> Request<Body> {
        Request::post("/tasks")
            .header("content-type", "application/json")
            .body(body.into())
            .expect("request")
    }

    async fn post_json(app: Router, body: &Value) -> (StatusCode, Value) {
        let (status, headers, body) = send(app, post(body.to_string())).await;
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        (status, body)
    }

    #[tokio::test]
    async fn a_valid_task_is_scheduled_and_its_ulid_returned() {
        let (app, service) = app();
        let (status, body) = post_json(app, &valid_body()).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(body["message"], "Task scheduled successfully");
        let id: crate::domain::TaskId = body["task_id"]
            .as_str()
            .expect("task_id")
            .parse()
            .expect("a ULID");
        let record = service.store().record(id).expect("stored");
        assert_eq!(record.payload, "{\"user_id\": 123}");
        assert_eq!(record.due_at, 5_000);
    }

    #[tokio::test]
    async fn each_invalid_field_is_a_400_naming_it() {
        let cases: [(&str, Value, &str); 13] = [
            ("payload", Value::Null, "payload"),
            ("payload", json!(""), "payload"),
            ("payload", json!(42), "payload"),
            ("destination", Value::Null, "destination"),
            ("destination", json!("orders"), "destination"),
            (
                "destination",
                json!(["orders", 0, "localhost:9092"]),
                "destination",
            ),
            ("max_retries", json!(0), "max_retries"),
            ("max_retries", json!("5"), "max_retries"),
            ("max_retries", json!(1.5), "max_retries"),
            ("max_retries", json!(101), "max_retries"),
            ("retry_delay_seconds", json!(0), "retry_delay_seconds"),
            ("retry_delay_seconds", json!(86_401), "retry_delay_seconds"),
            (
                "dead_destination",
                json!({"topic": "x"}),
                "dead_destination.partition",
            ),
        ];
        for (field, value, named) in cases {
            let (app, service) = app();
            let mut body = valid_body();
            if value.is_null() {
                body.as_object_mut().expect("object").remove(field);
            } else {
                body[field] = value.clone();
            }
            let (status, response) = post_json(app, &body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{field}={value}");
            let error = response["error"].as_str().expect("error message");
            assert!(error.contains(named), "{field}={value}: {error}");
            assert!(service.store().scheduled().is_empty());
        }
    }

    #[tokio::test]
    async fn nested_destination_fields_are_named() {
        for (field, value, named) in [
            ("topic", json!("bad topic"), "destination.topic"),
            ("topic", json!(".."), "destination.topic"),
            ("partition", json!(-1), "destination.partition"),
            ("partition", json!("0"), "destination.partition"),
            (
                "kafka_conn_string",
                json!(""),
                "destination.kafka_conn_string",
            ),
        ] {
            let (app, _) = app();
            let mut body = valid_body();
            body["destination"][field] = value.clone();
            let (status, response) = post_json(app, &body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{field}={value}");
            let error = response["error"].as_str().expect("error message");
            assert!(error.contains(named), "{field}={value}: {error}");
        }
    }

    #[tokio::test]
    async fn malformed_bodies_are_json_400s() {
        let bad_bodies: [&[u8]; 7] = [
            b"{not json",
            b"",
            b"[1, 2]",
            b"\"a string\"",
            b"{\"payload\": \"\xff\xfe\"}",
            b"{} {}",
            b"[\"x\", {\"topic\": \"orders\", \"partition\": 0, \"kafka_conn_string\": \"a\"}, null, 3, 5]",
        ];
        for body in bad_bodies {
            let (app, _) = app();
            let (status, headers, response) = send(app, post(body.to_vec())).await;
            assert_eq!(
                status,
                StatusCode::BAD_REQUEST,
                "{:?}",
                String::from_utf8_lossy(body)
            );
            assert_eq!(headers[header::CONTENT_TYPE], "application/json");
            assert!(response["error"].is_string());
        }
    }

    #[tokio::test]
    async fn a_body_not_declared_as_json_is_a_415() {
        for content_type in [None, Some("text/plain"), Some("application/xml")] {
            let (router, _) = app();
            let mut request = Request::post("/tasks");
            if let Some(content_type) = content_type {
                request = request.header("content-type", content_type);
            }
            let request = request
                .body(Body::from(valid_body().to_string()))
                .expect("request");
            let (status, _, body) = send(router, request).await;
            assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
            assert!(
                body["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("application/json"))
            );
        }
        let (router, _) = app();
        let request = Request::post("/tasks")
            .header("content-type", "application/json; charset=utf-8")
            .body(Body::from(valid_body().to_string()))
            .expect("request");
        assert_eq!(send(router, request).await.0, StatusCode::CREATED);
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_a_413() {
        let (app, service) = app();
        let mut body = valid_body();
        body["payload"] = json!("x".repeat(LIMIT));
        let (status, body) = post_json(app, &body).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(body["error"].as_str().is_some_and(|e| e.contains("4096")));
        assert!(service.store().scheduled().is_empty());
    }

    #[tokio::test]
    async fn unknown_routes_and_methods_are_json() {
        let (router, _) = app();
        let (status, headers, body) = send(
            router,
            Request::get("/nope").body(Body::empty()).expect("request"),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(body["error"], "not found");

        let (router, _) = app();
        let (status, _, body) = send(
            router,
            Request::put("/tasks").body(Body::empty()).expect("request"),
        )
        .await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(body["error"], "method not allowed");
    }

    #[tokio::test]
    async fn with_a_token_configured_tasks_need_it_and_health_does_not() {
        let body = valid_body().to_string();
        let request = |authorization: Option<&str>| {
            let mut request = Request::post("/tasks").header("content-type", "application/json");
            if let Some(authorization) = authorization {
                request = request.header("authorization", authorization);
            }
            request.body(Body::from(body.clone())).expect("request")
        };
        for wrong in [
            None,
            Some("Bearer nope"),
            Some(TOKEN),
            Some("Basic a-long-enough-test-token"),
        ] {
            let (router, service) = app_with(Some(TOKEN));
            let (status, headers, response) = send(router, request(wrong)).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{wrong:?}");
            assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
            assert_eq!(response["error"], "missing or invalid bearer token");
            assert!(service.store().scheduled().is_empty());
        }
        let (router, _) = app_with(Some(TOKEN));
        let (status, _, _) = send(router, request(Some(&format!("Bearer {TOKEN}")))).await;
        assert_eq!(status, StatusCode::CREATED);
        let (router, _) = app_with(Some(TOKEN));
        let health = Request::get("/health")
            .body(Body::empty())
            .expect("request");
        assert_eq!(send(router, health).await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn a_broker_outside_the_allowlist_is_a_400_naming_the_field() {
        let (router, service) = app();
        let mut body = valid_body();
        body["destination"]["kafka_conn_string"] = json!("metadata.internal:80");
        let (status, response) = post_json(router, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            response["error"],
            "destination.kafka_conn_string names a broker that is not in KAFKA_ALLOWED_BROKERS"
        );
        assert!(service.store().scheduled().is_empty());
    }

    #[tokio::test]
    async fn a_request_whose_body_never_finishes_is_a_408() {
        let (router, _) = app();
        let stalled =
            Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>());
        let request = Request::post("/tasks")
            .header("content-type", "application/json")
            .body(stalled)
            .expect("request");
        tokio::time::pause();
        let (status, _, body) = send(router, request).await;
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
        assert_eq!(body["error"], "request timed out");
    }

    #[tokio::test]
    async fn an_unreachable_store_is_a_503_and_unhealthy() {
        let (app, service) = app();
        service.store().set_down(true);
        let (status, body) = post_json(app.clone(), &valid_body()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"], "failed to schedule task");

        let health = Request::get("/health")
            .body(Body::empty())
            .expect("request");
        let (status, _, body) = send(app.clone(), health).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body,
            json!({"status": "unhealthy", "error": "redis connection failed"})
        );

        service.store().set_down(false);
        let health = Request::get("/health")
            .body(Body::empty())
            .expect("request");
        let (status, _, body) = send(app, health).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, json!({"status": "healthy"}));
    }

    fn get(path: &str) -> Request<Body> {
        Request::get(path).body(Body::empty()).expect("request")
    }

    fn post_empty(path: &str) -> Request<Body> {
        Request::post(path).body(Body::empty()).expect("request")
    }

    async fn scheduled_id(router: Router) -> String {
        let (status, body) = post_json(router, &valid_body()).await;
        assert_eq!(status, StatusCode::CREATED);
        body["task_id"].as_str().expect("task_id").to_owned()
    }

    #[tokio::test]
    async fn a_task_can_be_inspected_with_its_payload_on_request() {
        let (router, _) = app();
        let id = scheduled_id(router.clone()).await;
        let (status, _, body) = send(router.clone(), get(&format!("/tasks/{id}"))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["task_id"], id.as_str());
        assert_eq!(body["state"], "scheduled");
        assert_eq!(body["attempts"], 0);
        assert_eq!(body["next_attempt_at"], "1970-01-01T00:00:05.000Z");
        assert_eq!(body["destination"]["topic"], "orders");
        assert!(body.get("payload").is_none());
        let (_, _, body) = send(router, get(&format!("/tasks/{id}?include=payload"))).await;
        assert_eq!(body["payload"], "{\"user_id\": 123}");
    }

    #[tokio::test]
    async fn unknown_task_ids_are_json_404s() {
        for path in ["/tasks/01ARZ3NDEKTSV4RRFFQ69G5FAV", "/tasks/not-a-ulid"] {
            let (router, _) = app();
            let (status, _, body) = send(router, get(path)).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
            assert_eq!(body["error"], "task not found");
        }
        let (router, _) = app();
        let request = Request::delete("/tasks/01ARZ3NDEKTSV4RRFFQ69G5FAV")
            .body(Body::empty())
            .expect("request");
        assert_eq!(send(router, request).await.0, StatusCode::NOT_FOUND);
        let (router, _) = app();
        let request = post_empty("/tasks/01ARZ3NDEKTSV4RRFFQ69G5FAV/retry");
        assert_eq!(send(router, request).await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn tasks_are_listed_by_state_a_page_at_a_time() {
        let (router, _) = app();
        for _ in 0..3 {
            scheduled_id(router.clone()).await;
        }
        let (status, _, page) = send(router.clone(), get("/tasks?state=scheduled&limit=2")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(page["tasks"].as_array().map(Vec::len), Some(2));
        assert_eq!(page["total"], 3);
        let cursor = page["next_cursor"].as_str().expect("a next page");
        let (_, _, rest) = send(
            router.clone(),
            get(&format!("/tasks?state=scheduled&limit=2&cursor={cursor}")),
        )
        .await;
        assert_eq!(rest["tasks"].as_array().map(Vec::len), Some(1));
        assert_eq!(rest["next_cursor"], Value::Null);
        let (_, _, dead) = send(router.clone(), get("/tasks?state=dead")).await;
        assert_eq!(dead["total"], 0);
        let (status, _, body) = send(router, get("/tasks?state=lost")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body["error"].as_str().is_some_and(|e| e.contains("state")));
    }

    #[tokio::test]
    async fn a_cancelled_task_is_gone() {
        let (router, service) = app();
        let id = scheduled_id(router.clone()).await;
        let delete = Request::delete(format!("/tasks/{id}"))
            .body(Body::empty())
            .expect("request");
        let (status, _, body) = send(router.clone(), delete).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["message"], "Task cancelled");
        assert!(service.store().scheduled().is_empty());
        assert_eq!(
            send(router, get(&format!("/tasks/{id}"))).await.0,
            StatusCode::NOT_FOUND
        );
    }

    #[tokio::test]
    async fn only_tasks_whose_retries_ran_out_can_be_retried() {
        let (router, _) = app();
        let id = scheduled_id(router.clone()).await;
        let (status, _, body) = send(router, post_empty(&format!("/tasks/{id}/retry"))).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert!(body["error"].as_str().is_some_and(|e| e.contains("dead")));
    }

    #[tokio::test]
    async fn the_same_idempotency_key_returns_the_first_task_and_schedules_nothing() {
        let (router, service) = app();
        let mut body = valid_body();
        body["id"] = json!("order-456-attempt");
        let (first_status, first) = post_json(router.clone(), &body).await;
        let (again_status, again) = post_json(router.clone(), &body).await;
        assert_eq!(first_status, StatusCode::CREATED);
        assert_eq!(again_status, StatusCode::OK);
        assert_eq!(first["task_id"], again["task_id"]);
        let request = Request::post("/tasks")
            .header("content-type", "application/json")
            .header("idempotency-key", "header-key")
            .body(Body::from(valid_body().to_string()))
            .expect("request");
        let (status, _, by_header) = send(router.clone(), request).await;
        assert_eq!(status, StatusCode::CREATED);
        let request = Request::post("/tasks")
            .header("content-type", "application/json")
            .header("idempotency-key", "header-key")
            .body(Body::from(valid_body().to_string()))
            .expect("request");
        let (status, _, replay) = send(router, request).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(by_header["task_id"], replay["task_id"]);
        assert_eq!(service.store().scheduled().len(), 2);
    }

    #[tokio::test]
    async fn a_batch_answers_each_task_and_a_bad_one_does_not_sink_the_others() {
        let (router, service) = app();
        let mut bad = valid_body();
        bad["max_retries"] = json!(0);
        let mut outside = valid_body();
        outside["destination"]["kafka_conn_string"] = json!("evil.example:9092");
        let body = json!({ "tasks": [valid_body(), bad, "not an object", outside, valid_body()] });
        let request = Request::post("/tasks/batch")
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .expect("request");
        let (status, _, answer) = send(router, request).await;
        assert_eq!(status, StatusCode::OK);
        let statuses: Vec<u64> = answer["results"]
            .as_array()
            .expect("results")
            .iter()
            .map(|r| r["status"].as_u64().expect("status"))
            .collect();
        assert_eq!(statuses, [201, 400, 400, 400, 201]);
        assert!(
            answer["results"][1]["error"]
                .as_str()
                .is_some_and(|e| e.contains("max_retries"))
        );
        assert!(
            answer["results"][3]["error"]
                .as_str()
                .is_some_and(|e| e.contains("kafka_conn_string"))
        );
        assert_eq!(service.store().scheduled().len(), 2);
    }

    #[tokio::test]
    async fn an_oversized_or_empty_batch_is_a_400() {
        for tasks in [json!([]), Value::Array(vec![valid_body(); MAX_BATCH + 1])] {
            let (router, _) = app_with_limit(Some(8 * 1024 * 1024));
            let request = Request::post("/tasks/batch")
                .header("content-type", "application/json")
                .body(Body::from(json!({ "tasks": tasks }).to_string()))
                .expect("request");
            let (status, _, body) = send(router, request).await;
            assert_eq!(status, StatusCode::BAD_REQUEST);
            assert!(
                body["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("1 to 1000"))
            );
        }
    }

    #[tokio::test]
    async fn malformed_queries_and_paths_are_json_400s_too() {
        for path in [
            "/tasks?limit=abc",
            "/tasks?state=dead&state=dead",
            "/tasks/%FF",
        ] {
            let (router, _) = app();
            let (status, headers, body) = send(router, get(path)).await;
            assert!(status.is_client_error(), "{path}: {status}");
            assert_eq!(headers[header::CONTENT_TYPE], "application/json", "{path}");
            assert!(
                body["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{path}"
            );
        }
    }

    #[tokio::test]
    async fn a_batch_must_be_an_object() {
        let (router, service) = app();
        let body = json!([[valid_body()]]);
        let request = Request::post("/tasks/batch")
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .expect("request");
        assert_eq!(send(router, request).await.0, StatusCode::BAD_REQUEST);
        assert!(service.store().scheduled().is_empty());
    }

    #[tokio::test]
    async fn metrics_need_the_token_like_every_route_but_health() {
        let (router, _) = app_with(Some(TOKEN));
        assert_eq!(
            send(router, get("/metrics")).await.0,
            StatusCode::UNAUTHORIZED
        );
        let (router, _) = app_with(Some(TOKEN));
        assert_eq!(
            send(router, get("/tasks?state=dead")).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
}
