//! Counters on Redis: one EVALSHA of `lua/authorize.lua` per call.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;
use redis::aio::ConnectionManager;
use tollgate_core::counters::{CounterCheck, CounterOutcome, RateOutcome};

use crate::StateError;
use crate::counters::{CounterCall, CounterKeys, Counters, SETTLED_MEMORY_MS, Settlement};
use crate::redis::RedisState;

/// Counters on the Redis behind a [`RedisState`].
#[derive(Clone)]
pub struct RedisCounters {
    conn: ConnectionManager,
    keys: CounterKeys,
    script: Arc<Script>,
    settle_script: Arc<Script>,
    op_timeout: Duration,
}

impl std::fmt::Debug for RedisCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCounters").field("keys", &self.keys).finish_non_exhaustive()
    }
}

impl RedisCounters {
    /// Counters on the same connection and prefix as `state`, each call bounded by
    /// `op_timeout`.
    pub fn new(state: &RedisState, op_timeout: Duration) -> Self {
        Self {
            conn: state.connection(),
            keys: CounterKeys::new(state.prefix()),
            script: Arc::new(Script::new(include_str!("lua/authorize.lua"))),
            settle_script: Arc::new(Script::new(include_str!("lua/settle.lua"))),
            op_timeout,
        }
    }

    async fn run(&self, call: &CounterCall<'_>, take: bool) -> Result<CounterOutcome, StateError> {
        let limits = &call.request.limits;
        let opt = |value: Option<i64>| value.map(|v| v.to_string()).unwrap_or_default();
        let mut invocation = self.script.prepare_invoke();
        for key in self.keys.for_call(call.account_id, call.key_id, call.windows) {
            invocation.key(key);
        }
        invocation
            .arg(format!("{:.3}", call.request.now_ms))
            .arg(call.key_id)
            .arg(call.request_id)
            .arg(if take { "1" } else { "0" })
            .arg(opt(limits.quota))
            .arg(opt(limits.account_floor))
            .arg(opt(limits.daily))
            .arg(opt(limits.monthly))
            .arg(opt(limits.rpm))
            .arg(opt(limits.tpm))
            .arg(call.request.tokens)
            .arg(call.request.cost)
            .arg(call.hold_ttl_ms);
        let mut conn = self.conn.clone();
        let reply: Vec<String> = self.bounded(invocation.invoke_async(&mut conn)).await?;
        parse(&reply, call)
    }

    async fn bounded<T>(&self, op: impl Future<Output = redis::RedisResult<T>>) -> Result<T, StateError> {
        tokio::time::timeout(self.op_timeout, op)
            .await
            .map_err(|_| StateError::Timeout)?
            .map_err(|e| StateError::Unavailable(e.to_string()))
    }
}

/// Reads the script's reply (see its header for the layout).
fn parse(reply: &[String], call: &CounterCall<'_>) -> Result<CounterOutcome, StateError> {
    let bad = || StateError::Unavailable(format!("unexpected counter reply {reply:?}"));
    if reply.len() != 12 {
        return Err(bad());
    }
    let int = |i: usize| -> Result<Option<i64>, StateError> {
        if reply[i].is_empty() { Ok(None) } else { reply[i].parse().map(Some).map_err(|_| bad()) }
    };
    let failures = reply[0]
        .bytes()
        .map(|b| CounterCheck::from_code(i64::from(b) - i64::from(b'0')).ok_or_else(bad))
        .collect::<Result<Vec<_>, _>>()?;
    let rate = |limit: Option<i64>, base: usize, check: CounterCheck| -> Result<Option<RateOutcome>, StateError> {
        let Some(limit) = limit else { return Ok(None) };
        let reset_at_ms = int(base + 1)?.ok_or_else(bad)? as f64;
        Ok(Some(RateOutcome {
            limit,
            remaining: int(base)?.ok_or_else(bad)?,
            reset_at_ms,
            retry_after_ms: int(base + 2)?.map(|ms| ms as f64),
            new_tat: reset_at_ms,
            passed: !failures.contains(&check),
        }))
    };
    let limits = &call.request.limits;
    Ok(CounterOutcome {
        quota_remaining: int(1)?,
        account_remaining: int(2)?,
        daily_remaining: int(3)?,
        monthly_remaining: int(4)?,
        hold: int(5)?.unwrap_or(0),
        rpm: rate(limits.rpm, 6, CounterCheck::Rpm)?,
        tpm: rate(limits.tpm, 9, CounterCheck::Tpm)?,
        failures,
    })
}

#[async_trait]
impl Counters for RedisCounters {
    async fn authorize(&self, call: &CounterCall<'_>) -> Result<CounterOutcome, StateError> {
        self.run(call, true).await
    }

    async fn peek(&self, call: &CounterCall<'_>) -> Result<CounterOutcome, StateError> {
        self.run(call, false).await
    }

    async fn settle(&self, settlement: &Settlement<'_>) -> Result<bool, StateError> {
        let mut invocation = self.settle_script.prepare_invoke();
        for key in self.keys.for_settlement(settlement) {
            invocation.key(key);
        }
        invocation
            .arg(settlement.request_id)
            .arg(settlement.cost)
            .arg(settlement.windows.day_end / 1000)
            .arg(settlement.windows.month_end / 1000)
            .arg(SETTLED_MEMORY_MS);
        let mut conn = self.conn.clone();
        let applied: i64 = self.bounded(invocation.invoke_async(&mut conn)).await?;
        Ok(applied == 1)
    }

    async fn adjust_balance(&self, account_id: &str, credits: i64) -> Result<(), StateError> {
        let mut conn = self.conn.clone();
        self.bounded(redis::AsyncCommands::incr::<_, _, ()>(&mut conn, self.keys.balance(account_id), credits)).await
    }
}
