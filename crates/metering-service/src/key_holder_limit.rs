//! How often a key holder may ask for its own balance: the answer reads the ledger for up to
//! 90 days of the key's calls, and whoever holds a key (a leaked one included) can ask.
//!
//! A fixed one-minute window per key, counted on this replica and on the service's clock; the
//! window starts with the key's first call in it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use moka::future::Cache;
use tollgate_core::time::Micros;

const MINUTE: Micros = 60_000_000;

/// Keys whose window is kept; beyond it the least recently asked lose theirs (and start a
/// fresh one).
const KEYS_TRACKED: u64 = 100_000;

/// The calls each key may make per minute.
pub struct KeyHolderLimit {
    per_minute: u32,
    /// Key name → (start of its window, calls in it).
    windows: Cache<String, Arc<Mutex<(Micros, u32)>>>,
}

impl KeyHolderLimit {
    /// `per_minute` 0: no limit.
    pub fn new(per_minute: u32) -> Self {
        let windows = Cache::builder().max_capacity(KEYS_TRACKED).time_to_idle(Duration::from_secs(120)).build();
        Self { per_minute, windows }
    }

    /// Counts a call of the key named `key` at `now`; once the key has made its calls for the
    /// minute, `Err` with how long until it may ask again.
    pub async fn check(&self, key: &str, now: Micros) -> Result<(), Duration> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let window = self.windows.get_with_by_ref(key, async { Arc::new(Mutex::new((now, 0))) }).await;
        let mut window = window.lock().expect("key holder window lock");
        let (start, calls) = &mut *window;
        if now - *start >= MINUTE || now < *start {
            (*start, *calls) = (now, 0);
        }
        if *calls >= self.per_minute {
            let wait = (*start + MINUTE - now).max(0);
            return Err(Duration::from_micros(wait.unsigned_abs()));
        }
        *calls += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_key_gets_its_calls_per_minute_then_waits_for_the_next() {
        let limit = KeyHolderLimit::new(2);
        let t = 1_000 * MINUTE;
        assert_eq!(limit.check("k1", t).await, Ok(()));
        assert_eq!(limit.check("k1", t + 1_000_000).await, Ok(()));
        assert_eq!(limit.check("k1", t + 15_000_000).await, Err(Duration::from_secs(45)));
        assert_eq!(limit.check("k2", t + 15_000_000).await, Ok(()), "another key has its own window");
        assert_eq!(limit.check("k1", t + MINUTE).await, Ok(()), "a new minute, a new window");
    }

    #[tokio::test]
    async fn zero_means_no_limit() {
        let limit = KeyHolderLimit::new(0);
        for _ in 0..100 {
            assert_eq!(limit.check("k1", 0).await, Ok(()));
        }
    }
}
