//! The standard `process_*` metrics of this process, read from `/proc` at each render.
//!
//! Our own rather than the prometheus crate's collector, which truncates
//! `process_cpu_seconds_total` to whole seconds: a sidecar that uses a few milliseconds of
//! CPU a second would show a counter that stands still for minutes, then jumps.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, IntGauge, Opts};

/// `process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`,
/// `process_start_time_seconds` and `process_threads`, as client libraries name them.
pub struct ProcessCollector {
    cpu: Counter,
    rss: IntGauge,
    vsize: IntGauge,
    open_fds: IntGauge,
    max_fds: IntGauge,
    start_time: IntGauge,
    threads: IntGauge,
    descs: Vec<Desc>,
    /// Clock ticks per second and the page size, from `sysconf`.
    ticks: f64,
    page: i64,
}

/// The figures of `/proc/self/stat` the metrics need.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    /// User plus system time, in clock ticks.
    pub cpu_ticks: u64,
    pub threads: i64,
    /// When the process started, in clock ticks after boot.
    pub start_ticks: u64,
    pub vsize: u64,
    /// Resident pages.
    pub rss_pages: i64,
}

/// Parses the text of `/proc/<pid>/stat`. The command name (in parentheses) may hold
/// spaces and parentheses itself, so the fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 of proc(5) (state): field n is fields[n - 3].
    let field = |n: usize| fields.get(n - 3).copied();
    let number = |n: usize| field(n)?.parse::<u64>().ok();
    Some(Stat {
        cpu_ticks: number(14)? + number(15)?,
        threads: field(20)?.parse().ok()?,
        start_ticks: number(22)?,
        vsize: number(23)?,
        rss_pages: field(24)?.parse().ok()?,
    })
}

/// The boot time, in seconds since the epoch, from the `btime` line of `/proc/stat`.
fn boot_time() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

fn sysconf(name: libc::c_int) -> i64 {
    // SAFETY: sysconf only reads a system constant.
    #[allow(clippy::useless_conversion)] // c_long is i32 on 32-bit targets
    i64::from(unsafe { libc::sysconf(name) })
}

impl ProcessCollector {
    pub fn new() -> Result<ProcessCollector, prometheus::Error> {
        let cpu = Counter::with_opts(Opts::new(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
        ))?;
        let gauge = |name: &str, help: &str| IntGauge::with_opts(Opts::new(name, help));
        let rss = gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
        )?;
        let vsize = gauge(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
        )?;
        let open_fds = gauge("process_open_fds", "Number of open file descriptors.")?;
        let max_fds = gauge(
            "process_max_fds",
            "Maximum number of open file descriptors.",
        )?;
        let start_time = gauge(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
        )?;
        let threads = gauge("process_threads", "Number of OS threads in the process.")?;
        let ticks = sysconf(libc::_SC_CLK_TCK).max(1) as f64;
        let page = sysconf(libc::_SC_PAGESIZE).max(1);
        let stat = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|t| parse_stat(&t));
        if let (Some(stat), Some(boot)) = (stat, boot_time()) {
            start_time.set((boot as f64 + stat.start_ticks as f64 / ticks) as i64);
        }
        let mut descs = Vec::new();
        descs.extend(cpu.desc().into_iter().cloned());
        for g in [&rss, &vsize, &open_fds, &max_fds, &start_time, &threads] {
            descs.extend(g.desc().into_iter().cloned());
        }
        Ok(ProcessCollector {
            cpu,
            rss,
            vsize,
            open_fds,
            max_fds,
            start_time,
            threads,
            descs,
            ticks,
            page,
        })
    }
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut out = Vec::with_capacity(7);
        if let Some(stat) = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|t| parse_stat(&t))
        {
            // A counter only adds: it follows the kernel's total.
            let total = stat.cpu_ticks as f64 / self.ticks;
            let shown = self.cpu.get();
            if total > shown {
                self.cpu.inc_by(total - shown);
            }
            self.rss.set(stat.rss_pages.saturating_mul(self.page));
            self.vsize
                .set(i64::try_from(stat.vsize).unwrap_or(i64::MAX));
            self.threads.set(stat.threads);
            out.extend(self.cpu.collect());
            out.extend(self.rss.collect());
            out.extend(self.vsize.collect());
            out.extend(self.threads.collect());
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            // The directory handle itself is one of the entries.
            self.open_fds.set(dir.count().saturating_sub(1) as i64);
            out.extend(self.open_fds.collect());
        }
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct it is given.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            self.max_fds
                .set(i64::try_from(limit.rlim_cur).unwrap_or(i64::MAX));
            out.extend(self.max_fds.collect());
        }
        out.extend(self.start_time.collect());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_real_stat_line_with_a_tricky_name() {
        // A line of /proc/PID/stat, with ") (" in the command name.
        let line = "4242 (side car) (x) S 1 4242 4242 0 -1 4194560 1630 0 0 0 37 12 0 0 20 0 3 0 98765 15728640 2871 18446744073709551615 1 1 0 0 0 0 0 4096 17475 0 0 0 17 1 0 0 0 0 0";
        let stat = parse_stat(line).unwrap();
        assert_eq!(stat.cpu_ticks, 49);
        assert_eq!(stat.threads, 3);
        assert_eq!(stat.start_ticks, 98765);
        assert_eq!(stat.vsize, 15_728_640);
        assert_eq!(stat.rss_pages, 2871);
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
    }

    #[test]
    fn cpu_time_moves_in_fractions_of_a_second() {
        let c = ProcessCollector::new().unwrap();
        let read = |c: &ProcessCollector| {
            c.collect()
                .iter()
                .find(|f| f.name() == "process_cpu_seconds_total")
                .map(|f| f.get_metric()[0].get_counter().get_value())
                .unwrap()
        };
        let before = read(&c);
        // Burn a little CPU: a few tens of milliseconds.
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(60) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let after = read(&c);
        // Truncated to whole seconds, the step would be 0 or 1.
        let step = after - before;
        assert!(step > 0.0 && step < 0.9, "{before} -> {after}");
        let names: Vec<String> = c.collect().iter().map(|f| f.name().to_string()).collect();
        for want in [
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
            "process_threads",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
        }
    }
}
