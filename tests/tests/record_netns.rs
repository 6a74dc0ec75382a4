//! `stalltrace record` against a real kernel: probe packets across a veth pair into a
//! namespace, the kprobe path's verdict on this kernel, signals, and clean-up.
use std::{
    collections::HashMap,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use integration_tests::{our_bpf_programs, require_root, sh, stalltrace_bin, Netns};
use serde_json::Value;

/// Kills the recorder if a test panics before it exits.
struct Recorder(Option<Child>);

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start_record(args: &[&str]) -> Recorder {
    let child = Command::new(stalltrace_bin())
        .arg("record")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning stalltrace record");
    Recorder(Some(child))
}

/// Waits for the recorder to say it is recording (programs attached).
fn wait_attached(dump: &std::path::Path) {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(30) {
        if std::fs::read_to_string(dump)
            .map(|s| s.contains("\"type\":\"header\""))
            .unwrap_or(false)
        {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("recorder did not start within 30 s");
}

fn finish(mut r: Recorder, sig: i32) -> (i32, String, String) {
    let mut c = r.0.take().expect("recorder running");
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(c.id() as i32, sig) };
    let t0 = Instant::now();
    loop {
        if let Some(_st) = c.try_wait().expect("waiting for the recorder") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "recorder did not exit within 30 s of signal {sig}"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let out = c.wait_with_output().expect("recorder output");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn read_dump(p: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(p)
        .expect("reading the dump")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad dump line {l}: {e}")))
        .collect()
}

fn ncpus() -> u64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }) as u64
}

#[test]
fn every_ping_sequence_is_recorded_once_with_cpu_and_comm() {
    if !require_root("every_ping_sequence_is_recorded_once_with_cpu_and_comm") {
        return;
    }
    let ns = Netns::create_unique("rec").expect("creating the namespace");
    let dir = tempdir();
    let dump = dir.join("ping.jsonl");
    let rec = start_record(&[
        "--attach",
        "tracepoint",
        "--peer",
        &ns.ns_addr,
        "-o",
        dump.to_str().unwrap(),
    ]);
    wait_attached(&dump);
    const N: u32 = 300;
    let ping =
        sh(Command::new("ping").args(["-c", &N.to_string(), "-i", "0.01", "-W", "1", &ns.ns_addr]));
    let ping_out = String::from_utf8_lossy(&ping.stdout);
    assert!(
        ping_out.contains(&format!("{N} packets transmitted, {N} received")),
        "{ping_out}"
    );
    thread::sleep(Duration::from_millis(300));
    let (code, stdout, stderr) = finish(rec, libc::SIGINT);
    assert_eq!(code, 0, "stderr: {stderr}");
    assert!(
        stderr.contains("tracepoint:net:netif_receive_skb") || stderr.contains("recording"),
        "{stderr}"
    );

    let recs = read_dump(&dump);
    assert_eq!(recs[0]["type"], "header");
    assert_eq!(recs[0]["packet_hook"], "tracepoint");
    let footer = recs.last().unwrap();
    assert_eq!(footer["type"], "footer", "dump has its footer");
    assert_eq!(footer["reason"], "sigint");
    assert_eq!(footer["lost"]["packets"], 0);

    // Each sequence exactly once per direction, with a plausible CPU and the comm.
    let mut seen: HashMap<(String, u64), u32> = HashMap::new();
    let mut ident = None;
    for r in recs.iter().filter(|r| r["type"] == "packet") {
        let kind = r["kind"].as_str().unwrap().to_string();
        let seq = r["seq"].as_u64().unwrap();
        *seen.entry((kind, seq)).or_default() += 1;
        assert!(r["cpu"].as_u64().unwrap() < ncpus());
        assert!(!r["comm"].as_str().unwrap().is_empty());
        let id = r["ident"].as_u64().unwrap();
        assert_eq!(
            *ident.get_or_insert(id),
            id,
            "one ping, one echo identifier"
        );
        // Across a veth from a process, RX runs as a softirq on the sender's stack,
        // or in ksoftirqd / on an idle CPU when deferred.
        let ctx = r["context"].as_str().unwrap();
        assert!(
            ["process_softirq", "ksoftirqd", "idle"].contains(&ctx),
            "context {ctx}"
        );
        if ctx == "process_softirq" {
            assert_eq!(r["comm"], "ping", "softirq on ping's stack names ping");
        }
    }
    for seq in 1..=N as u64 {
        for kind in ["echo_request", "echo_reply"] {
            assert_eq!(
                seen.get(&(kind.to_string(), seq)),
                Some(&1),
                "{kind} seq {seq}"
            );
        }
    }
    assert_eq!(seen.len(), 2 * N as usize, "nothing but the ping's packets");

    // The live table shows each request once too.
    let live_requests = stdout
        .lines()
        .filter(|l| l.contains("echo_request"))
        .count();
    assert_eq!(live_requests, N as usize, "live output:\n{stdout}");
    let (name, host_if) = (ns.name.clone(), ns.host_if.clone());
    drop(ns);
    assert!(!Netns::exists(&name, &host_if), "namespace removed");
    {
        let left = our_bpf_programs();
        assert!(left.is_empty(), "no program of ours left: {left:?}");
    }
}

#[test]
fn sigterm_ends_the_recording_cleanly() {
    if !require_root("sigterm_ends_the_recording_cleanly") {
        return;
    }
    let dir = tempdir();
    let dump = dir.join("term.jsonl");
    let rec = start_record(&["--quiet", "-o", dump.to_str().unwrap()]);
    wait_attached(&dump);
    assert!(
        !integration_tests::our_bpf_programs_now().is_empty(),
        "programs attached while recording"
    );
    thread::sleep(Duration::from_millis(500));
    let (code, _out, stderr) = finish(rec, libc::SIGTERM);
    assert_eq!(code, 0, "{stderr}");
    let recs = read_dump(&dump);
    let footer = recs.last().unwrap();
    assert_eq!(footer["type"], "footer");
    assert_eq!(footer["reason"], "sigterm");
    {
        let left = our_bpf_programs();
        assert!(left.is_empty(), "no program of ours left: {left:?}");
    }
}

#[test]
fn kprobe_path_loads_but_cannot_attach_here_and_auto_falls_back() {
    if !require_root("kprobe_path_loads_but_cannot_attach_here_and_auto_falls_back") {
        return;
    }
    let has_kprobes = std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists();
    let dir = tempdir();
    let dump = dir.join("kp.jsonl");
    let out = Command::new(stalltrace_bin())
        .args([
            "record",
            "--attach",
            "kprobe",
            "--duration",
            "1s",
            "-o",
            dump.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if has_kprobes {
        assert_eq!(out.status.code(), Some(0), "{err}");
        let recs = read_dump(&dump);
        assert_eq!(recs[0]["packet_hook"], "kprobe");
    } else {
        assert_eq!(
            out.status.code(),
            Some(4),
            "exit 4 = kernel lacks a feature; stderr: {err}"
        );
        assert!(
            err.contains(
                "kprobe:icmp_echo loaded (the verifier accepted it) but cannot be attached"
            ),
            "{err}"
        );
        assert!(err.contains("CONFIG_KPROBES"), "{err}");
        assert!(
            err.contains("--attach tracepoint"),
            "says what to do: {err}"
        );
    }
    let dump2 = dir.join("auto.jsonl");
    let out = Command::new(stalltrace_bin())
        .args(["record", "--duration", "1s", "-o", dump2.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let recs = read_dump(&dump2);
    if has_kprobes {
        assert_eq!(recs[0]["packet_hook"], "kprobe");
    } else {
        assert!(err.contains("packets: tracepoint:net:netif_receive_skb, because this kernel has no kprobe support"), "{err}");
        assert_eq!(recs[0]["packet_hook"], "tracepoint");
    }
    assert!(our_bpf_programs().is_empty());
}

#[test]
fn refuses_clearly_without_privileges_or_with_an_existing_dump() {
    if !require_root("refuses_clearly_without_privileges_or_with_an_existing_dump") {
        return;
    }
    let dir = tempdir();
    // Not root: drop to nobody.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(stalltrace_bin())
        .args(["record", "--duration", "1s", "-o", "/tmp/never.jsonl"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("needs root or CAP_BPF+CAP_PERFMON: not running as root; run it with sudo"),
        "{err}"
    );
    // Root without capabilities.
    let out = Command::new("setpriv")
        .args(["--inh-caps=-all", "--bounding-set=-all"])
        .arg(stalltrace_bin())
        .args(["record", "--duration", "1s", "-o", "/tmp/never.jsonl"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("running as root but without CAP_BPF+CAP_PERFMON or CAP_SYS_ADMIN"),
        "{err}"
    );
    // Existing output.
    let dump = dir.join("exists.jsonl");
    std::fs::write(&dump, "precious\n").unwrap();
    let out = Command::new(stalltrace_bin())
        .args(["record", "--duration", "1s", "-o", dump.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("exists; choose another -o or pass --force"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&dump).unwrap(),
        "precious\n",
        "not overwritten"
    );
    assert!(
        our_bpf_programs().is_empty(),
        "refusals leave nothing attached"
    );
    // Bad flags.
    let out = Command::new(stalltrace_bin())
        .args(["record", "--duration", "soon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("examples: 10ms, 1s"));
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "stalltrace-test-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        % 1_000_000_007
}

/// The verifier sees the filter as constants, so each combination is a different
/// program to prove safe: every one must load.
#[test]
fn every_filter_combination_passes_the_verifier() {
    if !require_root("every_filter_combination_passes_the_verifier") {
        return;
    }
    let combos: &[&[&str]] = &[
        &[],
        &["--peer", "10.1.2.3"],
        &["--peer", "fd00::1"],
        &["--icmp-id", "4242"],
        &["--tcp-port", "30927"],
        &[
            "--peer",
            "10.1.2.3",
            "--icmp-id",
            "7",
            "--tcp-port",
            "80",
            "--no-syscalls",
        ],
        &["--attach", "kprobe"],
        &["--stacks"],
        &[
            "--stacks",
            "--stacks-hz",
            "99",
            "--no-syscalls",
            "--peer",
            "fd00::1",
        ],
    ];
    for extra in combos {
        let out = Command::new(stalltrace_bin())
            .args(["record", "--dry-run"])
            .args(*extra)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("every program passed the verifier"),
            "{extra:?}: {text}"
        );
    }
    assert!(our_bpf_programs().is_empty());
}

/// Every hook is a raw tracepoint (or a perf-PMU kprobe): recording needs no tracefs.
/// Checked in a private mount namespace where tracefs and debugfs are unmounted, so the
/// rest of the machine keeps its mounts.
#[test]
fn records_without_tracefs() {
    if !require_root("records_without_tracefs") {
        return;
    }
    let dir = tempdir();
    let dump = dir.join("notracefs.jsonl");
    let script = format!(
        "umount -l /sys/kernel/tracing 2>/dev/null; umount -l /sys/kernel/debug 2>/dev/null; \
         test -e /sys/kernel/tracing/events && {{ echo 'tracefs still visible' >&2; exit 99; }}; \
         exec {} record --quiet --duration 1s -o {}",
        stalltrace_bin().display(),
        dump.display()
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let recs = read_dump(&dump);
    assert_eq!(recs.last().unwrap()["type"], "footer", "{err}");
    assert!(
        recs[0]["hooks"].as_array().unwrap().len() >= 8,
        "all hooks attached: {}",
        recs[0]["hooks"]
    );
}
