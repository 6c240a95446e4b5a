//! Exponential backoff with jitter.

use std::time::Duration;

/// Delays that double from `initial` up to `max`, each randomly shortened by up to half, so that
/// many failing events (or relays) do not retry in lockstep.
///
/// ```
/// use std::time::Duration;
/// use outbox::relay::Backoff;
///
/// let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
/// let third = backoff.delay(3); // between 200 and 400 ms
/// assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
}

impl Backoff {
    /// Doubling from `initial`, capped at `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
        }
    }

    /// The delay before attempt `attempt + 1`, after `attempt` failures (1 = first failure).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(32);
        let full = self
            .initial
            .checked_mul(1_u32 << exponent.min(31))
            .unwrap_or(self.max)
            .min(self.max);
        // Full delay minus a random part of up to half of it.
        full.mul_f64(1.0 - fastrand::f64() * 0.5)
    }
}

impl Default for Backoff {
    /// From 500 ms, at most 5 minutes.
    fn default() -> Self {
        Backoff::new(Duration::from_millis(500), Duration::from_secs(300))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_within_jitter_and_stop_at_the_cap() {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        for _ in 0..100 {
            let first = backoff.delay(1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let fourth = backoff.delay(4);
            assert!(fourth >= Duration::from_millis(400) && fourth <= Duration::from_millis(800));
            let late = backoff.delay(u32::MAX);
            assert!(late >= Duration::from_millis(500) && late <= Duration::from_secs(1));
        }
    }

    proptest::proptest! {
        #[test]
        fn every_delay_is_between_half_and_all_of_the_capped_doubling(
            initial_ms in 1_u64..20_000,
            max_ms in 0_u64..2_000_000,
            attempt in 0_u32..200,
        ) {
            let (initial, max) = (Duration::from_millis(initial_ms), Duration::from_millis(max_ms));
            let backoff = Backoff::new(initial, max);
            let cap = max.max(initial);
            let doublings = attempt.saturating_sub(1).min(40);
            let full = initial
                .checked_mul(1_u32.checked_shl(doublings).unwrap_or(u32::MAX))
                .unwrap_or(cap)
                .min(cap);
            let delay = backoff.delay(attempt);
            proptest::prop_assert!(delay <= full, "{delay:?} over {full:?}");
            proptest::prop_assert!(
                delay + Duration::from_micros(1) >= full / 2,
                "{delay:?} under half of {full:?}"
            );
        }
    }
}
