//! Exponential backoff with jitter (sans-IO: the caller sleeps).

use std::time::Duration;

/// A small splitmix64 generator: jitter needs no cryptographic randomness.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from a seed.
    pub const fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A generator seeded from the clock and a counter (distinct per call).
    pub fn from_time() -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static CALLS: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self(
            nanos
                ^ CALLS
                    .fetch_add(1, Ordering::Relaxed)
                    .wrapping_mul(0x9e37_79b9_7f4a_7c15),
        )
    }

    /// The next pseudo-random value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Delays between attempts: `base * 2^attempt` capped at `max`, then a
/// random point in its upper half ("equal jitter"), so clients that failed
/// together do not retry together.
#[derive(Clone, Debug)]
pub struct Backoff {
    base_ms: u64,
    max_ms: u64,
    rng: SplitMix64,
}

impl Backoff {
    /// A backoff policy.
    pub fn new(base: Duration, max: Duration, rng: SplitMix64) -> Self {
        let base_ms = (base.as_millis() as u64).max(1);
        Self {
            base_ms,
            max_ms: (max.as_millis() as u64).max(base_ms),
            rng,
        }
    }

    /// The delay before retry number `attempt` (0 for the first retry).
    pub fn delay(&mut self, attempt: u32) -> Duration {
        let ceiling_ms = self
            .base_ms
            .saturating_mul(1u64 << attempt.min(32))
            .min(self.max_ms);
        let half = ceiling_ms / 2;
        let jitter = self.rng.next_u64() % (ceiling_ms - half + 1);
        Duration::from_millis(half + jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps_with_jitter() {
        let mut b = Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(2),
            SplitMix64::new(1),
        );
        for attempt in 0..40 {
            let ceiling = (100u64 << attempt.min(20)).min(2000);
            let d = b.delay(attempt).as_millis() as u64;
            assert!(d >= ceiling / 2 && d <= ceiling, "attempt {attempt}: {d}");
        }
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            seen.insert(b.delay(10));
        }
        assert!(seen.len() > 10, "jitter: {seen:?}");
    }

    #[test]
    fn distinct_seeds() {
        assert_ne!(
            SplitMix64::from_time().next_u64(),
            SplitMix64::from_time().next_u64()
        );
    }
}
