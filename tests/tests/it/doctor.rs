//! `stalltrace doctor` against this machine: dying memory cgroups it planted itself
//! (counted by the kernel's own numbers, independently), the cost of reading
//! memory.stat, and a CPU where a threaded NAPI thread shares with a SCHED_FIFO task.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use integration_tests::{require, require_root, stalltrace_bin, Netns};
use serde_json::Value;
use stalltrace::lab::child::ChildGuard;
use stalltrace_testkit::scratch::Scratch;

/// This process's memory cgroup directory (v1 `memory` line).
fn own_memcg() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, ctl, path) = (f.next()?, f.next()?, f.next()?);
        ctl.split(',')
            .any(|c| c == "memory")
            .then(|| Path::new("/sys/fs/cgroup/memory").join(path.trim_start_matches('/')))
    })
}

/// The kernel's count of memory cgroups (/proc/cgroups) minus the directories of the
/// hierarchy: the dying ones, the 2019 GitHub incident's own method.
fn kernel_dying() -> u64 {
    let total: u64 = std::fs::read_to_string("/proc/cgroups")
        .unwrap()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&"memory")).then(|| f[2].parse().unwrap())
        })
        .unwrap();
    fn dirs(p: &Path) -> u64 {
        1 + std::fs::read_dir(p)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| dirs(&e.path()))
                    .sum()
            })
            .unwrap_or(0)
    }
    total - dirs(Path::new("/sys/fs/cgroup/memory"))
}

fn doctor_json() -> Value {
    let out = Command::new(stalltrace_bin())
        .args(["doctor", "--format", "json"])
        .output()
        .unwrap();
    assert!(
        matches!(out.status.code(), Some(0) | Some(7)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn check<'a>(r: &'a Value, id: &str) -> &'a Value {
    r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no check {id}: {r}"))
}

/// Dying memory cgroups planted by the test: the count doctor reports is the kernel's.
#[test]
fn doctor_counts_planted_dying_memory_cgroups() {
    if !require_root("doctor_counts_planted_dying_memory_cgroups") {
        return;
    }
    let Some(own) = own_memcg() else {
        assert!(
            require(
                "doctor_counts_planted_dying_memory_cgroups",
                false,
                "no v1 memory hierarchy"
            ),
            "unreachable"
        );
        return;
    };
    // Before: whatever this machine has; doctor agrees with the kernel.
    let before = doctor_json();
    let reported = |r: &Value| r["facts"]["cgroups"]["memcg_dying"].as_u64().unwrap();
    let k0 = kernel_dying();
    assert!(
        reported(&before).abs_diff(k0) <= 2,
        "{} vs {k0}",
        reported(&before)
    );
    assert_ne!(check(&before, "memory_cgroups")["status"], "bad");

    // Plant K dying ones below this test's own memory cgroup.
    const K: usize = 120;
    let parent = own.join(format!("stalltrace-it-doctor.{}", std::process::id()));
    std::fs::create_dir(&parent).unwrap();
    let files = Scratch::new("doctor-cache").unwrap();
    let cgs: Vec<PathBuf> = (0..K).map(|i| parent.join(format!("c{i}"))).collect();
    let mut paths = vec![];
    for (i, c) in cgs.iter().enumerate() {
        std::fs::create_dir(c).unwrap();
        let f = files.join(&format!("f{i}"));
        std::fs::write(&f, b"").unwrap();
        paths.push(f);
    }
    let st = Command::new(stalltrace_bin())
        .arg("charge-cgroups")
        .arg("--cgroups")
        .args(&cgs)
        .arg("--files")
        .args(&paths)
        .arg("--back")
        .arg(&own)
        .status()
        .unwrap();
    assert!(st.success());
    for c in &cgs {
        std::fs::remove_dir(c).unwrap();
    }
    let k1 = kernel_dying();
    let after = doctor_json();
    let k2 = kernel_dying();
    let n = reported(&after);
    assert!(k1 >= k0 + K as u64 - 5, "planted {K}: {k0} → {k1}");
    assert!(
        (k1.min(k2)..=k1.max(k2)).contains(&n),
        "doctor {n}, kernel {k1}..{k2}"
    );
    let cost = check(&after, "memory_stat_cost");
    assert!(
        after["facts"]["cgroups"]["root_stat_read_median_ns"]
            .as_u64()
            .unwrap()
            > 0,
        "{cost}"
    );
    assert!(
        cost["summary"].as_str().unwrap().contains("median"),
        "{cost}"
    );

    // Clean up: the files go, their cache goes, the dying cgroups are released.
    drop(files);
    std::fs::remove_dir(&parent).unwrap();
    let t0 = Instant::now();
    while kernel_dying() > k0 + 10 && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        kernel_dying() <= k0 + 10,
        "released: {k0} → {}",
        kernel_dying()
    );
}

/// A CPU that carries a threaded NAPI thread and a SCHED_FIFO task: warn or bad, and
/// both named.
#[test]
fn doctor_names_the_napi_thread_and_the_fifo_task_sharing_a_cpu() {
    if !require_root("doctor_names_the_napi_thread_and_the_fifo_task_sharing_a_cpu") {
        return;
    }
    let ns = Netns::create_unique("doc").unwrap();
    let napi = ns.threaded_napi(1).unwrap();
    let name = format!("fifo-{}", std::process::id() % 10_000);
    let hog = Command::new(stalltrace_bin())
        .args(["hog", "--cpu", "1", "--fifo", "50", "--name", &name])
        .args(["--duration", "8s", "--burst", "8s", "--gap", "0ms"])
        .spawn()
        .unwrap();
    let mut hog = ChildGuard::new(hog);
    let hog_pid = hog.id().unwrap();
    // Wait until it took its name and policy.
    let t0 = Instant::now();
    loop {
        let comm = std::fs::read_to_string(format!("/proc/{hog_pid}/comm")).unwrap_or_default();
        if comm.trim() == name || t0.elapsed() > Duration::from_secs(5) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    let r = doctor_json();
    let _ = hog.signal_and_wait(libc::SIGKILL, Duration::from_secs(5));
    let c = check(&r, "rx_cpus");
    let status = c["status"].as_str().unwrap();
    assert!(status == "warn" || status == "bad", "{c}");
    let text = c.to_string();
    assert!(
        text.contains(&format!("napi/{}-", ns.ns_if)) && text.contains(&napi.to_string()),
        "{c}"
    );
    assert!(
        text.contains(&name) && text.contains(&hog_pid.to_string()),
        "{c}"
    );
}
