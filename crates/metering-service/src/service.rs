//! What the management RPCs do once authenticated: take usage reports, add credits, read
//! balances, list and replay dead letters.

use prost::Message;
use tollgate_core::validation::{check_request_id, check_text};
use tollgate_core::{Violations, names, page_token};
use tollgate_proto::metering::v1 as pb;
use tollgate_proto::time::timestamp;
use tollgate_store::metering::{Balance, CreditGrant};

use crate::MeteringCore;
use crate::error::{MeteringError, MeteringResult};
use crate::pricing::ModelLookup;
use crate::validate::{self, MAX_BATCH};

/// Longest RecordUsage waits to learn whether a report's key and model exist.
const CHECK_KNOWN_WITHIN: std::time::Duration = std::time::Duration::from_millis(250);

/// Most credits one AddCredits may add or take.
const MAX_GRANT: i64 = tollgate_core::money::MAX_CREDITS;

impl MeteringCore {
    /// Checks reports and enqueues them durably, all or none. `field` names them in errors:
    /// `report` for one, `reports` for a batch (`reports[3].model`).
    pub async fn record(&self, mut reports: Vec<pb::UsageReport>, field: &str) -> MeteringResult<usize> {
        let now = self.clock.now_micros();
        let mut v = Violations::new();
        if field == "reports" && (reports.is_empty() || reports.len() > MAX_BATCH) {
            v.add("reports", format!("must hold 1 to {MAX_BATCH} reports, got {}", reports.len()));
            return Err(v.into());
        }
        let single = reports.len() == 1 && field == "report";
        for (i, report) in reports.iter_mut().enumerate() {
            let name = if single { field.to_owned() } else { format!("{field}[{i}]") };
            validate::report(&mut v, &name, report, now);
        }
        v.into_result()?;
        let name = |i| if single { field.to_owned() } else { format!("{field}[{i}]") };
        // The check may not hold a report up: past this, it is taken and the worker decides.
        if let Ok(checked) = tokio::time::timeout(CHECK_KNOWN_WITHIN, self.check_known(&reports, name)).await {
            checked?;
        }
        let payloads: Vec<Vec<u8>> = reports.iter().map(Message::encode_to_vec).collect();
        self.queue.enqueue(&payloads).await?;
        Ok(payloads.len())
    }

    /// Refuses reports whose key or model the keys service says, now, does not exist: no
    /// worker could ever charge them. When it cannot tell (unreachable, or a model not in the
    /// catalog read a moment ago), the report is taken and the worker decides.
    async fn check_known(&self, reports: &[pb::UsageReport], name: impl Fn(usize) -> String) -> MeteringResult<()> {
        let ids: Vec<(String, String)> = reports
            .iter()
            .filter_map(|r| names::parse_key(&r.key).map(|(account, key)| (account.to_owned(), key.to_owned())))
            .collect();
        let mut v = Violations::new();
        // Models first: the first lookup of a fresh process reads the catalog, and only a read
        // made now can say a model does not exist.
        for (i, report) in reports.iter().enumerate() {
            if let Ok(ModelLookup::Unknown) = self.pricer.model(&report.model).await {
                v.add(format!("{}.model", name(i)), "is not in the model catalog");
            }
        }
        if let Ok(found) = self.pricer.keys(&ids).await {
            for (i, key) in found.iter().enumerate() {
                v.check(key.is_some(), format!("{}.key", name(i)), "is not a key of that account");
            }
        }
        Ok(v.into_result()?)
    }

    pub(crate) async fn credit_limit(&self, account_id: &str) -> MeteringResult<Option<i64>> {
        self.directory.credit_limit(account_id).await?.ok_or(MeteringError::NotFound("account"))
    }

    fn balance_proto(account_id: &str, balance: Balance, credit_limit: Option<i64>) -> pb::AccountBalance {
        pb::AccountBalance {
            account: names::account(account_id),
            balance: balance.balance(),
            credits_added: balance.credits_added,
            credits_spent: balance.credits_spent,
            credit_limit,
        }
    }

    /// Adds (or takes) credits once per request id, then the balance authz reads.
    pub async fn add_credits(&self, request: pb::AddCreditsRequest, actor: &str) -> MeteringResult<pb::AccountBalance> {
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
        let account_id = account_id.expect("checked");
        let credit_limit = self.credit_limit(account_id).await?;
        let grant = CreditGrant {
            account_id: account_id.to_owned(),
            request_id: request.request_id.clone(),
            credits: request.credits,
            reason: request.reason.clone(),
            actor: actor.to_owned(),
            time: self.clock.now_micros(),
        };
        let (applied, balance) = self.store.add_credits(&grant).await?;
        // Also for a retry: if the first attempt committed but died before this step, the
        // retry finishes it; the grant's marker keeps it from counting twice.
        self.counters.credit_once(account_id, &grant_marker(&request.request_id), request.credits).await?;
        if applied {
            tracing::info!(
                target: "audit",
                actor,
                action = "AddCredits",
                resource = %request.account,
                credits = request.credits,
                request_id = %request.request_id,
                "credits changed"
            );
        }
        Ok(Self::balance_proto(account_id, balance, credit_limit))
    }

    /// An account's balance and credit limit.
    pub async fn account_balance(&self, account: &str) -> MeteringResult<pb::AccountBalance> {
        let account_id = names::parse_account(account)
            .ok_or_else(|| MeteringError::invalid("account", "must be accounts/{account}"))?;
        let credit_limit = self.credit_limit(account_id).await?;
        let balance = self.store.balance(account_id).await?;
        Ok(Self::balance_proto(account_id, balance, credit_limit))
    }

    /// One page of an account's credit grants, newest first.
    pub async fn credit_grants(
        &self,
        request: &pb::ListCreditGrantsRequest,
    ) -> MeteringResult<pb::ListCreditGrantsResponse> {
        let mut v = Violations::new();
        let account_id = names::parse_account(&request.account);
        v.check(account_id.is_some(), "account", "must be accounts/{account}");
        let limit = page_token::page_size(request.page_size);
        v.check(limit.is_some(), "page_size", "must be 0 to 1000");
        let after = page_token::decode("creditGrants", &request.page_token).and_then(|key| match key {
            None => Some(None),
            Some(key) => {
                let (time, request_id) = key.split_once('/')?;
                Some(Some((time.parse().ok()?, request_id.to_owned())))
            }
        });
        v.check(after.is_some(), "page_token", "is not a token of this list");
        v.into_result()?;
        let account_id = account_id.expect("checked");
        self.credit_limit(account_id).await?;
        let (grants, more) =
            self.store.list_credit_grants(account_id, after.expect("checked"), limit.expect("checked")).await?;
        let next_page_token = match (more, grants.last()) {
            (true, Some(last)) => page_token::encode("creditGrants", &format!("{}/{}", last.time, last.request_id)),
            _ => String::new(),
        };
        Ok(pb::ListCreditGrantsResponse {
            grants: grants
                .into_iter()
                .map(|g| pb::CreditGrant {
                    account: names::account(&g.account_id),
                    request_id: g.request_id,
                    credits: g.credits,
                    reason: g.reason,
                    actor: g.actor,
                    time: Some(timestamp(g.time)),
                })
                .collect(),
            next_page_token,
        })
    }

    /// One page of dead letters, oldest first.
    pub async fn dead_letters(
        &self,
        request: &pb::ListDeadLettersRequest,
    ) -> MeteringResult<pb::ListDeadLettersResponse> {
        let limit = page_token::page_size(request.page_size)
            .ok_or_else(|| MeteringError::invalid("page_size", "must be 0 to 1000"))?;
        let after = page_token::decode("deadLetters", &request.page_token)
            .ok_or_else(|| MeteringError::invalid("page_token", "is not a token of this list"))?;
        let mut letters = self.queue.dead_letters(after.as_deref(), limit as usize + 1).await?;
        let more = letters.len() > limit as usize;
        letters.truncate(limit as usize);
        let next_page_token = match (more, letters.last()) {
            (true, Some(last)) => page_token::encode("deadLetters", &last.id),
            _ => String::new(),
        };
        Ok(pb::ListDeadLettersResponse {
            dead_letters: letters
                .into_iter()
                .map(|letter| pb::DeadLetter {
                    report: pb::UsageReport::decode(letter.payload.as_slice()).ok(),
                    id: letter.id,
                    reason: letter.reason,
                    attempts: letter.attempts as i32,
                    time: Some(timestamp(letter.time)),
                })
                .collect(),
            next_page_token,
        })
    }

    /// Puts dead letters back on the queue.
    pub async fn replay(&self, ids: &[String]) -> MeteringResult<u32> {
        let mut v = Violations::new();
        v.check(ids.len() <= 1000, "ids", "must hold at most 1000 ids");
        for (i, id) in ids.iter().enumerate() {
            v.check(is_dead_letter_id(id), format!("ids[{i}]"), "is not a dead letter id");
        }
        v.into_result()?;
        Ok(self.queue.replay(ids).await?)
    }
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

/// The id a credit grant is remembered by in the counters.
pub(crate) fn grant_marker(request_id: &str) -> String {
    format!("grant:{request_id}")
}

#[cfg(test)]
mod tests {
    use super::is_dead_letter_id;

    #[test]
    fn dead_letter_ids_of_every_queue_are_accepted_and_nothing_else() {
        for id in ["123", "1700000000000-0", "2:1700000000000-5"] {
            assert!(is_dead_letter_id(id), "{id}");
        }
        for id in ["", "x", "1-", "-1", ":1-1", "a:1-1", "1:", "1:2:3-4", "1-2-3"] {
            assert!(!is_dead_letter_id(id), "{id}");
        }
    }
}
