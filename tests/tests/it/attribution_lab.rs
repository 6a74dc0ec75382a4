//! Attribution against a real kernel, through `stalltrace lab` (its namespace lab,
//! end to end): threaded NAPI pinned to a CPU, a planted
//! SCHED_FIFO culprit on that CPU, and the dump checked for who was blamed.
use std::process::Command;

use integration_tests::{require_root, stalltrace_bin, tempdir, Netns, Recorder};
use serde_json::Value;

struct LabRun {
    /// Kept for a failed test's post-mortem; removed by `done`.
    path: std::path::PathBuf,
    code: i32,
    stdout: String,
    stderr: String,
    dump: Vec<Value>,
    hog_pid: u32,
    /// The CPU the lab starved (its napi thread and culprit run there).
    lab_cpu: u64,
}

fn tmp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("stalltrace-it-{}-{name}", std::process::id()))
}

fn lab(scenario: &str, dump_name: &str) -> LabRun {
    lab_with(scenario, dump_name, &[])
}

fn lab_with(scenario: &str, dump_name: &str, extra: &[&str]) -> LabRun {
    let dump = tmp(dump_name);
    let out = Command::new(stalltrace_bin())
        .args(["lab", "--scenario", scenario, "--duration", "2s", "-o"])
        .arg(&dump)
        .args(extra)
        .output()
        .expect("running stalltrace lab");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let hog_pid = stdout
        .lines()
        .find_map(|l| {
            l.split("(pid ")
                .nth(1)
                .filter(|_| l.starts_with("lab: planted"))
        })
        .and_then(|r| r.split(',').next())
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("lab did not say what it planted:\n{stdout}\n{stderr}"));
    // "lab: planted stall-hog (pid N, SCHED_FIFO 50) on CPU C for 2s"
    let lab_cpu = stdout
        .lines()
        .find(|l| l.starts_with("lab: planted"))
        .and_then(|l| l.split(" on CPU ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("lab did not say which CPU it starved:\n{stdout}"));
    let dump_recs = std::fs::read_to_string(&dump)
        .unwrap_or_else(|e| panic!("reading {}: {e}\n{stdout}\n{stderr}", dump.display()))
        .lines()
        .map(|l| serde_json::from_str(l).expect("dump line is JSON"))
        .collect();
    LabRun {
        path: dump.clone(),
        code: out.status.code().unwrap_or(-1),
        stdout,
        stderr,
        dump: dump_recs,
        hog_pid,
        lab_cpu,
    }
}

impl LabRun {
    fn done(self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(self.path.with_extension("ping.log"));
    }
}

/// Long waits on the lab's CPU (other CPUs carry whatever else the machine runs).
fn long_waits(run: &LabRun, min_ns: u64) -> Vec<&Value> {
    run.dump
        .iter()
        .filter(|r| {
            r["type"] == "wait"
                && r["cpu"].as_u64() == Some(run.lab_cpu)
                && r["wait_ns"].as_u64().unwrap() >= min_ns
        })
        .collect()
}

#[test]
fn rt_hog_is_blamed_for_waits_of_100ms_with_the_napi_thread_as_rx_context() {
    if !require_root("rt_hog_is_blamed_for_waits_of_100ms_with_the_napi_thread_as_rx_context") {
        return;
    }
    let run = lab("rt-hog", "rt.jsonl");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    // The hog holds the CPU in 100 ms bursts: waits approach 100 ms.
    let waits = long_waits(&run, 80_000_000);
    let napi = waits
        .iter()
        .filter(|w| w["rx"]["comm"].as_str().unwrap().starts_with("napi/stl-n-"))
        .count();
    assert!(
        napi >= 5,
        "expected several ~100 ms napi waits, got {napi} ({}):\n{}",
        run.path.display(),
        run.stdout
    );
    assert!(
        run.lab_cpu >= 1,
        "the lab starves a CPU other than the prober's 0"
    );
    for w in &waits {
        assert_eq!(w["kind"], "rx_thread");
        // The napi thread, or ksoftirqd which the culprit woke and starved as well.
        let rx = w["rx"]["comm"].as_str().unwrap();
        if rx.starts_with("napi/") {
            assert_eq!(w["rx_context"], "napi", "{w}");
        } else {
            assert!(
                rx.starts_with("ksoftirqd/") && w["rx_context"] == "ksoftirqd",
                "{w}"
            );
        }
        assert_eq!(
            w["holders"][0]["pid"].as_u64().unwrap() as u32,
            run.hog_pid,
            "{} {w}",
            run.path.display()
        );
        assert_eq!(w["holders"][0]["comm"], "stall-hog");
        assert_eq!(w["holders"][0]["policy"], "SCHED_FIFO");
        assert_eq!(w["holders"][0]["priority"], 50);
        assert!(
            w["holders"][0]["run_ns"].as_u64().unwrap() * 10 >= w["wait_ns"].as_u64().unwrap() * 9,
            "held most of the wait: {w}"
        );
        assert!(
            w["holders"][0].get("syscall").is_none(),
            "a busy loop is in user space: {w}"
        );
        // The samples say so too.
        let a = &w["holders"][0]["activity"];
        let (n, user) = (a["samples"].as_u64().unwrap(), a["user"].as_u64().unwrap());
        assert!(
            n >= 20 && user * 10 >= n * 8,
            "user space at least 80%: {w}"
        );
    }
    assert!(
        run.stdout.contains(&format!(
            "CPU held by stall-hog (pid {}, SCHED_FIFO 50)",
            run.hog_pid
        )),
        "live sentence:\n{}",
        run.stdout
    );

    // `analyze` of the dump prints the episodes the recorder printed live, word for word.
    // Live: what the recorder printed before its final report.
    let live: Vec<&str> = run
        .stdout
        .lines()
        .take_while(|l| !l.starts_with("stalltrace report:"))
        .filter(|l| l.starts_with("episode "))
        .collect();
    assert!(
        run.stdout.contains("stalltrace report: (live)"),
        "final report printed"
    );
    let out = Command::new(stalltrace_bin())
        .arg("analyze")
        .arg(&run.path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let analyzed = String::from_utf8_lossy(&out.stdout).into_owned();
    let offline: Vec<&str> = analyzed
        .lines()
        .filter(|l| l.starts_with("episode "))
        .collect();
    assert!(offline.len() >= 5, "several episodes: {analyzed}");
    assert_eq!(live, offline, "live and offline episodes differ");
    for e in &offline {
        assert!(
            // A single-threaded culprit: its pid, no thread named apart.
            e.contains(&format!("culprit stall-hog (pid {}) held", run.hog_pid)),
            "{e}"
        );
        assert!(e.contains("RX ran in napi/stl-n-"), "{e}");
    }
    run.done();
    integration_tests::assert_machine_clean("after the lab");
}

#[test]
fn slow_syscall_culprit_is_named_with_its_syscall_and_file() {
    if !require_root("slow_syscall_culprit_is_named_with_its_syscall_and_file") {
        return;
    }
    let run = lab("slow-syscall", "ss.jsonl");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let waits = long_waits(&run, 80_000_000);
    assert!(waits.len() >= 5, "{}", run.stdout);
    let mut named = 0;
    for w in &waits {
        let h = &w["holders"][0];
        assert_eq!(
            h["pid"].as_u64().unwrap() as u32,
            run.hog_pid,
            "{} {w}",
            run.path.display()
        );
        assert_eq!(h["comm"], "stat-reader");
        // Default mode: no exact syscall tracing; the samples say what it did.
        assert!(h.get("syscall").is_none(), "{w}");
        let a = &h["activity"];
        let samples = a["samples"].as_u64().unwrap_or(0);
        let top = &a["syscalls"][0];
        let path = top["path"].as_str().unwrap_or_default();
        if top["name"] == "pread64"
            && path.starts_with("/dev/shm/stalltrace-lab.")
            && path.ends_with("/culprit.dat")
            && top["samples"].as_u64().unwrap_or(0) * 10 >= samples * 8
            && samples >= 20
        {
            named += 1;
        }
    }
    assert!(
        named * 10 >= waits.len() * 8,
        "most waits name the read, from 20+ samples each: {named}/{} ({})",
        waits.len(),
        run.path.display()
    );
    assert!(
        run.stdout
            .lines()
            .any(|l| l.contains("CPU held by stat-reader")
                && l.contains("inside pread64() of /dev/shm/stalltrace-lab.")),
        "the live sentence names the read:\n{}",
        run.stdout
    );
    let syscalls = run.dump.iter().filter(|r| r["type"] == "syscall").count();
    assert_eq!(syscalls, 0, "no syscall records without --syscalls");
    run.done();
    integration_tests::assert_machine_clean("after the lab");
}

/// A culprit that lives in many short syscalls (open, read, close of a /proc file, as
/// a metrics agent walks small files), under a name chosen here: named with its file,
/// and in the kernel at least 80% of its samples, never "in user space".
#[test]
fn short_syscall_culprit_is_named_with_its_file_and_kernel_share() {
    if !require_root("short_syscall_culprit_is_named_with_its_file_and_kernel_share") {
        return;
    }
    let name = format!("qz{:x}", std::process::id() ^ 0x5a5a);
    let run = lab_with("short-syscalls", "short.jsonl", &["--name", &name]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let file = format!("/proc/{}/status", run.hog_pid);
    let waits = blamed_waits(&run);
    assert!(waits.len() >= 5, "{}", run.stdout);
    let mut good = 0;
    for w in &waits {
        let h = &w["holders"][0];
        assert_eq!(h["comm"], name.as_str(), "{w}");
        let a = &h["activity"];
        let n = a["samples"].as_u64().unwrap_or(0);
        let user = a["user"].as_u64().unwrap_or(0);
        let in_sys: u64 = a["syscalls"]
            .as_array()
            .map(|v| v.iter().map(|x| x["samples"].as_u64().unwrap_or(0)).sum())
            .unwrap_or(0)
            + a["other_syscalls"].as_u64().unwrap_or(0);
        let reads_file = a["syscalls"].as_array().is_some_and(|v| {
            v.iter()
                .any(|x| x["name"] == "read" && x["path"].as_str() == Some(file.as_str()))
        });
        assert!(user * 2 < n, "not user space: {w}");
        if n >= 20 && in_sys * 10 >= n * 8 && reads_file {
            good += 1;
        }
    }
    assert!(
        good * 10 >= waits.len() * 8,
        "most waits: 80%+ in syscalls, reading {file}: {good}/{} ({})",
        waits.len(),
        run.path.display()
    );
    assert!(
        run.stdout
            .lines()
            .any(|l| l.contains(&format!("CPU held by {name}"))
                && l.contains("% in syscalls — read() of ")),
        "the live sentence gives the breakdown:\n{}",
        run.stdout
    );
    run.done();
    integration_tests::assert_machine_clean("after the lab");
}

/// A code path: (samples, kernel frames, user frames).
type Path = (u64, Vec<String>, Vec<String>);

/// Stacks of a holder as (samples, user_mode, top paths).
fn holder_stacks(h: &Value) -> Option<(u64, u64, Vec<Path>)> {
    let st = h.get("stacks")?;
    let frames = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|f| f.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let top = st["top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["count"].as_u64().unwrap(),
                frames(&t["kernel"]),
                frames(&t["user"]),
            )
        })
        .collect();
    Some((
        st["samples"].as_u64().unwrap(),
        st["user_mode"].as_u64().unwrap(),
        top,
    ))
}

/// Waits of 80 ms or more blamed on the planted culprit (other load on the machine may
/// add waits of its own on other CPUs).
fn blamed_waits(run: &LabRun) -> Vec<&Value> {
    long_waits(run, 80_000_000)
        .into_iter()
        .filter(|w| w["holders"][0]["pid"].as_u64() == Some(u64::from(run.hog_pid)))
        .collect()
}

fn footer(run: &LabRun) -> &Value {
    let f = run.dump.last().expect("dump is not empty");
    assert_eq!(f["type"], "footer", "{}", run.path.display());
    f
}

/// A read-path function of the kernel (pread64 of a tmpfs file).
fn is_read_frame(f: &str) -> bool {
    let name = f.split('+').next().unwrap_or("");
    [
        "vfs_read",
        "ksys_pread64",
        "__x64_sys_pread64",
        "shmem_file_read_iter",
        "filemap_read",
    ]
    .contains(&name)
}

#[test]
fn slow_syscall_stacks_show_the_culprits_read_path() {
    if !require_root("slow_syscall_stacks_show_the_culprits_read_path") {
        return;
    }
    let run = lab_with(
        "slow-syscall",
        "ss-stacks.jsonl",
        &["--stacks", "--syscalls"],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(
        run.dump[0]["options"]["stacks_hz"], 499,
        "the header says stacks were on"
    );
    assert!(
        run.dump[0]["hooks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h.as_str().unwrap().starts_with("perf_event:cpu-clock")),
        "{}",
        run.dump[0]
    );
    let waits = blamed_waits(&run);
    assert!(waits.len() >= 5, "{}", run.stdout);
    let mut with_read_path = 0;
    for w in &waits {
        let h = &w["holders"][0];
        let Some((samples, user_mode, top)) = holder_stacks(h) else {
            continue;
        };
        assert!(samples > 0 && !top.is_empty(), "{w}");
        let path_samples: u64 = top
            .iter()
            .filter(|(_, k, _)| k.iter().any(|f| is_read_frame(f)))
            .map(|t| t.0)
            .sum();
        // The reader sits inside pread64(): its samples are in the kernel, on the read
        // path, and its user stack is in the stalltrace binary (the hog).
        assert!(user_mode * 2 < samples, "mostly in the kernel: {w}");
        if path_samples * 2 >= samples {
            with_read_path += 1;
        }
        let (_, kernel, user) = &top[0];
        assert!(
            kernel.iter().any(|f| is_read_frame(f)),
            "the top kernel stack is the read path: {kernel:?}"
        );
        assert!(
            user.iter().any(|f| f.contains("[stalltrace")),
            "the user stack is in the stalltrace binary: {user:?}"
        );
    }
    assert!(
        with_read_path * 10 >= waits.len() * 8,
        "most waits carry the read path: {with_read_path}/{} ({})",
        waits.len(),
        run.path.display()
    );
    assert!(
        run.stdout
            .lines()
            .any(|l| l.contains("CPU held by stat-reader")
                && l.contains("; kernel stack in ")
                && l.contains("vfs_read")),
        "the live sentence names the stack:\n{}",
        run.stdout
    );
    // --syscalls: the long reads are exact records too, named with their file.
    // (The reader's other long calls, e.g. the munmap of its 256 MiB buffer at exit,
    // are records too.)
    let reads: Vec<&Value> = run
        .dump
        .iter()
        .filter(|r| r["type"] == "syscall" && r["comm"] == "stat-reader" && r["name"] == "pread64")
        .collect();
    assert!(reads.len() >= 10, "long reads are recorded as syscalls");
    for r in &reads {
        assert!(
            r["cpu_ns"].as_u64().unwrap() >= 10_000_000,
            "over the threshold: {r}"
        );
        assert!(
            r["path"]
                .as_str()
                .unwrap_or_default()
                .ends_with("/culprit.dat"),
            "{r}"
        );
    }
    let f = footer(&run);
    let st = &f["stacks"];
    assert!(st["samples"].as_u64().unwrap() > 0, "{f}");
    assert!(st["attributed"].as_u64().unwrap() > 0, "{f}");
    // The report offline: the culprit's stacks per episode and in the ranking.
    let rep = Command::new(stalltrace_bin())
        .args(["analyze", "--format", "json"])
        .arg(&run.path)
        .output()
        .unwrap();
    assert!(rep.status.success());
    let rep: Value = serde_json::from_slice(&rep.stdout).unwrap();
    let ep = rep["episodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["culprit"].get("stacks").is_some())
        .expect("an episode with the culprit's stacks");
    assert!(ep["culprit"]["stacks"]["top"][0]["kernel"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| is_read_frame(f.as_str().unwrap())));
    let ranked = &rep["culprits"][0]["stacks"][0];
    assert_eq!(ranked["side"], "kernel", "{ranked}");
    assert!(ranked["frames"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| is_read_frame(f.as_str().unwrap())));
    let text = Command::new(stalltrace_bin())
        .arg("analyze")
        .arg(&run.path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("culprit's stacks: "), "{text}");
    run.done();
    integration_tests::assert_machine_clean("after the lab");
}

#[test]
fn rt_hog_stacks_are_in_user_space_in_the_hog() {
    if !require_root("rt_hog_stacks_are_in_user_space_in_the_hog") {
        return;
    }
    let run = lab_with("rt-hog", "rt-stacks.jsonl", &["--stacks"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let waits = blamed_waits(&run);
    assert!(waits.len() >= 5, "{}", run.stdout);
    let mut checked = 0;
    for w in &waits {
        let h = &w["holders"][0];
        let Some((samples, user_mode, top)) = holder_stacks(h) else {
            continue;
        };
        checked += 1;
        // A busy loop: the sampler finds it in user space (a timer tick or an
        // interrupt may catch it in the kernel now and then).
        assert!(user_mode * 10 >= samples * 8, "mostly user space: {w}");
        let (_, kernel, user) = &top[0];
        assert!(kernel.is_empty(), "the top stack has no kernel frames: {w}");
        assert!(!user.is_empty(), "{w}");
        let symbolized = user.iter().any(|f| !f.starts_with("0x"));
        if symbolized {
            assert!(
                user.iter()
                    .any(|f| f.contains("hog") && f.ends_with("[stalltrace]")),
                "the hog's own function, in the stalltrace binary: {user:?}"
            );
        } else {
            assert!(
                user.iter().any(|f| f.contains("[stalltrace+0x")),
                "{user:?}"
            );
        }
    }
    assert!(
        checked * 10 >= waits.len() * 8,
        "most waits carry the hog's stacks: {checked}/{}",
        waits.len()
    );
    assert!(
        run.stdout
            .lines()
            .any(|l| l.contains("CPU held by stall-hog") && l.contains("; user stack in ")),
        "{}",
        run.stdout
    );
    run.done();
    integration_tests::assert_machine_clean("after the lab");
}

/// Jiffies the hypervisor stole from this VM so far (all CPUs, /proc/stat's 8th field).
fn steal_jiffies() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(8))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// No stall planted, none reported: every request and reply recorded (the tracepoint
/// path sees both), and no wait of 50 ms or more — unless the hypervisor stole that
/// much CPU from the VM meanwhile (then such a wait is real; said, not failed).
#[test]
fn a_quiet_recording_reports_no_wait_over_50ms() {
    if !require_root("a_quiet_recording_reports_no_wait_over_50ms") {
        return;
    }
    let ns = Netns::create_unique("quiet").unwrap();
    let dump = tempdir("quiet").join("quiet.jsonl");
    // Ended by the SIGINT below; --duration only guards a hung test (ping -i 0.01 really
    // sends every ~20 ms on a HZ=250 kernel).
    let steal0 = steal_jiffies();
    let rec = Recorder::start(
        &[
            "--quiet",
            "--attach",
            "tracepoint",
            "--peer",
            &ns.ns_addr,
            "--duration",
            "120s",
        ],
        &dump,
    );
    let ping = Command::new("ping")
        .args(["-q", "-c", "1000", "-i", "0.01", &ns.ns_addr])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&ping.stdout).contains("1000 received"));
    let (code, _, err) = rec.finish(Some(libc::SIGINT));
    assert_eq!(code, 0, "{err}");
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100);
    let stolen_ms = (steal_jiffies() - steal0) * 1000 / hz.max(1);
    let text = std::fs::read_to_string(&dump).unwrap();
    let mut packets = 0;
    for l in text.lines() {
        let r: Value = serde_json::from_str(l).unwrap();
        if r["type"] == "wait" && r["wait_ns"].as_u64().unwrap() >= 50_000_000 {
            assert!(
                stolen_ms >= 50,
                "no stall was planted and no CPU stolen ({stolen_ms} ms), yet: {r}"
            );
            eprintln!(
                "note: a wait of 50 ms or more while the hypervisor stole {stolen_ms} ms: {r}"
            );
        }
        if r["type"] == "packet" {
            packets += 1;
        }
    }
    assert_eq!(packets, 2000, "every request and reply recorded");
}

#[test]
fn lost_events_are_counted_and_shown() {
    if !require_root("lost_events_are_counted_and_shown") {
        return;
    }
    let ns = Netns::create_unique("lost").unwrap();
    let dump = tempdir("lost").join("lost.jsonl");
    // A one-page ring buffer cannot keep up with a flood of echoes.
    let rec = Recorder::start(
        &[
            "--quiet",
            "--ring-buffer",
            "4KiB",
            "--peer",
            &ns.ns_addr,
            "--duration",
            "6s",
        ],
        &dump,
    );
    let _ = Command::new("ping")
        .args(["-q", "-f", "-c", "20000", "-w", "3", &ns.ns_addr])
        .output()
        .unwrap();
    let (code, _, stderr) = rec.finish(None);
    assert_eq!(code, 0, "{stderr}");
    let text = std::fs::read_to_string(&dump).unwrap();
    let footer: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(footer["type"], "footer");
    let lost = footer["lost"]["packets"].as_u64().unwrap();
    assert!(
        lost > 0,
        "a 4 KiB ring buffer under a flood must lose some: {footer}"
    );
    let n = |k: &str| footer["lost"][k].as_u64().unwrap_or(0);
    let (w, sa, sc, t) = (n("waits"), n("samples"), n("syscalls"), n("table_full"));
    let shown = format!(
        "lost {} (packets {lost}, waits {w}, samples {sa}, syscalls {sc}, full tables {t})",
        lost + w + sa + sc + t
    );
    assert!(
        stderr.contains(&shown),
        "summary shows the counts ({shown}): {stderr}"
    );
    assert!(
        stderr.contains("raise --ring-buffer"),
        "live warning names the knob: {stderr}"
    );
    let recorded = text
        .lines()
        .filter(|l| l.contains("\"type\":\"packet\""))
        .count() as u64;
    assert_eq!(
        footer["counts"]["packets"].as_u64().unwrap(),
        recorded,
        "footer counts what the dump holds"
    );
}

/// A daemon whose worker thread holds the CPU: blamed as the process (its pid and
/// name), with the thread named apart; the test finds both ids itself in /proc.
#[test]
fn a_multithreaded_culprit_is_named_by_process_and_thread() {
    if !require_root("a_multithreaded_culprit_is_named_by_process_and_thread") {
        return;
    }
    let dir = stalltrace_testkit::scratch::Scratch::new("mt").unwrap();
    let dump = dir.join("mt.jsonl");
    let child = Command::new(stalltrace_bin())
        .args(["lab", "--scenario", "rt-hog", "--duration", "2s"])
        .args(["--name", "mt-daemon", "--thread", "mt-worker-3", "-o"])
        .arg(&dump)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lab = stalltrace::lab::child::ChildGuard::new(child);
    let t0 = std::time::Instant::now();
    let (pid, tid) = loop {
        let found = integration_tests::find_thread("mt-daemon").and_then(|pid| {
            let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
            tasks.flatten().find_map(|t| {
                let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
                let tid: u32 = t.file_name().to_str()?.parse().ok()?;
                (comm.trim() == "mt-worker-3").then_some((pid, tid))
            })
        });
        if let Some(f) = found {
            break f;
        }
        assert!(
            lab.running() && t0.elapsed() < std::time::Duration::from_secs(60),
            "no worker"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert_ne!(pid, tid, "the worker is a second thread");
    let out = lab.into_inner().unwrap().wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let rep = Command::new(stalltrace_bin())
        .args(["analyze", "--format", "json"])
        .arg(&dump)
        .output()
        .unwrap();
    let rep: Value = serde_json::from_slice(&rep.stdout).unwrap();
    let c = &rep["culprits"][0];
    assert_eq!(c["tgid"].as_u64(), Some(u64::from(pid)), "{c}");
    assert_eq!(c["comm"], "mt-daemon", "ranked by process: {c}");
    assert!(
        c["pids"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_u64() == Some(u64::from(tid))),
        "the worker's tid among the culprit's threads: {c}"
    );
    let phrase = format!("culprit mt-daemon (pid {pid}), thread mt-worker-3 (tid {tid}) held");
    let episodes: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("episode "))
        .collect();
    assert!(
        !episodes.is_empty() && episodes.iter().all(|e| e.contains(&phrase)),
        "{phrase}\n{stdout}"
    );
    integration_tests::assert_machine_clean("after the multi-threaded lab");
}
