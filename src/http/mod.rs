//! The HTTP API: `POST /tasks` and `GET /health`, with every error as JSON, an optional bearer
//! token, and a deadline on every request. [`serve`] runs it with connection limits.

mod error;
mod server;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tower_http::trace::TraceLayer;

pub use error::ApiError;
pub use server::{ConnectionLimits, MAX_HEADER_BYTES, serve};

use crate::domain::{NewTask, Publisher, TaskRequest, TaskService, TaskStore};

/// What the handlers share.
struct AppState<S, P> {
    service: Arc<TaskService<S, P>>,
    body_limit: usize,
}

impl<S, P> Clone for AppState<S, P> {
    fn clone(&self) -> Self {
        Self {
            service: self.service.clone(),
            body_limit: self.body_limit,
        }
    }
}

/// How the API treats requests.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// The largest body accepted, in bytes.
    pub body_limit: usize,
    /// The longest a request may take, body included.
    pub request_timeout: Duration,
    /// When set, every route but `/health` needs `Authorization: Bearer <token>`.
    pub api_token: Option<String>,
}

/// The API's routes over `service`.
pub fn router<S: TaskStore, P: Publisher>(
    service: Arc<TaskService<S, P>>,
    settings: &HttpSettings,
) -> Router {
    let token = settings.api_token.clone().map(Arc::<str>::from);
    let protected = Router::new()
        .route("/tasks", post(create_task::<S, P>))
        .route_layer(middleware::from_fn_with_state(token, authorize));
    let timeout = settings.request_timeout;
    Router::new()
        .merge(protected)
        .route("/health", get(health::<S, P>))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(settings.body_limit))
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            deadline(timeout, request, next)
        }))
        .layer(TraceLayer::new_for_http())
        .with_state(AppState {
            service,
            body_limit: settings.body_limit,
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

/// Answers 408 when a request, body upload included, takes longer than `timeout`.
async fn deadline(timeout: Duration, request: Request, next: Next) -> Response {
    tokio::time::timeout(timeout, next.run(request))
        .await
        .unwrap_or_else(|_| ApiError::RequestTimeout.into_response())
}

async fn create_task<S: TaskStore, P: Publisher>(
    State(state): State<AppState<S, P>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    if !is_json(&headers) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(state.body_limit),
        _ => ApiError::BadRequest(rejection.body_text()),
    })?;
    let request = parse_task_request(&body)?;
    let task = state.service.create(NewTask::try_from(request)?).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "task_id": task.id.to_string(),
            "message": "Task scheduled successfully",
        })),
    ))
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

/// Whether the request declares a JSON body (`application/json`, parameters allowed).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// Parses a `POST /tasks` body into a request, with errors that name the offending field.
pub fn parse_task_request(body: &[u8]) -> Result<TaskRequest, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let mut track = serde_path_to_error::Track::new();
    let request = TaskRequest::deserialize_object(serde_path_to_error::Deserializer::new(
        &mut deserializer,
        &mut track,
    ))
    .map_err(|inner| {
        let path = track.path().to_string();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::BadRequest(format!("malformed JSON: {inner}"))
        } else if path == "." {
            ApiError::BadRequest("request body must be a JSON object".into())
        } else {
            ApiError::BadRequest(format!("{path}: {inner}"))
        }
    })?;
    deserializer
        .end()
        .map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))?;
    Ok(request)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::Request;
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
            body_limit: LIMIT,
            request_timeout: Duration::from_secs(5),
            api_token: api_token.map(str::to_owned),
        };
        (router(service.clone(), &http), service)
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
            Request::get("/tasks").body(Body::empty()).expect("request"),
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
}
