//! A root tool under hostile conditions: planted symlinks and foreign files at the
//! paths it writes, a full disk, a flood of echoes that all look alike, a terminal
//! nobody reads, and an hour-long run shortened to a minute (RSS and fds flat).
//! Traffic stays inside namespaces the tests create; every loop is bounded.
use std::{
    collections::HashSet,
    fs,
    net::{IpAddr, SocketAddr},
    os::unix::fs::{symlink, PermissionsExt as _},
    path::Path,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use integration_tests::{our_bpf_programs, require_root, sh, stalltrace_bin, Netns, Recorder};
use serde_json::Value;
use stalltrace_testkit::scratch::Scratch;

fn mode(p: &Path) -> u32 {
    fs::metadata(p)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0)
}

fn read_dump(p: &Path) -> Vec<Value> {
    fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn analyze_json(dump: &Path) -> Value {
    let out = Command::new(stalltrace_bin())
        .args(["analyze", "--format", "json"])
        .arg(dump)
        .output()
        .expect("analyze");
    assert!(
        out.status.success(),
        "analyze {}: {}",
        dump.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("analyze --format json")
}

/// `record -o` at a symlink (to a file the recorder must not touch) and at a file that
/// is already there: refused, target untouched; with `--force` the link itself is
/// replaced by a new private file and the target still untouched.
#[test]
fn planted_symlinks_and_foreign_files_are_refused_untouched() {
    if !require_root("planted_symlinks_and_foreign_files_are_refused_untouched") {
        return;
    }
    let dir = Scratch::new("planted").expect("scratch");
    let victim = dir.join("victim");
    fs::write(&victim, "precious\n").expect("victim");
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o644)).expect("chmod");
    let link = dir.join("dump.jsonl");
    symlink(&victim, &link).expect("symlink");
    let run = |extra: &[&str]| {
        Command::new(stalltrace_bin())
            .args(["record", "--quiet", "--duration", "300ms", "-o"])
            .arg(&link)
            .args(extra)
            .output()
            .expect("record")
    };
    let out = run(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("exists") && err.contains("--force"), "{err}");
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
    assert!(our_bpf_programs().is_empty(), "refused before loading");

    let out = run(&["--force"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        fs::read_to_string(&victim).unwrap(),
        "precious\n",
        "the link's target"
    );
    assert_eq!(mode(&victim), 0o644);
    let md = fs::symlink_metadata(&link).expect("new dump");
    assert!(md.file_type().is_file(), "the link was replaced by a file");
    assert_eq!(mode(&link), 0o600, "dumps are private");
    assert_eq!(
        read_dump(&link).first().map(|h| h["type"].clone()),
        Some("header".into())
    );

    // A dangling link (its target made later by someone else) is refused just the same.
    let dangling = dir.join("later.jsonl");
    symlink(dir.join("not-yet"), &dangling).expect("symlink");
    let out = Command::new(stalltrace_bin())
        .args(["record", "--quiet", "--duration", "300ms", "-o"])
        .arg(&dangling)
        .output()
        .expect("record");
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !dir.join("not-yet").exists(),
        "nothing created through the link"
    );
}

/// The lab's files: a private directory (0700) holding a private dump (0600), under
/// an unpredictable name, and the journal's directory private too.
#[test]
fn the_labs_files_are_private() {
    if !require_root("the_labs_files_are_private") {
        return;
    }
    let out = Command::new(stalltrace_bin())
        .args(["lab", "--scenario", "rt-hog", "--duration", "2s"])
        .output()
        .expect("lab");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("lab: dump kept at "))
        .and_then(|l| l.split(' ').next())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| panic!("the lab says where its dump is: {text}"));
    let parent = path.parent().expect("parent").to_path_buf();
    let result = (
        mode(&path),
        mode(&parent),
        Path::new("/run/stalltrace").exists(),
    );
    let _ = fs::remove_dir_all(&parent);
    // The journal's directory (0700 while a lab runs: journal.rs's unit test) is gone.
    assert_eq!(
        result,
        (0o600, 0o700, false),
        "dump, its directory, whether the journal's directory is left"
    );
    let name = parent.file_name().unwrap().to_string_lossy().into_owned();
    let random = name.rsplit('.').next().unwrap_or("");
    assert!(
        random.len() >= 16 && random.chars().all(|c| c.is_ascii_hexdigit()),
        "an unpredictable name: {name}"
    );
}

/// Free bytes on the filesystem holding `p`.
fn free_bytes(p: &Path) -> u64 {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: statvfs(3) on a NUL-terminated path into a zeroed struct we own.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return u64::MAX;
    }
    st.f_bavail * st.f_frsize
}

/// A 1 MiB tmpfs, unmounted on drop.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(at: std::path::PathBuf) -> Self {
        fs::create_dir_all(&at).expect("mount point");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs"])
            .arg(&at)
            .status()
            .expect("mount");
        assert!(st.success(), "mounting a 1 MiB tmpfs");
        Self(at)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// `record -o` on a 1 MiB tmpfs under a ping flood: the disk fills, the recorder ends
/// within a second of it with a clear error and exit 1, nothing stays loaded, and the
/// dump reads back up to the cut.
#[test]
fn a_full_disk_ends_the_recording_within_a_second_with_a_readable_dump() {
    if !require_root("a_full_disk_ends_the_recording_within_a_second_with_a_readable_dump") {
        return;
    }
    let ns = Netns::create_unique("full").expect("netns");
    let dir = Scratch::new("fulldisk").expect("scratch");
    let disk = SmallDisk::mount(dir.join("disk"));
    let dump = disk.0.join("d.jsonl");
    let rec = Recorder::start(&["--quiet", "--peer", &ns.ns_addr], &dump);
    let mut ping = stalltrace::lab::child::ChildGuard::new(
        Command::new("ping")
            .args(["-f", "-c", "200000", "-w", "30", &ns.ns_addr])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ping -f"),
    );
    let t0 = Instant::now();
    let mut full_at = None;
    let mut rec = Some(rec);
    let mut exited_at = None;
    while t0.elapsed() < Duration::from_secs(30) {
        if full_at.is_none() && free_bytes(&disk.0) < 4096 {
            full_at = Some(Instant::now());
        }
        if rec.as_mut().is_some_and(|r| r.exited()) {
            exited_at = Some(Instant::now());
            break;
        }
        thread::sleep(Duration::from_millis(5));
    }
    let _ = ping.stop();
    let (full_at, exited_at) = (
        full_at.expect("the disk filled"),
        exited_at.expect("record ended"),
    );
    let (code, _, stderr) = rec.take().expect("recorder").finish(None);
    assert!(
        exited_at.duration_since(full_at) < Duration::from_secs(1),
        "ended {:?} after the disk filled",
        exited_at.duration_since(full_at)
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert!(
        stderr.contains(&dump.display().to_string()),
        "names the dump: {stderr}"
    );
    assert!(our_bpf_programs().is_empty(), "nothing left loaded");
    let rep = analyze_json(&dump);
    assert!(
        rep["totals"]["packets"].as_u64().unwrap_or(0) > 1000,
        "{}",
        rep["totals"]
    );
    if rep["input"]["complete"] == true {
        assert_eq!(rep["input"]["end_reason"], "error", "{}", rep["input"]);
    }
}

/// Echo requests that all carry the same id and sequence, as fast as one thread sends
/// them, until `stop` (or 20 s, or 5 M packets).
fn constant_seq_flood(
    target: IpAddr,
    ident: u16,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<u64> {
    thread::spawn(move || {
        use socket2::{Domain, Protocol, Socket, Type};
        let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)).expect("raw");
        // type 8, code 0, checksum, id, seq 7; checksum over the 8 bytes.
        let mut pkt = [8u8, 0, 0, 0, (ident >> 8) as u8, ident as u8, 0, 7];
        let sum: u32 = pkt
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        let folded = !(((sum & 0xffff) + (sum >> 16)) as u16);
        pkt[2..4].copy_from_slice(&folded.to_be_bytes());
        let to = SocketAddr::new(target, 0).into();
        let t0 = Instant::now();
        let mut sent = 0u64;
        while !stop.load(Ordering::Relaxed)
            && t0.elapsed() < Duration::from_secs(20)
            && sent < 5_000_000
        {
            if sock.send_to(&pkt, &to).is_ok() {
                sent += 1;
            }
        }
        sent
    })
}

/// A counter of the `Icmp:` lines of `/proc/net/snmp`, in namespace `ns` or here.
fn icmp_counter(ns: Option<&str>, name: &str) -> u64 {
    let text = match ns {
        Some(ns) => String::from_utf8_lossy(
            &sh(Command::new("ip").args(["netns", "exec", ns, "cat", "/proc/net/snmp"])).stdout,
        )
        .into_owned(),
        None => fs::read_to_string("/proc/net/snmp").expect("/proc/net/snmp"),
    };
    let mut icmp = text.lines().filter(|l| l.starts_with("Icmp:"));
    let (names, values) = (
        icmp.next().expect("Icmp names"),
        icmp.next().expect("Icmp values"),
    );
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("Icmp {name} in /proc/net/snmp"))
}

/// Every echo of a flood has the same id and sequence (the worst case for matching
/// them): SIGTERM still ends the recording within a second, with its footer, and
/// what could not be kept is counted.
#[test]
fn sigterm_ends_a_recording_within_a_second_under_a_constant_sequence_flood() {
    if !require_root("sigterm_ends_a_recording_within_a_second_under_a_constant_sequence_flood") {
        return;
    }
    let ns = Netns::create_unique("cseq").expect("netns");
    let dir = Scratch::new("cseq").expect("scratch");
    let dump = dir.join("d.jsonl");
    let ident: u16 = 0x4242;
    let rec = Recorder::start(&["--quiet", "--icmp-id", &ident.to_string()], &dump);
    let stop = Arc::new(AtomicBool::new(false));
    let target: IpAddr = ns.ns_addr.parse().expect("address");
    // The kernel's own count of what reached ICMP while the recorder was surely
    // recording: echo requests inside the namespace (ours alone), echo replies here.
    let before = (
        icmp_counter(Some(&ns.name), "InEchos"),
        icmp_counter(None, "InEchoReps"),
    );
    let flood = constant_seq_flood(target, ident, stop.clone());
    thread::sleep(Duration::from_secs(3));
    let after = (
        icmp_counter(Some(&ns.name), "InEchos"),
        icmp_counter(None, "InEchoReps"),
    );
    let t0 = Instant::now();
    let (code, _, stderr) = rec.finish_within(libc::SIGTERM, Duration::from_secs(5));
    let took = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    let sent = flood.join().expect("flood");
    assert!(sent > 10_000, "a flood: {sent} echoes");
    assert!(
        took < Duration::from_secs(1),
        "SIGTERM honoured in {took:?}"
    );
    assert_eq!(code, 0, "{stderr}");
    let recs = read_dump(&dump);
    let footer = recs.last().expect("records");
    assert_eq!(footer["type"], "footer", "the footer is written");
    assert_eq!(footer["reason"], "sigterm");
    let of_kind = |k: &str| {
        recs.iter()
            .filter(|r| r["type"] == "packet" && r["kind"] == k)
            .count() as u64
    };
    let (requests, replies) = (of_kind("echo_request"), of_kind("echo_reply"));
    // Ring full (`packets`), or left queued when the stop's time was up (any kind).
    let lost = &footer["lost"];
    let lost = lost["packets"].as_u64().unwrap_or(0) + lost["unread_at_exit"].as_u64().unwrap_or(0);
    // Every echo ICMP counted passed the packet hook first: what the kernel counted
    // while the recorder was surely running is in the dump or counted lost.
    let counted = (after.0 - before.0) + (after.1 - before.1);
    assert!(
        counted > 10_000,
        "the kernel counted a flood: {before:?} → {after:?}"
    );
    assert!(
        requests + replies + lost >= counted,
        "{requests} requests + {replies} replies recorded + {lost} lost, for {counted} \
         echoes ICMP counted ({before:?} → {after:?}; {sent} sent)"
    );
    assert!(our_bpf_programs().is_empty());
}

/// A live table to a pipe nobody reads: recording goes on, every packet is in the dump,
/// and the lines not printed are counted.
#[test]
fn a_paused_stdout_pipe_neither_blocks_nor_loses_the_recording() {
    if !require_root("a_paused_stdout_pipe_neither_blocks_nor_loses_the_recording") {
        return;
    }
    let ns = Netns::create_unique("pause").expect("netns");
    let dir = Scratch::new("pause").expect("scratch");
    let dump = dir.join("d.jsonl");
    // Recorder pipes stdout and reads it only at the end: nobody reads meanwhile.
    let rec = Recorder::start(&["--peer", &ns.ns_addr], &dump);
    const N: u32 = 3000;
    let ping = sh(Command::new("ping").args([
        "-c",
        &N.to_string(),
        "-i",
        "0.002",
        "-W",
        "1",
        &ns.ns_addr,
    ]));
    let ping_out = String::from_utf8_lossy(&ping.stdout);
    assert!(
        ping_out.contains(&format!("{N} packets transmitted, {N} received")),
        "{ping_out}"
    );
    thread::sleep(Duration::from_millis(300));
    let (code, _, stderr) = rec.finish(Some(libc::SIGTERM));
    assert_eq!(code, 0, "{stderr}");
    let seqs: HashSet<(String, u64)> = read_dump(&dump)
        .iter()
        .filter(|r| r["type"] == "packet")
        .map(|r| {
            (
                r["kind"].as_str().unwrap_or("").to_string(),
                r["seq"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    for seq in 1..=u64::from(N) {
        for kind in ["echo_request", "echo_reply"] {
            assert!(
                seqs.contains(&(kind.to_string(), seq)),
                "{kind} {seq} in the dump"
            );
        }
    }
    // 6000 lines into a 64 KiB pipe at ~60 bytes each: most were not printed.
    assert!(
        stderr.contains("live lines were not printed"),
        "the dropped lines are counted: {stderr}"
    );
}

fn rss_and_fds(pid: u32) -> (u64, usize) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let fds = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    (rss_kb, fds)
}

/// The short soak (the benchmark runs the long one): a minute of record --probe under
/// alternating ping floods and quiet, RSS and fd count sampled every 5 s after a
/// warm-up: flat (fds equal, RSS within 4 MiB), and nothing lost at the default ring.
#[test]
fn a_minute_of_floods_and_quiet_keeps_rss_and_fds_flat() {
    if !require_root("a_minute_of_floods_and_quiet_keeps_rss_and_fds_flat") {
        return;
    }
    let ns = Netns::create_unique("soak").expect("netns");
    let dir = Scratch::new("soak").expect("scratch");
    let dump = dir.join("d.jsonl");
    let rec = Recorder::start(&["--quiet", "--probe", &ns.ns_addr], &dump);
    let pid = rec.pid().expect("pid");
    let mut samples = vec![];
    let t0 = Instant::now();
    for round in 0..6 {
        // 5 s of 2000 echoes/s, then 5 s of probes alone.
        let ping = sh(Command::new("ping").args([
            "-q",
            "-c",
            "10000",
            "-i",
            "0.0005",
            "-w",
            "6",
            &ns.ns_addr,
        ]));
        assert!(
            ping.status.success() || ping.status.code() == Some(1),
            "ping"
        );
        thread::sleep(Duration::from_secs(5));
        if round > 0 {
            samples.push(rss_and_fds(pid));
        }
    }
    assert!(t0.elapsed() < Duration::from_secs(120));
    let (code, _, stderr) = rec.finish(Some(libc::SIGTERM));
    assert_eq!(code, 0, "{stderr}");
    let (rss0, fds0) = samples[0];
    for (rss, fds) in &samples {
        assert_eq!(*fds, fds0, "fd count flat: {samples:?}");
        assert!(
            *rss <= rss0 + 4096,
            "RSS flat within 4 MiB: {samples:?} (kB, fds)"
        );
    }
    let footer = read_dump(&dump).pop().expect("records");
    assert_eq!(footer["type"], "footer");
    for (k, v) in footer["lost"].as_object().expect("lost") {
        assert_eq!(
            v.as_u64(),
            Some(0),
            "nothing lost at the default ring: {k} in {footer}"
        );
    }
}
