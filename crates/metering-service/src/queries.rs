//! Reading money and usage: balances and credit grants, per-call rows, dashboards' totals and
//! series, a key holder's own balance, and the dead letters.

use std::sync::Arc;

use tollgate_core::clock::Clock;
use tollgate_core::time::{MICROS_PER_SECOND, Micros};
use tollgate_core::windows::Calendar;
use tollgate_core::{KeyPepper, key_format};
use tollgate_ports::usage_queue::{DeadLetter, UsageQueue};
use tollgate_store::metering::{
    Balance, CreditGrant, KeyTotals, MeteringStore, Totals, UsageCursor, UsageEntry, UsageFilter, UsageScope,
};

use crate::directory::KeyDirectory;
use crate::error::{MeteringError, MeteringResult};
use crate::key_holder_limit::KeyHolderLimit;
use crate::series::{self, Bucket, Granularity, STEP};

pub const DAY: Micros = 24 * 3600 * MICROS_PER_SECOND;

/// An account's money and credit limit (`None`: postpaid without limit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountBalance {
    pub account_id: String,
    pub balance: Balance,
    pub credit_limit: Option<i64>,
}

/// Usage over a span: its totals and its series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub totals: Totals,
    pub buckets: Vec<Bucket>,
}

/// What a key holder may know of their key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    Enabled,
    Disabled,
    Expired,
    /// Its quota is spent.
    Exhausted,
}

/// What the account of a key without a quota of its own can still spend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountFunds {
    /// Credits added minus credits spent.
    pub balance: i64,
    /// The balance plus the credit limit, at least zero; `None`: postpaid without a limit.
    pub spendable: Option<i64>,
}

/// A key holder's view of their own key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyBalance {
    pub account_id: String,
    pub key_id: String,
    pub status: KeyStatus,
    /// Models it may call; empty with `any_model`.
    pub allowed_models: Vec<String>,
    pub any_model: bool,
    pub expire_time: Option<Micros>,
    pub quota: Option<i64>,
    pub daily_budget: Option<i64>,
    pub monthly_budget: Option<i64>,
    /// Spend in its life, today and this month.
    pub spend: KeyTotals,
    /// Usage per day and model.
    pub daily: Vec<Bucket>,
    /// For a key without a quota: its account's money, which bounds its calls instead.
    pub account: Option<AccountFunds>,
}

/// One page of a list, and whether more follow.
pub type Page<T> = (Vec<T>, bool);

/// An account's credit limit; NOT_FOUND when there is no such account.
pub(crate) async fn credit_limit(directory: &KeyDirectory, account_id: &str) -> MeteringResult<Option<i64>> {
    directory.credit_limit(account_id).await?.ok_or(MeteringError::NotFound("account"))
}

/// Answers the reading RPCs.
pub struct Queries {
    pub store: Arc<dyn MeteringStore>,
    /// For the dead letters.
    pub queue: Arc<dyn UsageQueue>,
    pub directory: KeyDirectory,
    pub calendar: Calendar,
    pub clock: Arc<dyn Clock>,
    /// Hashes a key holder's secret to find their key.
    pub pepper: KeyPepper,
    pub key_holder_limit: KeyHolderLimit,
}

impl Queries {
    /// An account's balance and credit limit.
    pub async fn account_balance(&self, account_id: &str) -> MeteringResult<AccountBalance> {
        let credit_limit = credit_limit(&self.directory, account_id).await?;
        let balance = self.store.balance(account_id).await?;
        Ok(AccountBalance { account_id: account_id.to_owned(), balance, credit_limit })
    }

    /// One page of an account's credit grants, newest first, after (time, request id).
    pub async fn credit_grants(
        &self,
        account_id: &str,
        after: Option<(Micros, String)>,
        limit: u32,
    ) -> MeteringResult<Page<CreditGrant>> {
        credit_limit(&self.directory, account_id).await?;
        Ok(self.store.list_credit_grants(account_id, after, limit).await?)
    }

    /// NOT_FOUND unless the account, and the application or key named under it, exist: an
    /// empty list or a series of zeros would say they do. Deleted keys keep their usage.
    async fn check_exists(
        &self,
        account_id: &str,
        application_id: Option<&str>,
        key_id: Option<&str>,
    ) -> MeteringResult<()> {
        credit_limit(&self.directory, account_id).await?;
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
    pub async fn list_usage(
        &self,
        filter: &UsageFilter,
        after: Option<&UsageCursor>,
        limit: u32,
    ) -> MeteringResult<Page<UsageEntry>> {
        self.check_exists(&filter.account_id, filter.application_id.as_deref(), filter.key_id.as_deref()).await?;
        Ok(self.store.list_usage(filter, after, limit).await?)
    }

    /// Totals and a series over [start, end) for an account, application or key.
    pub async fn usage_summary(
        &self,
        scope: &UsageScope,
        start: Micros,
        end: Micros,
        granularity: Granularity,
        split_by_model: bool,
    ) -> MeteringResult<Summary> {
        match scope {
            UsageScope::Account(account_id) => self.check_exists(account_id, None, None).await?,
            UsageScope::Application(account_id, id) => self.check_exists(account_id, Some(id), None).await?,
            UsageScope::Key(account_id, id) => self.check_exists(account_id, None, Some(id)).await?,
        }
        let rows = self.store.usage_buckets(scope, start, end, STEP).await?;
        let (totals, buckets) = series::fold(&self.calendar, granularity, start, end, &rows, split_by_model);
        Ok(Summary { totals, buckets })
    }

    /// A key holder's view of their own key, with its usage per day and model over the last
    /// `days` days (none for 0). Any key that is not valid (malformed, unknown, deleted) is
    /// UNAUTHENTICATED; every call counts against the key's per-minute limit.
    pub async fn key_balance(&self, secret: &str, days: i64) -> MeteringResult<KeyBalance> {
        const NOT_VALID: MeteringError = MeteringError::Unauthenticated("the API key is not valid");
        key_format::validate(secret).map_err(|_| NOT_VALID)?;
        let key = self.directory.key_by_secret(&self.pepper.hash(secret)).await?.ok_or(NOT_VALID)?;
        if key.deleted {
            return Err(NOT_VALID);
        }
        let now = self.clock.now_micros();
        let key_name = tollgate_core::names::key(&key.account_id, &key.key_id);
        self.key_holder_limit.check(&key_name, now).await.map_err(|retry_after| {
            MeteringError::ResourceExhausted("this key asked for its balance too often; retry later", retry_after)
        })?;
        let windows = self.calendar.windows(now);
        let spend = self.store.key_totals(&key.account_id, &key.key_id, &windows.day, &windows.month).await?;
        let expired = |time: Option<Micros>| time.is_some_and(|t| t <= now);
        let status = if !key.enabled {
            KeyStatus::Disabled
        } else if expired(key.expire_time) || expired(key.secret_expire_time) {
            KeyStatus::Expired
        } else if key.quota.is_some_and(|q| spend.used >= q) {
            KeyStatus::Exhausted
        } else {
            KeyStatus::Enabled
        };
        let daily = if days > 0 {
            self.daily_usage(&key.account_id, &key.key_id, windows.day_start, days).await?
        } else {
            Vec::new()
        };
        let account = match key.quota {
            Some(_) => None,
            None => {
                let balance = self.store.balance(&key.account_id).await?.balance();
                let spendable = key.account_credit_limit.map(|limit| balance.saturating_add(limit).max(0));
                Some(AccountFunds { balance, spendable })
            }
        };
        Ok(KeyBalance {
            account_id: key.account_id,
            key_id: key.key_id,
            status,
            allowed_models: key.allowed_models,
            any_model: key.any_model,
            expire_time: key.expire_time,
            quota: key.quota,
            daily_budget: key.daily_budget,
            monthly_budget: key.monthly_budget,
            spend,
            daily,
            account,
        })
    }

    /// A key's usage per local day and model, the `days` days up to today's end.
    async fn daily_usage(
        &self,
        account_id: &str,
        key_id: &str,
        today: Micros,
        days: i64,
    ) -> MeteringResult<Vec<Bucket>> {
        // Noon of the first day, so a 23- or 25-hour day on the way does not shift it.
        let start = self.calendar.windows(today + DAY / 2 - (days - 1) * DAY).day_start;
        let end = self.calendar.windows(today).day_end;
        let scope = UsageScope::Key(account_id.to_owned(), key_id.to_owned());
        let rows = self.store.usage_buckets(&scope, start, end, STEP).await?;
        Ok(series::fold(&self.calendar, Granularity::Day, start, end, &rows, true).1)
    }

    /// One page of dead letters, oldest first, after the id `after`.
    pub async fn dead_letters(&self, after: Option<&str>, limit: u32) -> MeteringResult<Page<DeadLetter>> {
        let mut letters = self.queue.dead_letters(after, limit as usize + 1).await?;
        let more = letters.len() > limit as usize;
        letters.truncate(limit as usize);
        Ok((letters, more))
    }
}
