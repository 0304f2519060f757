//! The metering service's errors, their one mapping to gRPC statuses and their one mapping to
//! HTTP answers.

use tollgate_core::Violations;
use tollgate_store::StoreError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Domain of every `ErrorInfo` this service sends.
pub const ERROR_DOMAIN: &str = "metering.tollgate";

/// What went wrong in a metering call.
#[derive(Debug, thiserror::Error)]
pub enum MeteringError {
    #[error("invalid argument: {0}")]
    InvalidArgument(Violations),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error("{0}")]
    Unavailable(String),
    /// A caller asked more often than it may; it may ask again after the duration.
    #[error("{0}")]
    ResourceExhausted(&'static str, std::time::Duration),
    #[error("internal error")]
    Internal(String),
}

/// Result of a metering call.
pub type MeteringResult<T> = Result<T, MeteringError>;

impl MeteringError {
    /// One invalid field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        let mut violations = Violations::new();
        violations.add(field, description);
        MeteringError::InvalidArgument(violations)
    }

    fn reason(&self) -> &'static str {
        match self {
            MeteringError::InvalidArgument(_) => "INVALID_FIELD",
            MeteringError::NotFound(_) => "RESOURCE_NOT_FOUND",
            MeteringError::Unauthenticated(_) => "UNAUTHENTICATED",
            MeteringError::Unavailable(_) => "BACKEND_UNAVAILABLE",
            MeteringError::ResourceExhausted(..) => "RATE_LIMITED",
            MeteringError::Internal(_) => "INTERNAL",
        }
    }
}

impl From<Violations> for MeteringError {
    fn from(violations: Violations) -> Self {
        MeteringError::InvalidArgument(violations)
    }
}

impl From<StoreError> for MeteringError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound => MeteringError::NotFound("resource"),
            StoreError::Unavailable(cause) => MeteringError::Unavailable(format!("database unavailable: {cause}")),
            other => MeteringError::Internal(other.to_string()),
        }
    }
}

impl From<tollgate_ports::StateError> for MeteringError {
    fn from(error: tollgate_ports::StateError) -> Self {
        MeteringError::Unavailable(error.to_string())
    }
}

impl From<crate::directory::DirectoryError> for MeteringError {
    fn from(error: crate::directory::DirectoryError) -> Self {
        MeteringError::Unavailable(error.to_string())
    }
}

impl From<MeteringError> for Status {
    fn from(error: MeteringError) -> Self {
        let (code, message) = match &error {
            MeteringError::InvalidArgument(_) => (Code::InvalidArgument, error.to_string()),
            MeteringError::NotFound(_) => (Code::NotFound, error.to_string()),
            MeteringError::Unauthenticated(_) => (Code::Unauthenticated, error.to_string()),
            MeteringError::Unavailable(cause) => {
                tracing::warn!(error = %cause, "backend unavailable");
                (Code::Unavailable, "a backend is unavailable; retry".to_owned())
            }
            MeteringError::ResourceExhausted(..) => (Code::ResourceExhausted, error.to_string()),
            MeteringError::Internal(cause) => {
                tracing::error!(error = %cause, "internal error");
                (Code::Internal, error.to_string())
            }
        };
        let mut details = ErrorDetails::new();
        details.set_error_info(error.reason(), ERROR_DOMAIN, std::collections::HashMap::new());
        if let MeteringError::ResourceExhausted(_, retry_after) = &error {
            details.set_retry_info(Some(*retry_after));
        }
        if let MeteringError::InvalidArgument(violations) = &error {
            for violation in violations.items() {
                details.add_bad_request_violation(violation.field.clone(), violation.description.clone());
            }
        }
        Status::with_error_details(code, message, details)
    }
}

/// A metering error as an HTTP answer, in the terms of OpenAI's error object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    pub status: u16,
    pub message: String,
    /// OpenAI's `type`.
    pub kind: &'static str,
    /// OpenAI's `code`.
    pub code: &'static str,
    /// The first field at fault.
    pub param: Option<String>,
    /// Seconds, rounded up, before asking again is worth it.
    pub retry_after: Option<u64>,
}

impl From<MeteringError> for HttpError {
    fn from(error: MeteringError) -> Self {
        let message = error.to_string();
        let (status, kind, code, message) = match &error {
            MeteringError::InvalidArgument(_) => (400, "invalid_request_error", "invalid_argument", message),
            MeteringError::NotFound(_) => (404, "invalid_request_error", "not_found", message),
            MeteringError::Unauthenticated(_) => (401, "invalid_request_error", "invalid_api_key", message),
            MeteringError::Unavailable(cause) => {
                tracing::warn!(error = %cause, "backend unavailable");
                (503, "server_error", "service_unavailable", "a backend is unavailable; retry".to_owned())
            }
            MeteringError::ResourceExhausted(..) => (429, "requests", "rate_limit_exceeded", message),
            MeteringError::Internal(cause) => {
                tracing::error!(error = %cause, "internal error");
                (500, "server_error", "internal_error", message)
            }
        };
        let param = match &error {
            MeteringError::InvalidArgument(violations) => violations.items().first().map(|v| v.field.clone()),
            _ => None,
        };
        let retry_after = match &error {
            MeteringError::ResourceExhausted(_, wait) => Some(wait.as_secs() + u64::from(wait.subsec_nanos() > 0)),
            _ => None,
        };
        HttpError { status, message, kind, code, param, retry_after }
    }
}

impl HttpError {
    /// The answer in OpenAI's error shape, `{"error": {"message", "type", "param", "code"}}`,
    /// with `Retry-After` when there is one.
    pub fn into_openai_response(self) -> axum::response::Response {
        let body = serde_json::json!({
            "error": { "message": self.message, "type": self.kind, "param": self.param, "code": self.code }
        });
        self.respond(body)
    }

    /// This error's status and `Retry-After` with a JSON `body` of some other shape.
    pub fn respond(&self, body: serde_json::Value) -> axum::response::Response {
        use axum::response::IntoResponse;
        let status = http::StatusCode::from_u16(self.status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        let mut response =
            (status, [(http::header::CONTENT_TYPE, "application/json")], body.to_string()).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from(seconds));
        }
        response
    }
}
