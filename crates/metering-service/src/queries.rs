//! Reading usage: per-call rows, dashboards' totals and series, and a key holder's own
//! balance.

use tollgate_core::time::{MICROS_PER_SECOND, Micros};
use tollgate_core::{Violations, key_format, names, page_token};
use tollgate_proto::keys::v1 as keys;
use tollgate_proto::metering::v1 as pb;
use tollgate_proto::time::{timestamp, timestamp_micros};
use tollgate_store::metering::{Outcome, Totals, UsageCursor, UsageEntry, UsageFilter, UsageScope};

use crate::MeteringCore;
use crate::error::{MeteringError, MeteringResult};
use crate::series::{self, Granularity, STEP};

const DAY: Micros = 24 * 3600 * MICROS_PER_SECOND;
/// Longest span of an hourly series.
const MAX_HOURLY_SPAN: Micros = 31 * DAY;
/// Longest span of a daily series.
const MAX_DAILY_SPAN: Micros = 400 * DAY;

fn totals_proto(t: &Totals) -> pb::UsageTotals {
    pb::UsageTotals {
        requests: t.requests,
        input_tokens: t.input_tokens,
        output_tokens: t.output_tokens,
        cached_input_tokens: t.cached_input_tokens,
        credits: t.credits,
    }
}

fn bucket_proto(bucket: series::Bucket) -> pb::UsageBucket {
    pb::UsageBucket {
        start_time: Some(timestamp(bucket.start)),
        model: bucket.model,
        totals: Some(totals_proto(&bucket.totals)),
    }
}

fn record_proto(e: UsageEntry) -> pb::UsageRecord {
    pb::UsageRecord {
        time: Some(timestamp(e.end_time)),
        key: names::key(&e.account_id, &e.key_id),
        application: names::application(&e.account_id, &e.application_id),
        model: e.model,
        input_tokens: e.input_tokens,
        output_tokens: e.output_tokens,
        cached_input_tokens: e.cached_input_tokens,
        credits: e.credits,
        outcome: match e.outcome {
            Outcome::Success => pb::UsageOutcome::Success,
            Outcome::UpstreamError => pb::UsageOutcome::UpstreamError,
        } as i32,
        request_id: e.request_id,
    }
}

/// A checked optional timestamp field.
fn time(v: &mut Violations, field: &str, ts: Option<&prost_types::Timestamp>) -> Option<Micros> {
    let ts = ts?;
    let micros = timestamp_micros(ts);
    v.check(micros.is_some(), field, "is not a valid timestamp");
    micros
}

/// A child name given in a filter field: its owner and id, or `None` when empty.
fn child<'a>(
    v: &mut Violations,
    field: &str,
    name: &'a str,
    parse: fn(&str) -> Option<(&str, &str)>,
) -> Option<(&'a str, &'a str)> {
    if name.is_empty() {
        return None;
    }
    let parsed = parse(name);
    v.check(parsed.is_some(), field, "is not a valid resource name");
    parsed
}

fn cursor_encode(entry: &UsageEntry) -> String {
    page_token::encode("usage", &format!("{}/{}", entry.end_time, entry.request_id))
}

fn cursor_decode(token: &str) -> Option<Option<UsageCursor>> {
    let key = page_token::decode("usage", token)?;
    let Some(key) = key else { return Some(None) };
    let (time, request_id) = key.split_once('/')?;
    Some(Some(UsageCursor { end_time: time.parse().ok()?, request_id: request_id.to_owned() }))
}

impl MeteringCore {
    /// NOT_FOUND unless the account, and the application or key named under it, exist: an
    /// empty list or a series of zeros would say they do. Deleted keys keep their usage.
    async fn check_exists(
        &self,
        account_id: &str,
        application_id: Option<&str>,
        key_id: Option<&str>,
    ) -> MeteringResult<()> {
        self.credit_limit(account_id).await?;
        if let Some(application_id) = application_id
            && !self.directory.application_exists(account_id, application_id).await?
        {
            return Err(MeteringError::NotFound("application"));
        }
        if let Some(key_id) = key_id
            && self.directory.keys_by_id(&[(account_id.to_owned(), key_id.to_owned())]).await?.is_empty()
        {
            return Err(MeteringError::NotFound("key"));
        }
        Ok(())
    }

    /// One page of per-call rows, newest first.
    pub async fn list_usage(&self, request: &pb::ListUsageRequest) -> MeteringResult<pb::ListUsageResponse> {
        let mut v = Violations::new();
        let account_id = names::parse_account(&request.parent);
        v.check(account_id.is_some(), "parent", "must be accounts/{account}");
        let application = child(&mut v, "application", &request.application, names::parse_application);
        let key = child(&mut v, "key", &request.key, names::parse_key);
        v.check(request.model.len() <= 200, "model", "must be at most 200 characters");
        let start_time = time(&mut v, "start_time", request.start_time.as_ref());
        let end_time = time(&mut v, "end_time", request.end_time.as_ref());
        let limit = page_token::page_size(request.page_size);
        v.check(limit.is_some(), "page_size", "must be 0 to 1000");
        let cursor = cursor_decode(&request.page_token);
        v.check(cursor.is_some(), "page_token", "is not a token of this list");
        v.into_result()?;
        let account_id = account_id.expect("checked");
        // Another account's application or key is not found here, as everywhere.
        if application.is_some_and(|(owner, _)| owner != account_id) {
            return Err(MeteringError::NotFound("application"));
        }
        if key.is_some_and(|(owner, _)| owner != account_id) {
            return Err(MeteringError::NotFound("key"));
        }
        self.check_exists(account_id, application.map(|(_, id)| id), key.map(|(_, id)| id)).await?;
        let filter = UsageFilter {
            account_id: account_id.to_owned(),
            application_id: application.map(|(_, id)| id.to_owned()),
            key_id: key.map(|(_, id)| id.to_owned()),
            model: (!request.model.is_empty()).then(|| request.model.clone()),
            start_time,
            end_time,
        };
        let cursor = cursor.expect("checked");
        let (entries, more) = self.store.list_usage(&filter, cursor.as_ref(), limit.expect("checked")).await?;
        let next_page_token = match (more, entries.last()) {
            (true, Some(last)) => cursor_encode(last),
            _ => String::new(),
        };
        Ok(pb::ListUsageResponse { records: entries.into_iter().map(record_proto).collect(), next_page_token })
    }

    /// Totals and a series over a span for an account, application or key.
    pub async fn usage_summary(
        &self,
        request: &pb::GetUsageSummaryRequest,
    ) -> MeteringResult<pb::GetUsageSummaryResponse> {
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
        let (scope, start, end, granularity) =
            (scope.expect("checked"), start.expect("checked"), end.expect("checked"), granularity.expect("checked"));
        match &scope {
            UsageScope::Account(account_id) => self.check_exists(account_id, None, None).await?,
            UsageScope::Application(account_id, id) => self.check_exists(account_id, Some(id), None).await?,
            UsageScope::Key(account_id, id) => self.check_exists(account_id, None, Some(id)).await?,
        }
        let rows = self.store.usage_buckets(&scope, start, end, STEP).await?;
        let (totals, buckets) = series::fold(&self.calendar, granularity, start, end, &rows, request.split_by_model);
        Ok(pb::GetUsageSummaryResponse {
            totals: Some(totals_proto(&totals)),
            buckets: buckets.into_iter().map(bucket_proto).collect(),
        })
    }

    /// A key holder's view of their own key: status, quota, budgets and daily usage by model.
    /// Any key that is not valid (malformed, unknown, deleted) is UNAUTHENTICATED.
    pub async fn key_balance(&self, secret: &str, days: i32) -> MeteringResult<pb::GetKeyBalanceResponse> {
        const NOT_VALID: MeteringError = MeteringError::Unauthenticated("the API key is not valid");
        if !(0..=90).contains(&days) {
            return Err(MeteringError::invalid("days", "must be 0 to 90"));
        }
        let days = if days == 0 { 30 } else { i64::from(days) };
        key_format::validate(secret).map_err(|_| NOT_VALID)?;
        let state = self.directory.key_by_secret(&self.pepper.hash(secret)).await?.ok_or(NOT_VALID)?;
        if state.deleted {
            return Err(NOT_VALID);
        }
        let now = self.clock.now_micros();
        let key_name = names::key(&state.account_id, &state.key_id);
        self.key_holder_limit.check(&key_name, now).await.map_err(|retry_after| {
            MeteringError::ResourceExhausted("this key asked for its balance too often; retry later", retry_after)
        })?;
        let windows = self.calendar.windows(now);
        let spend = self.store.key_totals(&state.account_id, &state.key_id, &windows.day, &windows.month).await?;
        let left = |limit: Option<i64>, used: i64| limit.map(|l| (l - used).max(0));
        let expired = |ts: Option<&prost_types::Timestamp>| ts.and_then(timestamp_micros).is_some_and(|t| t <= now);
        let status = if !state.enabled {
            keys::KeyStatus::Disabled
        } else if expired(state.expire_time.as_ref()) || expired(state.secret_expire_time.as_ref()) {
            keys::KeyStatus::Expired
        } else if state.quota.is_some_and(|q| spend.used >= q) {
            keys::KeyStatus::Exhausted
        } else {
            keys::KeyStatus::Enabled
        };
        let end = windows.day_end;
        // Noon of the first day, so a 23- or 25-hour day on the way does not shift it.
        let start = self.calendar.windows(windows.day_start + DAY / 2 - (days - 1) * DAY).day_start;
        let scope = UsageScope::Key(state.account_id.clone(), state.key_id.clone());
        let rows = self.store.usage_buckets(&scope, start, end, STEP).await?;
        let (_, buckets) = series::fold(&self.calendar, Granularity::Day, start, end, &rows, true);
        Ok(pb::GetKeyBalanceResponse {
            key: key_name,
            status: status as i32,
            expire_time: state.expire_time,
            quota: state.quota,
            quota_used: spend.used,
            quota_remaining: left(state.quota, spend.used),
            daily_budget: state.daily_budget,
            daily_used: spend.day,
            daily_remaining: left(state.daily_budget, spend.day),
            monthly_budget: state.monthly_budget,
            monthly_used: spend.month,
            monthly_remaining: left(state.monthly_budget, spend.month),
            daily: buckets.into_iter().map(bucket_proto).collect(),
        })
    }
}
