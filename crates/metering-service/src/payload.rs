//! The usage queue's wire form of a report: an encoded `tollgate.metering.v1.UsageReport`, so
//! entries any version wrote (and dead letters replayed later) decode.

use prost::Message;
use tollgate_core::money::TokenUsage;
use tollgate_core::names;
use tollgate_core::time::Micros;
use tollgate_proto::metering::v1 as pb;
use tollgate_proto::time::{timestamp, timestamp_micros};
use tollgate_store::metering::Outcome;

use crate::usage::UsageReport;

/// The queue entry of a report.
pub fn encode(report: &UsageReport) -> Vec<u8> {
    proto(report).encode_to_vec()
}

/// The report in a queue entry; `None` when it is not one (bytes that do not decode, or a key
/// that is not a key name). Reports are checked before they are queued, so every entry has its
/// times; one without would count as ending `now`.
pub fn decode(payload: &[u8], now: Micros) -> Option<UsageReport> {
    from_proto(pb::UsageReport::decode(payload).ok()?, now)
}

/// A report as its proto (also what dead letters show).
pub fn proto(report: &UsageReport) -> pb::UsageReport {
    pb::UsageReport {
        request_id: report.request_id.clone(),
        key: report.key_name(),
        model: report.model.clone(),
        input_tokens: report.tokens.input,
        output_tokens: report.tokens.output,
        cached_input_tokens: report.tokens.cached_input,
        outcome: outcome_proto(report.outcome) as i32,
        start_time: Some(timestamp(report.start_time)),
        end_time: Some(timestamp(report.end_time)),
    }
}

/// A stored outcome as its proto.
pub fn outcome_proto(outcome: Outcome) -> pb::UsageOutcome {
    match outcome {
        Outcome::Success => pb::UsageOutcome::Success,
        Outcome::UpstreamError => pb::UsageOutcome::UpstreamError,
    }
}

fn from_proto(report: pb::UsageReport, now: Micros) -> Option<UsageReport> {
    let (account_id, key_id) = names::parse_key(&report.key)?;
    let end_time = report.end_time.as_ref().and_then(timestamp_micros).unwrap_or(now);
    Some(UsageReport {
        account_id: account_id.to_owned(),
        key_id: key_id.to_owned(),
        model: report.model,
        tokens: TokenUsage {
            input: report.input_tokens,
            output: report.output_tokens,
            cached_input: report.cached_input_tokens,
        },
        outcome: match pb::UsageOutcome::try_from(report.outcome) {
            Ok(pb::UsageOutcome::UpstreamError) => Outcome::UpstreamError,
            _ => Outcome::Success,
        },
        start_time: report.start_time.as_ref().and_then(timestamp_micros).unwrap_or(end_time),
        end_time,
        request_id: report.request_id,
    })
}
