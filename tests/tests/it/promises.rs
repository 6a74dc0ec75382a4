//! The README's promises that no other test covers, each checked against what the
//! test itself did, never against the tool's own verdict alone: waits the test plants
//! (its own SCHED_FIFO threads holding the starved CPU for measured spans, the RX
//! thread woken by a datagram it sends at a known time), syscalls it makes and times,
//! echoes it builds byte by byte, TCP ports it binds, a cgroup it makes, and signals
//! and seccomp filters it imposes. Traffic only into namespaces made here; every loop
//! bounded; cleaned up by guards.
use std::{
    collections::HashMap,
    fs,
    io::BufRead as _,
    net::{IpAddr, SocketAddr, TcpListener, UdpSocket},
    os::unix::{io::AsRawFd as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use integration_tests::{
    assert_machine_clean, our_bpf_programs, require, require_root, sh, stalltrace_bin, Netns,
    Recorder,
};
use serde_json::Value;
use stalltrace::lab::child::ChildGuard;
use stalltrace_testkit::scratch::Scratch;

// ---------------------------------------------------------------------------------
// Helpers

/// Every complete, parseable line of a dump (a killed recorder may leave a torn one).
fn read_dump(p: &Path) -> Vec<Value> {
    fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn of_type<'a>(recs: &'a [Value], t: &str) -> Vec<&'a Value> {
    recs.iter().filter(|r| r["type"] == t).collect()
}

/// `analyze --format json`: (exit code, report, stderr).
fn analyze_json(dump: &Path) -> (Option<i32>, Value, String) {
    let out = Command::new(stalltrace_bin())
        .args(["analyze", "--format", "json"])
        .arg(dump)
        .output()
        .expect("analyze");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let rep = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code(), rep, err)
}

/// The clock of the dump's kernel timestamps (`bpf_ktime_get_boot_ns`).
fn boot_ns() -> u64 {
    clock_ns(libc::CLOCK_BOOTTIME)
}

/// CPU time of the calling thread.
fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) into a timespec we own.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn gettid() -> u32 {
    // SAFETY: gettid(2) has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

/// Pins the calling thread to `cpu` and makes it SCHED_FIFO 50 (as the lab's culprit).
fn pin_fifo(cpu: u32) -> Result<(), String> {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it; both calls act on the
    // calling thread only.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(format!("pinning: {}", std::io::Error::last_os_error()));
    }
    let p = libc::sched_param { sched_priority: 50 };
    // SAFETY: valid sched_param; the calling thread only.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &p) } != 0 {
        return Err(format!("SCHED_FIFO: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// The CPU a test starves: the last one (CPU 0 keeps the recorder and the test).
fn starved_cpu() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    assert!(n >= 2, "needs 2 CPUs");
    (n - 1) as u32
}

/// A namespace whose receive work is done by a threaded-NAPI kthread pinned to `cpu`.
fn napi_netns(tag: &str, cpu: u32) -> Netns {
    let ns = Netns::create_unique(tag).expect("namespace");
    ns.threaded_napi(cpu).expect("threaded NAPI");
    ns
}

/// `stalltrace record ARGS -o DUMP`, its threads kept on CPU 0 (the starved CPU runs
/// only the RX thread and the test's holders).
fn record_on_cpu0(args: &[&str], dump: &Path) -> Recorder {
    let rec = Recorder::start(args, dump);
    let pid = rec.pid().expect("pid").to_string();
    sh(Command::new("taskset").args(["-a", "-p", "-c", "0", &pid]));
    rec
}

/// One turn of a relay: (thread index, start, end) in boot ns, and the part of it the
/// thread did not run (its own CPU clock against the wall clock).
type Turn = (usize, u64, u64, u64);

/// What a relay did: its threads' ids, when the datagram that woke the RX thread was
/// sent (before, after the send), and every turn.
struct Relay {
    tids: Vec<u32>,
    kick: (u64, u64),
    turns: Vec<Turn>,
}

impl Relay {
    /// Time thread `i` held the CPU from the kick on.
    fn held_after_kick(&self, i: usize) -> u64 {
        self.turns
            .iter()
            .filter(|t| t.0 == i)
            .map(|t| t.2.saturating_sub(t.1.max(self.kick.1)))
            .sum()
    }

    fn end(&self) -> u64 {
        self.turns.iter().map(|t| t.2).max().unwrap_or(0)
    }

    /// The longest the planted threads let go of the CPU after the kick, by their own
    /// clocks: a gap between two turns, or a turn its thread did not run through.
    /// Handing the baton over takes microseconds; the RX thread running in between
    /// takes longer.
    fn given_away(&self) -> u64 {
        let after = |t: &&Turn| t.2 > self.kick.1;
        let stolen = self
            .turns
            .iter()
            .filter(after)
            .map(|t| t.3)
            .max()
            .unwrap_or(0);
        let gap = self
            .turns
            .windows(2)
            .filter(|w| w[1].1 > self.kick.1)
            .map(|w| w[1].1.saturating_sub(w[0].2))
            .max()
            .unwrap_or(0);
        stolen.max(gap)
    }
}

/// Threads pinned to `cpu` at SCHED_FIFO 50 hold it in turn, `holds[i]` each, `rounds`
/// times round, passing a baton (the next one is woken before the current one sleeps,
/// so the CPU is never free for a SCHED_OTHER task); the first, at its first turn,
/// sends a datagram to `kick` (into a namespace whose RX thread runs on `cpu`): that
/// thread is woken at once and waits for the whole relay.
fn relay(cpu: u32, kick: SocketAddr, holds: &[Duration], rounds: usize) -> Relay {
    let n = holds.len();
    let chans: Vec<(mpsc::Sender<()>, mpsc::Receiver<()>)> =
        (0..n).map(|_| mpsc::channel()).collect();
    let txs: Vec<mpsc::Sender<()>> = chans.iter().map(|c| c.0.clone()).collect();
    let (tid_tx, tid_rx) = mpsc::channel();
    let mut handles = vec![];
    for (i, (_, rx)) in chans.into_iter().enumerate() {
        let next = txs[(i + 1) % n].clone();
        let hold = u64::try_from(holds[i].as_nanos()).unwrap();
        let tid_tx = tid_tx.clone();
        handles.push(thread::spawn(move || {
            let ready = pin_fifo(cpu).map(|()| gettid());
            let ok = ready.is_ok();
            tid_tx.send((i, ready)).unwrap();
            let mut turns = vec![];
            let mut kicked = None;
            if !ok {
                return (turns, kicked);
            }
            let sock = (i == 0).then(|| UdpSocket::bind("0.0.0.0:0").expect("udp"));
            for r in 0..rounds {
                // Bounded: a lost baton ends the relay instead of hanging the test.
                if rx.recv_timeout(Duration::from_secs(10)).is_err() {
                    break;
                }
                let (start, cpu0) = (boot_ns(), thread_cpu_ns());
                if let (Some(s), 0) = (&sock, r) {
                    let before = boot_ns();
                    s.send_to(b"stalltrace-relay", kick).expect("kick");
                    kicked = Some((before, boot_ns()));
                }
                while boot_ns() < start + hold {
                    std::hint::spin_loop();
                }
                let (end, ran) = (boot_ns(), thread_cpu_ns() - cpu0);
                turns.push((i, start, end, (end - start).saturating_sub(ran)));
                if !(i == n - 1 && r == rounds - 1) {
                    let _ = next.send(());
                }
            }
            (turns, kicked)
        }));
    }
    let mut tids = vec![0u32; n];
    for _ in 0..n {
        let (i, r) = tid_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("relay thread ready");
        tids[i] = r.unwrap_or_else(|e| panic!("relay thread {i}: {e}"));
    }
    txs[0].send(()).unwrap();
    let mut turns = vec![];
    let mut kick_at = None;
    for h in handles {
        let (t, k) = h.join().expect("relay thread");
        turns.extend(t);
        kick_at = kick_at.or(k);
    }
    turns.sort_by_key(|t| t.1);
    assert_eq!(turns.len(), n * rounds, "every turn ran: {turns:?}");
    Relay {
        tids,
        kick: kick_at.expect("kicked"),
        turns,
    }
}

/// Like [`relay`], but every thread stays runnable throughout: `n` SCHED_FIFO threads
/// on `cpu` take `turns` turns of `hold` in rotation, and between turns (and while
/// waiting for theirs) they only sched_yield(), so the CPU switches between them
/// many times and is never free until the last one exits. The first turn kicks.
fn rotation(cpu: u32, kick: SocketAddr, n: usize, hold: Duration, turns: usize) -> Relay {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Barrier,
    };
    let turn = Arc::new(AtomicUsize::new(0));
    let go = Arc::new(Barrier::new(n + 1));
    let (tid_tx, tid_rx) = mpsc::channel();
    let hold = u64::try_from(hold.as_nanos()).unwrap();
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (turn, go, tid_tx) = (turn.clone(), go.clone(), tid_tx.clone());
            thread::spawn(move || {
                let ready = pin_fifo(cpu).map(|()| gettid());
                let ok = ready.is_ok();
                tid_tx.send((i, ready)).unwrap();
                go.wait();
                let (mut mine, mut kicked) = (vec![], None);
                let sock = UdpSocket::bind("0.0.0.0:0").expect("udp");
                let t0 = Instant::now();
                // Bounded by the turn count, and by time should a thread be missing.
                while ok && t0.elapsed() < Duration::from_secs(10) {
                    let t = turn.load(Ordering::Acquire);
                    if t >= turns {
                        break;
                    }
                    if t % n == i {
                        let (start, cpu0) = (boot_ns(), thread_cpu_ns());
                        if t == 0 {
                            let before = boot_ns();
                            sock.send_to(b"stalltrace-rotation", kick).expect("kick");
                            kicked = Some((before, boot_ns()));
                        }
                        while boot_ns() < start + hold {
                            std::hint::spin_loop();
                        }
                        let (end, ran) = (boot_ns(), thread_cpu_ns() - cpu0);
                        mine.push((i, start, end, (end - start).saturating_sub(ran)));
                        turn.store(t + 1, Ordering::Release);
                    }
                    // SAFETY: sched_yield(2) has no arguments.
                    unsafe { libc::sched_yield() };
                }
                (mine, kicked)
            })
        })
        .collect();
    let mut tids = vec![0u32; n];
    for _ in 0..n {
        let (i, r) = tid_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("rotation thread ready");
        tids[i] = r.unwrap_or_else(|e| panic!("rotation thread {i}: {e}"));
    }
    go.wait();
    let (mut all, mut kick_at) = (vec![], None);
    for h in handles {
        let (t, k) = h.join().expect("rotation thread");
        all.extend(t);
        kick_at = kick_at.or(k);
    }
    all.sort_by_key(|t| t.1);
    assert_eq!(all.len(), turns, "every turn ran: {all:?}");
    Relay {
        tids,
        kick: kick_at.expect("kicked"),
        turns: all,
    }
}

/// The RX-thread wait of `ns`'s napi thread that began with a relay's kick.
fn wait_of<'a>(recs: &'a [Value], ns: &Netns, cpu: u32, r: &Relay) -> Vec<&'a Value> {
    let napi = format!("napi/{}-", ns.ns_if);
    recs.iter()
        .filter(|w| {
            w["type"] == "wait"
                && w["kind"] == "rx_thread"
                && w["cpu"].as_u64() == Some(u64::from(cpu))
                && w["rx"]["comm"]
                    .as_str()
                    .is_some_and(|c| c.starts_with(&napi))
                && (r.kick.0..=r.kick.1).contains(&w["start_ns"].as_u64().unwrap_or(0))
        })
        .collect()
}

const MS: u64 = 1_000_000;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ---------------------------------------------------------------------------------
// 2. --stacks where perf events are unavailable

/// A seccomp filter making perf_event_open(2) fail with `errno` in the child: the
/// machine keeps its perf events (a sysctl would not do: root passes
/// perf_event_paranoid).
fn deny_perf_event_open(cmd: &mut Command, errno: u32) {
    const AUDIT_ARCH: u32 = if cfg!(target_arch = "x86_64") {
        0xC000_003E
    } else {
        0xC000_00B7 // aarch64
    };
    let f = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    let prog = [
        f(LD_W_ABS, 0, 0, 4), // seccomp_data.arch
        f(JEQ_K, 0, 3, AUDIT_ARCH),
        f(LD_W_ABS, 0, 0, 0), // seccomp_data.nr
        f(JEQ_K, 0, 1, libc::SYS_perf_event_open as u32),
        f(RET_K, 0, 0, 0x0005_0000 | errno), // SECCOMP_RET_ERRNO
        f(RET_K, 0, 0, 0x7fff_0000),         // SECCOMP_RET_ALLOW
    ];
    // SAFETY: between fork and exec only prctl(2), async-signal-safe, with a filter
    // built before the fork and alive (moved into the closure) until exec.
    unsafe {
        cmd.pre_exec(move || {
            let fprog = libc::sock_fprog {
                len: prog.len() as u16,
                filter: prog.as_ptr().cast_mut(),
            };
            if libc::prctl(libc::PR_SET_SECCOMP, 2, &fprog as *const libc::sock_fprog) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Where perf_event_open fails, `record --stacks` exits 4 before loading anything,
/// saying why and what to do; the same kernel records without `--stacks` (the
/// sampler missing, said in the header), which shows the filter did block perf.
#[test]
fn stacks_without_perf_events_exit_4_and_say_why() {
    if !require_root("stacks_without_perf_events_exit_4_and_say_why") {
        return;
    }
    let dir = Scratch::new("noperf").expect("scratch");
    for (errno, why) in [
        (
            libc::EACCES as u32,
            "not allowed: needs CAP_PERFMON (or root) and kernel.perf_event_paranoid <= 2",
        ),
        (
            libc::ENODEV as u32,
            "this kernel has no perf events (CONFIG_PERF_EVENTS)",
        ),
    ] {
        let dump = dir.join(&format!("stacks-{errno}.jsonl"));
        let mut cmd = Command::new(stalltrace_bin());
        cmd.args(["record", "--stacks", "--quiet", "--duration", "1s", "-o"])
            .arg(&dump);
        deny_perf_event_open(&mut cmd, errno);
        let out = cmd.output().expect("record --stacks");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "errno {errno}: {err}");
        assert!(
            err.contains(&format!(
                "--stacks needs a software cpu-clock perf event per CPU: {why}"
            )) && err.contains("run without --stacks"),
            "{err}"
        );
        assert!(!dump.exists(), "refused before the dump was created");
        assert!(our_bpf_programs().is_empty(), "refused before loading");
    }
    // The same filter without --stacks: recorded, the sampler said missing.
    let dump = dir.join("nostacks.jsonl");
    let mut cmd = Command::new(stalltrace_bin());
    cmd.args(["record", "--quiet", "--duration", "1s", "-o"])
        .arg(&dump);
    deny_perf_event_open(&mut cmd, libc::EACCES as u32);
    let out = cmd.output().expect("record");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let recs = read_dump(&dump);
    let h = &recs[0];
    assert!(
        !h["hooks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x.as_str().unwrap_or("").starts_with("perf_event")),
        "no perf event could be opened: {h}"
    );
    let degraded = h["options"]["degraded"].to_string();
    assert!(
        degraded.contains("cpu-clock") && !degraded.contains("--stacks"),
        "the header says what is missing (and does not blame a --stacks not given): {h}"
    );
    assert_eq!(recs.last().unwrap()["type"], "footer");
    assert!(our_bpf_programs().is_empty());
}

// ---------------------------------------------------------------------------------
// 3. A killed recorder leaves a readable dump

/// SIGKILL mid-run under traffic: every echo of a ping that ended 300 ms before the
/// kill is in the dump (lines are flushed within 100 ms), `analyze` reads the dump up
/// to its last complete line and says it was cut short (exit 0, its packet count
/// equal to the packet lines counted here), and no program stays loaded.
#[test]
fn a_killed_recorder_leaves_a_readable_dump() {
    if !require_root("a_killed_recorder_leaves_a_readable_dump") {
        return;
    }
    let ns = Netns::create_unique("kill").expect("netns");
    let dir = Scratch::new("kill").expect("scratch");
    let dump = dir.join("killed.jsonl");
    let rec = Recorder::start(&["--attach", "tracepoint", "--peer", &ns.ns_addr], &dump);
    const N: u32 = 100;
    let ping =
        sh(Command::new("ping").args(["-c", &N.to_string(), "-i", "0.01", "-W", "1", &ns.ns_addr]));
    assert!(
        String::from_utf8_lossy(&ping.stdout).contains(&format!("{N} received")),
        "the ping was answered"
    );
    thread::sleep(ms(300));
    // Still under traffic when killed: a flood is running.
    let mut flood = ChildGuard::new(
        Command::new("ping")
            .args(["-f", "-w", "20", &ns.ns_addr])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ping -f"),
    );
    let before = fs::metadata(&dump).map(|m| m.len()).unwrap_or(0);
    let t0 = Instant::now();
    while fs::metadata(&dump).map(|m| m.len()).unwrap_or(0) < before + 100_000 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the flood is recorded"
        );
        thread::sleep(ms(20));
    }
    let (code, _, _) = rec.finish(Some(libc::SIGKILL));
    assert_eq!(code, -1, "killed by the signal");
    let _ = flood.stop();
    assert!(
        our_bpf_programs().is_empty(),
        "the kernel freed every program with the killed process"
    );

    let text = fs::read(&dump).expect("dump");
    let complete = text.iter().filter(|&&b| b == b'\n').count() as u64;
    let recs = read_dump(&dump);
    assert_eq!(recs[0]["type"], "header");
    assert_ne!(recs.last().unwrap()["type"], "footer", "no footer: killed");
    let ident = recs
        .iter()
        .find(|r| r["type"] == "packet")
        .map(|r| r["ident"].clone())
        .expect("packets");
    for seq in 1..=u64::from(N) {
        for kind in ["echo_request", "echo_reply"] {
            let n = recs
                .iter()
                .filter(|r| {
                    r["type"] == "packet"
                        && r["kind"] == kind
                        && r["ident"] == ident
                        && r["seq"].as_u64() == Some(seq)
                })
                .count();
            assert_eq!(n, 1, "{kind} {seq} of the finished ping is in the dump");
        }
    }
    let (code, rep, err) = analyze_json(&dump);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("was cut short (no footer"),
        "said cut short: {err}"
    );
    assert_eq!(rep["input"]["complete"], false, "{}", rep["input"]);
    assert_eq!(
        rep["input"]["partial_last_line"],
        text.last() != Some(&b'\n'),
        "{}",
        rep["input"]
    );
    assert!(
        rep["input"]["lines"].as_u64().unwrap() >= complete,
        "read up to the last complete line ({complete}): {}",
        rep["input"]
    );
    let packets = of_type(&recs, "packet").len() as u64;
    assert_eq!(
        rep["totals"]["packets"].as_u64(),
        Some(packets),
        "every complete packet line analyzed"
    );
    assert!(packets > 2 * u64::from(N), "the flood too: {packets}");
}

// ---------------------------------------------------------------------------------
// 4. --icmp-id in either byte order, --tcp-port with real SYNs

/// Echo requests with identifier `id` (written big-endian on the wire) and sequences
/// 1..=n, from a raw socket to `to`.
fn send_echoes(to: IpAddr, id: u16, n: u16) {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)).expect("raw");
    let dst = SocketAddr::new(to, 0).into();
    for seq in 1..=n {
        let mut pkt = [8u8, 0, 0, 0, 0, 0, 0, 0, b's', b't'];
        pkt[4..6].copy_from_slice(&id.to_be_bytes());
        pkt[6..8].copy_from_slice(&seq.to_be_bytes());
        let sum: u32 = pkt
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        let sum = (sum & 0xffff) + (sum >> 16);
        let folded = !(((sum & 0xffff) + (sum >> 16)) as u16);
        pkt[2..4].copy_from_slice(&folded.to_be_bytes());
        sock.send_to(&pkt, &dst).expect("send echo");
        thread::sleep(ms(5));
    }
}

/// `--icmp-id N` records echoes whose identifier reads N in either byte order (hping3
/// writes host order, ping network order), requests and replies, and nothing else:
/// the test sends echoes with N, N byte-swapped and two near misses, and records once
/// with N and once with N swapped.
#[test]
fn icmp_id_filter_takes_either_byte_order_and_nothing_else() {
    if !require_root("icmp_id_filter_takes_either_byte_order_and_nothing_else") {
        return;
    }
    let ns = Netns::create_unique("icid").expect("netns");
    let dir = Scratch::new("icid").expect("scratch");
    let to: IpAddr = ns.ns_addr.parse().unwrap();
    let id: u16 = 0x1234;
    let sent = [id, id.swap_bytes(), 0x1235, 0x12ff];
    const N: u16 = 10;
    for filter in [id, id.swap_bytes()] {
        let dump = dir.join(&format!("id{filter}.jsonl"));
        let rec = Recorder::start(
            &[
                "--quiet",
                "--attach",
                "tracepoint",
                "--icmp-id",
                &filter.to_string(),
            ],
            &dump,
        );
        for &s in &sent {
            send_echoes(to, s, N);
        }
        thread::sleep(ms(300));
        let (code, _, err) = rec.finish(Some(libc::SIGINT));
        assert_eq!(code, 0, "{err}");
        let mut seen: HashMap<(u64, String), u16> = HashMap::new();
        for p in of_type(&read_dump(&dump), "packet") {
            let ours = [&p["src"], &p["dst"]]
                .iter()
                .any(|a| a.as_str() == Some(ns.ns_addr.as_str()));
            assert!(
                ours,
                "--icmp-id {filter}: a packet not sent here passed: {p}"
            );
            *seen
                .entry((
                    p["ident"].as_u64().unwrap(),
                    p["kind"].as_str().unwrap().to_string(),
                ))
                .or_default() += 1;
        }
        for s in [id, id.swap_bytes()] {
            for kind in ["echo_request", "echo_reply"] {
                assert_eq!(
                    seen.get(&(u64::from(s), kind.to_string())),
                    Some(&N),
                    "--icmp-id {filter}: every {kind} with id {s:#06x}: {seen:?}"
                );
            }
        }
        assert_eq!(seen.len(), 4, "--icmp-id {filter}: nothing else: {seen:?}");
    }
}

/// A listening socket inside the namespace: a thread enters it, binds, and the socket
/// stays there.
fn listen_in_netns(ns: &Netns) -> TcpListener {
    let path = format!("/var/run/netns/{}", ns.name);
    let addr: SocketAddr = format!("{}:0", ns.ns_addr).parse().expect("addr");
    thread::spawn(move || {
        let f = fs::File::open(&path).expect("netns file");
        // SAFETY: setns on a valid namespace fd; it only moves this short-lived thread.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        TcpListener::bind(addr).expect("bind in netns")
    })
    .join()
    .expect("listener thread")
}

/// A TCP connect from a source port chosen (bound) here; returns that port.
fn connect_from_known_port(from: &str, to: SocketAddr) -> u16 {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    s.bind(&format!("{from}:0").parse::<SocketAddr>().unwrap().into())
        .expect("bind");
    let port = s.local_addr().unwrap().as_socket().unwrap().port();
    let _ = s.connect_timeout(&to.into(), Duration::from_secs(2));
    port
}

/// `--tcp-port P`: real SYNs to P (a listener there) and their SYN-ACKs, each once,
/// matched by the source ports bound here; a connect to another port (refused) is not
/// recorded.
#[test]
fn tcp_port_filter_records_real_syns_to_that_port_only() {
    if !require_root("tcp_port_filter_records_real_syns_to_that_port_only") {
        return;
    }
    let ns = Netns::create_unique("tcpf").expect("netns");
    let dir = Scratch::new("tcpf").expect("scratch");
    let listener = listen_in_netns(&ns);
    let port = listener.local_addr().unwrap().port();
    let other = if port == 65535 { port - 1 } else { port + 1 };
    let dump = dir.join("tcp.jsonl");
    let rec = Recorder::start(
        &[
            "--quiet",
            "--attach",
            "tracepoint",
            "--tcp-port",
            &port.to_string(),
        ],
        &dump,
    );
    let to = |p: u16| SocketAddr::new(ns.ns_addr.parse().unwrap(), p);
    let mut ours = vec![];
    let mut refused = vec![];
    for _ in 0..5 {
        ours.push(connect_from_known_port(&ns.host_addr, to(port)));
        refused.push(connect_from_known_port(&ns.host_addr, to(other)));
    }
    thread::sleep(ms(300));
    let (code, _, err) = rec.finish(Some(libc::SIGINT));
    assert_eq!(code, 0, "{err}");
    drop(listener);
    let tcp: Vec<Value> = read_dump(&dump)
        .into_iter()
        .filter(|r| r["type"] == "packet" && r["proto"] == "tcp")
        .collect();
    let count = |kind: &str, ident: u16, seq: u16| {
        tcp.iter()
            .filter(|p| {
                p["kind"] == kind
                    && p["ident"].as_u64() == Some(u64::from(ident))
                    && p["seq"].as_u64() == Some(u64::from(seq))
            })
            .count()
    };
    for &sport in &ours {
        assert_eq!(count("syn", sport, port), 1, "SYN from {sport}: {tcp:?}");
        assert_eq!(
            count("syn_ack", port, sport),
            1,
            "SYN-ACK to {sport}: {tcp:?}"
        );
    }
    for p in &tcp {
        let (i, s) = (p["ident"].as_u64().unwrap(), p["seq"].as_u64().unwrap());
        assert!(
            i == u64::from(port) || s == u64::from(port),
            "only port {port} (not {other}, refused from {refused:?}): {p}"
        );
    }
    assert_eq!(tcp.len(), 2 * ours.len(), "nothing else: {tcp:?}");
}

// ---------------------------------------------------------------------------------
// 5. record --probe HOST --tcp PORT

/// `record --probe HOST --tcp P` end to end: TCP SYN probes in the dump, each answered
/// one joined here to the SYN the namespace received (source port = the probe's
/// `wire_ident`, destination = P) and to the SYN-ACK that came back.
#[test]
fn record_probe_tcp_probes_are_joined_to_their_syns_and_answers() {
    if !require_root("record_probe_tcp_probes_are_joined_to_their_syns_and_answers") {
        return;
    }
    let ns = Netns::create_unique("ptcp").expect("netns");
    let dir = Scratch::new("ptcp").expect("scratch");
    let listener = listen_in_netns(&ns);
    let port = listener.local_addr().unwrap().port();
    let dump = dir.join("ptcp.jsonl");
    let rec = Recorder::start(
        &[
            "--quiet",
            "--attach",
            "tracepoint",
            "--probe",
            &ns.ns_addr,
            "--tcp",
            &port.to_string(),
            "--interval",
            "10ms",
            "--duration",
            "3s",
        ],
        &dump,
    );
    let (code, _, err) = rec.finish(None);
    assert_eq!(code, 0, "{err}");
    drop(listener);
    let recs = read_dump(&dump);
    let probes = of_type(&recs, "probe");
    let ok: Vec<&&Value> = probes.iter().filter(|p| p["status"] == "ok").collect();
    assert!(ok.len() >= 200, "{} answered of {}", ok.len(), probes.len());
    let key = |p: &Value, k: &str| (p["ident"].as_u64(), p["seq"].as_u64(), p[k].clone());
    let packets: std::collections::HashSet<_> = of_type(&recs, "packet")
        .into_iter()
        .filter(|p| p["proto"] == "tcp")
        .map(|p| key(p, "kind"))
        .collect();
    for p in &ok {
        assert_eq!(p["proto"], "tcp", "{p}");
        assert_eq!(p["wire_seq"].as_u64(), Some(u64::from(port)), "{p}");
        let sport = p["wire_ident"].as_u64();
        assert!(
            packets.contains(&(sport, Some(u64::from(port)), "syn".into())),
            "the SYN of probe {p}"
        );
        assert!(
            packets.contains(&(Some(u64::from(port)), sport, "syn_ack".into())),
            "the SYN-ACK of probe {p}"
        );
    }
    let (code, rep, err) = analyze_json(&dump);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        rep["totals"]["probes_matched"], rep["totals"]["probes_answered"],
        "{}",
        rep["totals"]
    );
}

// ---------------------------------------------------------------------------------
// 6. IPv6

/// `ping -6` through the pair with the tracepoint hook: every request and every reply
/// recorded once, as ICMPv6, and nothing else (no neighbour discovery).
#[test]
fn ping6_echoes_are_each_recorded_once_as_icmpv6() {
    if !require_root("ping6_echoes_are_each_recorded_once_as_icmpv6") {
        return;
    }
    let ns = Netns::create_unique("v6").expect("netns");
    let dir = Scratch::new("v6").expect("scratch");
    let dump = dir.join("v6.jsonl");
    let rec = Recorder::start(&["--attach", "tracepoint", "--peer", &ns.ns_addr6], &dump);
    const N: u64 = 200;
    let ping = sh(Command::new("ping").args([
        "-6",
        "-c",
        &N.to_string(),
        "-i",
        "0.01",
        "-W",
        "1",
        &ns.ns_addr6,
    ]));
    let out = String::from_utf8_lossy(&ping.stdout);
    assert!(out.contains(&format!("{N} received")), "{out}");
    thread::sleep(ms(300));
    let (code, _, err) = rec.finish(Some(libc::SIGINT));
    assert_eq!(code, 0, "{err}");
    let packets: Vec<Value> = of_type(&read_dump(&dump), "packet")
        .into_iter()
        .cloned()
        .collect();
    let mut seen: HashMap<(String, u64), u32> = HashMap::new();
    for p in &packets {
        assert_eq!(p["proto"], "icmpv6", "{p}");
        let (kind, src, dst) = (
            p["kind"].as_str().unwrap(),
            p["src"].as_str().unwrap(),
            p["dst"].as_str().unwrap(),
        );
        let want = if kind == "echo_request" {
            (ns.host_addr6.as_str(), ns.ns_addr6.as_str())
        } else {
            (ns.ns_addr6.as_str(), ns.host_addr6.as_str())
        };
        assert_eq!((src, dst), want, "{p}");
        *seen
            .entry((kind.to_string(), p["seq"].as_u64().unwrap()))
            .or_default() += 1;
    }
    for seq in 1..=N {
        for kind in ["echo_request", "echo_reply"] {
            assert_eq!(seen.get(&(kind.to_string(), seq)), Some(&1), "{kind} {seq}");
        }
    }
    assert_eq!(packets.len() as u64, 2 * N, "nothing but the echoes");
}

// ---------------------------------------------------------------------------------
// 7, 8. Syscalls: a long sleep is not reported, a busy call is; the threshold

/// One getrandom(2) of `len` bytes into `buf` (touched before): (start, end) boot ns.
fn busy_syscall(buf: &mut [u8], len: usize) -> (u64, u64) {
    let t0 = boot_ns();
    // SAFETY: getrandom(2) writes at most len <= buf.len() bytes into buf.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), len.min(buf.len()), 0) };
    let t1 = boot_ns();
    assert!(n > 0, "getrandom: {}", std::io::Error::last_os_error());
    (t0, t1)
}

/// Syscall records of thread `tid`.
fn syscalls_of(recs: &[Value], tid: u32) -> Vec<&Value> {
    recs.iter()
        .filter(|r| r["type"] == "syscall" && r["pid"].as_u64() == Some(u64::from(tid)))
        .collect()
}

/// The README: a syscall is reported when it kept its caller on the CPU longer than
/// the threshold, "so a long futex sleep is not reported". A thread sleeping 200 ms in
/// futex (a timed park) and in clock_nanosleep is not a record; the same thread's
/// busy getrandom() calls are, with their on-CPU time.
#[test]
fn a_long_futex_sleep_is_not_a_long_syscall_but_a_busy_call_is() {
    if !require_root("a_long_futex_sleep_is_not_a_long_syscall_but_a_busy_call_is") {
        return;
    }
    let dir = Scratch::new("futex").expect("scratch");
    let dump = dir.join("futex.jsonl");
    let cpu = starved_cpu();
    let rec = record_on_cpu0(&["--quiet", "--syscalls"], &dump);
    let (tid, sleeps, busy) = thread::spawn(move || {
        pin_fifo(cpu).expect("FIFO");
        let tid = gettid();
        let mut sleeps = vec![];
        for _ in 0..2 {
            let t0 = boot_ns();
            // futex(FUTEX_WAIT…) with a timeout (again if woken early: bounded).
            for _ in 0..10 {
                let left = (t0 + 200 * MS).saturating_sub(boot_ns());
                if left == 0 {
                    break;
                }
                thread::park_timeout(Duration::from_nanos(left));
            }
            sleeps.push(("futex", t0, boot_ns()));
            let t0 = boot_ns();
            thread::sleep(ms(200)); // clock_nanosleep
            sleeps.push(("clock_nanosleep", t0, boot_ns()));
        }
        let mut buf = vec![1u8; 16 << 20];
        let busy: Vec<(u64, u64)> = (0..3).map(|_| busy_syscall(&mut buf, 16 << 20)).collect();
        (tid, sleeps, busy)
    })
    .join()
    .expect("the sleeper");
    thread::sleep(ms(300));
    let (code, _, err) = rec.finish(Some(libc::SIGINT));
    assert_eq!(code, 0, "{err}");
    let recs = read_dump(&dump);
    let mine = syscalls_of(&recs, tid);
    for (name, t0, t1) in &sleeps {
        assert!(t1 - t0 >= 195 * MS, "{name} slept {} ms", (t1 - t0) / MS);
        let hit: Vec<_> = mine
            .iter()
            .filter(|r| {
                let s = r["start_ns"].as_u64().unwrap();
                s >= *t0 && s <= *t1
            })
            .collect();
        assert!(hit.is_empty(), "a {name} sleep reported: {hit:?}");
    }
    for (t0, t1) in &busy {
        let took = t1 - t0;
        if took < 20 * MS {
            continue; // too fast here to be over the 10 ms threshold for sure
        }
        let r = mine
            .iter()
            .find(|r| {
                r["name"] == "getrandom" && (*t0..=*t1).contains(&r["start_ns"].as_u64().unwrap())
            })
            .unwrap_or_else(|| panic!("a busy getrandom of {} ms not reported", took / MS));
        let cpu_ns = r["cpu_ns"].as_u64().unwrap();
        assert!(
            cpu_ns + 2 * MS >= took && cpu_ns <= took,
            "on-CPU {cpu_ns} ns for a {took} ns call on a CPU it held alone: {r}"
        );
    }
    assert!(
        busy.iter().any(|(a, b)| b - a >= 20 * MS),
        "no getrandom of 16 MiB took 20 ms here: {busy:?}"
    );
}

/// `--syscall-threshold 25ms`: the test's busy calls are records exactly when they
/// took (measured here, on a CPU they held alone) clearly more than 25 ms; calls
/// within 20% of it are not judged.
#[test]
fn syscall_threshold_separates_the_tests_own_busy_calls() {
    if !require_root("syscall_threshold_separates_the_tests_own_busy_calls") {
        return;
    }
    let dir = Scratch::new("systhr").expect("scratch");
    let dump = dir.join("systhr.jsonl");
    let cpu = starved_cpu();
    let rec = record_on_cpu0(
        &["--quiet", "--syscalls", "--syscall-threshold", "25ms"],
        &dump,
    );
    let (tid, calls) = thread::spawn(move || {
        pin_fifo(cpu).expect("FIFO");
        let mut buf = vec![1u8; 32 << 20];
        let mut calls = vec![];
        for len in [1 << 20, 2 << 20, 1 << 20, 24 << 20, 32 << 20, 24 << 20] {
            calls.push(busy_syscall(&mut buf, len.min((32 << 20) - 1)));
            thread::sleep(ms(20));
        }
        (gettid(), calls)
    })
    .join()
    .expect("the caller");
    thread::sleep(ms(300));
    let (code, _, err) = rec.finish(Some(libc::SIGINT));
    assert_eq!(code, 0, "{err}");
    let recs = read_dump(&dump);
    let mine = syscalls_of(&recs, tid);
    let (mut below, mut above) = (0, 0);
    for (t0, t1) in &calls {
        let took = t1 - t0;
        let reported = mine
            .iter()
            .any(|r| (*t0..=*t1).contains(&r["start_ns"].as_u64().unwrap()));
        if took < 20 * MS {
            below += 1;
            assert!(!reported, "a {took} ns call reported over 25 ms");
        } else if took > 30 * MS {
            above += 1;
            assert!(reported, "a {took} ns call not reported");
        }
    }
    assert!(
        below >= 2 && above >= 2,
        "calls on both sides of the threshold: {calls:?}"
    );
    for r in &mine {
        assert!(r["cpu_ns"].as_u64().unwrap() >= 25 * MS, "{r}");
    }
}

// ---------------------------------------------------------------------------------
// 8, 9, 11. Planted waits: threshold, three holders, the truncated flag

/// `--wait-threshold 25ms`: waits the test plants (its RX thread woken, its CPU held
/// by a SCHED_FIFO thread of the test) of 10 ms are not records, of 45 ms are, once
/// each, with the planted thread as holder and about the planted length; the
/// histogram of the RX thread's waits on that CPU counts the short ones too.
#[test]
fn wait_threshold_keeps_planted_waits_above_it_only() {
    if !require_root("wait_threshold_keeps_planted_waits_above_it_only") {
        return;
    }
    let cpu = starved_cpu();
    let ns = napi_netns("wthr", cpu);
    let dir = Scratch::new("wthr").expect("scratch");
    let dump = dir.join("wthr.jsonl");
    let rec = record_on_cpu0(
        &["--quiet", "--peer", &ns.ns_addr, "--wait-threshold", "25ms"],
        &dump,
    );
    let kick: SocketAddr = format!("{}:9", ns.ns_addr).parse().unwrap();
    let mut relays = vec![];
    for hold in [10, 45, 10, 45, 10, 45] {
        relays.push((hold, relay(cpu, kick, &[ms(hold)], 1)));
        thread::sleep(ms(100));
    }
    thread::sleep(ms(200));
    let (code, _, err) = rec.finish(Some(libc::SIGINT));
    assert_eq!(code, 0, "{err}");
    let recs = read_dump(&dump);
    for (hold, r) in &relays {
        let w = wait_of(&recs, &ns, cpu, r);
        if *hold < 25 {
            assert!(w.is_empty(), "a {hold} ms wait recorded: {w:?}");
            continue;
        }
        assert_eq!(w.len(), 1, "the planted {hold} ms wait, once");
        let wait = w[0]["wait_ns"].as_u64().unwrap();
        let planted = r.end() - r.kick.1;
        assert!(
            wait >= planted && wait <= planted + 5 * MS,
            "wait {wait} ns for {planted} ns planted: {}",
            w[0]
        );
        assert_eq!(
            w[0]["holders"][0]["pid"].as_u64(),
            Some(u64::from(r.tids[0]))
        );
    }
    let footer = recs.last().unwrap();
    assert_eq!(footer["type"], "footer");
    let hist = footer["hist_rx_thread"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["cpu"].as_u64() == Some(u64::from(cpu)))
        .expect("the starved CPU's RX-thread histogram");
    // [8192, 16384) µs holds a 10 ms wait: log2 bucket 13.
    let b = hist["buckets"].as_array().unwrap();
    let short = b.get(13).and_then(Value::as_u64).unwrap_or(0);
    assert!(short >= 3, "the short waits are in the histogram: {hist}");
}

/// "The three longest holders": a relay of three SCHED_FIFO threads holds the starved
/// CPU 60, 35 and 15 ms (in three orders); the planted wait names exactly those three
/// threads, longest first, each with about the time it held the CPU after the RX
/// thread was woken, and is not truncated.
#[test]
fn the_three_longest_holders_are_named_longest_first() {
    if !require_root("the_three_longest_holders_are_named_longest_first") {
        return;
    }
    let cpu = starved_cpu();
    let ns = napi_netns("hold3", cpu);
    let dir = Scratch::new("hold3").expect("scratch");
    let dump = dir.join("hold3.jsonl");
    let rec = record_on_cpu0(&["--quiet", "--peer", &ns.ns_addr], &dump);
    let kick: SocketAddr = format!("{}:9", ns.ns_addr).parse().unwrap();
    let mut relays = vec![];
    for holds in [[60, 35, 15], [15, 60, 35], [35, 15, 60]] {
        let h: Vec<Duration> = holds.iter().map(|&m| ms(m)).collect();
        relays.push(relay(cpu, kick, &h, 1));
        thread::sleep(ms(150));
    }
    thread::sleep(ms(200));
    let (code, _, err) = rec.finish(Some(libc::SIGINT));
    assert_eq!(code, 0, "{err}");
    let recs = read_dump(&dump);
    for r in &relays {
        let w = wait_of(&recs, &ns, cpu, r);
        assert_eq!(w.len(), 1, "the planted wait: {:?}", r.turns);
        let w = w[0];
        let holders = w["holders"].as_array().unwrap();
        assert_eq!(holders.len(), 3, "{w}");
        // Expected from what the threads measured: longest first.
        let mut want: Vec<(u32, u64)> = (0..3).map(|i| (r.tids[i], r.held_after_kick(i))).collect();
        want.sort_by_key(|w| std::cmp::Reverse(w.1));
        for (h, (tid, held)) in holders.iter().zip(&want) {
            assert_eq!(h["pid"].as_u64(), Some(u64::from(*tid)), "order: {w}");
            let run = h["run_ns"].as_u64().unwrap();
            assert!(
                run.abs_diff(*held) <= 2 * MS,
                "thread {tid} held {held} ns, recorded {run}: {w}"
            );
            assert_eq!(h["policy"], "SCHED_FIFO");
            assert_eq!(h["priority"], 50);
        }
        assert_eq!(w["truncated"], false, "{w}");
    }
}

/// The run history keeps 16 switches per CPU: a wait with more (four threads taking
/// 24 turns and yielding to each other in between) is marked `truncated`, and its
/// holders are still among the planted threads; a wait with two switches is not.
#[test]
fn a_wait_with_more_switches_than_the_history_is_truncated() {
    if !require_root("a_wait_with_more_switches_than_the_history_is_truncated") {
        return;
    }
    let cpu = starved_cpu();
    let ns = napi_netns("trunc", cpu);
    let dir = Scratch::new("trunc").expect("scratch");
    let dump = dir.join("trunc.jsonl");
    let rec = record_on_cpu0(&["--quiet", "--peer", &ns.ns_addr], &dump);
    let kick: SocketAddr = format!("{}:9", ns.ns_addr).parse().unwrap();
    let long = rotation(cpu, kick, 4, ms(3), 24);
    thread::sleep(ms(150));
    let short = relay(cpu, kick, &[ms(20), ms(20)], 1);
    thread::sleep(ms(200));
    let (code, _, err) = rec.finish(Some(libc::SIGINT));
    assert_eq!(code, 0, "{err}");
    let recs = read_dump(&dump);
    let w = wait_of(&recs, &ns, cpu, &long);
    assert_eq!(w.len(), 1, "the planted wait");
    assert_eq!(w[0]["truncated"], true, "24 turns in the window: {}", w[0]);
    assert!(w[0]["nr_switches"].as_u64().unwrap() >= 16, "{}", w[0]);
    assert!(
        w[0]["wait_ns"].as_u64().unwrap() >= long.end() - long.kick.1,
        "the wait lasted the whole rotation: {}",
        w[0]
    );
    for h in w[0]["holders"].as_array().unwrap() {
        assert!(
            long.tids.contains(&(h["pid"].as_u64().unwrap() as u32)),
            "a planted thread: {h}"
        );
    }
    let w = wait_of(&recs, &ns, cpu, &short);
    assert_eq!(w.len(), 1, "the short relay's wait");
    assert_eq!(w[0]["truncated"], false, "2 switches: {}", w[0]);
}

/// A full history keeps a wait's longest runs: in a relay of one thread holding 25 ms
/// and two holding 1 ms, eight rounds (24 switches, more than the 16 slots), the long
/// holder is named with all its 200 ms, as the threads measured them (a history of the
/// latest 16 runs would have kept at most 6 of its 8 turns), and the wait is truncated.
#[test]
fn a_full_history_keeps_the_longest_runs_of_the_wait() {
    if !require_root("a_full_history_keeps_the_longest_runs_of_the_wait") {
        return;
    }
    let cpu = starved_cpu();
    let ns = napi_netns("keep", cpu);
    let dir = Scratch::new("keep").expect("scratch");
    // The scenario needs the RX thread to wait through the whole relay; when the relay's
    // threads show by their own clocks that they let go of the CPU (over 200 µs), the
    // relay is planted again (at most three times) rather than judging a wait that did
    // not happen. A short wait without such a gap is the bug this test guards.
    for attempt in 1..=3 {
        let dump = dir.join(&format!("keep-{attempt}.jsonl"));
        let rec = record_on_cpu0(&["--quiet", "--peer", &ns.ns_addr], &dump);
        let kick: SocketAddr = format!("{}:9", ns.ns_addr).parse().unwrap();
        let r = relay(cpu, kick, &[ms(25), ms(1), ms(1)], 8);
        thread::sleep(ms(200));
        let (code, _, err) = rec.finish(Some(libc::SIGINT));
        assert_eq!(code, 0, "{err}");
        let recs = read_dump(&dump);
        let w = wait_of(&recs, &ns, cpu, &r);
        assert_eq!(w.len(), 1, "the planted wait: {:?}", r.turns);
        let w = w[0];
        if r.given_away() > 200 * 1_000 && attempt < 3 {
            continue;
        }
        assert!(
            w["wait_ns"].as_u64().unwrap() >= r.end() - r.kick.1,
            "the CPU was never given away for over {} µs, so the wait lasted the whole \
             relay: {w}",
            r.given_away() / 1_000
        );
        assert_eq!(w["truncated"], true, "24 switches in the window: {w}");
        let first = &w["holders"][0];
        assert_eq!(first["pid"].as_u64(), Some(u64::from(r.tids[0])), "{w}");
        let held = r.held_after_kick(0);
        let run = first["run_ns"].as_u64().unwrap();
        // One millisecond of slack per turn (8 turns).
        assert!(
            run.abs_diff(held) <= 8 * MS,
            "the long holder held {held} ns, recorded {run}: {w}"
        );
        return;
    }
}

// ---------------------------------------------------------------------------------
// 8. --summary-every, -v

/// `--summary-every 500ms`: summaries on stdout about every 500 ms while recording
/// (timed here as the lines arrive), each saying how long it has recorded.
#[test]
fn summary_every_prints_periodic_summaries() {
    if !require_root("summary_every_prints_periodic_summaries") {
        return;
    }
    let dir = Scratch::new("summ").expect("scratch");
    let mut child = ChildGuard::new(
        Command::new(stalltrace_bin())
            .args([
                "record",
                "--quiet",
                "--summary-every",
                "500ms",
                "--duration",
                "3200ms",
                "-o",
            ])
            .arg(dir.join("s.jsonl"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("record"),
    );
    let out = child.take_stdout().expect("stdout");
    let reader = thread::spawn(move || {
        let mut seen = vec![];
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if l.starts_with("-- summary after ") {
                seen.push((Instant::now(), l));
            }
        }
        seen
    });
    let st = child
        .wait_for(Duration::from_secs(30))
        .expect("record ended");
    assert!(st.success());
    let seen = reader.join().expect("reader");
    assert!(
        (5..=6).contains(&seen.len()),
        "a summary every 500 ms for 3.2 s: {seen:?}"
    );
    for pair in seen.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            gap >= ms(300) && gap <= ms(800),
            "{gap:?} between summaries: {seen:?}"
        );
    }
    for s in &seen {
        assert!(s.1.ends_with(" --"), "{}", s.1);
    }
}

/// `-v` logs more on stderr: each attached hook (as the dump's header lists them) at
/// info level; none without it; `-vv` adds debug lines.
#[test]
fn verbose_logs_every_attached_hook() {
    if !require_root("verbose_logs_every_attached_hook") {
        return;
    }
    let dir = Scratch::new("verbose").expect("scratch");
    let mut errs = vec![];
    for (i, v) in [None, Some("-v"), Some("-vv")].into_iter().enumerate() {
        let dump = dir.join(&format!("v{i}.jsonl"));
        let out = Command::new(stalltrace_bin())
            .env_remove("RUST_LOG")
            .args(v)
            .args(["record", "--quiet", "--duration", "500ms", "-o"])
            .arg(&dump)
            .output()
            .expect("record");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        let hooks: Vec<String> = read_dump(&dump)[0]["hooks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h.as_str().unwrap().to_string())
            .collect();
        assert!(hooks.len() >= 6, "{hooks:?}");
        let logged = |h: &str| {
            err.lines().any(|l| {
                l.starts_with("[INFO")
                    && l.contains(" attached ")
                    && l.contains(&format!(" to {h}"))
            })
        };
        match i {
            0 => assert!(!err.contains("[INFO") && !err.contains("[DEBUG"), "{err}"),
            _ => {
                for h in &hooks {
                    assert!(logged(h), "{v:?}: {h} not logged:\n{err}");
                }
            }
        }
        assert_eq!(err.contains("[DEBUG"), i == 2, "{v:?}");
        errs.push(err.lines().count());
    }
    assert!(
        errs[0] < errs[1] && errs[1] < errs[2],
        "more and more: {errs:?}"
    );
}

// ---------------------------------------------------------------------------------
// 10. The cgroup of a holder on the real kernel

/// A cgroup made by the test below its own, in the unified hierarchy; removed on drop.
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn make() -> Self {
        let root = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.join("cgroup.controllers").exists())
            .expect("a unified cgroup hierarchy");
        let own = fs::read_to_string("/proc/self/cgroup")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("0::").map(str::to_string))
            .expect("own unified cgroup");
        let dir = root
            .join(own.trim_start_matches('/'))
            .join(format!("stalltrace-test-{}", std::process::id()))
            .join("culprit.scope");
        fs::create_dir_all(&dir).expect("cgroup");
        Self(dir)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
        if let Some(p) = self.0.parent() {
            let _ = fs::remove_dir(p);
        }
    }
}

/// A culprit born in a cgroup made here (it joins it between fork and exec, checked in
/// /proc) holds the starved CPU while pings wake the RX thread there: every wait it is
/// blamed for names that cgroup, by id (the directory's inode, stat'ed here) and by
/// path (relative to the unified root, as made here).
#[test]
fn a_holders_cgroup_is_named_by_id_and_path() {
    if !require_root("a_holders_cgroup_is_named_by_id_and_path") {
        return;
    }
    use std::os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _};
    let cg = TestCgroup::make();
    let ino = fs::metadata(&cg.0).unwrap().ino();
    let rel =
        cg.0.to_string_lossy()
            .trim_start_matches("/sys/fs/cgroup/unified")
            .trim_start_matches("/sys/fs/cgroup")
            .to_string();
    let cpu = starved_cpu();
    let ns = napi_netns("cgrp", cpu);
    let dir = Scratch::new("cgroup").expect("scratch");
    let dump = dir.join("cg.jsonl");
    let rec = record_on_cpu0(&["--quiet", "--peer", &ns.ns_addr], &dump);
    let name = format!("cg{:x}", std::process::id());
    let mut cmd = Command::new(stalltrace_bin());
    cmd.args([
        "hog",
        "--cpu",
        &cpu.to_string(),
        "--fifo",
        "50",
        "--name",
        &name,
    ])
    .args(["--duration", "1500ms", "--burst", "60ms", "--gap", "40ms"]);
    let procs = std::ffi::CString::new(cg.0.join("cgroup.procs").as_os_str().as_bytes()).unwrap();
    // SAFETY: between fork and exec only open/write/close(2), async-signal-safe, on a
    // path built before the fork; "0" moves the writing process itself.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let n = libc::write(fd, b"0".as_ptr().cast(), 1);
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            if n == 1 {
                Ok(())
            } else {
                Err(e)
            }
        });
    }
    let mut hog = ChildGuard::new(cmd.spawn().expect("the hog"));
    let hog_pid = hog.id().expect("pid");
    let own = fs::read_to_string(format!("/proc/{hog_pid}/cgroup")).unwrap_or_default();
    assert!(
        own.lines().any(|l| l == format!("0::{rel}")),
        "the culprit is in {rel}: {own}"
    );
    let ping = sh(Command::new("taskset").args([
        "-c",
        "0",
        "ping",
        "-q",
        "-c",
        "120",
        "-i",
        "0.01",
        "-W",
        "1",
        &ns.ns_addr,
    ]));
    assert!(ping.status.success());
    let st = hog
        .wait_for(Duration::from_secs(10))
        .expect("the hog ended");
    assert!(st.success(), "{st:?}");
    thread::sleep(ms(200));
    let (code, _, err) = rec.finish(Some(libc::SIGINT));
    assert_eq!(code, 0, "{err}");
    let recs = read_dump(&dump);
    let blamed: Vec<&Value> = of_type(&recs, "wait")
        .into_iter()
        .filter(|w| w["holders"][0]["pid"].as_u64() == Some(u64::from(hog_pid)))
        .collect();
    assert!(
        blamed.len() >= 5,
        "{} waits blamed on the culprit",
        blamed.len()
    );
    for w in &blamed {
        let h = &w["holders"][0];
        assert_eq!(h["comm"], name.as_str(), "{h}");
        assert_eq!(h["cgroup_id"].as_u64(), Some(ino), "{h}");
        assert_eq!(h["cgroup"].as_str(), Some(rel.as_str()), "{h}");
    }
    drop(ns);
    drop(cg);
}

// ---------------------------------------------------------------------------------
// 12. Lab clean-up on a panic

/// A lab that panics (an unwinding panic, injected by the debug build's test hook
/// once the namespace, the recorder and the culprit run) cleans up by itself, as on an
/// error: no namespace, culprit, file, journal or program left, with no
/// `lab --cleanup`; and the recorder it stopped wrote its footer.
#[test]
fn a_panicking_lab_cleans_up_after_itself() {
    if !require_root("a_panicking_lab_cleans_up_after_itself") {
        return;
    }
    let bin = fs::read(stalltrace_bin()).expect("the binary");
    let hook = b"STALLTRACE_LAB_PANIC";
    if !require(
        "a_panicking_lab_cleans_up_after_itself",
        bin.windows(hook.len()).any(|w| w == hook),
        "the binary under test has no panic hook (a release build?)",
    ) {
        return;
    }
    let dir = Scratch::new("labpanic").expect("scratch");
    let dump = dir.join("lab.jsonl");
    let out = Command::new(stalltrace_bin())
        .env("STALLTRACE_LAB_PANIC", "planted")
        .args([
            "lab",
            "--scenario",
            "slow-syscall",
            "--duration",
            "3s",
            "-o",
        ])
        .arg(&dump)
        .output()
        .expect("lab");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(101), "a panic: {err}");
    assert!(
        err.contains("STALLTRACE_LAB_PANIC=planted: a panic injected for a test"),
        "it panicked with the culprit planted: {err}"
    );
    // No `lab --cleanup`: the panic's unwinding did it.
    assert_machine_clean("after a panicking lab");
    let recs = read_dump(&dump);
    assert_eq!(
        recs.last().unwrap()["type"],
        "footer",
        "the recorder was stopped"
    );
}

/// The CI rule, from outside: this very test binary, run as `nobody` with `CI=true`
/// and filtered to one root test, must fail saying it refuses to skip (and, with `CI`
/// unset, skip and pass), so CI cannot pass by skipping.
#[test]
fn a_root_test_run_without_root_under_ci_fails_instead_of_skipping() {
    if !require_root("a_root_test_run_without_root_under_ci_fails_instead_of_skipping")
        || !require(
            "a_root_test_run_without_root_under_ci_fails_instead_of_skipping",
            Path::new("/usr/bin/setpriv").exists(),
            "needs setpriv (util-linux)",
        )
    {
        return;
    }
    let me = std::env::current_exe().expect("the test binary");
    let run = |ci: Option<&str>| {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&me)
            .args([
                "--exact",
                "attribution_lab::a_quiet_recording_reports_no_wait_over_50ms",
                "--test-threads=1",
                "--nocapture",
            ])
            .env_remove("CI")
            .current_dir("/");
        if let Some(v) = ci {
            cmd.env("CI", v);
        }
        cmd.output().expect("setpriv")
    };
    let under_ci = run(Some("true"));
    let out = String::from_utf8_lossy(&under_ci.stdout).into_owned()
        + &String::from_utf8_lossy(&under_ci.stderr);
    assert!(!under_ci.status.success(), "{out}");
    assert!(out.contains("refusing to skip"), "{out}");
    assert!(out.contains("1 failed"), "{out}");
    let outside = run(None);
    let out = String::from_utf8_lossy(&outside.stdout).into_owned()
        + &String::from_utf8_lossy(&outside.stderr);
    assert!(outside.status.success(), "{out}");
    assert!(out.contains("SKIP"), "{out}");
}
