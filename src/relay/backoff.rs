//! Retry schedules (pure).
//!
//! Row retries use exponential backoff with "equal jitter": half of the
//! exponential delay is fixed, half random, so retries of a failed batch
//! spread out instead of returning as one herd. The delay is applied on the
//! database's clock (`now() + delay`), so relays with skewed clocks agree.

use std::time::Duration;

/// Exponential backoff between `base` and `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// Delay before retry number `attempt` (1 for the first failure), with
    /// `jitter` in `[0, 1)`. Always within `[d / 2, d]` where
    /// `d = min(max, base * 2^(attempt - 1))`.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let ceiling = self.ceiling(attempt);
        let jitter = jitter.clamp(0.0, 1.0);
        ceiling.mul_f64(0.5 + jitter / 2.0)
    }

    /// The un-jittered delay for `attempt`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(32);
        self.base
            .checked_mul(1u32 << exponent.min(31))
            .map_or(self.max, |d| d.min(self.max))
    }

    /// [`Self::delay`] with a random jitter.
    pub fn delay_random(&self, attempt: u32) -> Duration {
        self.delay(attempt, fastrand::f64())
    }
}

/// Backoff for the worker loop after an infrastructure error (database or
/// broker unreachable); reset by the first success.
#[derive(Debug, Clone)]
pub struct ErrorBackoff {
    schedule: Backoff,
    failures: u32,
}

impl ErrorBackoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            schedule: Backoff { base, max },
            failures: 0,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.schedule.delay_random(self.failures)
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SCHEDULE: Backoff = Backoff {
        base: Duration::from_secs(1),
        max: Duration::from_secs(300),
    };

    #[test]
    fn the_ceiling_doubles_until_the_cap() {
        assert_eq!(SCHEDULE.ceiling(1), Duration::from_secs(1));
        assert_eq!(SCHEDULE.ceiling(2), Duration::from_secs(2));
        assert_eq!(SCHEDULE.ceiling(9), Duration::from_secs(256));
        assert_eq!(SCHEDULE.ceiling(10), Duration::from_secs(300));
        assert_eq!(SCHEDULE.ceiling(u32::MAX), Duration::from_secs(300));
    }

    proptest! {
        #[test]
        fn a_delay_stays_between_half_and_all_of_its_ceiling(
            attempt in 0u32..200, jitter in 0.0f64..1.0,
            base_ms in 1u64..10_000, max_ms in 1u64..1_000_000,
        ) {
            let b = Backoff { base: Duration::from_millis(base_ms), max: Duration::from_millis(max_ms.max(base_ms)) };
            let d = b.delay(attempt, jitter);
            let c = b.ceiling(attempt);
            prop_assert!(d <= c);
            prop_assert!(d >= c / 2);
            prop_assert!(c <= b.max);
        }

        #[test]
        fn ceilings_never_decrease(attempt in 1u32..100) {
            prop_assert!(SCHEDULE.ceiling(attempt) <= SCHEDULE.ceiling(attempt + 1));
        }
    }
}
