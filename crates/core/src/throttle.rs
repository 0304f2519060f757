//! Something that could happen on every call (a warning during an outage, a request for a
//! rebuild) let through at most once per interval, counting what was held back: thousands of
//! identical log lines or writes a second would bury everything else and cost more than the
//! calls.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How often a throttled warning is logged at most.
pub const WARN_EVERY: Duration = Duration::from_secs(5);

/// One throttled site.
#[derive(Debug, Default)]
pub struct Throttle {
    /// When it was last let through (ms since the Unix epoch; 0: never).
    last_ms: AtomicU64,
    /// Occurrences held back since.
    held_back: AtomicU64,
}

impl Throttle {
    pub const fn new() -> Self {
        Self { last_ms: AtomicU64::new(0), held_back: AtomicU64::new(0) }
    }

    /// Whether to log now (at `now_ms`), and if so how many occurrences were held back
    /// since the last one logged.
    pub fn let_through(&self, now_ms: u64, every: Duration) -> Option<u64> {
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == 0 || now_ms.saturating_sub(last) >= every.as_millis() as u64;
        if due && self.last_ms.compare_exchange(last, now_ms.max(1), Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            return Some(self.held_back.swap(0, Ordering::Relaxed));
        }
        self.held_back.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// [`Throttle::let_through`] at the current time.
    pub fn now(&self, every: Duration) -> Option<u64> {
        let now_ms = crate::time::now_micros().max(0) as u64 / 1000;
        self.let_through(now_ms, every)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_one_through_per_interval_and_counts_the_rest() {
        let throttle = Throttle::new();
        let every = Duration::from_secs(5);
        assert_eq!(throttle.let_through(1_000, every), Some(0));
        for t in [1_001, 2_000, 5_999] {
            assert_eq!(throttle.let_through(t, every), None);
        }
        assert_eq!(throttle.let_through(6_000, every), Some(3));
        assert_eq!(throttle.let_through(6_001, every), None);
        assert_eq!(throttle.let_through(11_000, every), Some(1));
    }
}
