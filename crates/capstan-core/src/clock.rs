//! The clock domain logic takes as a parameter, so that unit tests never sleep.
//!
//! Controllers hold an `Arc<dyn Clock>`: [`SystemClock`] in the manager,
//! [`ManualClock`] in tests that step time forward by hand.

use std::sync::Mutex;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// A source of the current time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time in UTC.
    fn now(&self) -> DateTime<Utc>;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        Self(Mutex::new(start))
    }

    /// Moves the clock forward (or back, with a negative duration).
    pub fn advance(&self, by: chrono::Duration) {
        let mut now = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *now += by;
    }

    /// Sets the clock to `to`.
    pub fn set(&self, to: DateTime<Utc>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Converts a chrono time to the Kubernetes `Time` (whole seconds, as the API server
/// stores it: keeping sub-second parts would make every status write look changed).
pub fn to_k8s_time(t: DateTime<Utc>) -> Time {
    Time(Timestamp::from_second(t.timestamp()).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// Converts a Kubernetes `Time` to chrono.
pub fn from_k8s_time(t: &Time) -> DateTime<Utc> {
    DateTime::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond().max(0) as u32)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let start = DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default();
        let c = ManualClock::new(start);
        assert_eq!(c.now(), start);
        c.advance(chrono::Duration::seconds(90));
        assert_eq!(c.now(), start + chrono::Duration::seconds(90));
    }

    #[test]
    fn k8s_time_round_trip_truncates_to_seconds() {
        let t = DateTime::from_timestamp(1_700_000_000, 123_000_000).unwrap_or_default();
        let back = from_k8s_time(&to_k8s_time(t));
        assert_eq!(back.timestamp(), 1_700_000_000);
        assert_eq!(back.timestamp_subsec_nanos(), 0);
    }
}
