//! The open-loop schedule of `atb bench`: request `i` is due at
//! `i / rate` seconds into the phase, whatever happened to the others.
//!
//! Design points:
//! - Latency is measured from a request's intended send time, not from
//!   when a connection was free to send it: a stall delays every request
//!   due during it, and each of them counts the wait (no coordinated
//!   omission, as wrk2 does it).
//! - The schedule is arithmetic on the index (no timers, no drift): the
//!   generator threads take the next index from a shared counter, sleep
//!   until it is due and send it on their own connection.
//! - A phase holds exactly `floor(rate * seconds)` requests, so the
//!   number of mandates to mint is known before it starts.

use std::time::Duration;

/// Why a schedule cannot be built.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScheduleError {
    #[error("the open-loop rate must be between 1 and 1000000 requests per second, not {0}")]
    Rate(f64),
    #[error("the phase must last between 1 ms and 1 hour")]
    Duration,
}

/// A fixed-rate schedule over one phase.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpenLoop {
    rate: f64,
    count: u64,
}

impl OpenLoop {
    pub fn new(rate: f64, duration: Duration) -> Result<Self, ScheduleError> {
        if !(1.0..=1_000_000.0).contains(&rate) || !rate.is_finite() {
            return Err(ScheduleError::Rate(rate));
        }
        if duration < Duration::from_millis(1) || duration > Duration::from_secs(3600) {
            return Err(ScheduleError::Duration);
        }
        Ok(Self {
            rate,
            count: (rate * duration.as_secs_f64()).floor() as u64,
        })
    }

    /// Requests in the phase.
    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// When request `i` is due, from the start of the phase; `None` past
    /// the phase's last request.
    pub fn due(&self, i: u64) -> Option<Duration> {
        (i < self.count).then(|| Duration::from_nanos((i as f64 * 1e9 / self.rate).round() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evenly_spaced_from_zero() {
        let s = OpenLoop::new(1000.0, Duration::from_secs(2)).unwrap();
        assert_eq!(s.count(), 2000);
        assert_eq!(s.due(0), Some(Duration::ZERO));
        assert_eq!(s.due(1), Some(Duration::from_millis(1)));
        assert_eq!(s.due(1999), Some(Duration::from_millis(1999)));
        assert_eq!(s.due(2000), None);
    }

    #[test]
    fn fractional_rates_do_not_drift() {
        let s = OpenLoop::new(3.0, Duration::from_secs(10)).unwrap();
        assert_eq!(s.count(), 30);
        // The 30th request is due at 29/3 s, rounded to the nanosecond.
        assert_eq!(s.due(29), Some(Duration::from_nanos(9_666_666_667)));
        let mut last = Duration::ZERO;
        for i in 1..30 {
            let d = s.due(i).unwrap();
            let gap = d - last;
            assert!(
                gap >= Duration::from_nanos(333_333_333)
                    && gap <= Duration::from_nanos(333_333_334)
            );
            last = d;
        }
    }

    #[test]
    fn bounds_are_checked() {
        assert_eq!(
            OpenLoop::new(0.5, Duration::from_secs(1)),
            Err(ScheduleError::Rate(0.5))
        );
        assert!(OpenLoop::new(f64::NAN, Duration::from_secs(1)).is_err());
        assert!(OpenLoop::new(f64::INFINITY, Duration::from_secs(1)).is_err());
        assert_eq!(
            OpenLoop::new(10.0, Duration::ZERO),
            Err(ScheduleError::Duration)
        );
        assert_eq!(
            OpenLoop::new(10.0, Duration::from_secs(7200)),
            Err(ScheduleError::Duration)
        );
    }
}
