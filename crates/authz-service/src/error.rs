//! The authz service's errors. A denial is not an error: these are malformed requests and
//! outages only.

use std::collections::HashMap;

use tollgate_core::Violations;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use tollgate_core::throttle::{Throttle, WARN_EVERY};

/// Domain of every `ErrorInfo` this service sends.
pub const ERROR_DOMAIN: &str = "authz.tollgate";

/// Why Authorize could not decide.
#[derive(Debug, thiserror::Error)]
pub enum AuthzError {
    #[error("invalid argument: {0}")]
    InvalidArgument(Violations),
    #[error("{0}")]
    Unavailable(String),
}

impl AuthzError {
    /// Logs an outage's cause (at most once per few seconds, with a count): answers only say
    /// that authorization is unavailable.
    pub fn note(&self) {
        if let AuthzError::Unavailable(cause) = self {
            static UNAVAILABLE: Throttle = Throttle::new();
            if let Some(held_back) = UNAVAILABLE.now(WARN_EVERY) {
                tracing::warn!(%cause, held_back, "authorize unavailable");
            }
        }
    }
}

impl From<AuthzError> for Status {
    fn from(error: AuthzError) -> Self {
        let mut details = ErrorDetails::new();
        let code = match &error {
            AuthzError::InvalidArgument(violations) => {
                details.set_error_info("INVALID_FIELD", ERROR_DOMAIN, HashMap::new());
                for v in violations.items() {
                    details.add_bad_request_violation(v.field.clone(), v.description.clone());
                }
                Code::InvalidArgument
            }
            AuthzError::Unavailable(_) => {
                error.note();
                details.set_error_info("DEPENDENCY_UNAVAILABLE", ERROR_DOMAIN, HashMap::new());
                Code::Unavailable
            }
        };
        // The cause (a Redis or keys-service error) is logged, not sent.
        let message = match &error {
            AuthzError::InvalidArgument(_) => error.to_string(),
            AuthzError::Unavailable(_) => "authorization is unavailable for a moment; retry".to_owned(),
        };
        Status::with_error_details(code, message, details)
    }
}
