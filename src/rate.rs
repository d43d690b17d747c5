//! Token buckets for anything a peer can trigger at will: writes and
//! Browse requests per connection, log lines a rogue publisher provokes.
//! The time is passed in, so the session state machine stays clock-free
//! and tests drive it with paused time.

use tokio::time::Instant;

/// `burst` at once, then `per_s` per second.
#[derive(Debug, Clone)]
pub struct Bucket {
    per_s: f64,
    burst: f64,
    tokens: f64,
    /// Last top-up; none before the first take (the bucket starts full).
    last: Option<Instant>,
}

impl Bucket {
    /// A full bucket.
    pub fn new(burst: u32, per_s: f64) -> Self {
        Bucket {
            per_s,
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: None,
        }
    }

    /// Takes one token at `now` if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        self.take_n(now, 1.0)
    }

    /// Takes `n` tokens at `now` if there are (a request that costs what
    /// it sends). One larger than the burst goes when the bucket is full,
    /// and leaves it in debt for as long as its size takes to refill.
    pub fn take_n(&mut self, now: Instant, n: f64) -> bool {
        let since = self
            .last
            .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
        self.tokens = (self.tokens + since * self.per_s).min(self.burst);
        self.last = Some(now);
        if self.tokens >= n.min(self.burst) {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

/// A rate-limited log line: the next admitted one reports how many were
/// suppressed since the last.
#[derive(Debug)]
pub struct Throttle {
    bucket: Bucket,
    suppressed: u64,
    admitted: u64,
}

impl Throttle {
    /// `burst` lines at once, then `per_s`.
    pub fn new(burst: u32, per_s: f64) -> Self {
        Throttle {
            bucket: Bucket::new(burst, per_s),
            suppressed: 0,
            admitted: 0,
        }
    }

    /// One line per `period`.
    pub fn once_per(period: std::time::Duration) -> Self {
        Throttle::new(1, 1.0 / period.as_secs_f64().max(1e-3))
    }

    /// Lines admitted so far (what a flood cost the log).
    pub fn admitted(&self) -> u64 {
        self.admitted
    }

    /// `Some(suppressed since the last admitted)` if a line may go now.
    pub fn admit(&mut self) -> Option<u64> {
        if self.bucket.take(Instant::now()) {
            self.admitted += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_bucket_gives_its_burst_then_its_rate() {
        let t = Instant::now();
        let mut b = Bucket::new(3, 10.0);
        assert!((0..3).all(|_| b.take(t)));
        assert!(!b.take(t));
        assert!(!b.take(t + Duration::from_millis(50)));
        assert!(b.take(t + Duration::from_millis(110)), "one per 100 ms");
        assert!(!b.take(t + Duration::from_millis(110)));
        let later = t + Duration::from_secs(60);
        assert!((0..3).all(|_| b.take(later)), "never more than the burst");
        assert!(!b.take(later));
    }

    #[test]
    fn a_costly_request_takes_its_cost_and_a_huge_one_goes_only_from_full() {
        let t = Instant::now();
        let mut b = Bucket::new(100, 10.0);
        assert!(b.take_n(t, 60.0));
        assert!(!b.take_n(t, 60.0), "40 left");
        assert!(b.take_n(t, 40.0));
        let full = t + Duration::from_secs(10);
        assert!(b.take_n(full, 500.0), "larger than the burst, from full");
        assert!(
            !b.take(full + Duration::from_secs(30)),
            "in debt: 400 to repay"
        );
        assert!(b.take(full + Duration::from_secs(41)));
    }

    #[test]
    fn a_throttle_counts_what_it_suppressed() {
        let mut t = Throttle::new(2, 0.0);
        assert_eq!(t.admit(), Some(0));
        assert_eq!(t.admit(), Some(0));
        assert_eq!(t.admit(), None);
        assert_eq!(t.admit(), None);
        assert_eq!(t.suppressed, 2);
        let mut once = Throttle::once_per(Duration::from_secs(10));
        assert_eq!(once.admit(), Some(0));
        assert_eq!(once.admit(), None, "one line per period");
    }
}
