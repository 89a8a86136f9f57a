//! When to log a failure that a retry loop meets again and again.
//!
//! A loop that retries each second and logs each failure writes 3,600 lines an hour to the disk
//! of a box whose disk is full, or whose WAN is down for days. The node's retry loops (the spool
//! writer's reopen, the results fold's reads, the status file, the uplink's sends) log a run of
//! failures the same way instead: its first failure, then one line per interval with the count
//! so far, then its end once. [`Recurring`] keeps that count and says which of those lines is
//! due; each loop writes its own words.

use std::time::{Duration, Instant};

/// The interval the node's retry loops log a continuing failure at.
pub const RECURRING_LOG_EVERY: Duration = Duration::from_secs(60);

/// A run of failures and when it was last logged.
#[derive(Debug, Clone)]
pub struct Recurring {
    every: Duration,
    run: Option<Run>,
}

#[derive(Debug, Clone, Copy)]
struct Run {
    failures: u64,
    logged_at: Instant,
}

/// What to log for a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// The first failure of a run: log it.
    First,
    /// The run goes on and an interval has passed since its last line: log that it still fails,
    /// with the run's count so far.
    Again {
        /// The run's failures so far, this one included.
        failures: u64,
    },
    /// Counted, not logged.
    Quiet,
}

impl Recurring {
    /// No run yet; a continuing run is logged at most once per `every`.
    pub const fn new(every: Duration) -> Recurring {
        Recurring { every, run: None }
    }

    /// A failure now: what to log.
    pub fn failed(&mut self) -> Due {
        self.failed_at(Instant::now())
    }

    /// A failure at `now`.
    pub fn failed_at(&mut self, now: Instant) -> Due {
        match &mut self.run {
            None => {
                self.run = Some(Run {
                    failures: 1,
                    logged_at: now,
                });
                Due::First
            }
            Some(run) => {
                run.failures += 1;
                if now.saturating_duration_since(run.logged_at) >= self.every {
                    run.logged_at = now;
                    Due::Again {
                        failures: run.failures,
                    }
                } else {
                    Due::Quiet
                }
            }
        }
    }

    /// A success: the count of the run it ends, to log once, or `None` if nothing was failing.
    pub fn recovered(&mut self) -> Option<u64> {
        self.run.take().map(|run| run.failures)
    }

    /// The failures of the run going on, 0 if none is.
    pub fn failures(&self) -> u64 {
        self.run.map_or(0, |run| run.failures)
    }
}

impl Default for Recurring {
    /// Logged at [`RECURRING_LOG_EVERY`].
    fn default() -> Recurring {
        Recurring::new(RECURRING_LOG_EVERY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_logged_first_then_once_per_interval_then_at_its_end() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut r = Recurring::new(Duration::from_secs(60));
        assert_eq!(r.recovered(), None, "nothing was failing");
        assert_eq!(r.failed_at(at(0)), Due::First);
        // A retry a second for two minutes and a half: two more lines, not 150.
        let logged: Vec<(u64, Due)> = (1..=150)
            .map(|s| (s, r.failed_at(at(s))))
            .filter(|(_, due)| *due != Due::Quiet)
            .collect();
        assert_eq!(
            logged,
            [
                (60, Due::Again { failures: 61 }),
                (120, Due::Again { failures: 121 })
            ]
        );
        assert_eq!(r.failures(), 151);
        assert_eq!(r.recovered(), Some(151));
        assert_eq!(r.failures(), 0);
        assert_eq!(r.recovered(), None, "the end is logged once");
        // The next run starts over, first line and all.
        assert_eq!(r.failed_at(at(151)), Due::First);
        assert_eq!(r.failed_at(at(152)), Due::Quiet);
    }

    #[test]
    fn the_interval_counts_from_the_last_line_not_the_first_failure() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut r = Recurring::new(Duration::from_secs(60));
        assert_eq!(r.failed_at(at(0)), Due::First);
        // A gap longer than the interval: logged at the next failure, then 60 s on from it.
        assert_eq!(r.failed_at(at(200)), Due::Again { failures: 2 });
        assert_eq!(r.failed_at(at(259)), Due::Quiet);
        assert_eq!(r.failed_at(at(260)), Due::Again { failures: 4 });
    }
}
