//! The one error type of the HTTP API, and the one place that maps errors to status codes.
//! 4xx bodies say what is wrong; 5xx bodies stay generic and the cause goes to the log.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tracing::error;

use crate::domain::{CreateError, StoreError, ValidationError};

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or invalid; the message names the field.
    #[error("{0}")]
    BadRequest(String),
    /// The body is not declared as JSON.
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    /// The body is larger than the configured limit.
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// No route matches the path.
    #[error("not found")]
    NotFound,
    /// No task has this id.
    #[error("task not found")]
    TaskNotFound,
    /// The task is not in a state that allows this.
    #[error("{0}")]
    Conflict(String),
    /// The route exists but not for this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The route needs a bearer token and the request had none, or a wrong one.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// The request took longer than the configured timeout.
    #[error("request timed out")]
    RequestTimeout,
    /// The task store is unreachable while scheduling; the cause is logged, not returned.
    #[error("failed to schedule task")]
    ScheduleFailed(#[source] StoreError),
    /// The task store is unreachable; the cause is logged, not returned.
    #[error("task store unavailable")]
    StoreUnavailable(#[source] StoreError),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NotFound | Self::TaskNotFound => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::StoreUnavailable(_) | Self::ScheduleFailed(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        Self::BadRequest(e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::StoreUnavailable(e)
    }
}

impl From<CreateError> for ApiError {
    fn from(e: CreateError) -> Self {
        match e {
            CreateError::Rejected(e) => e.into(),
            CreateError::Unavailable(e) => Self::ScheduleFailed(e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::StoreUnavailable(cause) | Self::ScheduleFailed(cause) = &self {
            error!(error = %cause, "request failed: task store unavailable");
        }
        let mut response =
            (self.status(), Json(json!({ "error": self.to_string() }))).into_response();
        if let Self::Unauthorized = self {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
