//! The key holder's HTTP API, on the HTTP listener: what `KeyHolderService/GetKeyBalance`
//! answers, with nothing but the key, in the shapes the clients people already use read.
//!
//! | path | shape |
//! |---|---|
//! | `GET /v1/key?days=N` | Tollgate's own: status, expiry, quota and budgets used and left, the account's funds for a key without a quota, usage per day and model |
//! | `GET /api/usage/token` | new-api's `token_usage` |
//! | `GET /v1/dashboard/billing/subscription` (also without `/v1`) | one-api's / new-api's subscription (NextChat, LobeChat, CC Switch) |
//! | `GET /v1/dashboard/billing/usage` (also without `/v1`) | one-api's / new-api's usage, in cents of a dollar |
//!
//! - The key comes in `Authorization: Bearer …` (new-api's clients may leave out `sk-`) or
//!   `x-api-key`. A missing, malformed, unknown or deleted key is 401; a disabled, expired or
//!   exhausted key still reads its balance, with its status.
//! - Every call counts against the key's per-minute limit of `GetKeyBalance` (429 with
//!   `Retry-After` beyond it): each reads the ledger.
//! - CORS lets any origin call these from a browser (the key is the credential; no cookies),
//!   preflight included.
//! - What a key "has" in the one-api/new-api shapes: its quota, or, for a key without one, what
//!   it used plus what its account can still spend; USD at `credits_per_usd`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, HeaderName, Method, StatusCode, Uri, header};
use serde::Serialize;
use serde_json::json;
use tollgate_core::{Violations, key_format};
use tollgate_proto::time::timestamp;
use tower_http::cors::{Any, CorsLayer};

use crate::error::{HttpError, MeteringError};
use crate::queries::{KeyBalance, KeyStatus, Queries};
use crate::validate;

/// What the one-api/new-api shapes say of a key whose spending has no bound, as new-api does.
const UNBOUNDED_USD: f64 = 100_000_000.0;

/// The key holder's HTTP endpoints.
pub struct KeyHolderHttp {
    queries: Arc<Queries>,
    credits_per_usd: i64,
}

impl KeyHolderHttp {
    pub fn new(queries: Arc<Queries>, credits_per_usd: i64) -> Self {
        Self { queries, credits_per_usd: credits_per_usd.max(1) }
    }

    /// The routes, with CORS.
    pub fn router(self: Arc<Self>) -> axum::Router {
        let cors = CorsLayer::new()
            .allow_origin(Any)
            .allow_methods([Method::GET])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, HeaderName::from_static("x-api-key")])
            .expose_headers([header::RETRY_AFTER])
            .max_age(Duration::from_secs(24 * 3600));
        axum::Router::new()
            .route("/v1/key", get(key))
            .route("/api/usage/token", get(token_usage))
            .route("/v1/dashboard/billing/subscription", get(subscription))
            .route("/dashboard/billing/subscription", get(subscription))
            .route("/v1/dashboard/billing/usage", get(usage))
            .route("/dashboard/billing/usage", get(usage))
            .layer(cors)
            .with_state(self)
    }

    /// The presenting key's balance, with `days` days of usage.
    async fn balance(&self, headers: &HeaderMap, days: i64) -> Result<KeyBalance, HttpError> {
        let secret = presented_key(headers)
            .ok_or(MeteringError::Unauthenticated("missing `Authorization: Bearer sk-…` header"))?;
        Ok(self.queries.key_balance(&secret, days).await?)
    }

    fn usd(&self, credits: i64) -> f64 {
        credits as f64 / self.credits_per_usd as f64
    }
}

/// The key in `Authorization: Bearer` (with or without `sk-`, as new-api takes it) or
/// `x-api-key`.
fn presented_key(headers: &HeaderMap) -> Option<String> {
    let header = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let bearer = header(&header::AUTHORIZATION).and_then(tollgate_auth::bearer_token);
    let key = bearer.or_else(|| header(&HeaderName::from_static("x-api-key"))).filter(|key| !key.is_empty())?;
    Some(if key.starts_with(key_format::PREFIX) { key.to_owned() } else { format!("{}{key}", key_format::PREFIX) })
}

/// `days` from the query: 0–90, 30 when absent.
fn days(uri: &Uri) -> Result<i64, HttpError> {
    let value = uri.query().unwrap_or("").split('&').find_map(|pair| pair.strip_prefix("days="));
    let days = match value {
        None => 0,
        Some(value) => value.parse::<i32>().map_err(|_| {
            let mut v = Violations::new();
            v.add("days", "must be a whole number of days, 0 to 90");
            MeteringError::from(v)
        })?,
    };
    Ok(validate::balance_days(days).map_err(MeteringError::from)?)
}

/// A JSON answer.
fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    let body = serde_json::to_string(body).unwrap_or_else(|_| "{}".to_owned());
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// An error in new-api's shape, `{"success": false, "message"}`.
fn new_api_error(error: HttpError) -> Response {
    let body = json!({ "success": false, "message": error.message });
    error.respond(body)
}

fn status_name(status: KeyStatus) -> &'static str {
    match status {
        KeyStatus::Enabled => "enabled",
        KeyStatus::Disabled => "disabled",
        KeyStatus::Expired => "expired",
        KeyStatus::Exhausted => "exhausted",
    }
}

/// A limit in credits, what was used of it and what is left (`None`: no limit).
#[derive(Serialize)]
struct LimitView {
    limit: Option<i64>,
    used: i64,
    remaining: Option<i64>,
}

impl LimitView {
    fn new(limit: Option<i64>, used: i64) -> Self {
        Self { limit, used, remaining: limit.map(|limit| (limit - used).max(0)) }
    }
}

#[derive(Serialize)]
struct AccountView {
    balance: i64,
    spendable: Option<i64>,
}

#[derive(Serialize)]
struct DayView {
    start_time: String,
    model: String,
    requests: i64,
    input_tokens: i64,
    output_tokens: i64,
    cached_input_tokens: i64,
    credits: i64,
}

/// `GET /v1/key`.
#[derive(Serialize)]
struct KeyView {
    object: &'static str,
    key: String,
    status: &'static str,
    expire_time: Option<String>,
    quota: LimitView,
    daily_budget: LimitView,
    monthly_budget: LimitView,
    /// For a key without a quota: its account's money, which bounds it instead.
    account: Option<AccountView>,
    credits_per_usd: i64,
    daily: Vec<DayView>,
}

async fn key(State(api): State<Arc<KeyHolderHttp>>, uri: Uri, headers: HeaderMap) -> Response {
    let balance = match days(&uri) {
        Ok(days) => api.balance(&headers, days).await,
        Err(error) => Err(error),
    };
    let b = match balance {
        Ok(balance) => balance,
        Err(error) => return error.into_openai_response(),
    };
    let view = KeyView {
        object: "key",
        key: tollgate_core::names::key(&b.account_id, &b.key_id),
        status: status_name(b.status),
        expire_time: b.expire_time.map(|t| timestamp(t).to_string()),
        quota: LimitView::new(b.quota, b.spend.used),
        daily_budget: LimitView::new(b.daily_budget, b.spend.day),
        monthly_budget: LimitView::new(b.monthly_budget, b.spend.month),
        account: b.account.map(|funds| AccountView { balance: funds.balance, spendable: funds.spendable }),
        credits_per_usd: api.credits_per_usd,
        daily: b
            .daily
            .into_iter()
            .map(|bucket| DayView {
                start_time: timestamp(bucket.start).to_string(),
                model: bucket.model,
                requests: bucket.totals.requests,
                input_tokens: bucket.totals.input_tokens,
                output_tokens: bucket.totals.output_tokens,
                cached_input_tokens: bucket.totals.cached_input_tokens,
                credits: bucket.totals.credits,
            })
            .collect(),
    };
    json_response(StatusCode::OK, &view)
}

/// What one-api/new-api say a key has: granted (`None`: without bound) and used, in credits.
/// A key without a quota has what it used plus what its account can still spend.
fn allowance(b: &KeyBalance) -> (Option<i64>, i64) {
    let used = b.spend.used;
    match (b.quota, b.account) {
        (Some(quota), _) => (Some(quota), used),
        (None, Some(funds)) => (funds.spendable.map(|spendable| used.saturating_add(spendable)), used),
        (None, None) => (None, used),
    }
}

/// `GET /api/usage/token`, new-api's shape.
async fn token_usage(State(api): State<Arc<KeyHolderHttp>>, headers: HeaderMap) -> Response {
    let b = match api.balance(&headers, 0).await {
        Ok(balance) => balance,
        Err(error) => return new_api_error(error),
    };
    let (granted, used) = allowance(&b);
    let available = granted.map_or(0, |granted| (granted - used).max(0));
    let model_limits: serde_json::Map<String, serde_json::Value> =
        b.allowed_models.iter().map(|model| (model.clone(), serde_json::Value::Bool(true))).collect();
    let data = json!({
        "object": "token_usage",
        "name": b.key_id,
        "total_granted": used + available,
        "total_used": used,
        "total_available": available,
        "unlimited_quota": b.quota.is_none(),
        "model_limits": model_limits,
        "model_limits_enabled": !b.any_model,
        "expires_at": b.expire_time.map_or(0, |t| t.div_euclid(1_000_000)),
    });
    json_response(StatusCode::OK, &json!({ "code": true, "message": "ok", "data": data }))
}

/// `GET /v1/dashboard/billing/subscription`, one-api's shape.
async fn subscription(State(api): State<Arc<KeyHolderHttp>>, headers: HeaderMap) -> Response {
    let b = match api.balance(&headers, 0).await {
        Ok(balance) => balance,
        Err(error) => return error.into_openai_response(),
    };
    let hard_limit_usd = allowance(&b).0.map_or(UNBOUNDED_USD, |granted| api.usd(granted));
    let body = json!({
        "object": "billing_subscription",
        "has_payment_method": true,
        "soft_limit_usd": hard_limit_usd,
        "hard_limit_usd": hard_limit_usd,
        "system_hard_limit_usd": hard_limit_usd,
        "access_until": b.expire_time.map_or(0, |t| t.div_euclid(1_000_000)),
    });
    json_response(StatusCode::OK, &body)
}

/// `GET /v1/dashboard/billing/usage`, one-api's shape: `total_usage` in cents of a dollar, for
/// the key's whole life (one-api, too, ignores `start_date` and `end_date`).
async fn usage(State(api): State<Arc<KeyHolderHttp>>, headers: HeaderMap) -> Response {
    let b = match api.balance(&headers, 0).await {
        Ok(balance) => balance,
        Err(error) => return error.into_openai_response(),
    };
    let body = json!({ "object": "list", "total_usage": api.usd(allowance(&b).1) * 100.0 });
    json_response(StatusCode::OK, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        map
    }

    #[test]
    fn the_key_comes_from_bearer_or_x_api_key_with_or_without_its_prefix() {
        assert_eq!(presented_key(&headers(&[("authorization", "Bearer sk-abc")])).as_deref(), Some("sk-abc"));
        assert_eq!(presented_key(&headers(&[("authorization", "bearer abc")])).as_deref(), Some("sk-abc"));
        assert_eq!(presented_key(&headers(&[("x-api-key", "sk-xyz")])).as_deref(), Some("sk-xyz"));
        assert_eq!(presented_key(&headers(&[("authorization", "Basic abc")])), None);
        assert_eq!(presented_key(&headers(&[("authorization", "Bearer ")])), None);
        assert_eq!(presented_key(&headers(&[])), None);
    }

    #[test]
    fn days_default_to_thirty_and_a_bad_value_names_the_field() {
        assert_eq!(days(&"/v1/key".parse().unwrap()), Ok(30));
        assert_eq!(days(&"/v1/key?x=1&days=7".parse().unwrap()), Ok(7));
        for bad in ["/v1/key?days=91", "/v1/key?days=seven", "/v1/key?days=-1"] {
            let error = days(&bad.parse().unwrap()).unwrap_err();
            assert_eq!((error.status, error.param.as_deref()), (400, Some("days")), "{bad}");
        }
    }
}
