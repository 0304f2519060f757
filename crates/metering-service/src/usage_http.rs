//! `POST /v1/usage` on the HTTP listener: usage reports from gateways that do not speak gRPC.
//! The body is `RecordUsage`'s or `BatchRecordUsage`'s request in protobuf's JSON form —
//! `{"report": {…}}` or `{"reports": [{…}, …]}` — with the same checks, the same
//! all-or-none recording and the same idempotency by `request_id`: it goes the path the RPCs go.
//!
//! - The caller proves itself with the gateway (or admin) token, in `Authorization: Bearer`
//!   or `X-Tollgate-Gateway-Token`.
//! - Field names as protobuf's JSON takes them (`request_id` or `requestId`); 64-bit numbers as
//!   numbers or strings; times as RFC 3339; `outcome` as `USAGE_OUTCOME_SUCCESS` /
//!   `USAGE_OUTCOME_UPSTREAM_ERROR` (or `success` / `upstream_error`).
//! - 200 `{"accepted": n}`; 400 naming the field (`reports[2].input_tokens`), for bytes that are
//!   not such JSON too; 401 without a token it takes; 503 when the queue cannot take them.

use std::str::FromStr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http::{HeaderMap, StatusCode, header};
use serde::{Deserialize, Deserializer};
use tollgate_core::Violations;
use tollgate_proto::metering::v1 as pb;

use crate::error::{HttpError, MeteringError};
use crate::grpc::MeteringGrpc;
use crate::validate;

/// Where usage reports are taken.
pub const PATH: &str = "/v1/usage";
/// The largest body read: a full batch of 1000 reports is about 300 KB.
const MAX_BODY: usize = 4 << 20;
/// The header a gateway may send its token in (as it does to forward-auth).
const GATEWAY_TOKEN_HEADER: &str = "x-tollgate-gateway-token";

/// The body: one report or a batch.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    report: Option<ReportJson>,
    reports: Option<Vec<ReportJson>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportJson {
    #[serde(default, alias = "requestId")]
    request_id: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    model: String,
    #[serde(default, alias = "inputTokens", deserialize_with = "int64")]
    input_tokens: i64,
    #[serde(default, alias = "outputTokens", deserialize_with = "int64")]
    output_tokens: i64,
    #[serde(default, alias = "cachedInputTokens", deserialize_with = "int64")]
    cached_input_tokens: i64,
    #[serde(default)]
    outcome: String,
    #[serde(default, alias = "startTime")]
    start_time: Option<String>,
    #[serde(default, alias = "endTime")]
    end_time: Option<String>,
}

/// A 64-bit integer as protobuf's JSON writes it (a string) or as people do (a number).
fn int64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int64<'a> {
        Number(i64),
        Text(&'a str),
    }
    match Int64::deserialize(deserializer)? {
        Int64::Number(n) => Ok(n),
        Int64::Text(text) => text.parse().map_err(|_| serde::de::Error::custom("must be a whole number")),
    }
}

impl ReportJson {
    /// The report as the RPCs take it; a time that does not parse is named in `v`.
    fn into_proto(self, v: &mut Violations, field: &str) -> pb::UsageReport {
        let mut time = |name: &str, value: Option<String>| {
            let value = value.filter(|value| !value.is_empty())?;
            let parsed = prost_types::Timestamp::from_str(&value).ok();
            if parsed.is_none() {
                v.add(format!("{field}.{name}"), "must be an RFC 3339 time, e.g. 2026-12-01T12:00:00Z");
            }
            parsed
        };
        let start_time = time("start_time", self.start_time);
        let end_time = time("end_time", self.end_time);
        let outcome = match self.outcome.as_str() {
            "USAGE_OUTCOME_SUCCESS" | "success" => pb::UsageOutcome::Success,
            "USAGE_OUTCOME_UPSTREAM_ERROR" | "upstream_error" => pb::UsageOutcome::UpstreamError,
            // Refused, with the field named, by the checks every report goes through.
            _ => pb::UsageOutcome::Unspecified,
        };
        pb::UsageReport {
            request_id: self.request_id,
            key: self.key,
            model: self.model,
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            cached_input_tokens: self.cached_input_tokens,
            outcome: outcome as i32,
            start_time,
            end_time,
        }
    }
}

/// The routes.
pub fn router(grpc: MeteringGrpc) -> axum::Router {
    axum::Router::new().route(PATH, post(record)).layer(DefaultBodyLimit::max(MAX_BODY)).with_state(Arc::new(grpc))
}

/// The token in `Authorization: Bearer` or `X-Tollgate-Gateway-Token`.
fn presented_token(headers: &HeaderMap) -> Option<&str> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    header(GATEWAY_TOKEN_HEADER)
        .or_else(|| header(header::AUTHORIZATION.as_str()).and_then(tollgate_auth::bearer_token))
}

/// Reads the body into reports, each with the field it is named by.
fn parse(body: &[u8]) -> Result<(Vec<pb::UsageReport>, bool), MeteringError> {
    let mut json = serde_json::Deserializer::from_slice(body);
    let body: Body = serde_path_to_error::deserialize(&mut json).map_err(|error| {
        let path = error.path().to_string();
        let field = if path == "." { "body".to_owned() } else { path };
        MeteringError::invalid(field, format!("is not valid: {}", error.inner()))
    })?;
    let (reports, batch) = match (body.report, body.reports) {
        (Some(report), None) => (vec![report], false),
        (None, Some(reports)) => {
            validate::batch_size(reports.len())?;
            (reports, true)
        }
        _ => return Err(MeteringError::invalid("body", "must hold either `report` or `reports`")),
    };
    let mut v = Violations::new();
    let reports =
        reports.into_iter().enumerate().map(|(i, report)| report.into_proto(&mut v, &field_name(batch, i))).collect();
    v.into_result()?;
    Ok((reports, batch))
}

fn field_name(batch: bool, i: usize) -> String {
    if batch { format!("reports[{i}]") } else { "report".to_owned() }
}

async fn record(
    State(grpc): State<Arc<MeteringGrpc>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if !presented_token(&headers).is_some_and(|token| grpc.accepts_reporter(token)) {
        let error = MeteringError::Unauthenticated("usage reports need the gateway token");
        return HttpError { code: "invalid_gateway_token", ..HttpError::from(error) }.into_openai_response();
    }
    let Ok(body) = body else {
        let error = MeteringError::invalid("body", format!("must be at most {MAX_BODY} bytes"));
        return HttpError { status: 413, code: "request_too_large", ..HttpError::from(error) }.into_openai_response();
    };
    let result = match parse(&body) {
        Ok((reports, batch)) => grpc.record(&reports, |i| field_name(batch, i)).await,
        Err(error) => Err(error),
    };
    match result {
        Ok(accepted) => {
            let body = serde_json::json!({ "accepted": accepted }).to_string();
            (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Err(error) => HttpError::from(error).into_openai_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(body: &str) -> String {
        match parse(body.as_bytes()) {
            Err(MeteringError::InvalidArgument(v)) => v.items()[0].field.clone(),
            Err(other) => panic!("{body}: {other}"),
            Ok(_) => panic!("{body}: parsed"),
        }
    }

    #[test]
    fn protobuf_json_is_read_in_either_spelling_and_numbers_either_way() {
        let body = r#"{"reports": [
            {"request_id": "r1", "key": "accounts/a/keys/k", "model": "m", "input_tokens": 3,
             "outcome": "success", "end_time": "2026-12-01T12:00:00Z"},
            {"requestId": "r2", "key": "accounts/a/keys/k", "model": "m", "outputTokens": "7",
             "outcome": "USAGE_OUTCOME_UPSTREAM_ERROR"}
        ]}"#;
        let (reports, batch) = parse(body.as_bytes()).unwrap();
        assert!(batch);
        assert_eq!((reports[0].input_tokens, reports[1].output_tokens), (3, 7));
        assert_eq!(reports[0].end_time.as_ref().map(|t| t.seconds), Some(1_796_126_400));
        assert_eq!(reports[1].outcome, pb::UsageOutcome::UpstreamError as i32);
        let (one, batch) = parse(br#"{"report": {"request_id": "r", "outcome": "bogus"}}"#).unwrap();
        assert!(!batch);
        assert_eq!(one[0].outcome, pb::UsageOutcome::Unspecified as i32, "left to the shared checks to name");
    }

    #[test]
    fn what_cannot_be_read_is_named() {
        assert_eq!(field_of("not json"), "body");
        assert_eq!(field_of(r#"{"reports": [{"input_tokens": "many"}]}"#), "reports[0].input_tokens");
        assert_eq!(field_of(r#"{"report": {"end_time": "yesterday"}}"#), "report.end_time");
        assert_eq!(field_of(r#"{"report": {"colour": "red"}}"#), "report.colour");
        assert_eq!(field_of(r#"{}"#), "body");
        assert_eq!(field_of(r#"{"reports": []}"#), "reports");
    }
}
