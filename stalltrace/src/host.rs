//! Facts about the machine that several commands read (the kernel's release and
//! preemption model, this process's capabilities). The layer below `kernel`, `lab`
//! and the commands: it imports nothing from the crate.

/// Capability bits (linux/capability.h).
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_SYS_RESOURCE: u32 = 24;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// The `CapEff:` bits of a `/proc/<pid>/status` text.
pub fn cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// Effective capability bits of this process (0 when /proc/self/status says none).
pub fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| cap_eff(&s))
        .unwrap_or(0)
}

/// A PREEMPT_RT kernel (`/sys/kernel/realtime`, present on those only): softirqs
/// raised in hard-irq context always go to ksoftirqd there.
pub fn preempt_rt() -> bool {
    std::fs::read_to_string("/sys/kernel/realtime").is_ok_and(|s| s.trim() == "1")
}

/// Whether a `uname -r` string is at least `major.minor`.
pub fn kernel_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut it = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty());
    let ma = it.next().and_then(|s| s.parse::<u32>().ok()).unwrap_or(0);
    let mi = it.next().and_then(|s| s.parse::<u32>().ok()).unwrap_or(0);
    (ma, mi) >= (major, minor)
}

#[cfg(test)]
mod tests {
    use super::kernel_at_least;

    #[test]
    fn kernel_versions_compare() {
        assert!(!kernel_at_least("6.1.0-56-amd64", 6, 5));
        assert!(!kernel_at_least("5.15.0", 6, 5));
        assert!(kernel_at_least("6.5.0", 6, 5));
        assert!(kernel_at_least("6.12.117+deb12-amd64", 6, 5));
        assert!(kernel_at_least("6.18.0", 6, 5));
        assert!(!kernel_at_least("garbage", 6, 5));
    }
}
