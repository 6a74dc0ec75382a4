//! The machine side of the bench: child processes that are killed and reaped on
//! drop, network namespaces with a veth pair, the bpf_stats sysctl and tracefs
//! restored on drop, signal handling (Ctrl-C/SIGTERM unwind into clean-up), and the
//! /proc and /sys readings the parts measure with (echo counters, CPU time, RSS, fds,
//! backlog drops, steal, busy processes).
use std::{
    collections::BTreeMap,
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

pub(crate) static STOP: AtomicBool = AtomicBool::new(false);

pub(crate) extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

pub(crate) fn install_signal_handlers() {
    let h = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, h);
        libc::signal(libc::SIGTERM, h);
    }
}

/// Sleeps, checking for Ctrl-C/SIGTERM every 50 ms (an error unwinds into clean-up).
pub(crate) fn pause(d: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + d;
    loop {
        if STOP.load(Ordering::SeqCst) {
            bail!("interrupted; cleaning up");
        }
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

pub(crate) fn run_cmd(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

// ---------------------------------------------------------------------------------
// Clean-up guards

/// A child process; killed (SIGKILL) and reaped on drop unless stopped before.
pub(crate) struct Proc {
    pub(crate) name: String,
    pub(crate) child: Option<Child>,
    pub(crate) out: PathBuf,
    pub(crate) err: PathBuf,
}

impl Proc {
    pub(crate) fn spawn(name: &str, argv: &[String], dir: &Path) -> anyhow::Result<Self> {
        let out = dir.join(format!("{name}.out"));
        let err = dir.join(format!("{name}.err"));
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out)?)
            .stderr(fs::File::create(&err)?)
            .spawn()
            .with_context(|| format!("starting {}", argv.join(" ")))?;
        Ok(Self {
            name: name.into(),
            child: Some(child),
            out,
            err,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub(crate) fn text(&self) -> String {
        let mut s = fs::read_to_string(&self.out).unwrap_or_default();
        s.push_str(&fs::read_to_string(&self.err).unwrap_or_default());
        s
    }

    /// Waits until its output contains `marker` (or it exits, or `timeout`).
    pub(crate) fn wait_for(&mut self, marker: &str, timeout: Duration) -> anyhow::Result<()> {
        let end = Instant::now() + timeout;
        loop {
            if self.text().contains(marker) {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    bail!(
                        "{} exited ({st}) before it was ready:\n{}",
                        self.name,
                        tail(&self.text(), 20)
                    );
                }
            }
            if Instant::now() > end {
                bail!(
                    "{} not ready after {timeout:?}:\n{}",
                    self.name,
                    tail(&self.text(), 20)
                );
            }
            pause(Duration::from_millis(50))?;
        }
    }

    /// SIGINT, then up to `grace` to exit, then SIGKILL. Returns its output.
    pub(crate) fn stop(&mut self, grace: Duration) -> String {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
            let end = Instant::now() + grace;
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < end => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                }
            }
        }
        self.text()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub(crate) fn tail(s: &str, n: usize) -> String {
    let l: Vec<&str> = s.lines().collect();
    l[l.len().saturating_sub(n)..].join("\n")
}

/// A namespace with a veth pair to the root namespace: 10.213.`subnet`.1 ↔ .2.
pub(crate) struct Ns {
    pub(crate) name: String,
    pub(crate) host_if: String,
    pub(crate) addr: String,
    /// A process living in the namespace: its /proc/PID/net/snmp is the namespace's.
    pub(crate) sleeper: Option<Proc>,
}

impl Ns {
    pub(crate) fn create(
        name: &str,
        host_if: &str,
        ns_if: &str,
        subnet: u8,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        if Path::new(&format!("/run/netns/{name}")).exists()
            || Path::new(&format!("/sys/class/net/{host_if}")).exists()
        {
            bail!("namespace {name} or link {host_if} already exists");
        }
        run_cmd(&["ip", "netns", "add", name])?;
        let mut me = Self {
            name: name.into(),
            host_if: host_if.into(),
            addr: format!("10.213.{subnet}.2"),
            sleeper: None,
        };
        let h = format!("10.213.{subnet}.1/24");
        let n = format!("10.213.{subnet}.2/24");
        run_cmd(&[
            "ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if,
        ])?;
        run_cmd(&["ip", "link", "set", ns_if, "netns", name])?;
        run_cmd(&["ip", "addr", "add", &h, "dev", host_if])?;
        run_cmd(&["ip", "link", "set", host_if, "up"])?;
        run_cmd(&["ip", "-n", name, "addr", "add", &n, "dev", ns_if])?;
        run_cmd(&["ip", "-n", name, "link", "set", ns_if, "up"])?;
        run_cmd(&["ip", "-n", name, "link", "set", "lo", "up"])?;
        // `ip netns exec` execs the command: the child is the sleeper itself.
        let argv: Vec<String> = ["ip", "netns", "exec", name, "sleep", "3600"]
            .map(String::from)
            .into();
        let p = Proc::spawn(&format!("sleeper-{name}"), &argv, dir)?;
        me.sleeper = Some(p);
        Ok(me)
    }

    pub(crate) fn snmp_pid(&self) -> anyhow::Result<u32> {
        let p = self.sleeper.as_ref().map(Proc::pid).unwrap_or(0);
        for _ in 0..100 {
            let comm = fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
            if comm.trim() == "sleep" {
                return Ok(p);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("no process in namespace {}", self.name)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        self.sleeper.take();
        let _ = run_cmd(&["ip", "netns", "del", &self.name]);
        if Path::new(&format!("/sys/class/net/{}", self.host_if)).exists() {
            let _ = run_cmd(&["ip", "link", "del", &self.host_if]);
        }
    }
}

pub(crate) const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Restores kernel.bpf_stats_enabled on drop.
pub(crate) struct StatsGuard {
    pub(crate) prev: String,
}

impl StatsGuard {
    pub(crate) fn new() -> anyhow::Result<Self> {
        let prev = fs::read_to_string(STATS)
            .context("reading kernel.bpf_stats_enabled")?
            .trim()
            .to_string();
        Ok(Self { prev })
    }
    pub(crate) fn was_on(&self) -> bool {
        self.prev == "1"
    }
    pub(crate) fn set(&self, on: bool) -> anyhow::Result<()> {
        let v = if on || self.was_on() { "1" } else { "0" };
        fs::write(STATS, v).context("writing kernel.bpf_stats_enabled")
    }
}

impl Drop for StatsGuard {
    fn drop(&mut self) {
        let _ = fs::write(STATS, &self.prev);
    }
}

// ---------------------------------------------------------------------------------
// Measurements

/// `InEchos` of the namespace the process `pid` lives in.
pub(crate) fn in_echos(pid: u32) -> anyhow::Result<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/net/snmp"))
        .context("reading the namespace's snmp counters")?;
    let mut lines = s.lines().filter(|l| l.starts_with("Icmp: "));
    let (Some(h), Some(v)) = (lines.next(), lines.next()) else {
        bail!("no Icmp counters")
    };
    let i = h
        .split_whitespace()
        .position(|f| f == "InEchos")
        .context("no InEchos")?;
    v.split_whitespace()
        .nth(i)
        .and_then(|x| x.parse().ok())
        .context("bad InEchos")
}

/// utime + stime of a process, in seconds.
pub(crate) fn cpu_secs(pid: u32) -> f64 {
    let Ok(s) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(rest) = s.rfind(')').map(|i| &s[i + 2..]) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat; `rest` starts at field 3.
    let t = |i: usize| {
        f.get(i - 3)
            .and_then(|x| x.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (t(14) + t(15)) / hz
}

pub(crate) fn softnet_drops() -> u64 {
    fs::read_to_string("/proc/net/softnet_stat")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|x| u64::from_str_radix(x, 16).ok())
        })
        .sum()
}

pub(crate) fn child_of(pid: u32) -> Option<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub(crate) fn find_comm(name: &str) -> u32 {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .find(|p| fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == name))
        .unwrap_or(0)
}

pub(crate) fn bpftrace_lost(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Lost "))
        .filter_map(|r| {
            r.split_whitespace()
                .next()
                .and_then(|x| x.parse::<u64>().ok())
        })
        .sum()
}

/// Removes the namespaces and host links (`stb<pid>…`) of a bench that was killed before
/// its clean-up ran, unless another bench is running; says what it removed.
pub(crate) fn remove_stale_namespaces() {
    let me = std::process::id();
    let other_bench = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            let pid: u32 = e
                .file_name()
                .to_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let cmd = fs::read(e.path().join("cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
            pid != me
                && args
                    .first()
                    .is_some_and(|a| a.ends_with(b"stalltrace-bench"))
        });
    if other_bench {
        return;
    }
    let stale: Vec<String> = fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("stb"))
        .collect();
    for ns in &stale {
        let _ = run_cmd(&["ip", "netns", "del", ns]);
        let host = format!("{ns}h");
        if Path::new(&format!("/sys/class/net/{host}")).exists() {
            let _ = run_cmd(&["ip", "link", "del", &host]);
        }
    }
    if !stale.is_empty() {
        println!(
            "bench: removed namespaces a killed bench left: {}",
            stale.join(", ")
        );
    }
}

pub(crate) fn pick_subnets() -> anyhow::Result<(u8, u8, u8)> {
    let used = run_cmd(&["ip", "-o", "-4", "addr", "show"])?;
    let free: Vec<u8> = (230u8..=249)
        .filter(|s| !used.contains(&format!("10.213.{s}.")))
        .collect();
    if free.len() < 3 {
        bail!("no free 10.213.230-249 subnets (leftovers of a killed bench? `ip -o -4 addr show | grep 10.213.2`)");
    }
    Ok((free[0], free[1], free[2]))
}

/// Time stolen by the hypervisor, all CPUs, in seconds.
pub(crate) fn steal_secs() -> f64 {
    let s = fs::read_to_string("/proc/stat").unwrap_or_default();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    s.lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(8))
        .and_then(|x| x.parse::<f64>().ok())
        .unwrap_or(0.0)
        / hz
}

pub(crate) fn proc_cpu_table() -> BTreeMap<u32, (String, f64)> {
    let mut m = BTreeMap::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() {
                let mut comm = fs::read_to_string(format!("/proc/{pid}/comm"))
                    .unwrap_or_default()
                    .trim()
                    .to_string();
                if sched_policy(pid) == Some(libc::SCHED_IDLE as u32) {
                    comm.push_str(" (SCHED_IDLE)");
                }
                m.insert(pid, (comm, cpu_secs(pid)));
            }
        }
    }
    m
}

/// The scheduling policy of a process (field 41 of /proc/PID/stat).
pub(crate) fn sched_policy(pid: u32) -> Option<u32> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    rest.split_whitespace().nth(41 - 3)?.parse().ok()
}

/// `/proc/PID/status` field in kB (VmRSS, VmHWM), if the process lives.
pub(crate) fn status_kib(pid: u32, field: &str) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Open file descriptors of a process.
pub(crate) fn fd_count(pid: u32) -> Option<usize> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Mounts tracefs for bpftrace when it is not mounted (a fresh machine), and unmounts
/// it again on drop if it was mounted here.
pub(crate) struct TracefsGuard {
    pub(crate) mounted_here: bool,
}

const TRACEFS: &str = "/sys/kernel/tracing";

impl TracefsGuard {
    pub(crate) fn ensure() -> anyhow::Result<Self> {
        if Path::new(TRACEFS).join("events").exists() {
            return Ok(Self {
                mounted_here: false,
            });
        }
        run_cmd(&["mount", "-t", "tracefs", "nodev", TRACEFS])
            .context("mounting tracefs for bpftrace")?;
        println!("bench: tracefs was not mounted (bpftrace needs it): mounted it at {TRACEFS}; it is unmounted at the end");
        Ok(Self { mounted_here: true })
    }
}

impl Drop for TracefsGuard {
    fn drop(&mut self) {
        if self.mounted_here {
            // bpftrace may take a moment to let go of its tracepoints.
            for _ in 0..20 {
                if run_cmd(&["umount", TRACEFS]).is_ok() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            eprintln!("bench: could not unmount {TRACEFS} (still busy); `umount {TRACEFS}` later");
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound and released: a race with another process
/// only makes the agent refuse to start, which the bench reports).
pub(crate) fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding a probe port")?;
    Ok(l.local_addr().context("local address")?.port())
}

/// GET http://127.0.0.1:PORT/PATH, body as text.
pub(crate) fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    use std::io::Write as _;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(out))
}

/// The value of a sample line `name value` (no labels) in a Prometheus exposition.
pub(crate) fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok())?
    })
}

/// Parses `30s`, `10m`, `2h` (a plain number is seconds).
pub(crate) fn parse_secs(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('s') => (&s[..s.len() - 1], 1),
        Some('m') => (&s[..s.len() - 1], 60),
        Some('h') => (&s[..s.len() - 1], 3600),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}`: expected e.g. 90s, 30m, 2h"))?;
    n.checked_mul(mult)
        .filter(|x| (10..=86_400).contains(x))
        .ok_or_else(|| format!("`{s}`: between 10s and 24h"))
}

/// Ctrl-C or SIGTERM seen.
pub(crate) fn stopped() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// The footer of a dump (its last lines), if it has one.
pub(crate) fn footer_of(dump: &Path) -> Option<stalltrace_analysis::dump::Footer> {
    use stalltrace_analysis::dump::Record;
    use std::io::{Seek as _, SeekFrom};
    let mut file = fs::File::open(dump).ok()?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut s = vec![];
    file.seek(SeekFrom::Start(len.saturating_sub(64 << 10)))
        .ok()?;
    file.read_to_end(&mut s).ok()?;
    String::from_utf8_lossy(&s).lines().rev().find_map(|l| {
        match serde_json::from_str::<Record>(l).ok()? {
            Record::Footer(f) => Some(f),
            _ => None,
        }
    })
}

/// What a prober's closing statistics say.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct ProbeStats {
    pub(crate) sent: Option<u64>,
    pub(crate) received: Option<u64>,
    pub(crate) lost: Option<u64>,
    pub(crate) max_rtt_ms: Option<f64>,
}

pub(crate) fn prober_stats(text: &str) -> ProbeStats {
    let num = |l: &str, key: &str| -> Option<u64> {
        let i = l.find(key)?;
        l[..i].split_whitespace().last()?.parse().ok()
    };
    let Some(l) = text.lines().find(|l| l.contains("packets transmitted")) else {
        return ProbeStats::default();
    };
    let max_rtt_ms = text
        .lines()
        .find_map(|l| l.strip_prefix("round-trip min/avg/max = "))
        .and_then(|r| {
            r.split('/')
                .nth(2)
                .and_then(|x| x.trim_end_matches(" ms").parse::<f64>().ok())
        });
    ProbeStats {
        sent: num(l, "packets transmitted"),
        received: num(l, "packets received"),
        lost: num(l, " lost"),
        max_rtt_ms,
    }
}
