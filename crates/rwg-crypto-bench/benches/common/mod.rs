//! The clock every benchmark in this crate measures with.
//!
//! By default it is the CPU time of the benchmarking thread, not wall time: the benchmarking
//! machines are small VMs shared with compile jobs, and wall time then mostly measures how often
//! the scheduler takes the CPU away. `openssl speed`, the reference point in BENCHMARKS.md, also
//! divides by CPU time unless given `-elapsed`, so this keeps the comparison like for like.
//! The `wall-clock` feature switches back to criterion's wall time.

use criterion::Criterion;

#[cfg(feature = "wall-clock")]
pub(crate) type Clock = criterion::measurement::WallTime;
#[cfg(not(feature = "wall-clock"))]
pub(crate) type Clock = ThreadCpuTime;

/// The configuration for `criterion_group!`, which applies the command-line arguments itself.
#[cfg(feature = "wall-clock")]
pub(crate) fn criterion() -> Criterion<Clock> {
    Criterion::default()
}

/// The configuration for `criterion_group!`, which applies the command-line arguments itself.
#[cfg(not(feature = "wall-clock"))]
pub(crate) fn criterion() -> Criterion<Clock> {
    Criterion::default().with_measurement(ThreadCpuTime)
}

/// CPU time consumed by the calling thread, in nanoseconds (`CLOCK_THREAD_CPUTIME_ID`).
#[cfg(not(feature = "wall-clock"))]
#[derive(Debug)]
pub(crate) struct ThreadCpuTime;

#[cfg(not(feature = "wall-clock"))]
mod cpu {
    use criterion::measurement::{Measurement, ValueFormatter, WallTime};

    use super::ThreadCpuTime;

    /// Values are nanoseconds, as for wall time, so criterion's duration formatter fits.
    static NS_FORMAT: WallTime = WallTime;

    /// CPU time of the calling thread (CLOCK_THREAD_CPUTIME_ID, through the `cpu-time`
    /// crate's safe wrapper).
    fn thread_cpu_ns() -> u64 {
        u64::try_from(cpu_time::ThreadTime::now().as_duration().as_nanos()).unwrap_or(u64::MAX)
    }

    impl Measurement for ThreadCpuTime {
        type Intermediate = u64;
        type Value = u64;

        fn start(&self) -> u64 {
            thread_cpu_ns()
        }
        fn end(&self, start: u64) -> u64 {
            thread_cpu_ns().saturating_sub(start)
        }
        fn add(&self, a: &u64, b: &u64) -> u64 {
            a + b
        }
        fn zero(&self) -> u64 {
            0
        }
        fn to_f64(&self, value: &u64) -> f64 {
            *value as f64
        }
        fn formatter(&self) -> &dyn ValueFormatter {
            NS_FORMAT.formatter()
        }
    }
}
