//! Capped exponential backoff with jitter, and `Retry-After`.

use std::time::{Duration, SystemTime};

/// Exponential backoff: `min · 2^attempt`, capped at `max`, each delay drawn uniformly from its upper
/// half ("equal jitter") so nodes that lost the WAN together do not retry together.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        assert!(min <= max, "backoff minimum must not exceed its maximum");
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0x2545_f491_4f6c_dd1d, |d| d.as_nanos() as u64)
            | 1;
        Self {
            min,
            max,
            attempt: 0,
            rng: seed,
        }
    }

    /// The delay before the next try; a server's `Retry-After` wins if it asks for longer.
    pub(crate) fn next_delay(&mut self, retry_after: Option<Duration>) -> Duration {
        let ceiling = self
            .min
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let jitter = half.mul_f64(self.uniform());
        let delay = half + jitter;
        match retry_after {
            Some(asked) => delay.max(asked),
            None => delay,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }

    /// xorshift64*: plenty for jitter, and no dependency.
    fn uniform(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let x = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Parses `Retry-After` (delta-seconds or an HTTP date), capped at `cap` so a wrong header cannot
/// stall the drain for days.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime, cap: Duration) -> Option<Duration> {
    let value = value.trim();
    let asked = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(now)
            .unwrap_or(Duration::ZERO),
    };
    Some(asked.min(cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_is_capped_and_jittered() {
        let min = Duration::from_millis(100);
        let max = Duration::from_millis(10_000);
        let mut b = Backoff::new(min, max);
        let delays: Vec<_> = (0..30).map(|_| b.next_delay(None)).collect();
        assert!(delays[0] >= min / 2 && delays[0] <= min);
        assert!(delays[3] >= Duration::from_millis(400) && delays[3] <= Duration::from_millis(800));
        assert!(delays.iter().all(|d| *d <= max));
        assert!(delays[29] >= max / 2);
        let distinct: std::collections::BTreeSet<_> = delays[10..].iter().collect();
        assert!(distinct.len() > 10, "capped delays must still be jittered");
        b.reset();
        assert!(b.next_delay(None) <= min);
    }

    #[test]
    fn retry_after_wins_when_longer() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(20));
        assert_eq!(
            b.next_delay(Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let cap = Duration::from_secs(600);
        assert_eq!(
            parse_retry_after("7", now, cap),
            Some(Duration::from_secs(7))
        );
        assert_eq!(parse_retry_after("99999", now, cap), Some(cap));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&date, now, cap),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_retry_after("soon", now, cap), None);
    }
}
