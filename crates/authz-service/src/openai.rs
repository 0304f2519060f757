//! What an HTTP client of an OpenAI-compatible API sees of a decision: the status and error
//! body OpenAI's SDKs turn into the exception their users expect (`AuthenticationError`,
//! `PermissionDeniedError`, `RateLimitError`, …), `Retry-After`, and OpenAI's rate-limit
//! headers. Shared by every HTTP front door (Envoy's `Check`, forward-auth), so they answer
//! alike.
//!
//! | reason | status | `type` | `code` |
//! |---|---|---|---|
//! | malformed or unknown key | 401 | `invalid_request_error` | `invalid_api_key` |
//! | disabled key | 401 | `invalid_request_error` | `api_key_disabled` |
//! | expired key | 401 | `invalid_request_error` | `api_key_expired` |
//! | IP not allowed | 403 | `permission_error` | `ip_not_allowed` |
//! | capability not allowed | 403 | `permission_error` | `capability_not_allowed` |
//! | model not allowed or not in the catalog | 403 | `permission_error` | `model_not_allowed` |
//! | quota, daily or monthly budget, account balance | 429 | `insufficient_quota` | `insufficient_quota` |
//! | requests per minute | 429 (`Retry-After`) | `requests` | `rate_limit_exceeded` |
//! | tokens per minute | 429 (`Retry-After`) | `tokens` | `rate_limit_exceeded` |
//! | a call that cannot be read (no model, body not JSON, …) | 400 | `invalid_request_error` | `invalid_request` |
//! | a body the proxy cut short (Envoy's `allow_partial_message`), or one over forward-auth's limit | 413 | `invalid_request_error` | `request_too_large` |
//! | Tollgate cannot decide (a dependency is down and the setting fails closed) | 503 | `server_error` | `service_unavailable` |

use std::time::Duration;

use serde_json::json;

use crate::decision::{Allowed, Denied, Headroom, Reason};
use crate::llm_request::Unreadable;

/// An HTTP answer for the client.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorAnswer {
    pub status: u16,
    /// OpenAI's error object, `{"error": {"message", "type", "param", "code"}}`.
    pub body: String,
    /// Seconds, rounded up, when a rate limit will admit the call.
    pub retry_after: Option<u64>,
    /// OpenAI's `x-ratelimit-*` headers, when the key has rate limits.
    pub rate_limit_headers: Vec<(&'static str, String)>,
}

fn error_body(message: &str, kind: &str, code: &str, param: Option<&str>) -> String {
    json!({ "error": { "message": message, "type": kind, "param": param, "code": code } }).to_string()
}

/// Status, `type` and `code` of a denial.
pub fn classify(reason: Reason) -> (u16, &'static str, &'static str) {
    match reason {
        Reason::KeyMalformed | Reason::KeyNotFound => (401, "invalid_request_error", "invalid_api_key"),
        Reason::KeyDisabled => (401, "invalid_request_error", "api_key_disabled"),
        Reason::KeyExpired => (401, "invalid_request_error", "api_key_expired"),
        Reason::IpNotAllowed => (403, "permission_error", "ip_not_allowed"),
        Reason::CapabilityNotAllowed => (403, "permission_error", "capability_not_allowed"),
        Reason::ModelNotAllowed => (403, "permission_error", "model_not_allowed"),
        Reason::QuotaExhausted
        | Reason::AccountBalanceExhausted
        | Reason::DailyBudgetExhausted
        | Reason::MonthlyBudgetExhausted => (429, "insufficient_quota", "insufficient_quota"),
        Reason::RpmLimited => (429, "requests", "rate_limit_exceeded"),
        Reason::TpmLimited => (429, "tokens", "rate_limit_exceeded"),
    }
}

/// What a denied client gets.
pub fn denied(denied: &Denied) -> ErrorAnswer {
    let (status, kind, code) = classify(denied.reason);
    ErrorAnswer {
        status,
        body: error_body(denied.message, kind, code, None),
        retry_after: denied.retry_after.map(seconds_up),
        rate_limit_headers: denied.headroom.as_ref().map(rate_limit_headers).unwrap_or_default(),
    }
}

/// What a client whose call cannot be read gets.
pub fn unreadable(unreadable: &Unreadable) -> ErrorAnswer {
    ErrorAnswer {
        status: 400,
        body: error_body(&unreadable.message, "invalid_request_error", "invalid_request", Some(unreadable.param)),
        retry_after: None,
        rate_limit_headers: Vec::new(),
    }
}

/// What a client gets when the proxy sent only part of the body (Envoy's
/// `allow_partial_message`): what the call is cannot be read from it.
pub fn too_large() -> ErrorAnswer {
    ErrorAnswer {
        status: 413,
        body: error_body(
            "the request body is too large for the gateway to check",
            "invalid_request_error",
            "request_too_large",
            Some("body"),
        ),
        retry_after: None,
        rate_limit_headers: Vec::new(),
    }
}

/// What a client gets when Tollgate cannot decide (never an allow).
pub fn unavailable() -> ErrorAnswer {
    ErrorAnswer {
        status: 503,
        body: error_body("the API key service is unavailable; try again", "server_error", "service_unavailable", None),
        retry_after: Some(1),
        rate_limit_headers: Vec::new(),
    }
}

/// What a proxy that did not authenticate itself gets (its configuration is wrong).
pub fn proxy_not_authenticated() -> ErrorAnswer {
    ErrorAnswer {
        status: 401,
        body: error_body(
            "the gateway in front of this API is not configured to reach its key service",
            "invalid_request_error",
            "gateway_not_authenticated",
            None,
        ),
        retry_after: None,
        rate_limit_headers: Vec::new(),
    }
}

fn seconds_up(duration: Duration) -> u64 {
    duration.as_micros().div_ceil(1_000_000).max(1) as u64
}

/// OpenAI's rate-limit headers from what is left of a key's RPM and TPM; the reset is how long
/// until the limit is whole again (`1s`, `6m0s`, as OpenAI writes it).
pub fn rate_limit_headers(headroom: &Headroom) -> Vec<(&'static str, String)> {
    let mut headers = Vec::new();
    let limits = [
        (headroom.rpm, ["x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"]),
        (headroom.tpm, ["x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"]),
    ];
    for (status, [limit, remaining, reset]) in limits {
        let Some(status) = status else { continue };
        headers.push((limit, status.limit.to_string()));
        headers.push((remaining, status.remaining.max(0).to_string()));
        headers.push((reset, reset_text(status.reset_after_ms)));
    }
    headers
}

/// `850ms`, `12s`, `1m30s`. The counters report times rounded up to the millisecond: a
/// millisecond of slack keeps that (and float noise) from adding a second.
fn reset_text(ms: f64) -> String {
    let ms = ms.max(0.0).ceil() as u64;
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let seconds = (ms - 1).div_ceil(1000);
    if seconds < 60 { format!("{seconds}s") } else { format!("{}m{}s", seconds / 60, seconds % 60) }
}

/// The headers the upstream gets for an allowed call: who it is charged to, by resource name.
pub fn identity_headers(allowed: &Allowed, request_id: &str) -> [(&'static str, String); 4] {
    [
        ("x-tollgate-key", allowed.identity.key.clone()),
        ("x-tollgate-application", allowed.identity.application.clone()),
        ("x-tollgate-account", allowed.identity.account.clone()),
        ("x-tollgate-request-id", request_id.to_owned()),
    ]
}

/// The headers that carry a client's key, which the upstream never needs to see.
pub const KEY_HEADERS: [&str; 4] = ["authorization", "x-api-key", "api-key", "x-goog-api-key"];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::RateStatus;

    #[test]
    fn every_reason_has_the_status_openai_sdks_expect() {
        let expected = [
            (Reason::KeyMalformed, 401),
            (Reason::KeyNotFound, 401),
            (Reason::KeyDisabled, 401),
            (Reason::KeyExpired, 401),
            (Reason::IpNotAllowed, 403),
            (Reason::CapabilityNotAllowed, 403),
            (Reason::ModelNotAllowed, 403),
            (Reason::QuotaExhausted, 429),
            (Reason::AccountBalanceExhausted, 429),
            (Reason::DailyBudgetExhausted, 429),
            (Reason::MonthlyBudgetExhausted, 429),
            (Reason::RpmLimited, 429),
            (Reason::TpmLimited, 429),
        ];
        for (reason, status) in expected {
            assert_eq!(classify(reason).0, status, "{reason:?}");
        }
        assert_eq!(classify(Reason::QuotaExhausted).2, "insufficient_quota");
        assert_eq!(classify(Reason::RpmLimited).2, "rate_limit_exceeded");
    }

    #[test]
    fn a_rate_limited_denial_says_when_to_retry_and_what_is_left() {
        let headroom = Headroom {
            rpm: Some(RateStatus {
                limit: 3,
                remaining: 0,
                reset_at_ms: 1_800_000_020_000.0,
                reset_after_ms: 20_000.0,
            }),
            ..Default::default()
        };
        let denial = Denied {
            reason: Reason::RpmLimited,
            message: "the key's requests per minute are used up",
            identity: None,
            headroom: Some(headroom),
            retry_after: Some(Duration::from_millis(19_200)),
        };
        let answer = denied(&denial);
        assert_eq!((answer.status, answer.retry_after), (429, Some(20)));
        let body: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
        assert_eq!(body["error"]["code"], "rate_limit_exceeded");
        assert_eq!(body["error"]["type"], "requests");
        assert_eq!(body["error"]["message"], "the key's requests per minute are used up");
        let headers: std::collections::HashMap<_, _> = answer.rate_limit_headers.into_iter().collect();
        assert_eq!(headers["x-ratelimit-limit-requests"], "3");
        assert_eq!(headers["x-ratelimit-remaining-requests"], "0");
        assert!(["19s", "20s"].contains(&headers["x-ratelimit-reset-requests"].as_str()));
        assert!(!headers.contains_key("x-ratelimit-limit-tokens"));
    }

    #[test]
    fn resets_read_as_openai_writes_them() {
        assert_eq!(reset_text(850.2), "851ms");
        assert_eq!(reset_text(12_000.0), "12s");
        assert_eq!(reset_text(12_000.6), "12s", "a rounded-up millisecond is not another second");
        assert_eq!(reset_text(12_001.2), "13s");
        assert_eq!(reset_text(90_000.0), "1m30s");
    }
}
