//! The `/tasks` routes: submit one or a batch, inspect, list, cancel, and retry dead tasks.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use serde_json::json;
use serde_json::value::RawValue;
use tracing::Instrument;

use super::{ApiError, AppState};
use crate::domain::{
    Backoff, Cancelled, Destination, Millis, NewTask, Placement, Publisher, Retried, StoredTask,
    Submitted, TaskId, TaskRequest, TaskState, TaskStore, ValidationError,
};

/// The most tasks one `POST /tasks/batch` may carry.
pub const MAX_BATCH: usize = 1000;

/// The most tasks one page of `GET /tasks` or one `POST /tasks/dead/retry` covers.
pub const MAX_PAGE: usize = 1000;

/// `POST /tasks`: 201 for a new task, 200 with the first task's id for an idempotent replay.
pub(super) async fn create<S: TaskStore, P: Publisher>(
    State(state): State<AppState<S, P>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let traceparent = header_text(&headers, "traceparent");
    let span = tracing::info_span!("task.submit", task_id = tracing::field::Empty);
    crate::telemetry::continue_trace(&span, traceparent.as_deref());
    async {
        let body = json_body(&headers, body, state.body_limit)?;
        let idempotency_key = header_text(&headers, "idempotency-key");
        let new = NewTask::try_from(parse_task_request(&body)?)?
            .with_idempotency_key(idempotency_key)?
            .with_traceparent(traceparent.as_deref());
        let submitted = state.service.create(new).await?;
        tracing::Span::current().record("task_id", submitted.task_id().to_string());
        Ok(submission_response(&submitted))
    }
    .instrument(span)
    .await
}

fn submission_response(submitted: &Submitted) -> (StatusCode, Json<serde_json::Value>) {
    let (status, message) = match submitted {
        Submitted::Scheduled(_) => (StatusCode::CREATED, "Task scheduled successfully"),
        Submitted::Existing(_) => (StatusCode::OK, "Task already submitted with this id"),
    };
    (
        status,
        Json(json!({ "task_id": submitted.task_id().to_string(), "message": message })),
    )
}

/// The body of `POST /tasks/batch`.
#[derive(Deserialize)]
struct BatchRequest<'a> {
    #[serde(borrow)]
    tasks: Vec<&'a RawValue>,
}

/// `POST /tasks/batch`: one result per task, in order; a bad task does not reject the others.
pub(super) async fn create_batch<S: TaskStore, P: Publisher>(
    State(state): State<AppState<S, P>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let body = json_body(&headers, body, state.body_limit)?;
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::BadRequest(
            "body must be {\"tasks\": [...]}, a JSON object".into(),
        ));
    }
    let batch: BatchRequest<'_> = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("body must be {{\"tasks\": [...]}}: {e}")))?;
    if batch.tasks.is_empty() || batch.tasks.len() > MAX_BATCH {
        return Err(ApiError::BadRequest(format!(
            "tasks must hold 1 to {MAX_BATCH} tasks"
        )));
    }
    let traceparent = header_text(&headers, "traceparent");
    let submissions = batch
        .tasks
        .iter()
        .map(|raw| {
            let request =
                parse_task_request(raw.get().as_bytes()).map_err(|e| ValidationError {
                    field: "task".into(),
                    reason: e.to_string(),
                })?;
            Ok(NewTask::try_from(request)?.with_traceparent(traceparent.as_deref()))
        })
        .collect();
    let results: Vec<serde_json::Value> = state
        .service
        .create_many(submissions)
        .await
        .map_err(ApiError::ScheduleFailed)?
        .into_iter()
        .map(|result| match result {
            Ok(submitted) => {
                let (status, Json(body)) = submission_response(&submitted);
                json!({ "status": status.as_u16(), "task_id": body["task_id"] })
            }
            Err(rejected) => json!({ "status": 400, "error": rejected.to_string() }),
        })
        .collect();
    Ok(Json(json!({ "results": results })))
}

/// `?include=payload` on `GET /tasks/{id}` and `GET /tasks`.
#[derive(Deserialize, Default)]
pub(super) struct Include {
    include: Option<String>,
}

impl Include {
    fn payload(&self) -> bool {
        self.include
            .as_deref()
            .is_some_and(|list| list.split(',').any(|part| part.trim() == "payload"))
    }
}

/// `GET /tasks/{id}`.
pub(super) async fn find<S: TaskStore, P: Publisher>(
    State(state): State<AppState<S, P>>,
    Path(id): Path<String>,
    Query(include): Query<Include>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id)?;
    let stored = state
        .service
        .find(id)
        .await?
        .ok_or(ApiError::TaskNotFound)?;
    Ok(Json(TaskView::new(&stored, include.payload())).into_response())
}

/// The query of `GET /tasks`.
#[derive(Deserialize)]
pub(super) struct ListQuery {
    state: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
    order: Option<String>,
    include: Option<String>,
}

/// `GET /tasks?state=scheduled|in_flight|dead&limit=&cursor=&order=oldest|newest`: a page of
/// tasks in due order (dead tasks in order of death), with the cursor of the next page.
pub(super) async fn list<S: TaskStore, P: Publisher>(
    State(state): State<AppState<S, P>>,
    Query(query): Query<ListQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let placement = match query.state.as_deref().unwrap_or("scheduled") {
        "scheduled" => Placement::Scheduled,
        "in_flight" => Placement::InFlight,
        "dead" => Placement::Dead,
        _ => {
            return Err(ApiError::BadRequest(
                "state must be scheduled, in_flight or dead".into(),
            ));
        }
    };
    let limit = query.limit.unwrap_or(50);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be from 1 to {MAX_PAGE}"
        )));
    }
    let offset: u64 = match query.cursor.as_deref() {
        None | Some("") => 0,
        Some(cursor) => cursor
            .parse()
            .map_err(|_| ApiError::BadRequest("cursor is not one this API gave out".into()))?,
    };
    let newest_first = match query.order.as_deref() {
        None | Some("oldest") => false,
        Some("newest") => true,
        Some(_) => {
            return Err(ApiError::BadRequest(
                "order must be oldest or newest".into(),
            ));
        }
    };
    let (tasks, total) = state
        .service
        .list(placement, offset, limit, newest_first)
        .await?;
    let with_payload = Include {
        include: query.include,
    }
    .payload();
    let next = offset + tasks.len() as u64;
    Ok(Json(json!({
        "tasks": tasks.iter().map(|t| TaskView::new(t, with_payload)).collect::<Vec<_>>(),
        "total": total,
        "next_cursor": (next < total && !tasks.is_empty()).then(|| next.to_string()),
    })))
}

/// `DELETE /tasks/{id}`: cancels a task, unless it is being published right now (409).
pub(super) async fn cancel<S: TaskStore, P: Publisher>(
    State(state): State<AppState<S, P>>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id)?;
    match state.service.cancel(id).await? {
        Cancelled::Removed => Ok(Json(
            json!({ "task_id": id.to_string(), "message": "Task cancelled" }),
        )),
        Cancelled::NotFound => Err(ApiError::TaskNotFound),
        Cancelled::InFlight => Err(ApiError::Conflict(
            "task is being published; try again when the attempt is over".into(),
        )),
    }
}

/// `POST /tasks/{id}/retry`: a task whose budget ran out goes back to the schedule with a fresh
/// one, due now.
pub(super) async fn retry<S: TaskStore, P: Publisher>(
    State(state): State<AppState<S, P>>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id)?;
    match state.service.retry(id).await? {
        Retried::Revived => Ok(Json(json!({
            "task_id": id.to_string(),
            "message": "Task scheduled again with a fresh retry budget",
        }))),
        Retried::NotFound => Err(ApiError::TaskNotFound),
        Retried::NotExhausted => Err(ApiError::Conflict(
            "only a task whose retries ran out (dead, or dead-lettering) can be retried".into(),
        )),
    }
}

/// The query of `POST /tasks/dead/retry`.
#[derive(Deserialize)]
pub(super) struct RetryDeadQuery {
    limit: Option<usize>,
}

/// `POST /tasks/dead/retry?limit=`: up to `limit` dead tasks, oldest first, back to the schedule
/// with a fresh budget.
pub(super) async fn retry_dead<S: TaskStore, P: Publisher>(
    State(state): State<AppState<S, P>>,
    Query(query): Query<RetryDeadQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be from 1 to {MAX_PAGE}"
        )));
    }
    let retried = state.service.retry_dead(limit).await?;
    Ok(Json(json!({ "retried": retried })))
}

/// A task as the API shows it.
#[derive(Serialize)]
struct TaskView<'a> {
    task_id: String,
    state: &'static str,
    attempts: u32,
    max_retries: u32,
    dead_letter_attempts: u32,
    retry_delay_seconds: u32,
    backoff: &'a Backoff,
    next_attempt_at: Option<String>,
    died_at: Option<String>,
    created_at: String,
    last_error: Option<&'a str>,
    destination: &'a Destination,
    dead_destination: Option<&'a Destination>,
    key: Option<&'a str>,
    headers: BTreeMap<&'a str, &'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a str>,
}

impl<'a> TaskView<'a> {
    fn new(stored: &'a StoredTask, with_payload: bool) -> Self {
        let task = &stored.task;
        let state = match (stored.placement, task.state) {
            (Placement::InFlight, _) => "in_flight",
            (Placement::Dead, _) | (_, TaskState::Dead) => "dead",
            (Placement::Scheduled, TaskState::DeadLettering) => "dead_lettering",
            (Placement::Scheduled, TaskState::Scheduled) => "scheduled",
        };
        let dead = state == "dead";
        Self {
            task_id: task.id.to_string(),
            state,
            attempts: task.attempts,
            max_retries: task.max_retries,
            dead_letter_attempts: task.dead_letter_attempts,
            retry_delay_seconds: task.retry_delay_seconds,
            backoff: &task.backoff,
            next_attempt_at: (!dead).then(|| rfc3339(task.due_at)),
            died_at: dead.then(|| rfc3339(task.due_at)),
            created_at: rfc3339(task.created_at),
            last_error: task.last_error.as_deref(),
            destination: &task.destination,
            dead_destination: task.dead_destination.as_ref(),
            key: task.key.as_deref(),
            headers: task
                .headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_str()))
                .collect(),
            payload: with_payload.then_some(task.payload.as_str()),
        }
    }
}

fn rfc3339(at: Millis) -> String {
    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(at.max(0).unsigned_abs());
    humantime::format_rfc3339_millis(at).to_string()
}

/// An id that is not a ULID names no task.
fn parse_id(id: &str) -> Result<TaskId, ApiError> {
    id.parse().map_err(|_| ApiError::TaskNotFound)
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

/// The body, once it is known to be declared as JSON and within the limit.
fn json_body(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"));
    if !declared_json {
        return Err(ApiError::UnsupportedMediaType);
    }
    body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(limit),
        _ => ApiError::BadRequest(rejection.body_text()),
    })
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
