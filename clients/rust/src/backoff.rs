//! When to try again: exponential backoff with full jitter (a delay drawn
//! uniformly from zero to the capped exponential, so a plant's worth of
//! clients cut by one outage do not come back in lockstep), and the
//! server's own hint when it says when (close 1001's reason, in ms).

use std::time::Duration;

/// The reconnect schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The ceiling of the first retry's delay.
    pub initial: Duration,
    /// No delay is ever longer.
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(250),
            cap: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The ceiling for retry `attempt` (0-based): `initial * 2^attempt`,
    /// at most `cap`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(31));
        self.initial.saturating_mul(factor).min(self.cap)
    }

    /// The delay before retry `attempt`: uniform in `[0, ceiling]`.
    pub fn delay(&self, attempt: u32, rng: &mut fastrand::Rng) -> Duration {
        let ceiling = u64::try_from(self.ceiling(attempt).as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(rng.u64(0..=ceiling))
    }
}

/// The reconnect delay a server put in a close 1001's reason (protocol.md:
/// "reason carries a jittered reconnect delay in ms"), at most `cap`.
pub fn server_hint(reason: &str, cap: Duration) -> Option<Duration> {
    let ms: u64 = reason.trim().parse().ok()?;
    Some(Duration::from_millis(ms).min(cap))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn delays_are_jittered_within_the_doubling_ceiling_and_never_above_the_cap() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            cap: Duration::from_secs(2),
        };
        let mut rng = fastrand::Rng::with_seed(7);
        let ceilings: Vec<u64> = (0..8).map(|a| b.ceiling(a).as_millis() as u64).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        assert_eq!(b.ceiling(u32::MAX), b.cap);
        for attempt in 0..8 {
            let draws: Vec<Duration> = (0..2000).map(|_| b.delay(attempt, &mut rng)).collect();
            let ceiling = b.ceiling(attempt);
            assert!(draws.iter().all(|d| *d <= ceiling), "attempt {attempt}");
            // Full jitter: spread over the whole range, not bunched at the
            // top (2,000 draws all in one half has odds of 2^-2000).
            assert!(draws.iter().any(|d| *d < ceiling / 4), "attempt {attempt}");
            assert!(
                draws.iter().any(|d| *d > ceiling * 3 / 4),
                "attempt {attempt}"
            );
        }
    }

    #[test]
    fn a_server_hint_is_read_in_ms_and_capped() {
        let cap = Duration::from_secs(30);
        assert_eq!(server_hint("1234", cap), Some(Duration::from_millis(1234)));
        assert_eq!(server_hint("99999999", cap), Some(cap));
        assert_eq!(server_hint("going away", cap), None);
    }
}
