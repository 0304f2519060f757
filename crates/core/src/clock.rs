//! Where "now" comes from: the system clock in production, a clock tests can move.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::time::{Micros, now_micros};

/// A source of the current time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now_micros(&self) -> Micros;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_micros(&self) -> Micros {
        now_micros()
    }
}

/// A clock that moves only when told to, for tests of expiry and window rollover.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock showing `micros`.
    pub fn new(micros: Micros) -> Self {
        Self(Arc::new(AtomicI64::new(micros)))
    }

    pub fn set(&self, micros: Micros) {
        self.0.store(micros, Ordering::SeqCst);
    }

    pub fn advance(&self, micros: Micros) {
        self.0.fetch_add(micros, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_micros(&self) -> Micros {
        self.0.load(Ordering::SeqCst)
    }
}
