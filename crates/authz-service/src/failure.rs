//! What Authorize does when Redis cannot be reached for a counter check
//! (`TOLLGATE_AUTHZ_ON_REDIS_ERROR`).
//!
//! Defaults: rate limits fail **open** — they protect capacity, a short outage of them costs
//! little, and the upstream providers enforce their own; money checks (quota, budgets, account
//! balance) fail **closed** — a prepaid account must not spend credits it does not have, and
//! spend past a limit cannot be taken back. Keys with nothing to count never touch Redis, so
//! they keep working either way.

use std::str::FromStr;

/// Fail open (allow) or closed (`UNAVAILABLE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    Open,
    Closed,
}

/// The choice per kind of check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedisErrorPolicy {
    pub rate: OnError,
    pub money: OnError,
}

impl Default for RedisErrorPolicy {
    fn default() -> Self {
        Self { rate: OnError::Open, money: OnError::Closed }
    }
}

impl RedisErrorPolicy {
    /// Whether a call with these kinds of limits fails closed.
    pub fn fails_closed(&self, has_money: bool, has_rate: bool) -> bool {
        (has_money && self.money == OnError::Closed) || (has_rate && self.rate == OnError::Closed)
    }
}

impl FromStr for OnError {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "open" => Ok(OnError::Open),
            "closed" => Ok(OnError::Closed),
            other => Err(format!("`{other}` is neither `open` nor `closed`")),
        }
    }
}

/// Parses `open`, `closed`, or `rate=open,money=closed` (either part may be left out).
impl FromStr for RedisErrorPolicy {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        if let Ok(both) = text.parse::<OnError>() {
            return Ok(Self { rate: both, money: both });
        }
        let mut policy = Self::default();
        for part in text.split(',') {
            let (kind, value) = part.split_once('=').ok_or_else(|| format!("`{part}` is not `kind=open|closed`"))?;
            match kind.trim() {
                "rate" => policy.rate = value.parse()?,
                "money" => policy.money = value.parse()?,
                other => return Err(format!("unknown check kind `{other}`; use `rate` or `money`")),
            }
        }
        Ok(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!("open".parse(), Ok(RedisErrorPolicy { rate: OnError::Open, money: OnError::Open }));
        assert_eq!("closed".parse(), Ok(RedisErrorPolicy { rate: OnError::Closed, money: OnError::Closed }));
        assert_eq!("money=open".parse(), Ok(RedisErrorPolicy { rate: OnError::Open, money: OnError::Open }));
        assert_eq!(
            "rate=closed, money=closed".parse(),
            Ok(RedisErrorPolicy { rate: OnError::Closed, money: OnError::Closed })
        );
        assert!("rate=maybe".parse::<RedisErrorPolicy>().is_err());
        assert!("speed=open".parse::<RedisErrorPolicy>().is_err());
    }

    #[test]
    fn closed_wins_when_both_kinds_apply() {
        let policy = RedisErrorPolicy::default();
        assert!(policy.fails_closed(true, true));
        assert!(policy.fails_closed(true, false));
        assert!(!policy.fails_closed(false, true));
        assert!(!policy.fails_closed(false, false));
    }
}
