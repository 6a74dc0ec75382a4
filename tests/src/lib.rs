//! Test kit for stalltrace's root-only integration tests: network namespaces with a
//! veth pair that are removed on drop (also on panic), the stalltrace binary, leftover
//! checks, and the "must run under CI" rule.
//!
//! Every test that needs root calls [`require_root`]: outside CI it skips with a
//! message; under `CI=true` it fails, so CI never passes by skipping.
pub mod netns;

use std::{
    path::PathBuf,
    process::{Command, Output},
};

pub use netns::{find_thread, Netns};

/// Returns false (skip) when not root outside CI; panics under CI=true.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        return true;
    }
    if std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
    {
        panic!("{test}: needs root and a real kernel, and CI=true: refusing to skip");
    }
    eprintln!("SKIP {test}: needs root (runs in CI, where it fails instead of skipping)");
    false
}

/// The stalltrace binary under test: $STALLTRACE_BIN, else the workspace's debug build.
pub fn stalltrace_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("STALLTRACE_BIN") {
        return PathBuf::from(p);
    }
    let ws = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or(ws.join("target"));
    let p = target.join("debug").join("stalltrace");
    assert!(
        p.exists(),
        "{} is missing: build it first (cargo build -p stalltrace) or set STALLTRACE_BIN",
        p.display()
    );
    p
}

/// Runs a command to completion, panicking with its output when it fails.
pub fn sh(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Our BPF programs still loaded. The kernel frees a program after its last fd and
/// link close, once an RCU grace period has passed: well under a second on a quiet
/// machine, seconds under heavy load. So this waits up to 15 s for them to go; a real
/// leak (a process still holding them, or a pin) does not go away.
pub fn our_bpf_programs() -> Vec<String> {
    let t0 = std::time::Instant::now();
    loop {
        let left = our_bpf_programs_now();
        if left.is_empty() || t0.elapsed() > std::time::Duration::from_secs(15) {
            return left;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Our BPF programs loaded right now, as `id name (owner pids)` (bpftool).
pub fn our_bpf_programs_now() -> Vec<String> {
    const OURS: &[&str] = &[
        "netif_receive_s",
        "icmp_echo",
        "sched_switch",
        "sched_wakeup",
        "softirq_raise",
        "softirq_entry",
        "softirq_exit",
        "sys_enter",
        "sys_exit",
        "stack_sample",
    ];
    let out = match Command::new("bpftool").args(["prog", "show"]).output() {
        Ok(o) => o,
        Err(e) => panic!("bpftool is needed to check for leftover programs: {e}"),
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut found = vec![];
    let mut cur: Option<String> = None;
    for l in text.lines() {
        if !l.starts_with(char::is_whitespace) {
            if let Some(c) = cur.take() {
                found.push(c);
            }
            let kind_ok = l.contains(": tracepoint")
                || l.contains(": raw_tracepoint")
                || l.contains(": kprobe")
                || l.contains(": perf_event");
            if kind_ok && OURS.iter().any(|n| l.contains(&format!("name {n} "))) {
                let id = l.split(':').next().unwrap_or("");
                let name = l
                    .split("name ")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .unwrap_or("");
                cur = Some(format!("{id} {name}"));
            }
        } else if let (Some(c), Some(p)) = (cur.as_mut(), l.trim().strip_prefix("pids ")) {
            c.push_str(&format!(" (owner {p})"));
        }
    }
    if let Some(c) = cur {
        found.push(c);
    }
    found
}
