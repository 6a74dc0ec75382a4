//! What the tool writes and reads, and what the always-on agent holds, stay within
//! limits a hostile or careless caller cannot lift: outputs that never destroy a
//! device, FIFO or directory; `-o -`; hidden subcommands and `--btf` bounded; `lab
//! --cleanup` that returns only once the lab's processes are gone; the flight recorder
//! on a disk that fills; `watch` through thousands of culprits and an hour's worth of
//! probes with its memory flat; the TCP prober ignoring answers that do not acknowledge
//! its random sequence numbers. Oracles are the file system (types, device numbers,
//! inodes), /proc (pids, start times, RSS), what the test itself sent, and the dump
//! reader of the analysis crate. Traffic only in namespaces made here; bounded loops;
//! guards clean up.
use std::{
    fs,
    io::BufReader,
    net::Ipv4Addr,
    os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use integration_tests::{
    free_port, http_get, our_bpf_programs, require, require_root, stalltrace_bin, wait_until, Netns,
};
use serde_json::Value;
use stalltrace::lab::child::ChildGuard;
use stalltrace_analysis::dump::DumpReader;
use stalltrace_testkit::scratch::Scratch;

/// Runs the binary with `args` for at most `limit` (then kills it): its output, or
/// `None` when it had to be killed.
fn run_bounded(args: &[&str], dir: &Path, limit: Duration) -> Option<Output> {
    run_bounded_in(args, dir, limit, None)
}

/// As [`run_bounded`], with the child's address space capped at `max_as` bytes when
/// given: a tool that would read a device whole fails its allocation instead of taking
/// the machine's memory.
fn run_bounded_in(
    args: &[&str],
    dir: &Path,
    limit: Duration,
    max_as: Option<u64>,
) -> Option<Output> {
    use std::os::unix::process::CommandExt as _;
    let mut cmd = Command::new(stalltrace_bin());
    if let Some(max) = max_as {
        // SAFETY: between fork and exec only setrlimit(2), async-signal-safe, on the
        // child itself.
        unsafe {
            cmd.pre_exec(move || {
                let rl = libc::rlimit {
                    rlim_cur: max,
                    rlim_max: max,
                };
                libc::setrlimit(libc::RLIMIT_AS, &rl);
                Ok(())
            });
        }
    }
    let child = cmd
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d = done.clone();
    let killer = thread::spawn(move || {
        let t0 = Instant::now();
        while !d.load(std::sync::atomic::Ordering::Relaxed) {
            if t0.elapsed() > limit {
                // SAFETY: kill(2) on our own child, not yet reaped (the waiter below
                // reaps it only after this thread is told it is done).
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    });
    let out = child.wait_with_output().unwrap();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let killed = killer.join().unwrap();
    (!killed).then_some(out)
}

fn mknod_char(p: &Path, major: u32, minor: u32) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mknod(2) on a NUL-terminated path in the test's scratch directory.
    let rc = unsafe {
        libc::mknod(
            c.as_ptr(),
            libc::S_IFCHR | 0o666,
            libc::makedev(major, minor),
        )
    };
    assert_eq!(rc, 0, "mknod: {}", std::io::Error::last_os_error());
}

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo(3) on a NUL-terminated path in the test's scratch directory.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

/// (type, device number, inode) of what is at `p`, not following links.
fn identity(p: &Path) -> (fs::FileType, u64, u64) {
    let m = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.file_type(), m.rdev(), m.ino())
}

/// `record -o` (and `analyze --perfetto`) at a character device made here like
/// /dev/null, a FIFO and a directory, with and without `--force`: refused with exit 2
/// naming the type, before anything is loaded, and each is still there, unchanged.
#[test]
fn outputs_refuse_devices_fifos_and_directories_even_with_force() {
    if !require_root("outputs_refuse_devices_fifos_and_directories_even_with_force") {
        return;
    }
    let d = Scratch::new("outputs").unwrap();
    let dev = d.join("null");
    mknod_char(&dev, 1, 3);
    let fifo = d.join("fifo");
    mkfifo(&fifo);
    let dir = d.join("dir");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("keep"), "kept").unwrap();
    let seed = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/seed.jsonl");
    let cases = [
        (&dev, "character device"),
        (&fifo, "FIFO"),
        (&dir, "directory"),
    ];
    for (path, kind) in cases {
        let before = identity(path);
        for force in [false, true] {
            let p = path.to_str().unwrap();
            let mut rec = vec!["record", "--quiet", "--duration", "500ms", "-o", p];
            let mut ana = vec!["analyze", seed.to_str().unwrap(), "--perfetto", p];
            if force {
                rec.push("--force");
                ana.push("--force");
            }
            for args in [rec, ana] {
                let out = run_bounded(&args, d.path(), Duration::from_secs(30))
                    .unwrap_or_else(|| panic!("{args:?} did not end"));
                let err = String::from_utf8_lossy(&out.stderr);
                assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
                assert!(err.contains(kind), "{args:?} names the type: {err}");
                let after = identity(path);
                assert!(
                    after.0 == before.0 && after.1 == before.1 && after.2 == before.2,
                    "{args:?}: {} changed",
                    path.display()
                );
            }
        }
    }
    assert_eq!(fs::read_to_string(dir.join("keep")).unwrap(), "kept");
    assert!(fs::symlink_metadata(&dev)
        .unwrap()
        .file_type()
        .is_char_device());
    assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    assert!(our_bpf_programs().is_empty(), "refused before loading");

    // A new --perfetto file is private; an existing one needs --force, which replaces
    // a link itself and leaves its target alone.
    let trace = d.join("t.json");
    let out = run_bounded(
        &[
            "analyze",
            seed.to_str().unwrap(),
            "--perfetto",
            trace.to_str().unwrap(),
        ],
        d.path(),
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        fs::metadata(&trace).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let again = run_bounded(
        &[
            "analyze",
            seed.to_str().unwrap(),
            "--perfetto",
            trace.to_str().unwrap(),
        ],
        d.path(),
        Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(again.status.code(), Some(2));
    let victim = d.join("victim");
    fs::write(&victim, "precious").unwrap();
    let link = d.join("link.json");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let forced = run_bounded(
        &[
            "analyze",
            seed.to_str().unwrap(),
            "--perfetto",
            link.to_str().unwrap(),
            "--force",
        ],
        d.path(),
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(
        forced.status.success(),
        "{}",
        String::from_utf8_lossy(&forced.stderr)
    );
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
    assert!(fs::symlink_metadata(&link).unwrap().file_type().is_file());
}

/// `record -o -`: standard output carries the dump and nothing else (header first,
/// footer last, every line JSON); the live lines go to standard error; no file named
/// `-` appears.
#[test]
fn record_dash_o_streams_the_dump_to_stdout() {
    if !require_root("record_dash_o_streams_the_dump_to_stdout") {
        return;
    }
    let ns = Netns::create_unique("dasho").unwrap();
    let d = Scratch::new("dasho").unwrap();
    let rec = Command::new(stalltrace_bin())
        .args([
            "record",
            "--peer",
            &ns.ns_addr,
            "--duration",
            "4s",
            "-o",
            "-",
        ])
        .current_dir(d.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_millis(1500));
    let ping = Command::new("ping")
        .args(["-c", "5", "-i", "0.1", "-W", "1", &ns.ns_addr])
        .output()
        .unwrap();
    assert!(ping.status.success());
    let out = rec.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    assert_eq!(
        lines.first().map(|h| h["type"].clone()),
        Some("header".into())
    );
    assert_eq!(
        lines.last().map(|f| f["type"].clone()),
        Some("footer".into())
    );
    let requests = lines
        .iter()
        .filter(|r| r["type"] == "packet" && r["kind"] == "echo_request")
        .count();
    assert!(requests >= 5, "the pings are in the dump: {requests}");
    assert!(stderr.contains("recording to standard output"), "{stderr}");
    // The live table (its header line) went to stderr.
    assert!(stderr.contains("SEQ"), "live lines on stderr: {stderr}");
    assert!(!d.join("-").exists(), "no file named -");
}

/// The hidden subcommands take bounded values like the public ones: out of range is
/// a usage error (exit 2) before anything runs, never a panic or an endless run.
#[test]
fn hidden_subcommands_refuse_out_of_range_values() {
    let d = Scratch::new("hidden").unwrap();
    let many: Vec<String> = (0..10_001).map(|i| format!("/nonexistent/{i}")).collect();
    let mut charge: Vec<&str> = vec!["charge-cgroups", "--cgroups"];
    charge.extend(many.iter().map(String::as_str));
    charge.extend(["--files", "/nonexistent/f", "--back", "/nonexistent"]);
    let cases: Vec<Vec<&str>> = vec![
        vec!["hog", "--cpu", "2000"],
        vec![
            "hog",
            "--cpu",
            "1000000",
            "--fifo",
            "0",
            "--duration",
            "1ms",
        ],
        vec!["hog", "--cpu", "0", "--fifo", "100", "--duration", "1ms"],
        vec!["hog", "--cpu", "0", "--fifo", "0", "--duration", "100h"],
        vec!["hog", "--cpu", "0", "--fifo", "0", "--burst", "1h"],
        vec!["hog", "--cpu", "0", "--fifo", "0", "--read-size", "4GiB"],
        vec![
            "hog",
            "--cpu",
            "0",
            "--fifo",
            "0",
            "--name",
            "a-name-over-15-bytes",
        ],
        vec!["flood", "--to", "127.0.0.1:9", "--duration", "10h"],
        charge,
        vec![
            "charge-cgroups",
            "--cgroups",
            "/nonexistent/a",
            "/nonexistent/b",
            "--files",
            "/nonexistent/f",
            "--back",
            "/nonexistent",
        ],
    ];
    for args in cases {
        let shown: Vec<&str> = args.iter().take(8).copied().collect();
        let out = run_bounded(&args, d.path(), Duration::from_secs(10))
            .unwrap_or_else(|| panic!("{shown:?} ran on instead of refusing"));
        assert_eq!(
            out.status.code(),
            Some(2),
            "{shown:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `--btf` at /dev/zero, a FIFO, a directory and a sparse 65 MiB file: refused at once
/// (exit 5, the reason named), never read whole.
#[test]
fn btf_refuses_devices_fifos_and_huge_files_unread() {
    if !require_root("btf_refuses_devices_fifos_and_huge_files_unread") {
        return;
    }
    let d = Scratch::new("btf").unwrap();
    let fifo = d.join("fifo");
    mkfifo(&fifo);
    let big = d.join("big.btf");
    fs::File::create(&big).unwrap().set_len(65 << 20).unwrap();
    for (p, says) in [
        (PathBuf::from("/dev/zero"), "character device"),
        (fifo, "FIFO"),
        (d.path().to_path_buf(), "directory"),
        (big, "64 MiB"),
    ] {
        let t0 = Instant::now();
        let out = run_bounded_in(
            &[
                "record",
                "--btf",
                p.to_str().unwrap(),
                "--duration",
                "1s",
                "-o",
                d.join("x.jsonl").to_str().unwrap(),
            ],
            d.path(),
            Duration::from_secs(5),
            Some(4 << 30),
        )
        .unwrap_or_else(|| panic!("--btf {} did not end", p.display()));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(5), "{}: {err}", p.display());
        assert!(err.contains(says), "{}: {err}", p.display());
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    }
    assert!(!d.join("x.jsonl").exists());
}

/// `/proc/PID/stat`: (state, start time in ticks), `None` when there is no such pid.
fn proc_stat(pid: u64) -> Option<(char, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = s.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f.first()?.chars().next()?, f.get(22 - 3)?.parse().ok()?))
}

/// A lab SIGKILLed while its recorder and culprit run: `lab --cleanup` returns only
/// once every process the journal names is gone (checked in /proc, by pid and start
/// time, the moment it returns), says how each ended, and the recorder, ended by
/// SIGTERM rather than killed mid-stop, wrote its footer.
#[test]
fn lab_cleanup_returns_only_once_the_journaled_processes_are_gone() {
    if !require_root("lab_cleanup_returns_only_once_the_journaled_processes_are_gone") {
        return;
    }
    let d = Scratch::new("cleanup").unwrap();
    let dump = d.join("lab.jsonl");
    let lab = Command::new(stalltrace_bin())
        .args(["lab", "--scenario", "rt-hog", "--duration", "30s", "-o"])
        .arg(&dump)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lab = ChildGuard::new(lab);
    let journal = || -> Value {
        fs::read("/run/stalltrace/lab.json")
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    };
    let mut j = Value::Null;
    wait_until(
        "the lab journals its culprit",
        Duration::from_secs(60),
        || {
            j = journal();
            j["procs"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p["what"] == "the culprit"))
        },
    );
    thread::sleep(Duration::from_millis(500));
    let procs: Vec<(u64, u64, String)> = j["procs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["pid"].as_u64().unwrap(),
                p["start_ticks"].as_u64().unwrap(),
                p["what"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(procs.len() >= 2, "recorder and culprit: {procs:?}");
    let st = lab.signal_and_wait(libc::SIGKILL, Duration::from_secs(10));
    assert!(st.is_some(), "the lab died");
    let out = Command::new(stalltrace_bin())
        .args(["lab", "--cleanup"])
        .output()
        .unwrap();
    // The moment it returns: none of them runs any more.
    let alive: Vec<&(u64, u64, String)> = procs
        .iter()
        .filter(|(pid, start, _)| {
            proc_stat(*pid).is_some_and(|(state, t)| t == *start && state != 'Z')
        })
        .collect();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        alive.is_empty(),
        "still running after --cleanup: {alive:?}\n{text}"
    );
    for (pid, _, what) in &procs {
        if let Some(l) = text.lines().find(|l| l.contains(&format!("(pid {pid})"))) {
            assert!(
                l.contains("SIGTERM") || l.contains("SIGKILL"),
                "{what}: says how it ended: {l}"
            );
        }
    }
    assert!(
        text.contains("the recorder") && text.contains("SIGTERM"),
        "says the recorder was stopped: {text}"
    );
    let last = fs::read_to_string(&dump)
        .unwrap_or_default()
        .lines()
        .last()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or(Value::Null))
        .unwrap_or(Value::Null);
    assert_eq!(last["type"], "footer", "the recorder finished its dump");
    integration_tests::assert_machine_clean("after lab --cleanup");
}

/// A tmpfs of `size`, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: PathBuf, size: &str) -> Self {
        fs::create_dir_all(&at).unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&at)
            .status()
            .unwrap();
        assert!(st.success(), "mounting a {size} tmpfs");
        Self(at)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A counter of the exposition, summed over its series matching `labels`.
fn counter(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The flight recorder writing into a 256 KiB tmpfs through a lab's stall episodes:
/// the disk fills, yet every file left there is a whole dump (the analysis crate's
/// reader reads it to its footer), nothing temporary is left, and the agent's failure
/// counter says how many were not written.
#[test]
fn flight_recorder_on_a_full_disk_leaves_only_whole_dumps_and_counts_failures() {
    if !require_root("flight_recorder_on_a_full_disk_leaves_only_whole_dumps_and_counts_failures") {
        return;
    }
    let d = Scratch::new("flightfull").unwrap();
    let disk = Tmpfs::mount(d.join("disk"), "256k");
    let dumps = disk.0.join("dumps");
    let port = free_port();
    let watch = Command::new(stalltrace_bin())
        .args(["watch", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--dump-dir")
        .arg(&dumps)
        .args([
            "--dump-context",
            "1s",
            "--dump-max-files",
            "1000",
            "--dump-max-bytes",
            "1GiB",
        ])
        .stdout(Stdio::null())
        .stderr(fs::File::create(d.join("watch.err")).unwrap())
        .spawn()
        .unwrap();
    let mut watch = ChildGuard::new(watch);
    wait_until("watch healthy", Duration::from_secs(30), || {
        http_get(port, "/healthz").is_some_and(|(c, _)| c == 200)
    });
    let lab = Command::new(stalltrace_bin())
        .args(["lab", "--scenario", "rt-hog", "--duration", "5s", "-o"])
        .arg(d.join("lab.jsonl"))
        .output()
        .unwrap();
    assert!(
        matches!(lab.status.code(), Some(0 | 6)),
        "{}",
        String::from_utf8_lossy(&lab.stdout)
    );
    let mut text = String::new();
    wait_until("failures counted", Duration::from_secs(20), || {
        text = http_get(port, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default();
        counter(&text, "stalltrace_flight_recorder_failures_total", "") > 0.0
    });
    let written = counter(&text, "stalltrace_flight_recorder_dumps_total", "");
    let no_space = counter(
        &text,
        "stalltrace_flight_recorder_failures_total",
        "reason=\"no_space\"",
    );
    let st = watch.signal_and_wait(libc::SIGTERM, Duration::from_secs(10));
    assert!(st.is_some_and(|s| s.success()));
    let mut whole = 0;
    for e in fs::read_dir(&dumps).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(
            name.starts_with("stalltrace-episode-") && name.ends_with(".jsonl"),
            "only finished dumps are left: {name}"
        );
        let p = e.path();
        let mut r = DumpReader::new(&p, BufReader::new(fs::File::open(&p).unwrap()))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        while r
            .next_record()
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .is_some()
        {}
        assert!(r.footer().is_some(), "{name} has its footer");
        assert!(!r.partial_last_line(), "{name} is not torn");
        whole += 1;
    }
    eprintln!("{whole} whole dumps left, {written} written, {no_space} failed for space");
    assert!(whole >= 1, "some dumps fit");
    assert!(no_space > 0.0, "the full disk was counted:\n{text}");
    drop(disk);
    integration_tests::assert_machine_clean("after the full-disk flight recorder");
}

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `watch --probe` at 1 ms for six minutes (360 000 probes: an hour of the default
/// 10 ms) while, for four minutes of it, a culprit that runs each of its ~13 000 bursts
/// of 12 ms in a new, newly named process stalls the probes' RX thread (thousands of
/// distinct culprit processes are blamed, counted by pid in the agent's episode lines):
/// the agent's RSS, sampled from /proc every 10 s from the first minute on, grows by
/// less than 2 MiB.
/// (Unbounded, the RTTs alone add 8 bytes per probe: 2.3 MiB over the five minutes.)
#[test]
fn watch_memory_stays_flat_through_thousands_of_culprits_and_an_hour_of_probes() {
    let name = "watch_memory_stays_flat_through_thousands_of_culprits_and_an_hour_of_probes";
    if !require_root(name) {
        return;
    }
    let cpus = thread::available_parallelism().map_or(1, usize::from);
    if !require(name, cpus >= 2, "needs 2 CPUs") {
        return;
    }
    let ns = Netns::create_unique("flat").unwrap();
    // The probes' RX runs in a napi thread on CPU 1, the CPU the lab's culprit holds.
    ns.threaded_napi(1).unwrap();
    let d = Scratch::new("flat").unwrap();
    let port = free_port();
    let watch = Command::new(stalltrace_bin())
        .args(["watch", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--probe", &ns.ns_addr, "--interval", "1ms"])
        .args(["--stall-threshold", "5ms", "--top-k", "20"])
        .stdout(Stdio::null())
        .stderr(fs::File::create(d.join("watch.err")).unwrap())
        .spawn()
        .unwrap();
    let pid = watch.id();
    let mut watch = ChildGuard::new(watch);
    wait_until("watch healthy", Duration::from_secs(30), || {
        http_get(port, "/healthz").is_some_and(|(c, _)| c == 200)
    });
    let t0 = Instant::now();
    let mut samples: Vec<(u64, u64)> = vec![];
    let mut lab: Option<ChildGuard> = None;
    while t0.elapsed() < Duration::from_secs(360) {
        let s = t0.elapsed().as_secs();
        if s >= 30 && lab.is_none() {
            let c = Command::new(stalltrace_bin())
                .args([
                    "lab",
                    "--scenario",
                    "rt-hog",
                    "--duration",
                    "240s",
                    "--cpu",
                    "1",
                ])
                .args([
                    "--name",
                    "churn",
                    "--rename-each-burst",
                    "--fork-each-burst",
                ])
                .args(["--burst", "12ms", "--gap", "6ms", "-o"])
                .arg(d.join("lab.jsonl"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            lab = Some(ChildGuard::new(c));
        }
        if let Some(l) = lab.as_mut() {
            if let Some(st) = l.wait_for(Duration::ZERO) {
                assert!(matches!(st.code(), Some(0 | 6)), "lab: {st}");
            }
        }
        assert!(watch.running(), "the agent died");
        samples.push((s, rss_kib(pid)));
        thread::sleep(Duration::from_secs(10));
    }
    let text = http_get(port, "/metrics")
        .map(|(_, b)| b)
        .unwrap_or_default();
    let ok = counter(&text, "stalltrace_probes_total", "status=\"ok\"");
    let episodes = counter(&text, "stalltrace_stall_episodes_total", "");
    let st = watch.signal_and_wait(libc::SIGTERM, Duration::from_secs(10));
    assert!(st.is_some_and(|s| s.success()));
    drop(lab);
    // The culprits' pids, from the agent's one line per episode.
    let log = fs::read_to_string(d.join("watch.err")).unwrap_or_default();
    let culprits: std::collections::HashSet<u32> = log
        .lines()
        .filter_map(|l| l.split("; culprit ").nth(1))
        .filter(|c| c.starts_with("churn"))
        .filter_map(|c| {
            c.split("(pid ")
                .nth(1)?
                .split([')', ','])
                .next()?
                .parse()
                .ok()
        })
        .collect();
    eprintln!(
        "{ok} probes answered, {episodes} episodes, {} distinct culprits; RSS (s, KiB): {samples:?}",
        culprits.len()
    );
    assert!(ok >= 300_000.0, "an hour's worth of probes answered: {ok}");
    assert!(
        culprits.len() >= 1000,
        "thousands of culprits: {}",
        culprits.len()
    );
    let after_warmup: Vec<u64> = samples
        .iter()
        .filter(|(s, _)| *s >= 60)
        .map(|(_, r)| *r)
        .collect();
    let (first, most) = (after_warmup[0], *after_warmup.iter().max().unwrap());
    assert!(
        most <= first + 2048,
        "RSS grew {} KiB after the first minute: {samples:?}",
        most - first
    );
    integration_tests::assert_machine_clean("after the flat-memory watch");
}

/// An IPv4 + TCP segment from `src:sport` to `dst:dport` with `flags` and `ack`.
fn tcp_segment(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    flags: u8,
    seq: u32,
    ack: u32,
) -> Vec<u8> {
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&ack.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&[0, 6, 0, 20]);
    add(&tcp);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    tcp[16..18].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    tcp
}

/// The TCP prober against an address that never answers, while the test, watching the
/// wire from inside the namespace, forges an answer to every SYN: a SYN-ACK that
/// acknowledges the SYN's sequence number + 1 for even probes, one off by 12345 for odd
/// ones. The prober counts exactly the even ones as answered and says it ignored the
/// odd ones; a prober that checked no acknowledgment would take them all.
#[test]
fn tcp_prober_ignores_answers_that_do_not_acknowledge_its_sequence_number() {
    if !require_root("tcp_prober_ignores_answers_that_do_not_acknowledge_its_sequence_number") {
        return;
    }
    use socket2::{Domain, Protocol, Socket, Type};
    let ns = Netns::create_unique("tcpack").unwrap();
    let ns_ip: Ipv4Addr = ns.ns_addr.parse().unwrap();
    let host_ip: Ipv4Addr = ns.host_addr.parse().unwrap();
    // Nobody has this address: the SYNs go onto the link (a static neighbour entry)
    // and the namespace's kernel drops them, not being addressed to it.
    let o = ns_ip.octets();
    let ghost = Ipv4Addr::new(o[0], o[1], o[2], 77);
    let mac = Command::new("ip")
        .args(["netns", "exec", &ns.name, "cat"])
        .arg(format!("/sys/class/net/{}/address", ns.ns_if))
        .output()
        .unwrap();
    let mac = String::from_utf8_lossy(&mac.stdout).into_owned();
    let st = Command::new("ip")
        .args(["neigh", "replace", &ghost.to_string(), "lladdr", mac.trim()])
        .args(["dev", &ns.host_if, "nud", "permanent"])
        .status()
        .unwrap();
    assert!(st.success());
    const PORT: u16 = 4321;
    const N: u32 = 40;
    // The forger: a thread in the namespace reading its link (AF_PACKET) and
    // answering each SYN to the ghost with a raw IPv4 socket.
    let ns_file = fs::File::open(format!("/run/netns/{}", ns.name)).unwrap();
    let ns_if = ns.ns_if.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let forger = thread::spawn(move || -> (u32, u32) {
        use std::os::fd::AsRawFd as _;
        // SAFETY: setns(2) on this thread only, with an open namespace fd.
        let rc = unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        let eth_p_ip = (libc::ETH_P_IP as u16).to_be();
        let sniff = Socket::new(
            Domain::PACKET,
            Type::RAW,
            Some(Protocol::from(i32::from(eth_p_ip))),
        )
        .unwrap();
        sniff.bind_device(Some(ns_if.as_bytes())).unwrap();
        sniff
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        // IPPROTO_RAW: the header is ours (its source the ghost's address).
        let raw = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(libc::IPPROTO_RAW)),
        )
        .unwrap();
        let (mut good, mut bad) = (0u32, 0u32);
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
        ready_tx.send(()).unwrap();
        let t0 = Instant::now();
        while good + bad < N && t0.elapsed() < Duration::from_secs(30) {
            let Ok(n) = sniff.recv(&mut buf) else {
                continue;
            };
            // SAFETY: recv initialised the first n bytes.
            let f: Vec<u8> = buf[..n]
                .iter()
                .map(|b| unsafe { b.assume_init() })
                .collect();
            // Ethernet (14) + IPv4 header + TCP.
            if f.len() < 14 + 40 || f[14 + 9] != 6 || f[14 + 16..14 + 20] != ghost.octets() {
                continue;
            }
            let ihl = usize::from(f[14] & 0xf) * 4;
            let t = &f[14 + ihl..];
            let (sport, dport) = (
                u16::from_be_bytes([t[0], t[1]]),
                u16::from_be_bytes([t[2], t[3]]),
            );
            let seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
            if dport != PORT || t[13] != 0x02 {
                continue;
            }
            let even = (good + bad) % 2 == 0;
            let ack = if even {
                seq.wrapping_add(1)
            } else {
                seq.wrapping_add(12_345)
            };
            let seg = tcp_segment(ghost, host_ip, PORT, sport, 0x12, 7, ack);
            let to = std::net::SocketAddr::from((host_ip, 0));
            raw.send_to(&raw_ip(ghost, host_ip, &seg), &to.into())
                .unwrap();
            if even {
                good += 1;
            } else {
                bad += 1;
            }
        }
        (good, bad)
    });
    ready_rx.recv().unwrap();
    let out = Command::new(stalltrace_bin())
        .args(["probe", &ghost.to_string(), "--tcp", &PORT.to_string()])
        .args(["--count", &N.to_string(), "--interval", "50ms"])
        .output()
        .unwrap();
    let (good, bad) = forger.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let _ = Command::new("ip")
        .args(["neigh", "del", &ghost.to_string(), "dev", &ns.host_if])
        .status();
    assert_eq!((good, bad), (N / 2, N / 2), "the forger answered every SYN");
    assert!(
        text.contains(&format!(
            "{N} packets transmitted, {} packets received",
            N / 2
        )),
        "only answers with the right acknowledgment count: {text}"
    );
    assert!(
        text.contains(&format!("{} answers ignored", N / 2)),
        "the others are counted: {text}"
    );
}

/// An IPv4 packet (header built here) carrying `payload` as TCP.
fn raw_ip(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let len = 20 + payload.len();
    let mut h = vec![0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    h[8] = 64;
    h[9] = 6;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let mut sum: u32 = h
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    h[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    h.extend_from_slice(payload);
    h
}
