//! Checking requests as they arrive, naming every offending field, and turning them into the
//! domain's types.

use tollgate_core::ids::is_valid_model_id;
use tollgate_core::money::TokenUsage;
use tollgate_core::time::Micros;
use tollgate_core::validation::{check_request_id, check_text};
use tollgate_core::{Violations, names, page_token};
use tollgate_proto::metering::v1 as pb;
use tollgate_proto::time::timestamp_micros;
use tollgate_store::metering::Outcome;

use tollgate_store::metering::{UsageCursor, UsageFilter, UsageScope};

use crate::credits::GrantRequest;
use crate::error::{MeteringError, MeteringResult};
use crate::series::Granularity;
use crate::usage::UsageReport;

/// Most tokens one report may carry in any one field.
pub const MAX_TOKENS: i64 = 1_000_000_000_000;
/// Most reports per BatchRecordUsage.
pub const MAX_BATCH: usize = 1000;
/// How far in the future an end time may be (clock skew between gateway and us).
const MAX_FUTURE: Micros = 5 * 60 * 1_000_000;

/// A batch holds 1 to [`MAX_BATCH`] reports.
pub fn batch_size(count: usize) -> MeteringResult<()> {
    if count == 0 || count > MAX_BATCH {
        return Err(MeteringError::invalid("reports", format!("must hold 1 to {MAX_BATCH} reports, got {count}")));
    }
    Ok(())
}

/// Checks a report and fills in what may be left out: an unset end time is the time it
/// arrived, an unset start time its end time. `None` when a field is wrong (named in `v`).
pub fn report(v: &mut Violations, field: &str, report: &pb::UsageReport, now: Micros) -> Option<UsageReport> {
    let before = v.items().len();
    let at = |name: &str| format!("{field}.{name}");
    if report.request_id.is_empty() {
        v.add(at("request_id"), "is required");
    } else {
        check_request_id(v, &at("request_id"), &report.request_id);
    }
    let key = names::parse_key(&report.key);
    if key.is_none() {
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
    let outcome = match pb::UsageOutcome::try_from(report.outcome) {
        Ok(pb::UsageOutcome::Success) => Some(Outcome::Success),
        Ok(pb::UsageOutcome::UpstreamError) => Some(Outcome::UpstreamError),
        _ => {
            v.add(at("outcome"), "must be USAGE_OUTCOME_SUCCESS or USAGE_OUTCOME_UPSTREAM_ERROR");
            None
        }
    };
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
    if let (Some(start), Some(end)) = (start, end)
        && start > end
    {
        v.add(at("start_time"), "must not be after end_time");
    }
    if v.items().len() > before {
        return None;
    }
    let (account_id, key_id) = key?;
    Some(UsageReport {
        request_id: report.request_id.clone(),
        account_id: account_id.to_owned(),
        key_id: key_id.to_owned(),
        model: report.model.clone(),
        tokens: TokenUsage {
            input: report.input_tokens,
            output: report.output_tokens,
            cached_input: report.cached_input_tokens,
        },
        outcome: outcome?,
        start_time: start?,
        end_time: end?,
    })
}

/// Most credits one AddCredits may add or take.
const MAX_GRANT: i64 = tollgate_core::money::MAX_CREDITS;
const DAY: Micros = crate::queries::DAY;
/// Longest span of an hourly series.
const MAX_HOURLY_SPAN: Micros = 31 * DAY;
/// Longest span of a daily series.
const MAX_DAILY_SPAN: Micros = 400 * DAY;

/// An AddCredits request as a grant to make by `actor`.
pub fn grant(request: pb::AddCreditsRequest, actor: String) -> Result<GrantRequest, Violations> {
    let mut v = Violations::new();
    let account_id = names::parse_account(&request.account);
    v.check(account_id.is_some(), "account", "must be accounts/{account}");
    if request.credits == 0 {
        v.add("credits", "must not be zero");
    } else if request.credits.abs() > MAX_GRANT {
        v.add("credits", format!("must be between -{MAX_GRANT} and {MAX_GRANT}"));
    }
    if request.reason.trim().is_empty() {
        v.add("reason", "is required");
    } else {
        check_text(&mut v, "reason", &request.reason, 200);
    }
    if request.request_id.is_empty() {
        v.add("request_id", "is required");
    } else {
        check_request_id(&mut v, "request_id", &request.request_id);
    }
    v.into_result()?;
    Ok(GrantRequest {
        account_id: account_id.expect("checked").to_owned(),
        request_id: request.request_id,
        credits: request.credits,
        reason: request.reason,
        actor,
    })
}

/// An account name's id.
pub fn account(v: &mut Violations, field: &str, name: &str) -> String {
    let account_id = names::parse_account(name);
    v.check(account_id.is_some(), field, "must be accounts/{account}");
    account_id.unwrap_or_default().to_owned()
}

/// A page size (0: the default).
pub fn page_size(v: &mut Violations, page_size: i32) -> u32 {
    let limit = page_token::page_size(page_size);
    v.check(limit.is_some(), "page_size", "must be 0 to 1000");
    limit.unwrap_or_default()
}

/// Where a page of `collection` continues, decoded by `parse` (`None`: from the start).
pub fn after_token<T>(
    v: &mut Violations,
    collection: &str,
    token: &str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Option<T> {
    let after = page_token::decode(collection, token).and_then(|key| match key {
        None => Some(None),
        Some(key) => parse(&key).map(Some),
    });
    v.check(after.is_some(), "page_token", "is not a token of this list");
    after.flatten()
}

/// The page token after `(time, id)`, when more follow.
pub fn next_page_token(collection: &str, more: bool, last: Option<(Micros, &str)>) -> String {
    match (more, last) {
        (true, Some((time, id))) => page_token::encode(collection, &format!("{time}/{id}")),
        _ => String::new(),
    }
}

/// `{time}/{id}` of a page token.
pub fn time_and_id(key: &str) -> Option<(Micros, String)> {
    let (time, id) = key.split_once('/')?;
    Some((time.parse().ok()?, id.to_owned()))
}

/// A checked optional timestamp field.
fn time(v: &mut Violations, field: &str, ts: Option<&prost_types::Timestamp>) -> Option<Micros> {
    let ts = ts?;
    let micros = timestamp_micros(ts);
    v.check(micros.is_some(), field, "is not a valid timestamp");
    micros
}

/// A child name given in a filter field under `account_id`: its id, or `None` when empty.
/// Another account's child is NOT_FOUND here, as everywhere.
fn child(
    v: &mut Violations,
    field: &str,
    name: &str,
    parse: fn(&str) -> Option<(&str, &str)>,
) -> Option<(String, String)> {
    if name.is_empty() {
        return None;
    }
    let parsed = parse(name);
    v.check(parsed.is_some(), field, "is not a valid resource name");
    parsed.map(|(owner, id)| (owner.to_owned(), id.to_owned()))
}

/// A ListUsage request as a filter, where to continue and how many.
pub fn list_usage(request: &pb::ListUsageRequest) -> MeteringResult<(UsageFilter, Option<UsageCursor>, u32)> {
    let mut v = Violations::new();
    let account_id = account(&mut v, "parent", &request.parent);
    let application = child(&mut v, "application", &request.application, names::parse_application);
    let key = child(&mut v, "key", &request.key, names::parse_key);
    v.check(request.model.len() <= 200, "model", "must be at most 200 characters");
    let start_time = time(&mut v, "start_time", request.start_time.as_ref());
    let end_time = time(&mut v, "end_time", request.end_time.as_ref());
    let limit = page_size(&mut v, request.page_size);
    let after = after_token(&mut v, "usage", &request.page_token, |key| {
        time_and_id(key).map(|(end_time, request_id)| UsageCursor { end_time, request_id })
    });
    v.into_result()?;
    if application.as_ref().is_some_and(|(owner, _)| *owner != account_id) {
        return Err(MeteringError::NotFound("application"));
    }
    if key.as_ref().is_some_and(|(owner, _)| *owner != account_id) {
        return Err(MeteringError::NotFound("key"));
    }
    let filter = UsageFilter {
        account_id,
        application_id: application.map(|(_, id)| id),
        key_id: key.map(|(_, id)| id),
        model: (!request.model.is_empty()).then(|| request.model.clone()),
        start_time,
        end_time,
    };
    Ok((filter, after, limit))
}

/// A GetUsageSummary request's scope, span and series.
pub fn usage_summary(
    request: &pb::GetUsageSummaryRequest,
) -> Result<(UsageScope, Micros, Micros, Granularity), Violations> {
    let mut v = Violations::new();
    let scope = if let Some(account_id) = names::parse_account(&request.scope) {
        Some(UsageScope::Account(account_id.to_owned()))
    } else if let Some((account_id, application_id)) = names::parse_application(&request.scope) {
        Some(UsageScope::Application(account_id.to_owned(), application_id.to_owned()))
    } else if let Some((account_id, key_id)) = names::parse_key(&request.scope) {
        Some(UsageScope::Key(account_id.to_owned(), key_id.to_owned()))
    } else {
        v.add("scope", "must be an account, application or key name");
        None
    };
    let start = time(&mut v, "start_time", request.start_time.as_ref());
    let end = time(&mut v, "end_time", request.end_time.as_ref());
    v.check(request.start_time.is_some(), "start_time", "is required");
    v.check(request.end_time.is_some(), "end_time", "is required");
    let granularity = match pb::Granularity::try_from(request.granularity) {
        Ok(pb::Granularity::Hour) => Some(Granularity::Hour),
        Ok(pb::Granularity::Day) => Some(Granularity::Day),
        _ => {
            v.add("granularity", "must be GRANULARITY_HOUR or GRANULARITY_DAY");
            None
        }
    };
    if let (Some(start), Some(end), Some(granularity)) = (start, end, granularity) {
        let max = if granularity == Granularity::Hour { MAX_HOURLY_SPAN } else { MAX_DAILY_SPAN };
        if end <= start {
            v.add("end_time", "must be after start_time");
        } else if end - start > max {
            v.add("end_time", format!("must be at most {} days after start_time", max / DAY));
        }
    }
    v.into_result()?;
    Ok((scope.expect("checked"), start.expect("checked"), end.expect("checked"), granularity.expect("checked")))
}

/// The days a key holder's balance covers: 1 to 90, 0 for the default 30.
pub fn balance_days(days: i32) -> Result<i64, Violations> {
    let mut v = Violations::new();
    v.check((0..=90).contains(&days), "days", "must be 0 to 90");
    v.into_result()?;
    Ok(if days == 0 { 30 } else { i64::from(days) })
}

/// Dead letter ids to replay.
pub fn dead_letter_ids(ids: &[String]) -> Result<(), Violations> {
    let mut v = Violations::new();
    v.check(ids.len() <= 1000, "ids", "must hold at most 1000 ids");
    for (i, id) in ids.iter().enumerate() {
        v.check(is_dead_letter_id(id), format!("ids[{i}]"), "is not a dead letter id");
    }
    v.into_result()
}

/// Dead letter ids are `123` (SQL), `1700000000000-0` (a Redis Stream) or `2:1700000000000-0`
/// (the third of several Redis Streams).
fn is_dead_letter_id(id: &str) -> bool {
    let digits = |part: &str| !part.is_empty() && part.len() <= 20 && part.bytes().all(|b| b.is_ascii_digit());
    let own = match id.split_once(':') {
        Some((stream, own)) if digits(stream) => own,
        Some(_) => return false,
        None => id,
    };
    match own.split_once('-') {
        Some((time, sequence)) => digits(time) && digits(sequence),
        None => digits(own),
    }
}

#[cfg(test)]
mod tests {
    use tollgate_proto::time::timestamp;

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

    fn fields(report: pb::UsageReport) -> Vec<String> {
        let mut v = Violations::new();
        let checked = super::report(&mut v, "report", &report, 1_800_000_000_000_000);
        assert_eq!(checked.is_none(), !v.is_empty(), "a report is returned exactly when it is valid");
        v.items().iter().map(|f| f.field.clone()).collect()
    }

    #[test]
    fn dead_letter_ids_of_every_queue_are_accepted_and_nothing_else() {
        for id in ["123", "1700000000000-0", "2:1700000000000-5"] {
            assert!(is_dead_letter_id(id), "{id}");
        }
        for id in ["", "x", "1-", "-1", ":1-1", "a:1-1", "1:", "1:2:3-4", "1-2-3"] {
            assert!(!is_dead_letter_id(id), "{id}");
        }
    }

    #[test]
    fn a_good_report_passes_and_gets_its_times() {
        let mut v = Violations::new();
        let report = super::report(&mut v, "report", &good(), 1_800_000_000_000_000).expect("valid");
        assert!(v.is_empty());
        assert_eq!(report.end_time, 1_800_000_000_000_000);
        assert_eq!(report.start_time, report.end_time);
        assert_eq!((report.account_id.as_str(), report.key_id.as_str()), ("acme", "k1"));
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
