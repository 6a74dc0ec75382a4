//! `stalltrace record` against a real kernel: probe packets across a veth pair into a
//! namespace, the kprobe path's verdict on this kernel, signals, errors and clean-up.
use std::{collections::HashMap, process::Command, thread, time::Duration};

use integration_tests::{
    our_bpf_programs, our_bpf_programs_now, require_root, sh, stalltrace_bin, tempdir, Netns,
    Recorder,
};
use serde_json::Value;

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

fn assert_no_programs(ctx: &str) {
    let left = our_bpf_programs();
    assert!(left.is_empty(), "{ctx}: programs left: {left:?}");
}

#[test]
fn every_ping_sequence_is_recorded_once_with_cpu_and_comm() {
    if !require_root("every_ping_sequence_is_recorded_once_with_cpu_and_comm") {
        return;
    }
    let ns = Netns::create_unique("rec").expect("creating the namespace");
    let dump = tempdir("ping").join("ping.jsonl");
    let rec = Recorder::start(&["--attach", "tracepoint", "--peer", &ns.ns_addr], &dump);
    const N: u32 = 300;
    let ping =
        sh(Command::new("ping").args(["-c", &N.to_string(), "-i", "0.01", "-W", "1", &ns.ns_addr]));
    let ping_out = String::from_utf8_lossy(&ping.stdout);
    assert!(
        ping_out.contains(&format!("{N} packets transmitted, {N} received")),
        "{ping_out}"
    );
    thread::sleep(Duration::from_millis(300));
    let (code, stdout, stderr) = rec.finish(Some(libc::SIGINT));
    assert_eq!(code, 0, "stderr: {stderr}");

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
    assert_no_programs("after the recording");
}

/// `--peer A` keeps A's packets and nothing of another namespace's: A and B pinged at
/// once, on the tracepoint path and, where this kernel has kprobes (the guests), on the
/// kprobe path. ping's own counts are the oracle for what reached each namespace.
#[test]
fn peer_keeps_its_peer_and_nothing_of_another_namespace() {
    if !require_root("peer_keeps_its_peer_and_nothing_of_another_namespace") {
        return;
    }
    let a = Netns::create_unique("pa").expect("namespace A");
    let b = Netns::create_unique("pb").expect("namespace B");
    let has_kprobes = std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists();
    let paths: &[&str] = if has_kprobes {
        &["tracepoint", "kprobe"]
    } else {
        &["tracepoint"]
    };
    const N: u64 = 100;
    for path in paths {
        let dump = tempdir(&format!("peer-{path}")).join("p.jsonl");
        let rec = Recorder::start(&["--quiet", "--attach", path, "--peer", &a.ns_addr], &dump);
        // Both at once: B's echoes interleave with A's.
        let pings: Vec<_> = [&a, &b]
            .iter()
            .map(|ns| {
                Command::new("ping")
                    .args(["-c", &N.to_string(), "-i", "0.01", "-W", "1", &ns.ns_addr])
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .expect("ping")
            })
            .collect();
        for (p, ns) in pings.into_iter().zip([&a, &b]) {
            let p = p.wait_with_output().expect("ping");
            let out = String::from_utf8_lossy(&p.stdout).into_owned();
            assert!(
                out.contains(&format!("{N} packets transmitted, {N} received")),
                "{path}: ping {}: {out}",
                ns.ns_addr
            );
        }
        thread::sleep(Duration::from_millis(300));
        let (code, _, stderr) = rec.finish(Some(libc::SIGINT));
        assert_eq!(code, 0, "{path}: {stderr}");
        let recs = read_dump(&dump);
        assert_eq!(recs[0]["packet_hook"], *path);
        let packets: Vec<&Value> = recs.iter().filter(|r| r["type"] == "packet").collect();
        let theirs: Vec<&&Value> = packets
            .iter()
            .filter(|r| {
                [&b.ns_addr, &b.host_addr]
                    .iter()
                    .any(|x| r["src"] == x.as_str() || r["dst"] == x.as_str())
            })
            .collect();
        assert!(
            theirs.is_empty(),
            "{path}: B's packets recorded: {theirs:?}"
        );
        // Each of A's echo requests once; replies too where the hook sees them.
        let kinds: &[&str] = if *path == "kprobe" {
            &["echo_request"]
        } else {
            &["echo_request", "echo_reply"]
        };
        for kind in kinds {
            let mut seqs: Vec<u64> = packets
                .iter()
                .filter(|r| r["kind"] == *kind)
                .filter_map(|r| r["seq"].as_u64())
                .collect();
            seqs.sort_unstable();
            assert_eq!(seqs, (1..=N).collect::<Vec<_>>(), "{path}: A's {kind}s");
        }
        assert_eq!(
            packets.len() as u64,
            N * kinds.len() as u64,
            "{path}: nothing but A's echoes"
        );
    }
    drop((a, b));
    assert_no_programs("after the --peer recordings");
}

#[test]
fn sigterm_ends_the_recording_cleanly() {
    if !require_root("sigterm_ends_the_recording_cleanly") {
        return;
    }
    let dump = tempdir("term").join("term.jsonl");
    let rec = Recorder::start(&["--quiet"], &dump);
    assert!(
        !our_bpf_programs_now().is_empty(),
        "programs attached while recording"
    );
    thread::sleep(Duration::from_millis(500));
    let (code, _out, stderr) = rec.finish(Some(libc::SIGTERM));
    assert_eq!(code, 0, "{stderr}");
    let recs = read_dump(&dump);
    let footer = recs.last().unwrap();
    assert_eq!(footer["type"], "footer");
    assert_eq!(footer["reason"], "sigterm");
    assert_no_programs("after SIGTERM");
}

/// Runs `stalltrace ARGS`, returning (exit code, stdout, stderr).
fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(stalltrace_bin())
        .args(args)
        .output()
        .expect("running stalltrace");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `stalltrace ARGS` as user nobody, or as root with every capability dropped.
fn run_unprivileged(root_without_caps: bool, args: &[&str]) -> (Option<i32>, String, String) {
    let drop: &[&str] = if root_without_caps {
        &["--inh-caps=-all", "--bounding-set=-all"]
    } else {
        &["--reuid=65534", "--regid=65534", "--clear-groups"]
    };
    let out = Command::new("setpriv")
        .args(drop)
        .arg(stalltrace_bin())
        .args(args)
        .output()
        .expect("setpriv");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The packet hook follows from what the run must see (`kernel::packet_path`), checked
/// against this kernel's kprobe support read from sysfs: `--attach kprobe` loads the
/// kprobe (attaching it where kprobes exist, exit 4 where not); `auto` takes the kprobe
/// only for an IPv4 `--peer` alone and where kprobes exist, the tracepoint otherwise,
/// saying why on stderr and in the dump header; `--attach kprobe` for a run it cannot
/// serve is a usage error before anything loads or any dump is made.
#[test]
fn kprobe_path_and_auto_decide_from_what_the_run_needs() {
    if !require_root("kprobe_path_and_auto_decide_from_what_the_run_needs") {
        return;
    }
    let has_kprobes = std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists();
    let dir = tempdir("kprobe");
    let dump = dir.join("kp.jsonl");
    let (code, _, err) = run(&[
        "record",
        "--attach",
        "kprobe",
        "--duration",
        "1s",
        "-o",
        dump.to_str().unwrap(),
    ]);
    if has_kprobes {
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(read_dump(&dump)[0]["packet_hook"], "kprobe");
    } else {
        assert_eq!(
            code,
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
    // auto: (extra flags, the hook on this kernel, what stderr and the header say).
    let v4_hook = if has_kprobes { "kprobe" } else { "tracepoint" };
    let v4_why = if has_kprobes {
        "only IPv4 echo requests from 10.213.250.250 are needed"
    } else {
        "this kernel has no kprobe support"
    };
    let cases: [(&[&str], &str, &str); 4] = [
        (&[], "tracepoint", "without --peer every echo is recorded, replies and ICMPv6 included, which kprobe:icmp_echo never sees"),
        (&["--peer", "10.213.250.250"], v4_hook, v4_why),
        (&["--peer", "fd00:213:fa::1"], "tracepoint", "--peer fd00:213:fa::1 is IPv6 (ICMPv6 echoes), which kprobe:icmp_echo never sees"),
        (&["--peer", "10.213.250.250", "--tcp-port", "8080"], "tracepoint", "--tcp 8080 records TCP SYNs, SYN-ACKs and RSTs, which kprobe:icmp_echo never sees"),
    ];
    for (i, (extra, hook, why)) in cases.iter().enumerate() {
        let dump = dir.join(format!("auto{i}.jsonl"));
        let mut args = vec!["record", "--duration", "1s", "-o", dump.to_str().unwrap()];
        args.extend_from_slice(extra);
        let (code, _, err) = run(&args);
        assert_eq!(code, Some(0), "{extra:?}: {err}");
        let long = if *hook == "kprobe" {
            "kprobe:icmp_echo"
        } else {
            "tracepoint:net:netif_receive_skb"
        };
        assert!(
            err.contains(&format!("packets via {long}: {why}")),
            "{extra:?}: {err}"
        );
        let header = &read_dump(&dump)[0];
        assert_eq!(header["packet_hook"], *hook, "{extra:?}");
        let reason = header["options"]["packet_hook_reason"]
            .as_str()
            .unwrap_or("");
        assert!(reason.starts_with(why), "{extra:?}: {reason}");
        let hooks: Vec<&str> = header["hooks"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|h| h.as_str())
            .collect();
        assert!(hooks.contains(&long), "{extra:?}: {hooks:?}");
    }
    // Refused before anything loads: exit 2, why, no dump, no program.
    for (extra, why) in [
        (
            &["--probe", "10.213.250.250"][..],
            "--probe receives echo replies",
        ),
        (&["--tcp-port", "443"][..], "--tcp 443 records TCP"),
        (
            &["--peer", "fd00:213:fa::1"][..],
            "--peer fd00:213:fa::1 is IPv6",
        ),
    ] {
        let refused = dir.join("refused.jsonl");
        let mut args = vec!["record", "--attach", "kprobe", "--duration", "1s", "-o"];
        args.push(refused.to_str().unwrap());
        args.extend_from_slice(extra);
        // The earlier recordings' programs may still be on their way out (the kernel
        // frees them after an RCU grace period): the refused run must add none.
        let id = |p: &String| p.split_whitespace().next().unwrap_or("").to_string();
        let before: Vec<String> = our_bpf_programs_now().iter().map(id).collect();
        let (code, _, err) = run(&args);
        assert_eq!(code, Some(2), "{extra:?}: {err}");
        assert!(
            err.contains("--attach kprobe cannot serve this run: ") && err.contains(why),
            "{extra:?}: {err}"
        );
        assert!(
            err.contains("use --attach auto or --attach tracepoint"),
            "{err}"
        );
        assert!(!refused.exists(), "{extra:?}: no dump made");
        let added: Vec<String> = our_bpf_programs_now()
            .into_iter()
            .filter(|p| !before.contains(&id(p)))
            .collect();
        assert!(added.is_empty(), "{extra:?}: nothing loaded, yet {added:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert_no_programs("after the kprobe checks");
}

#[test]
fn refuses_clearly_without_privileges_or_with_an_existing_dump() {
    if !require_root("refuses_clearly_without_privileges_or_with_an_existing_dump") {
        return;
    }
    let rec = ["record", "--duration", "1s", "-o", "/tmp/never.jsonl"];
    let (code, _, err) = run_unprivileged(false, &rec);
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains("needs root or CAP_BPF+CAP_PERFMON: not running as root; run it with sudo"),
        "{err}"
    );
    let (code, _, err) = run_unprivileged(true, &rec);
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains("running as root but without CAP_BPF+CAP_PERFMON or CAP_SYS_ADMIN"),
        "{err}"
    );
    // Existing output.
    let dump = tempdir("exists").join("exists.jsonl");
    std::fs::write(&dump, "precious\n").unwrap();
    let (code, _, err) = run(&["record", "--duration", "1s", "-o", dump.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("exists; choose another -o or pass --force"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&dump).unwrap(),
        "precious\n",
        "not overwritten"
    );
    assert_no_programs("refusals leave nothing attached");
    // No BTF where it was said to be.
    let (code, _, err) = run(&[
        "record",
        "--btf",
        "/nonexistent/vmlinux",
        "--duration",
        "1s",
    ]);
    assert_eq!(code, Some(4), "{err}");
    assert!(err.contains("no BTF file at /nonexistent/vmlinux"), "{err}");
    let (code, text, err) = run(&["record", "--btf", "/sys/kernel/btf/vmlinux", "--dry-run"]);
    assert_eq!(code, Some(0), "an explicit BTF file works: {err}");
    assert!(text.contains("every program passed the verifier"));
    // Bad flags.
    let (code, _, err) = run(&["record", "--duration", "soon"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("examples: 10ms, 1s"), "{err}");
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
        &["--attach", "kprobe", "--peer", "10.1.2.3", "--icmp-id", "7"],
        &[
            "--attach",
            "tracepoint",
            "--peer",
            "fd00::1",
            "--tcp-port",
            "443",
        ],
        &[
            "--syscalls",
            "--peer",
            "10.1.2.3",
            "--syscall-threshold",
            "5ms",
        ],
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
        let mut args = vec!["record", "--dry-run"];
        args.extend_from_slice(extra);
        let (code, text, err) = run(&args);
        assert_eq!(code, Some(0), "{extra:?}: {err}");
        assert!(
            text.contains("every program passed the verifier"),
            "{extra:?}: {text}"
        );
        // The kprobe is verified with the filter's constants whatever --attach says
        // (its verdict is known even where kprobes cannot attach); the syscall
        // programs only when asked.
        let verified: Vec<&str> = text
            .lines()
            .find_map(|l| l.strip_prefix("verified: "))
            .unwrap_or_default()
            .split(' ')
            .collect();
        let mut want = vec!["sched_switch", "netif_receive_skb", "icmp_echo"];
        if extra.contains(&"--syscalls") {
            want.extend(["sys_enter", "sys_exit"]);
        }
        for w in want {
            assert!(verified.contains(&w), "{extra:?}: {w} not verified: {text}");
        }
        assert_eq!(
            verified.contains(&"sys_enter"),
            extra.contains(&"--syscalls"),
            "{extra:?}: {text}"
        );
    }
    assert_no_programs("after dry runs");
}

/// Every hook is a raw tracepoint (or a perf-PMU kprobe): recording needs no tracefs.
/// Checked in a private mount namespace where tracefs and debugfs are unmounted, so the
/// rest of the machine keeps its mounts.
#[test]
fn records_without_tracefs() {
    if !require_root("records_without_tracefs") {
        return;
    }
    let dump = tempdir("notracefs").join("notracefs.jsonl");
    let script = format!(
        "umount -l /sys/kernel/tracing 2>/dev/null; umount -l /sys/kernel/debug 2>/dev/null; \
         test -e /sys/kernel/tracing/events && {{ echo 'tracefs still visible' >&2; exit 99; }}; \
         exec {} record --quiet --attach tracepoint --duration 1s -o {}",
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
    let hooks: Vec<&str> = recs[0]["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for want in [
        "tracepoint:sched:sched_switch",
        "tracepoint:sched:sched_wakeup",
        "tracepoint:irq:softirq_raise",
        "tracepoint:irq:softirq_entry",
        "tracepoint:irq:softirq_exit",
        "tracepoint:net:netif_receive_skb",
        "perf_event:cpu-clock@499Hz",
    ] {
        assert!(
            hooks.contains(&want),
            "{want} attached without tracefs: {hooks:?}"
        );
    }
}

#[test]
fn features_reports_this_kernel_and_the_verifiers_word() {
    if !require_root("features_reports_this_kernel_and_the_verifiers_word") {
        return;
    }
    let (code, text, _) = run(&["features"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("[ok  ] programs through the verifier"),
        "{text}"
    );
    assert!(text.contains("[ok  ] kernel BTF"), "{text}");
    let kprobes = std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists();
    assert_eq!(text.contains("[ok  ] kprobes"), kprobes, "{text}");
    assert!(text.ends_with("record: ready\n"), "{text}");
    assert_no_programs("features attaches nothing");
    let (code, text, _) = run_unprivileged(false, &["features"]);
    assert_eq!(code, Some(3), "{text}");
    assert!(text.contains("[FAIL] privileges"), "{text}");
}

/// `stalltrace record … | head`: a closed stdout stops the printing, not the recording.
#[test]
fn a_closed_stdout_neither_panics_nor_loses_the_dump() {
    if !require_root("a_closed_stdout_neither_panics_nor_loses_the_dump") {
        return;
    }
    let ns = Netns::create_unique("pipe").unwrap();
    let dump = tempdir("pipe").join("pipe.jsonl");
    // Tracepoint path: requests and replies (a kprobe sees requests only).
    let mut child = Command::new(stalltrace_bin())
        .args([
            "record",
            "--attach",
            "tracepoint",
            "--peer",
            &ns.ns_addr,
            "--duration",
            "20s",
            "-o",
        ])
        .arg(&dump)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader went away
    let t0 = std::time::Instant::now();
    while !std::fs::read_to_string(&dump)
        .map(|s| s.contains("\"type\":\"header\""))
        .unwrap_or(false)
    {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "recorder did not start"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let ping = sh(Command::new("ping").args(["-c", "20", "-i", "0.01", &ns.ns_addr]));
    assert!(ping.status.success());
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let recs = read_dump(&dump);
    assert_eq!(recs.last().unwrap()["type"], "footer");
    let packets = recs.iter().filter(|r| r["type"] == "packet").count();
    assert_eq!(packets, 40, "recording went on after stdout closed");
    let (code, _, err) = {
        let o = Command::new("bash")
            .args([
                "-c",
                // pipefail: the status is stalltrace's, not `true`'s.
                &format!(
                    "set -o pipefail; {} record --dry-run | true",
                    stalltrace_bin().display()
                ),
            ])
            .output()
            .unwrap();
        (
            o.status.code(),
            (),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    assert_eq!(code, Some(0));
    assert!(!err.contains("panicked"), "{err}");
}

/// Default mode hooks no syscall on the node; `--syscalls` does. Checked with bpftool,
/// not with the tool's own word, while a recorder runs.
#[test]
fn syscall_hooks_only_with_syscalls() {
    if !require_root("syscall_hooks_only_with_syscalls") {
        return;
    }
    let dir = tempdir("syscall-hooks");
    for (extra, want) in [(vec![], false), (vec!["--syscalls"], true)] {
        let dump = dir.join(format!("s{want}.jsonl"));
        let mut args = vec!["--quiet", "--duration", "30s"];
        args.extend(extra);
        let rec = Recorder::start(&args, &dump);
        let loaded = integration_tests::our_bpf_programs_now();
        let has = |n: &str| loaded.iter().any(|p| p.contains(&format!(" {n}")));
        let (code, _, err) = rec.finish(Some(libc::SIGINT));
        assert_eq!(code, 0, "{err}");
        assert_eq!(has("sys_enter"), want, "{args:?}: {loaded:?}");
        assert_eq!(has("sys_exit"), want, "{args:?}: {loaded:?}");
        // The sampler variant this kernel loads: bpf_task_pt_regs from 5.15 on.
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let sampler = if stalltrace::host::kernel_at_least(release.trim(), 5, 15) {
            "sample_task_regs"
        } else {
            "sample_stack_regs"
        };
        assert!(has("sched_switch") && has(sampler), "{loaded:?}");
        let header: Value = serde_json::from_str(
            std::fs::read_to_string(&dump)
                .unwrap()
                .lines()
                .next()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            header["options"]["syscalls"].as_bool().unwrap_or(false),
            want
        );
        assert_eq!(header["options"]["sampler_hz"], 499);
    }
    assert_no_programs("after the recorders");
}
