//! The standard `process_*` metrics every Prometheus client exports (CPU seconds,
//! resident and virtual memory, open and maximum file descriptors, start time), read
//! from `/proc/self` at each scrape. Other systems than Linux export none.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// What `/proc/self` says about the process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    /// User and system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Resident set size, in bytes.
    pub resident_bytes: f64,
    /// Virtual memory size, in bytes.
    pub virtual_bytes: f64,
    /// Start time since the Unix epoch, in seconds.
    pub start_time_seconds: f64,
    /// Open file descriptors.
    pub open_fds: f64,
    /// The soft limit on file descriptors.
    pub max_fds: f64,
}

/// Clock ticks per second of `/proc/<pid>/stat` times: 100 on every Linux that
/// Kubernetes runs on (`USER_HZ`, fixed by the kernel's ABI).
const TICKS_PER_SECOND: f64 = 100.0;
/// Page size for `rss` in `/proc/<pid>/stat`: 4 KiB on x86-64 and arm64 kernels as
/// distributions build them. `VmRSS` in `status` is read first and needs none.
const PAGE_SIZE: f64 = 4096.0;

impl ProcessStats {
    /// Reads `/proc/self`; `None` where there is none.
    pub fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok();
        let limits = std::fs::read_to_string("/proc/self/limits").ok();
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count();
        let mut stats = Self::parse(&stat, &boot, limits.as_deref())?;
        if let Some(rss) = status.as_deref().and_then(vm_rss_bytes) {
            stats.resident_bytes = rss;
        }
        stats.open_fds = open_fds as f64;
        Some(stats)
    }

    /// Parses `/proc/self/stat` (fields after the parenthesised command name, which
    /// may hold spaces), `btime` of `/proc/stat`, and `/proc/self/limits`.
    fn parse(stat: &str, proc_stat: &str, limits: Option<&str>) -> Option<Self> {
        let after = &stat[stat.rfind(')')? + 1..];
        // Field 3 (state) is the first after the name; utime is 14, stime 15,
        // starttime 22, vsize 23, rss 24.
        let fields: Vec<&str> = after.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
        let btime = proc_stat
            .lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok())?;
        let max_fds = limits
            .and_then(|l| {
                l.lines()
                    .find(|l| l.starts_with("Max open files"))
                    .and_then(|l| l.split_whitespace().nth(3))
                    .and_then(|v| v.parse::<f64>().ok())
            })
            .unwrap_or(0.0);
        Some(Self {
            cpu_seconds: (field(14)? + field(15)?) / TICKS_PER_SECOND,
            resident_bytes: field(24)? * PAGE_SIZE,
            virtual_bytes: field(23)?,
            start_time_seconds: btime + field(22)? / TICKS_PER_SECOND,
            open_fds: 0.0,
            max_fds,
        })
    }
}

fn vm_rss_bytes(status: &str) -> Option<f64> {
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse::<f64>()
        .ok()?;
    Some(kb * 1024.0)
}

/// Registered on the root registry (no `capstan_` prefix).
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let Some(s) = ProcessStats::read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(s.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        for (name, help, value) in [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                s.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                s.virtual_bytes,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                s.start_time_seconds,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                s.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                s.max_fds,
            ),
        ] {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        // A command name with spaces and a parenthesis, as /proc allows.
        let stat = "4242 (cap stan) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 9 0 12345 734003200 5000 18446744073709551615";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1048576              1048576              files\n";
        let s = ProcessStats::parse(stat, "cpu 1 2 3\nbtime 1700000000\n", Some(limits))
            .expect("parses");
        assert_eq!(s.cpu_seconds, 3.0);
        assert_eq!(s.virtual_bytes, 734_003_200.0);
        assert_eq!(s.resident_bytes, 5000.0 * 4096.0);
        assert!(
            (s.start_time_seconds - 1_700_000_123.45).abs() < 1e-3,
            "{s:?}"
        );
        assert_eq!(s.max_fds, 1_048_576.0);
    }

    #[test]
    fn this_process_is_measured() {
        let s = ProcessStats::read().expect("/proc is mounted");
        assert!(s.resident_bytes > 1_000_000.0, "{s:?}");
        assert!(s.open_fds >= 3.0, "{s:?}");
        assert!(s.start_time_seconds > 1_600_000_000.0, "{s:?}");
        assert_eq!(
            vm_rss_bytes("Name:\tx\nVmRSS:\t  2048 kB\n"),
            Some(2_097_152.0)
        );
    }
}
