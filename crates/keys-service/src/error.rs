//! The keys service's errors and their one mapping to gRPC statuses.
//!
//! Every status carries a `google.rpc.ErrorInfo` with a stable reason; invalid arguments also
//! carry a `google.rpc.BadRequest` naming each offending field, and the message names them
//! too, for clients that show only the message. Internal causes are logged, never sent.

use tollgate_core::Violations;
use tollgate_store::StoreError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Domain of every `ErrorInfo` this service sends.
pub const ERROR_DOMAIN: &str = "keys.tollgate";

/// What went wrong in a keys-service call.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("invalid argument: {0}")]
    InvalidArgument(Violations),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0} already exists")]
    AlreadyExists(&'static str),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("the resource changed concurrently; retry")]
    Aborted,
    #[error("storage unavailable")]
    Unavailable(#[source] StoreError),
    #[error("internal error")]
    Internal(String),
}

/// Result of a keys-service call.
pub type KeysResult<T> = Result<T, KeysError>;

impl KeysError {
    /// One invalid field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        let mut violations = Violations::new();
        violations.add(field, description);
        KeysError::InvalidArgument(violations)
    }

    /// Maps a store error for a resource of the given kind.
    pub fn from_store(kind: &'static str) -> impl Fn(StoreError) -> KeysError {
        move |error| match error {
            StoreError::NotFound => KeysError::NotFound(kind),
            StoreError::AlreadyExists => KeysError::AlreadyExists(kind),
            StoreError::Conflict => KeysError::Aborted,
            StoreError::FailedPrecondition(message) => KeysError::FailedPrecondition(message),
            StoreError::Unavailable(_) => KeysError::Unavailable(error),
            StoreError::Internal(message) => KeysError::Internal(message),
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            KeysError::InvalidArgument(_) => "INVALID_FIELD",
            KeysError::NotFound(_) => "RESOURCE_NOT_FOUND",
            KeysError::AlreadyExists(_) => "RESOURCE_ALREADY_EXISTS",
            KeysError::FailedPrecondition(_) => "FAILED_PRECONDITION",
            KeysError::Aborted => "CONCURRENT_MODIFICATION",
            KeysError::Unavailable(_) => "STORAGE_UNAVAILABLE",
            KeysError::Internal(_) => "INTERNAL",
        }
    }
}

impl From<Violations> for KeysError {
    fn from(violations: Violations) -> Self {
        KeysError::InvalidArgument(violations)
    }
}

impl From<KeysError> for Status {
    fn from(error: KeysError) -> Self {
        let code = match &error {
            KeysError::InvalidArgument(_) => Code::InvalidArgument,
            KeysError::NotFound(_) => Code::NotFound,
            KeysError::AlreadyExists(_) => Code::AlreadyExists,
            KeysError::FailedPrecondition(_) => Code::FailedPrecondition,
            KeysError::Aborted => Code::Aborted,
            KeysError::Unavailable(cause) => {
                tracing::warn!(error = %cause, "storage unavailable");
                Code::Unavailable
            }
            KeysError::Internal(cause) => {
                tracing::error!(error = %cause, "internal error");
                Code::Internal
            }
        };
        let mut details = ErrorDetails::new();
        details.set_error_info(error.reason(), ERROR_DOMAIN, std::collections::HashMap::new());
        if let KeysError::InvalidArgument(violations) = &error {
            for violation in violations.items() {
                details.add_bad_request_violation(violation.field.clone(), violation.description.clone());
            }
        }
        Status::with_error_details(code, error.to_string(), details)
    }
}
