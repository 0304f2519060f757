//! Counters on Redis: one EVALSHA of `lua/authorize.lua` per call.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use foldhash::HashMap;
use redis::Script;
use tollgate_core::counters::{CounterCheck, CounterOutcome, RateOutcome};
use tollgate_core::throttle::Throttle;
use tollgate_core::windows::Windows;

use tollgate_ports::StateError;
use tollgate_ports::counters::{
    CREDITED_MEMORY_MS, CallCounters, CounterCall, CounterRebuild, CounterRestore, KeySpend, MoneyCounters,
    RECONCILE_PAUSE_MS, SETTLED_MEMORY_MS, Settlement, SpendCounters,
};

use crate::counters::CounterKeys;
use crate::rebuild::RebuildMarkers;
use crate::redis::RedisState;
use crate::redis_conn::{RedisConn, script_cmd};

/// Counters on the Redis behind a [`RedisState`].
#[derive(Clone)]
pub struct RedisCounters {
    conn: RedisConn,
    keys: CounterKeys,
    markers: RebuildMarkers,
    /// Who holds the right to rebuild: `P:{rebuild}:lock`.
    rebuild_lock: String,
    /// Set by a script that found its marker gone: `P:{rebuild}:wanted`, so a lost slot the
    /// watch's sample misses is rebuilt too.
    rebuild_wanted: String,
    /// It is set at most once a second per process.
    wanted: Arc<Throttle>,
    script: Arc<Script>,
    settle_script: Arc<Script>,
    credit_script: Arc<Script>,
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
            markers: RebuildMarkers::new(state.prefix()),
            rebuild_lock: format!("{}:{{rebuild}}:lock", state.prefix()),
            rebuild_wanted: format!("{}:{{rebuild}}:wanted", state.prefix()),
            wanted: Arc::default(),
            script: Arc::new(Script::new(include_str!("lua/authorize.lua"))),
            settle_script: Arc::new(Script::new(include_str!("lua/settle.lua"))),
            credit_script: Arc::new(Script::new(include_str!("lua/credit.lua"))),
            op_timeout,
        }
    }

    #[tracing::instrument(name = "counter script", level = "debug", skip_all, fields(otel.kind = "client", db.system = "redis"))]
    async fn run(&self, call: &CounterCall<'_>, take: bool) -> Result<CounterOutcome, StateError> {
        let limits = &call.request.limits;
        let opt = |value: Option<i64>| value.map(|v| v.to_string()).unwrap_or_default();
        let mut invocation = self.script.prepare_invoke();
        for key in self.keys.for_call(call.account_id, call.key_id) {
            invocation.key(key);
        }
        invocation.key(self.markers.for_account(call.account_id));
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
            .arg(call.hold_ttl_ms)
            .arg(&call.windows.day)
            .arg(&call.windows.month);
        let mut conn = self.conn.clone();
        let reply: Vec<String> = self.bounded(invocation.invoke_async(&mut conn)).await?;
        if reply.len() == 1 && reply[0] == "lost" {
            self.want_rebuild();
            return Err(StateError::CountersLost);
        }
        parse(&reply, call)
    }

    /// One `settle.lua` call per account, window pair and commit of `settlements` (`members`:
    /// indexes into `settlements`), by commit marker or (`per_call`) with a marker per call.
    fn settle_invocation<'s>(
        &'s self,
        settlements: &[Settlement<'_>],
        members: &[usize],
        per_call: bool,
    ) -> redis::ScriptInvocation<'s> {
        let first = &settlements[members[0]];
        let account_id = first.account_id;
        let mut key_ids: Vec<&str> = Vec::new();
        let mut index_of: HashMap<&str, usize> = HashMap::default();
        let mut calls = Vec::with_capacity(members.len());
        for &i in members {
            let key_id = settlements[i].key_id;
            let index = *index_of.entry(key_id).or_insert_with(|| {
                key_ids.push(key_id);
                key_ids.len()
            });
            calls.push((i, index));
        }
        let mut invocation = self.settle_script.prepare_invoke();
        for key in self.keys.for_account(account_id) {
            invocation.key(key);
        }
        invocation.key(self.keys.committed(account_id, first.commit_id, first.day));
        for key_id in &key_ids {
            invocation.key(self.keys.key_counters(account_id, key_id));
        }
        if per_call {
            for &i in members {
                invocation.key(self.keys.settled(account_id, settlements[i].request_id));
            }
        }
        invocation.key(self.markers.for_account(account_id));
        invocation.key(self.keys.reconciling(account_id));
        invocation
            .arg(if per_call { "calls" } else { "commit" })
            .arg(members.len())
            .arg(key_ids.len())
            .arg(first.day)
            .arg(first.month)
            .arg(SETTLED_MEMORY_MS);
        if per_call {
            for (i, index) in calls {
                invocation.arg(settlements[i].request_id).arg(settlements[i].cost).arg(index);
            }
        } else {
            // All of them settle: the script needs the request ids (holds) and each key's sum.
            let mut key_costs = vec![0i64; key_ids.len()];
            for (i, index) in calls {
                invocation.arg(settlements[i].request_id);
                key_costs[index - 1] += settlements[i].cost;
            }
            for cost in key_costs {
                invocation.arg(cost);
            }
        }
        invocation
    }

    /// Runs one pipeline of `settle.lua` calls, one per group; returns each call's reply.
    async fn settle_groups(
        &self,
        settlements: &[Settlement<'_>],
        groups: &[(Vec<usize>, bool)],
    ) -> Result<Vec<String>, StateError> {
        let commands = groups
            .iter()
            .map(|(members, per_call)| {
                let slot_key = self.keys.balance(settlements[members[0]].account_id).into_bytes();
                (slot_key, script_cmd(&self.settle_invocation(settlements, members, *per_call)))
            })
            .collect();
        // The markers make a resend after NOSCRIPT harmless.
        self.conn.query_by_slot(commands, Some(&self.settle_script), self.op_timeout).await
    }

    /// Asks metering's watch for a rebuild (at most once a second, without waiting): this
    /// call's slot lost its marker.
    fn want_rebuild(&self) {
        if self.wanted.now(std::time::Duration::from_secs(1)).is_none() {
            return;
        }
        let (mut conn, key, timeout) = (self.conn.clone(), self.rebuild_wanted.clone(), self.op_timeout);
        tokio::spawn(async move {
            let mut set = redis::cmd("SET");
            set.arg(&key).arg("1").arg("PX").arg(60_000);
            if let Ok(Err(error)) = tokio::time::timeout(timeout, set.query_async::<()>(&mut conn)).await {
                tracing::debug!(%error, "cannot ask for a rebuild of the counters");
            }
        });
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
impl CallCounters for RedisCounters {
    async fn authorize(&self, call: &CounterCall<'_>) -> Result<CounterOutcome, StateError> {
        self.run(call, true).await
    }

    async fn peek(&self, call: &CounterCall<'_>) -> Result<CounterOutcome, StateError> {
        self.run(call, false).await
    }
}

#[async_trait]
impl MoneyCounters for RedisCounters {
    async fn settle(&self, settlement: &Settlement<'_>) -> Result<bool, StateError> {
        let applied = self.settle_batch(std::slice::from_ref(settlement)).await?;
        Ok(applied.first().copied().unwrap_or(false))
    }

    async fn settle_batch(&self, settlements: &[Settlement<'_>]) -> Result<Vec<bool>, StateError> {
        if settlements.is_empty() {
            return Ok(Vec::new());
        }
        // One script call per account, window pair and commit, in one pipeline: one round
        // trip for the whole batch. Each call touches one account's hash slot, so the pipeline
        // works on Redis Cluster.
        let mut groups: Vec<(Vec<usize>, bool)> = Vec::new();
        let mut group_of: HashMap<(&str, &str, i64, bool), usize> = HashMap::default();
        for (i, s) in settlements.iter().enumerate() {
            let whole = s.whole_commit && s.commit_id != 0;
            let group = *group_of.entry((s.account_id, s.day, s.commit_id, whole)).or_insert_with(|| {
                groups.push((Vec::new(), !whole));
                groups.len() - 1
            });
            groups[group].0.push(i);
        }
        let mut applied = vec![false; settlements.len()];
        let mut record = |members: &[usize], reply: &str| {
            for (member, flag) in members.iter().zip(reply.bytes()) {
                applied[*member] = flag == b'1';
            }
        };
        // A commit some of whose calls a redelivery settled one by one is answered 'calls':
        // those groups go again, call by call (which never answers 'calls').
        let replies = self.settle_groups(settlements, &groups).await?;
        // Groups that did settle are remembered by their markers: a retry skips them.
        if replies.iter().any(|reply| reply == "lost") {
            self.want_rebuild();
        }
        if replies.iter().any(|reply| reply == "paused" || reply == "lost") {
            return Err(StateError::Reconciling);
        }
        let mut again = Vec::new();
        for ((members, _), reply) in groups.into_iter().zip(replies) {
            match reply.as_str() {
                "calls" => again.push((members, true)),
                flags => record(&members, flags),
            }
        }
        if !again.is_empty() {
            let replies = self.settle_groups(settlements, &again).await?;
            for ((members, _), reply) in again.iter().zip(replies) {
                record(members, &reply);
            }
        }
        Ok(applied)
    }

    async fn credit_once(&self, account_id: &str, grant_id: &str, credits: i64) -> Result<bool, StateError> {
        let mut invocation = self.credit_script.prepare_invoke();
        invocation
            .key(self.keys.balance(account_id))
            .key(self.keys.credited(account_id, grant_id))
            .key(self.keys.reconciling(account_id))
            .key(self.markers.for_account(account_id))
            .arg(credits)
            .arg(CREDITED_MEMORY_MS);
        let mut conn = self.conn.clone();
        match self.bounded(invocation.invoke_async::<i64>(&mut conn)).await? {
            -1 => Err(StateError::Reconciling),
            -2 => {
                self.want_rebuild();
                Err(StateError::Reconciling)
            }
            applied => Ok(applied == 1),
        }
    }
}

#[async_trait]
impl SpendCounters for RedisCounters {
    async fn key_spend(
        &self,
        account_id: &str,
        key_ids: &[String],
        windows: &Windows,
    ) -> Result<Vec<KeySpend>, StateError> {
        if key_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for key_id in key_ids {
            pipe.cmd("HMGET").arg(self.keys.key_counters(account_id, key_id)).arg(&["used", "d", "ds", "m", "ms"]);
        }
        let mut conn = self.conn.clone();
        let rows: Vec<(Option<i64>, Option<String>, Option<i64>, Option<String>, Option<i64>)> =
            self.bounded(pipe.query_async(&mut conn)).await?;
        // Spend in a window counts only while it is the one asked for.
        let spent_in = |kept: &Option<String>, spent: Option<i64>, window: &str| {
            if kept.as_deref() == Some(window) { spent.unwrap_or(0) } else { 0 }
        };
        Ok(rows
            .into_iter()
            .map(|(used, d, ds, m, ms)| KeySpend {
                used: used.unwrap_or(0),
                day: spent_in(&d, ds, &windows.day),
                month: spent_in(&m, ms, &windows.month),
            })
            .collect())
    }
}

#[async_trait]
impl CounterRebuild for RedisCounters {
    async fn pause_for_restore(&self, account_ids: &[String]) -> Result<(), StateError> {
        let commands = account_ids
            .iter()
            .map(|account_id| {
                let key = self.keys.reconciling(account_id);
                let mut set = redis::cmd("SET");
                set.arg(&key).arg("1").arg("PX").arg(RECONCILE_PAUSE_MS);
                (key.into_bytes(), set)
            })
            .collect();
        self.conn.query_by_slot::<redis::Value>(commands, None, self.op_timeout).await.map(drop)
    }

    async fn resume(&self, account_ids: &[String]) -> Result<(), StateError> {
        let commands = account_ids
            .iter()
            .map(|account_id| {
                let key = self.keys.reconciling(account_id);
                let mut del = redis::cmd("DEL");
                del.arg(&key);
                (key.into_bytes(), del)
            })
            .collect();
        self.conn.query_by_slot::<redis::Value>(commands, None, self.op_timeout).await.map(drop)
    }

    async fn restore(&self, restore: &CounterRestore<'_>) -> Result<(), StateError> {
        let windows = restore.windows;
        let account_id = restore.account_id;
        // MULTI/EXEC: every key shares the account's hash tag.
        let mut pipe = redis::pipe();
        pipe.atomic().set(self.keys.balance(account_id), restore.balance).ignore();
        for (commit_id, day) in &restore.commits {
            let marker = self.keys.committed(account_id, *commit_id, day);
            pipe.cmd("SET").arg(marker).arg("all").arg("PX").arg(SETTLED_MEMORY_MS).ignore();
        }
        for grant_id in &restore.grants {
            let marker = self.keys.credited(account_id, grant_id);
            pipe.cmd("SET").arg(marker).arg("1").arg("PX").arg(CREDITED_MEMORY_MS).ignore();
        }
        pipe.del(self.keys.reconciling(account_id)).ignore();
        for (key_id, spend) in &restore.keys {
            let fields = [
                ("used", spend.used.to_string()),
                ("d", windows.day.clone()),
                ("ds", spend.day.to_string()),
                ("m", windows.month.clone()),
                ("ms", spend.month.to_string()),
            ];
            pipe.hset_multiple(self.keys.key_counters(restore.account_id, key_id), &fields).ignore();
        }
        let mut conn = self.conn.clone();
        self.bounded(pipe.query_async::<()>(&mut conn)).await
    }

    async fn counters_intact(&self) -> Result<bool, StateError> {
        let mut conn = self.conn.clone();
        let wanted: bool = self.bounded(redis::cmd("EXISTS").arg(&self.rebuild_wanted).query_async(&mut conn)).await?;
        if wanted {
            return Ok(false);
        }
        let sample = self.markers.sample();
        if !self.conn.is_cluster() {
            // One server: one EXISTS of them all.
            let mut conn = self.conn.clone();
            let found: usize = self.bounded(redis::cmd("EXISTS").arg(&sample).query_async(&mut conn)).await?;
            return Ok(found == sample.len());
        }
        let commands = sample
            .into_iter()
            .map(|marker| {
                let mut exists = redis::cmd("EXISTS");
                exists.arg(&marker);
                (marker.into_bytes(), exists)
            })
            .collect();
        let found: Vec<i64> = self.conn.query_by_slot(commands, None, self.op_timeout).await?;
        Ok(found.iter().all(|&n| n == 1))
    }

    async fn mark_rebuilt(&self) -> Result<(), StateError> {
        // 16,384 small writes, a slice at a time: on a cluster each is a request of its own,
        // and all at once would queue past the time-out on a busy node.
        for slice in self.markers.all().chunks(1024) {
            let commands = slice
                .iter()
                .map(|marker| {
                    let mut set = redis::cmd("SET");
                    set.arg(marker).arg("1");
                    (marker.clone().into_bytes(), set)
                })
                .collect();
            self.conn.query_by_slot::<redis::Value>(commands, None, self.op_timeout * 4).await?;
        }
        let mut conn = self.conn.clone();
        self.bounded(redis::cmd("DEL").arg(&self.rebuild_wanted).query_async::<()>(&mut conn)).await
    }

    async fn try_lock_rebuild(&self, owner: &str, ttl: std::time::Duration) -> Result<bool, StateError> {
        let mut set = redis::cmd("SET");
        set.arg(&self.rebuild_lock).arg(owner).arg("NX").arg("PX").arg(ttl.as_millis() as u64);
        let mut conn = self.conn.clone();
        let taken: Option<String> = self.bounded(set.query_async(&mut conn)).await?;
        Ok(taken.is_some())
    }

    async fn unlock_rebuild(&self, owner: &str) -> Result<(), StateError> {
        let mut conn = self.conn.clone();
        let holder: Option<String> =
            self.bounded(redis::cmd("GET").arg(&self.rebuild_lock).query_async(&mut conn)).await?;
        if holder.as_deref() == Some(owner) {
            self.bounded(redis::cmd("DEL").arg(&self.rebuild_lock).query_async::<()>(&mut conn)).await?;
        }
        Ok(())
    }
}
