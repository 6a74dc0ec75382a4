//! Facts read off this machine, one helper each: clocks, small /proc and /sys files,
//! the CPUs this process may use.
use std::path::Path;

fn clock(id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock ids used exist on Linux.
    if unsafe { libc::clock_gettime(id, &mut ts) } != 0 {
        return 0;
    }
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
}

/// Boot-clock nanoseconds (CLOCK_BOOTTIME), the eBPF side's `bpf_ktime_get_boot_ns`.
pub fn boot_ns() -> u64 {
    clock(libc::CLOCK_BOOTTIME)
}

/// Wall-clock nanoseconds since the epoch.
pub fn wall_ns() -> u64 {
    clock(libc::CLOCK_REALTIME)
}

/// Wall minus boot clock now: what turns a kernel timestamp into wall-clock time.
pub fn boot_to_wall_ns() -> i64 {
    i64::try_from(wall_ns()).unwrap_or(0) - i64::try_from(boot_ns()).unwrap_or(0)
}

/// A small text file, trimmed; `None` when unreadable.
pub fn read_trim(p: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

pub fn hostname() -> String {
    read_trim("/proc/sys/kernel/hostname").unwrap_or_default()
}

/// `uname -r`.
pub fn kernel_release() -> String {
    read_trim("/proc/sys/kernel/osrelease").unwrap_or_default()
}

/// CPUs this process may run on (its affinity: `taskset -c 0 stalltrace lab` has one).
pub fn allowed_cpus() -> u32 {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size.
    let n = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return 1;
        }
        libc::CPU_COUNT(&set)
    };
    u32::try_from(n.max(1)).unwrap_or(1)
}
