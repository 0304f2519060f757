//! Adding (or taking) credits: once per request id in the ledger, then once in the balance
//! authz reads.

use std::sync::Arc;

use tollgate_core::clock::Clock;
use tollgate_ports::counters::MoneyCounters;
use tollgate_store::metering::{CreditGrant, MeteringStore};

use crate::directory::KeyDirectory;
use crate::error::MeteringResult;
use crate::queries::{AccountBalance, credit_limit};

/// A credit change to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRequest {
    pub account_id: String,
    /// The idempotency id: a retry with the same one changes nothing.
    pub request_id: String,
    pub credits: i64,
    pub reason: String,
    /// Who asked, for the audit trail.
    pub actor: String,
}

/// Changes balances.
pub struct Credits {
    store: Arc<dyn MeteringStore>,
    counters: Arc<dyn MoneyCounters>,
    directory: KeyDirectory,
    clock: Arc<dyn Clock>,
}

impl Credits {
    pub fn new(
        store: Arc<dyn MeteringStore>,
        counters: Arc<dyn MoneyCounters>,
        directory: KeyDirectory,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self { store, counters, directory, clock }
    }

    /// Adds (or takes) credits once per request id; returns the balance after.
    pub async fn add(&self, request: GrantRequest) -> MeteringResult<AccountBalance> {
        let credit_limit = credit_limit(&self.directory, &request.account_id).await?;
        let grant = CreditGrant {
            account_id: request.account_id,
            request_id: request.request_id,
            credits: request.credits,
            reason: request.reason,
            actor: request.actor,
            time: self.clock.now_micros(),
        };
        let (applied, balance) = self.store.add_credits(&grant).await?;
        // Also for a retry: if the first attempt committed but died before this step, the
        // retry finishes it; the grant's marker keeps it from counting twice.
        self.counters.credit_once(&grant.account_id, &grant_marker(&grant.request_id), grant.credits).await?;
        if applied {
            tracing::info!(
                target: "audit",
                actor = %grant.actor,
                action = "AddCredits",
                resource = %tollgate_core::names::account(&grant.account_id),
                credits = grant.credits,
                request_id = %grant.request_id,
                "credits changed"
            );
        }
        Ok(AccountBalance { account_id: grant.account_id, balance, credit_limit })
    }
}

/// The id a credit grant is remembered by in the counters.
pub(crate) fn grant_marker(request_id: &str) -> String {
    format!("grant:{request_id}")
}
