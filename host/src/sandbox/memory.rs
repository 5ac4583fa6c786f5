//! How much more memory this process can take before the kernel, or its
//! container's limit, stops it: read before work that needs a lot of it
//! (an inlined compile of an interpreter, about 1 GB) and can be skipped.
//!
//! The smaller of the machine's `MemAvailable` and, for the cgroup the host
//! runs in and each above it, its limit less what it uses (cgroup v2
//! `memory.max`/`memory.current`; v1 `memory.limit_in_bytes`/
//! `memory.usage_in_bytes`). Linux only; elsewhere nothing is known.

use std::path::{Path, PathBuf};

/// Bytes this process may still allocate, or `None` when nothing says.
pub(super) fn available() -> Option<u64> {
    let machine = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| mem_available(&text));
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|text| cgroup_headroom(Path::new("/sys/fs/cgroup"), &text));
    [machine, cgroup].into_iter().flatten().min()
}

/// `MemAvailable` from `/proc/meminfo`, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo
        .lines()
        .find(|line| line.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The least headroom of the cgroups that hold this process (`own` is
/// `/proc/self/cgroup`), those under `root` being mounted there.
fn cgroup_headroom(root: &Path, own: &str) -> Option<u64> {
    let v2 = own
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(|path| {
            let mut dir = root.join(path.trim_start_matches('/'));
            let mut least: Option<u64> = None;
            loop {
                let headroom = headroom_in(&dir, "memory.max", "memory.current");
                least = least.into_iter().chain(headroom).min();
                if dir == root || !dir.pop() {
                    break least;
                }
            }
        });
    let v1 = || {
        headroom_in(
            &root.join("memory"),
            "memory.limit_in_bytes",
            "memory.usage_in_bytes",
        )
    };
    v2.flatten().or_else(v1)
}

/// `limit` less `usage`, both files in `dir`; `None` when either is missing
/// or there is no limit ("max" in v2, a huge number in v1).
fn headroom_in(dir: &Path, limit: &str, usage: &str) -> Option<u64> {
    let read = |name: &str| -> Option<u64> {
        let path: PathBuf = dir.join(name);
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    };
    let limit = read(limit).filter(|&limit| limit < 1 << 60)?;
    Some(limit.saturating_sub(read(usage)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_available_is_read_in_bytes() {
        let meminfo = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:    2048 kB\n";
        assert_eq!(mem_available(meminfo), Some(2048 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn the_tightest_cgroup_on_the_way_up_counts() {
        let root = tempfile::tempdir().unwrap();
        let write = |dir: &str, max: &str, current: &str| {
            let dir = root.path().join(dir);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("memory.max"), max).unwrap();
            std::fs::write(dir.join("memory.current"), current).unwrap();
        };
        write("outer", "3000\n", "1000\n");
        write("outer/host", "max\n", "900\n");
        assert_eq!(cgroup_headroom(root.path(), "0::/outer/host\n"), Some(2000));
        write("outer/host", "1500\n", "900\n");
        assert_eq!(cgroup_headroom(root.path(), "0::/outer/host\n"), Some(600));
        // No limit anywhere: nothing known.
        assert_eq!(cgroup_headroom(root.path(), "0::/elsewhere\n"), None);
    }

    #[test]
    fn cgroup_v1_limits_count_too() {
        let root = tempfile::tempdir().unwrap();
        let memory = root.path().join("memory");
        std::fs::create_dir_all(&memory).unwrap();
        std::fs::write(
            memory.join("memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .unwrap();
        std::fs::write(memory.join("memory.usage_in_bytes"), "100\n").unwrap();
        let own = "12:memory:/\n1:name=systemd:/\n";
        assert_eq!(cgroup_headroom(root.path(), own), None);
        std::fs::write(memory.join("memory.limit_in_bytes"), "1100\n").unwrap();
        assert_eq!(cgroup_headroom(root.path(), own), Some(1000));
    }
}
