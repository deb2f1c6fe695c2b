//! The generator's own CPU use.
//!
//! A load generator on the same machine as the cluster competes with it for
//! cores. If the generator burns a core of its own, the cluster's figures say
//! as much about the generator as about the cluster. So the run reports the
//! CPU time this process spent, user plus system, over the wall time it took:
//! 0.25 "cores" means a quarter of one core on average.

use std::time::Duration;

/// CPU time (user + system) this process has used since it started, summed
/// over all its threads.
pub fn process_cpu_time() -> Duration {
    // SAFETY: getrusage only writes into the struct we pass, which is plain
    // old data; zeroed is a valid value for it.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return Duration::ZERO;
        }
        usage
    };
    timeval(usage.ru_utime) + timeval(usage.ru_stime)
}

fn timeval(tv: libc::timeval) -> Duration {
    Duration::from_secs(tv.tv_sec as u64) + Duration::from_micros(tv.tv_usec as u64)
}

/// CPU spent over one stretch of wall time.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct CpuCost {
    pub cpu_secs: f64,
    pub wall_secs: f64,
    /// `cpu_secs / wall_secs`: how many cores were busy on average.
    pub cores: f64,
}

impl CpuCost {
    pub fn new(cpu: Duration, wall: Duration) -> Self {
        let wall_secs = wall.as_secs_f64();
        let cpu_secs = cpu.as_secs_f64();
        let cores = if wall_secs > 0.0 {
            cpu_secs / wall_secs
        } else {
            0.0
        };
        CpuCost {
            cpu_secs,
            wall_secs,
            cores,
        }
    }
}

/// Measures from its creation to [`CpuMeter::stop`].
pub struct CpuMeter {
    cpu: Duration,
    wall: std::time::Instant,
}

impl CpuMeter {
    pub fn start() -> Self {
        CpuMeter {
            cpu: process_cpu_time(),
            wall: std::time::Instant::now(),
        }
    }

    pub fn stop(&self) -> CpuCost {
        CpuCost::new(
            process_cpu_time().saturating_sub(self.cpu),
            self.wall.elapsed(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_work_shows_up_as_cpu_time() {
        let meter = CpuMeter::start();
        // Spin until this thread has had 50 ms of CPU by the kernel's own
        // per-thread clock (not wall time: on a loaded machine 50 ms of
        // wall time can be a few ms of CPU); the meter must see them.
        let thread_cpu = || {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: a plain syscall writing into a local.
            unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
            Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
        };
        let (from, give_up) = (
            thread_cpu(),
            std::time::Instant::now() + Duration::from_secs(20),
        );
        let mut x = 0u64;
        while thread_cpu() - from < Duration::from_millis(50) && std::time::Instant::now() < give_up
        {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let cost = meter.stop();
        assert!(cost.cpu_secs > 0.04, "{cost:?}");
        assert!(cost.cores > 0.0);
    }

    #[test]
    fn zero_wall_time_gives_zero_cores() {
        assert_eq!(
            CpuCost::new(Duration::from_secs(1), Duration::ZERO).cores,
            0.0
        );
    }
}
