//! The driver's clock: the core's [`Instant`] (nanoseconds from an origin) and the wall clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rwg_proto::Instant;

/// A monotonic clock starting at its creation, in the core's terms.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: std::time::Instant,
}

impl Clock {
    /// A clock whose origin is now.
    pub fn new() -> Clock {
        Clock {
            origin: std::time::Instant::now(),
        }
    }

    /// The current time for the core.
    pub fn now(&self) -> Instant {
        Instant::from_duration(self.origin.elapsed())
    }

    /// The `std` instant of a core instant (to sleep until it).
    pub fn to_std(&self, t: Instant) -> std::time::Instant {
        self.origin + Duration::from_nanos(t.as_nanos())
    }

    /// The wall clock: time since the Unix epoch (zero if the system clock is before it).
    pub fn unix_now() -> Duration {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_and_std_instants_map_onto_each_other() {
        let c = Clock::new();
        let t = Instant::from_nanos(1_500_000_000);
        assert_eq!(
            c.to_std(t) - c.to_std(Instant::ZERO),
            Duration::from_millis(1500)
        );
        let a = c.now();
        let b = c.now();
        assert!(b >= a, "monotonic");
    }
}
