//! The metering-store conformance suite: every check runs against SQLite and Postgres.

use tollgate_store::metering::{
    CreditGrant, MeteringStore, Outcome, SqlMeteringStore, Totals, UsageCursor, UsageEntry, UsageFilter, UsageScope,
};
use tollgate_store::{Database, DatabaseConfig};
use tollgate_test_support::TestDatabase;

#[allow(dead_code)]
enum Guard {
    Sqlite(tempfile::TempDir),
    Postgres(TestDatabase),
}

async fn sqlite_store() -> (SqlMeteringStore, Guard) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("metering.db").display());
    let store = SqlMeteringStore::new(Database::connect(&DatabaseConfig::new(url, "metering")).await.unwrap());
    store.migrate().await.unwrap();
    (store, Guard::Sqlite(dir))
}

async fn postgres_store() -> Option<(SqlMeteringStore, Guard)> {
    let db = TestDatabase::create().await?;
    let store =
        SqlMeteringStore::new(Database::connect(&DatabaseConfig::new(db.url.clone(), "metering")).await.unwrap());
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    Some((store, Guard::Postgres(db)))
}

tollgate_test_support::conformance_suite!(
    checks: [
        a_batch_charges_once_and_duplicates_return_the_stored_charge,
        totals_windows_and_balances_add_up,
        credit_grants_apply_once,
        usage_lists_newest_first_with_filters_and_cursors,
        buckets_sum_per_width_and_model,
        large_batches_span_several_statements,
        key_totals_read_the_same_before_and_after_folding,
        a_ledger_snapshot_holds_totals_and_recent_commits_and_grants,
    ],
    adapters: {
        sqlite => async { Some(super::sqlite_store().await) },
        postgres => super::postgres_store(),
    }
);

const T0: i64 = 1_800_000_000_000_000;
const MINUTE: i64 = 60_000_000;

fn entry(account: &str, key: &str, request_id: &str, credits: i64, end_time: i64) -> UsageEntry {
    UsageEntry {
        request_id: request_id.into(),
        account_id: account.into(),
        application_id: "app".into(),
        key_id: key.into(),
        model: "m1".into(),
        input_tokens: credits,
        output_tokens: 1,
        cached_input_tokens: 0,
        credits,
        outcome: Outcome::Success,
        start_time: end_time - 1_000,
        end_time,
        day: "20270115".into(),
        month: "202701".into(),
    }
}

async fn a_batch_charges_once_and_duplicates_return_the_stored_charge(store: SqlMeteringStore) {
    let batch = vec![entry("a", "k1", "r1", 10, T0), entry("a", "k1", "r2", 5, T0 + 1)];
    let first = store.apply_usage(&batch, T0).await.unwrap();
    assert!(first.iter().all(|c| c.new));
    // The same calls again, one with another price: the stored charge wins, nothing adds.
    let again =
        vec![entry("a", "k1", "r2", 999, T0 + 1), entry("a", "k1", "r1", 10, T0), entry("a", "k1", "r3", 1, T0)];
    let second = store.apply_usage(&again, T0).await.unwrap();
    let summary: Vec<(&str, i64, bool)> = second.iter().map(|c| (c.request_id.as_str(), c.credits, c.new)).collect();
    assert_eq!(summary, [("r2", 5, false), ("r1", 10, false), ("r3", 1, true)]);
    assert_eq!(store.balance("a").await.unwrap().credits_spent, 16);
    // Each charge names the commit that made it: a duplicate names the first one.
    assert!(first[0].commit_id > 0 && first[1].commit_id == first[0].commit_id);
    let commits: Vec<i64> = second.iter().map(|c| c.commit_id).collect();
    assert_eq!(&commits[..2], [first[0].commit_id; 2]);
    assert_ne!(commits[2], first[0].commit_id, "a new commit for the new call");
    // A call twice in one batch is charged once.
    let twice = store.apply_usage(&[entry("a", "k1", "r4", 3, T0), entry("a", "k1", "r4", 3, T0)], T0).await.unwrap();
    assert_eq!(twice.iter().map(|c| c.new).collect::<Vec<_>>(), [true, false]);
    assert_eq!(store.balance("a").await.unwrap().credits_spent, 19);
    // The same request id in another account is another call.
    let other = store.apply_usage(&[entry("b", "k9", "r1", 7, T0)], T0).await.unwrap();
    assert!(other[0].new);
    assert_eq!(store.balance("b").await.unwrap().credits_spent, 7);
}

async fn totals_windows_and_balances_add_up(store: SqlMeteringStore) {
    let on = |mut e: UsageEntry, day: &str, month: &str| {
        (e.day, e.month) = (day.into(), month.into());
        e
    };
    store.apply_usage(&[entry("a", "k1", "r1", 10, T0), entry("a", "k2", "r2", 5, T0 + 1)], T0).await.unwrap();
    let k1 = store.key_totals("a", "k1", "20270115", "202701").await.unwrap();
    assert_eq!((k1.used, k1.day, k1.month), (10, 10, 10));
    // The next day, in one batch with a late call of the day before: the new day starts
    // with the new call; the late one counts in the month and in the key's life.
    let batch = vec![
        on(entry("a", "k1", "r3", 3, T0 + 2), "20270116", "202701"),
        on(entry("a", "k1", "r4", 4, T0 + 3), "20270115", "202701"),
    ];
    store.apply_usage(&batch, T0).await.unwrap();
    let k1 = store.key_totals("a", "k1", "20270116", "202701").await.unwrap();
    assert_eq!((k1.used, k1.day, k1.month), (17, 3, 17));
    assert_eq!(store.key_totals("a", "k1", "20270115", "202701").await.unwrap().day, 0, "a past day is not current");
    // A late call alone does not move the window back.
    store.apply_usage(&[on(entry("a", "k1", "r5", 1, T0 + 4), "20270115", "202701")], T0).await.unwrap();
    let k1 = store.key_totals("a", "k1", "20270116", "202701").await.unwrap();
    assert_eq!((k1.used, k1.day, k1.month), (18, 3, 18));
    // A new month starts its window afresh.
    store.apply_usage(&[on(entry("a", "k1", "r6", 2, T0 + 5), "20270201", "202702")], T0).await.unwrap();
    let k1 = store.key_totals("a", "k1", "20270201", "202702").await.unwrap();
    assert_eq!((k1.used, k1.day, k1.month), (20, 2, 2));
    let none = store.key_totals("a", "nope", "20270115", "202701").await.unwrap();
    assert_eq!((none.used, none.day, none.month), (0, 0, 0));
    let all = store.ledger_snapshot("20270201", "202702", T0, T0).await.unwrap().keys;
    let rows: Vec<(&str, i64, i64, i64)> =
        all.iter().map(|r| (r.key_id.as_str(), r.totals.used, r.totals.day, r.totals.month)).collect();
    assert_eq!(rows, [("k1", 20, 2, 2), ("k2", 5, 0, 0)]);
    let balances = store.all_balances().await.unwrap();
    assert_eq!(balances.len(), 1);
    assert_eq!((balances[0].0.as_str(), balances[0].1.balance()), ("a", -25));
}

async fn credit_grants_apply_once(store: SqlMeteringStore) {
    let grant = CreditGrant {
        account_id: "a".into(),
        request_id: "g1".into(),
        credits: 100,
        reason: "top-up".into(),
        actor: "ops".into(),
        time: T0,
    };
    let (applied, balance) = store.add_credits(&grant).await.unwrap();
    assert!(applied);
    assert_eq!(balance.balance(), 100);
    let (applied, balance) = store.add_credits(&grant).await.unwrap();
    assert!(!applied, "a retry adds nothing");
    assert_eq!(balance.balance(), 100);
    let take = CreditGrant { request_id: "g2".into(), credits: -30, time: T0 + 1, ..grant.clone() };
    assert_eq!(store.add_credits(&take).await.unwrap().1.balance(), 70);
    store.apply_usage(&[entry("a", "k1", "r1", 20, T0)], T0).await.unwrap();
    let balance = store.balance("a").await.unwrap();
    assert_eq!((balance.credits_added, balance.credits_spent, balance.balance()), (70, 20, 50));
    assert_eq!(store.balance("unknown").await.unwrap().balance(), 0);
    let (page, more) = store.list_credit_grants("a", None, 1).await.unwrap();
    assert_eq!((page[0].request_id.as_str(), page[0].credits, more), ("g2", -30, true));
    let after = Some((page[0].time, page[0].request_id.clone()));
    let (rest, more) = store.list_credit_grants("a", after, 10).await.unwrap();
    assert_eq!((rest.len(), rest[0].request_id.as_str(), rest[0].actor.as_str(), more), (1, "g1", "ops", false));
    assert!(store.list_credit_grants("b", None, 10).await.unwrap().0.is_empty());
}

async fn a_ledger_snapshot_holds_totals_and_recent_commits_and_grants(store: SqlMeteringStore) {
    let grant = |request_id: &str, time| CreditGrant {
        account_id: "a".into(),
        request_id: request_id.into(),
        credits: 100,
        reason: "top-up".into(),
        actor: "ops".into(),
        time,
    };
    store.add_credits(&grant("old", T0 - 10 * MINUTE)).await.unwrap();
    store.add_credits(&grant("new", T0)).await.unwrap();
    let old = store.apply_usage(&[entry("a", "k1", "r1", 10, T0)], T0 - 10 * MINUTE).await.unwrap();
    let new = store
        .apply_usage(&[entry("a", "k1", "r2", 5, T0), entry("b", "k2", "r3", 7, T0), entry("a", "k2", "r4", 1, T0)], T0)
        .await
        .unwrap();
    let snapshot = store.ledger_snapshot("20270115", "202701", T0 - MINUTE, T0 - MINUTE).await.unwrap();
    let balances: Vec<(&str, i64)> = snapshot.balances.iter().map(|(a, b)| (a.as_str(), b.balance())).collect();
    assert_eq!(balances, [("a", 200 - 16), ("b", -7)]);
    let keys: Vec<(&str, &str, i64)> =
        snapshot.keys.iter().map(|r| (r.account_id.as_str(), r.key_id.as_str(), r.totals.used)).collect();
    assert_eq!(keys, [("a", "k1", 15), ("a", "k2", 1), ("b", "k2", 7)]);
    // Only what was applied since the time asked for; one commit per account and day.
    let commit = new[0].commit_id;
    assert_ne!(commit, old[0].commit_id);
    let day = "20270115".to_owned();
    assert_eq!(snapshot.commits, [("a".to_owned(), commit, day.clone()), ("b".to_owned(), commit, day)]);
    assert_eq!(snapshot.grants, [("a".to_owned(), "new".to_owned())]);
}

async fn usage_lists_newest_first_with_filters_and_cursors(store: SqlMeteringStore) {
    let mut batch: Vec<UsageEntry> = (0..5).map(|i| entry("a", "k1", &format!("r{i}"), 1, T0 + i * MINUTE)).collect();
    batch[3].key_id = "k2".into();
    batch[4].model = "m2".into();
    // Two calls ending at the same instant still page in a stable order.
    batch.push(entry("a", "k1", "r9", 1, T0 + 2 * MINUTE));
    batch.push(entry("other", "k1", "x", 1, T0));
    store.apply_usage(&batch, T0).await.unwrap();
    let filter = UsageFilter { account_id: "a".into(), ..Default::default() };
    let mut seen = Vec::new();
    let mut after: Option<UsageCursor> = None;
    loop {
        let (page, more) = store.list_usage(&filter, after.as_ref(), 2).await.unwrap();
        seen.extend(page.iter().map(|e| e.request_id.clone()));
        if !more {
            break;
        }
        let last = page.last().unwrap();
        after = Some(UsageCursor { end_time: last.end_time, request_id: last.request_id.clone() });
    }
    assert_eq!(seen, ["r4", "r3", "r9", "r2", "r1", "r0"]);
    let by_key = UsageFilter { key_id: Some("k2".into()), ..filter.clone() };
    assert_eq!(store.list_usage(&by_key, None, 10).await.unwrap().0.len(), 1);
    let by_model = UsageFilter { model: Some("m2".into()), ..filter.clone() };
    assert_eq!(store.list_usage(&by_model, None, 10).await.unwrap().0[0].request_id, "r4");
    let by_time = UsageFilter { start_time: Some(T0 + MINUTE), end_time: Some(T0 + 3 * MINUTE), ..filter.clone() };
    let ids: Vec<String> =
        store.list_usage(&by_time, None, 10).await.unwrap().0.into_iter().map(|e| e.request_id).collect();
    assert_eq!(ids, ["r9", "r2", "r1"]);
    let by_app = UsageFilter { application_id: Some("nope".into()), ..filter };
    assert!(store.list_usage(&by_app, None, 10).await.unwrap().0.is_empty());
}

async fn buckets_sum_per_width_and_model(store: SqlMeteringStore) {
    let hour = 60 * MINUTE;
    let base = T0 / hour * hour;
    let mut batch = vec![
        entry("a", "k1", "r1", 2, base + MINUTE),
        entry("a", "k1", "r2", 3, base + 20 * MINUTE),
        entry("a", "k2", "r3", 4, base + hour + MINUTE),
    ];
    batch[1].model = "m2".into();
    store.apply_usage(&batch, T0).await.unwrap();
    let rows = store.usage_buckets(&UsageScope::Account("a".into()), base, base + 2 * hour, hour).await.unwrap();
    let got: Vec<(i64, &str, i64, i64)> = rows
        .iter()
        .map(|r| ((r.start - base) / MINUTE, r.model.as_str(), r.totals.requests, r.totals.credits))
        .collect();
    assert_eq!(got, [(0, "m1", 1, 2), (0, "m2", 1, 3), (60, "m1", 1, 4)]);
    let key =
        store.usage_buckets(&UsageScope::Key("a".into(), "k2".into()), base, base + 2 * hour, hour).await.unwrap();
    assert_eq!(key.len(), 1);
    let app =
        store.usage_buckets(&UsageScope::Application("a".into(), "app".into()), base, base + hour, hour).await.unwrap();
    let mut sum = Totals::default();
    app.iter().for_each(|r| sum.add(&r.totals));
    assert_eq!((sum.requests, sum.credits, sum.output_tokens), (2, 5, 2));
}

async fn large_batches_span_several_statements(store: SqlMeteringStore) {
    let batch: Vec<UsageEntry> =
        (0..1_200).map(|i| entry("a", &format!("k{}", i % 300), &format!("r{i}"), 1, T0 + i)).collect();
    let charges = store.apply_usage(&batch, T0).await.unwrap();
    assert_eq!(charges.len(), 1_200);
    assert!(charges.iter().all(|c| c.new));
    assert_eq!(store.balance("a").await.unwrap().credits_spent, 1_200);
    assert_eq!(store.key_totals("a", "k7", "20270115", "202701").await.unwrap().used, 4);
    let again = store.apply_usage(&batch, T0).await.unwrap();
    assert!(again.iter().all(|c| !c.new));
    assert_eq!(store.balance("a").await.unwrap().credits_spent, 1_200);
}

/// Batches record what they add to keys and accounts as pending rows, folded into their rows
/// every 16 batches; reads add both, so they never change when a fold happens.
async fn key_totals_read_the_same_before_and_after_folding(store: SqlMeteringStore) {
    let (mut used, mut day_spend) = (0, 0);
    for i in 0..20i64 {
        let day = if i < 10 { "20270115" } else { "20270116" };
        let mut call = entry("a", "k1", &format!("r{i}"), i + 1, T0 + i);
        call.day = day.into();
        let other = entry("a", &format!("k{}", 2 + i % 3), &format!("o{i}"), 100, T0 + i);
        store.apply_usage(&[call, other], T0).await.unwrap();
        used += i + 1;
        day_spend = if i == 10 { i + 1 } else { day_spend + i + 1 };
        let k1 = store.key_totals("a", "k1", day, "202701").await.unwrap();
        assert_eq!((k1.used, k1.day, k1.month), (used, day_spend, used), "after batch {i}");
        let spent = store.balance("a").await.unwrap().credits_spent;
        assert_eq!(spent, used + 100 * (i + 1), "the account's spend after batch {i}");
    }
    assert_eq!(store.fold_pending().await.unwrap(), 4, "16 batches were folded already, 4 are pending");
    assert_eq!(store.fold_pending().await.unwrap(), 0);
    // Housekeeping folds what the last batches left.
    store.apply_usage(&[entry("a", "k2", "idle", 100, T0)], T0).await.unwrap();
    assert_eq!(store.fold_pending().await.unwrap(), 1);
    assert_eq!(store.fold_pending().await.unwrap(), 0, "nothing left pending");
    let k1 = store.key_totals("a", "k1", "20270116", "202701").await.unwrap();
    assert_eq!((k1.used, k1.day, k1.month), (used, day_spend, used));
    let all = store.ledger_snapshot("20270116", "202701", T0, T0).await.unwrap().keys;
    let rows: Vec<(&str, i64)> = all.iter().map(|r| (r.key_id.as_str(), r.totals.used)).collect();
    assert_eq!(rows, [("k1", used), ("k2", 800), ("k3", 700), ("k4", 600)]);
    assert_eq!(store.balance("a").await.unwrap().credits_spent, used + 2_100);
}
