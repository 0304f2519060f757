//! Where the Redis counters adapter ([`crate::redis_counters`]) keeps each counter.
//!
//! Redis layout under prefix `P`, all keys of an account sharing the hash tag `{account}`:
//!
//! | key | type | meaning |
//! |---|---|---|
//! | `P:{A}:k:K` | hash | key K's lifetime spend (`used`), GCRA arrival times (`rpm`, `tpm`, ms), the day and month of its latest spend (`d` = YYYYMMDD, `m` = YYYYMM) and its spend in them (`ds`, `ms`) |
//! | `P:{A}:held` | hash | credits held per key id, `*` for the account |
//! | `P:{A}:holds` | hash | request id → `key id|credits` |
//! | `P:{A}:holdexp` | zset | request id by hold expiry (ms) |
//! | `P:{A}:bal` | int | the account's balance |
//! | `P:{A}:committed:C:D` | string | ledger commit C's calls of day D were settled together (`all`), or some one by one after a redelivery (`part`); kept 15 minutes |
//! | `P:{A}:settled:R` | string | request R was settled on its own (a redelivery; kept 15 minutes) |
//! | `P:{A}:credited:R` | string | credit grant R was added to the balance (kept 7 days) |
//! | `P:{A}:reconciling` | string | `tollgate metering reconcile` is rewriting the account's counters: settling and crediting wait (expires by itself) |
//! | `P:{T}:rebuilt` | string | the rebuilt marker of the account's slot (see [`crate::rebuild`]): without it nothing is counted |

/// Redis key names of the counters.
#[derive(Debug, Clone)]
pub struct CounterKeys {
    prefix: String,
}

impl CounterKeys {
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned() }
    }

    /// The marker of a ledger commit's calls of one account and day, settled together.
    pub fn committed(&self, account_id: &str, commit_id: i64, day: &str) -> String {
        self.account(account_id, &format!("committed:{commit_id}:{day}"))
    }

    /// The marker of a call settled on its own.
    pub fn settled(&self, account_id: &str, request_id: &str) -> String {
        self.account(account_id, &format!("settled:{request_id}"))
    }

    fn account(&self, account_id: &str, suffix: &str) -> String {
        format!("{}:{{{account_id}}}:{suffix}", self.prefix)
    }

    /// The account balance.
    pub fn balance(&self, account_id: &str) -> String {
        self.account(account_id, "bal")
    }

    /// A key's counters hash (`used`, `rpm`, `tpm`, `d`/`ds`, `m`/`ms`).
    pub fn key_counters(&self, account_id: &str, key_id: &str) -> String {
        format!("{}:{{{account_id}}}:k:{key_id}", self.prefix)
    }

    /// Present while a reconciliation rewrites the account's counters.
    pub fn reconciling(&self, account_id: &str) -> String {
        self.account(account_id, "reconciling")
    }

    /// The marker of a credit grant applied to the balance.
    pub fn credited(&self, account_id: &str, grant_id: &str) -> String {
        self.account(account_id, &format!("credited:{grant_id}"))
    }

    /// The account's keys both scripts take, in their order: held credits, holds, hold
    /// expiries, balance.
    pub fn for_account(&self, account_id: &str) -> [String; 4] {
        ["held", "holds", "holdexp", "bal"].map(|suffix| self.account(account_id, suffix))
    }

    /// The keys `authorize.lua` takes, in its order: the key's counters, then the account's.
    pub fn for_call(&self, account_id: &str, key_id: &str) -> [String; 5] {
        let [held, holds, holdexp, balance] = self.for_account(account_id);
        [self.key_counters(account_id, key_id), held, holds, holdexp, balance]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_call_shares_the_account_hash_tag() {
        for key in CounterKeys::new("tg").for_call("acme", "k1") {
            assert!(key.starts_with("tg:{acme}:"), "{key}");
        }
    }
}
