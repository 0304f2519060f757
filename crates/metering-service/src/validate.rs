//! Checking usage reports as they arrive, naming every offending field.

use tollgate_core::ids::is_valid_model_id;
use tollgate_core::time::Micros;
use tollgate_core::validation::check_request_id;
use tollgate_core::{Violations, names};
use tollgate_proto::metering::v1 as pb;
use tollgate_proto::time::{timestamp, timestamp_micros};

/// Most tokens one report may carry in any one field.
pub const MAX_TOKENS: i64 = 1_000_000_000_000;
/// Most reports per BatchRecordUsage.
pub const MAX_BATCH: usize = 1000;
/// How far in the future an end time may be (clock skew between gateway and us).
const MAX_FUTURE: Micros = 5 * 60 * 1_000_000;

/// Checks a report and fills in what may be left out: an unset end time is the time it
/// arrived, an unset start time its end time.
pub fn report(v: &mut Violations, field: &str, report: &mut pb::UsageReport, now: Micros) {
    let at = |name: &str| format!("{field}.{name}");
    if report.request_id.is_empty() {
        v.add(at("request_id"), "is required");
    } else {
        check_request_id(v, &at("request_id"), &report.request_id);
    }
    if names::parse_key(&report.key).is_none() {
        v.add(at("key"), "must be accounts/{account}/keys/{key}");
    }
    if !is_valid_model_id(&report.model) {
        v.add(at("model"), "must be a model id from the catalog");
    }
    for (name, tokens) in [
        ("input_tokens", report.input_tokens),
        ("output_tokens", report.output_tokens),
        ("cached_input_tokens", report.cached_input_tokens),
    ] {
        if tokens < 0 {
            v.add(at(name), "must not be negative");
        } else if tokens > MAX_TOKENS {
            v.add(at(name), format!("must be at most {MAX_TOKENS}"));
        }
    }
    if pb::UsageOutcome::try_from(report.outcome).unwrap_or(pb::UsageOutcome::Unspecified)
        == pb::UsageOutcome::Unspecified
    {
        v.add(at("outcome"), "must be USAGE_OUTCOME_SUCCESS or USAGE_OUTCOME_UPSTREAM_ERROR");
    }
    let end = match &report.end_time {
        None => Some(now),
        Some(ts) => match timestamp_micros(ts) {
            Some(end) if end > now + MAX_FUTURE => {
                v.add(at("end_time"), "must not be in the future");
                None
            }
            Some(end) if end <= 0 => {
                v.add(at("end_time"), "must be after 1970");
                None
            }
            Some(end) => Some(end),
            None => {
                v.add(at("end_time"), "is not a valid timestamp");
                None
            }
        },
    };
    let start = match &report.start_time {
        None => end,
        Some(ts) => match timestamp_micros(ts) {
            Some(start) => Some(start),
            None => {
                v.add(at("start_time"), "is not a valid timestamp");
                None
            }
        },
    };
    if let (Some(start), Some(end)) = (start, end) {
        if start > end {
            v.add(at("start_time"), "must not be after end_time");
        }
        report.start_time = Some(timestamp(start));
        report.end_time = Some(timestamp(end));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> pb::UsageReport {
        pb::UsageReport {
            request_id: "req-1".into(),
            key: "accounts/acme/keys/k1".into(),
            model: "gpt-4o".into(),
            input_tokens: 10,
            output_tokens: 5,
            cached_input_tokens: 0,
            outcome: pb::UsageOutcome::Success as i32,
            start_time: None,
            end_time: None,
        }
    }

    fn fields(mut report: pb::UsageReport) -> Vec<String> {
        let mut v = Violations::new();
        super::report(&mut v, "report", &mut report, 1_800_000_000_000_000);
        v.items().iter().map(|f| f.field.clone()).collect()
    }

    #[test]
    fn a_good_report_passes_and_gets_its_times() {
        let mut report = good();
        let mut v = Violations::new();
        super::report(&mut v, "report", &mut report, 1_800_000_000_000_000);
        assert!(v.is_empty());
        assert_eq!(report.end_time, Some(timestamp(1_800_000_000_000_000)));
        assert_eq!(report.start_time, report.end_time);
    }

    #[test]
    fn each_rule_names_its_field() {
        let cases: Vec<(pb::UsageReport, &str)> = vec![
            (pb::UsageReport { request_id: String::new(), ..good() }, "report.request_id"),
            (pb::UsageReport { request_id: "has space".into(), ..good() }, "report.request_id"),
            (pb::UsageReport { request_id: "x".repeat(101), ..good() }, "report.request_id"),
            (pb::UsageReport { key: "k1".into(), ..good() }, "report.key"),
            (pb::UsageReport { model: String::new(), ..good() }, "report.model"),
            (pb::UsageReport { input_tokens: -1, ..good() }, "report.input_tokens"),
            (pb::UsageReport { output_tokens: MAX_TOKENS + 1, ..good() }, "report.output_tokens"),
            (pb::UsageReport { cached_input_tokens: -5, ..good() }, "report.cached_input_tokens"),
            (pb::UsageReport { outcome: 0, ..good() }, "report.outcome"),
            (pb::UsageReport { outcome: 99, ..good() }, "report.outcome"),
            (
                pb::UsageReport { end_time: Some(prost_types::Timestamp { seconds: 0, nanos: -1 }), ..good() },
                "report.end_time",
            ),
            (pb::UsageReport { end_time: Some(timestamp(1_900_000_000_000_000)), ..good() }, "report.end_time"),
            (
                pb::UsageReport {
                    start_time: Some(timestamp(1_700_000_000_000_001)),
                    end_time: Some(timestamp(1_700_000_000_000_000)),
                    ..good()
                },
                "report.start_time",
            ),
        ];
        for (report, field) in cases {
            assert_eq!(fields(report.clone()), vec![field.to_owned()], "{report:?}");
        }
    }
}
