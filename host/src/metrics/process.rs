//! The process's own CPU time and memory, read from `/proc`.

/// CPU time and resident memory of this process, from `/proc` (Linux).
pub(super) struct ProcessStats {
    pub(super) cpu_seconds: f64,
    pub(super) resident_bytes: u64,
}

impl ProcessStats {
    pub(super) fn read() -> Option<Self> {
        // /proc/self/stat: fields 14 and 15 (utime, stime) in clock ticks,
        // counted after the command name, which is in parentheses and may
        // hold spaces. Linux reports them in USER_HZ, 100 on every platform
        // Warren runs on.
        const TICKS_PER_SECOND: f64 = 100.0;
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let after_name = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let rss_kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(ProcessStats {
            cpu_seconds: (utime + stime) / TICKS_PER_SECOND,
            resident_bytes: rss_kib * 1024,
        })
    }
}
