//! util
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
use serde_json::{json, Value};

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

pub(crate) const PROG_NAMES: [&str; 11] = [
    "netif_receive_skb",
    "icmp_echo",
    "softirq_raise",
    "softirq_entry",
    "softirq_exit",
    "sched_switch",
    "sched_wakeup",
    "sys_enter",
    "sys_exit",
    "sample_task_regs",
    "sample_stack_regs",
];

/// Names of the syscall programs (attached only with `--syscalls`).
pub(crate) const SYSCALL_PROGS: [&str; 2] = ["sys_enter", "sys_exit"];

/// The kernel keeps 15 characters of a program's name.
pub(crate) fn canonical(name: &str) -> String {
    PROG_NAMES
        .iter()
        .find(|n| n.starts_with(name) || name.starts_with(*n))
        .map(|n| n.to_string())
        .unwrap_or(name.into())
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Prog {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) kind: String,
    pub(crate) run_time_ns: u64,
    pub(crate) run_cnt: u64,
    pub(crate) misses: u64,
}

pub(crate) fn bpftool_progs() -> anyhow::Result<Vec<Prog>> {
    let out = run_cmd(&["bpftool", "prog", "show", "-j"])?;
    let v: Value = serde_json::from_str(&out).context("parsing bpftool prog show -j")?;
    let arr = v.as_array().context("bpftool: not a list")?;
    Ok(arr
        .iter()
        .map(|p| Prog {
            id: p["id"].as_u64().unwrap_or(0),
            name: canonical(p["name"].as_str().unwrap_or("")),
            kind: p["type"].as_str().unwrap_or("").into(),
            run_time_ns: p["run_time_ns"].as_u64().unwrap_or(0),
            run_cnt: p["run_cnt"].as_u64().unwrap_or(0),
            misses: p["recursion_misses"].as_u64().unwrap_or(0),
        })
        .collect())
}

/// Ids of the BPF programs process `pid` holds open.
pub(crate) fn prog_ids_of(pid: u32) -> Vec<u64> {
    let mut ids = vec![];
    let Ok(rd) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return ids;
    };
    for e in rd.flatten() {
        if let Ok(s) = fs::read_to_string(e.path()) {
            if let Some(id) = s
                .lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|x| x.trim().parse().ok())
            {
                ids.push(id);
            }
        }
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The tracer's programs: the ones it holds open, else (fd-less loaders) programs
/// with our names loaded after `after_id`.
pub(crate) fn tracer_progs(pid: u32, after_id: u64) -> anyhow::Result<Vec<u64>> {
    let ids = prog_ids_of(pid);
    if !ids.is_empty() {
        return Ok(ids);
    }
    Ok(bpftool_progs()?
        .into_iter()
        .filter(|p| p.id > after_id && PROG_NAMES.contains(&p.name.as_str()))
        .map(|p| p.id)
        .collect())
}

pub(crate) fn snapshot(ids: &[u64]) -> anyhow::Result<BTreeMap<u64, Prog>> {
    Ok(bpftool_progs()?
        .into_iter()
        .filter(|p| ids.contains(&p.id))
        .map(|p| (p.id, p))
        .collect())
}

/// Per program name: (run_time_ns, run_cnt, misses) deltas, summed over programs
/// of the same name.
pub(crate) type Costs = BTreeMap<String, (u64, u64, u64, String)>;

pub(crate) fn delta(a: &BTreeMap<u64, Prog>, b: &BTreeMap<u64, Prog>) -> Costs {
    let mut out = Costs::new();
    for (id, pb) in b {
        let Some(pa) = a.get(id) else { continue };
        let e = out
            .entry(pb.name.clone())
            .or_insert((0, 0, 0, pb.kind.clone()));
        e.0 += pb.run_time_ns.saturating_sub(pa.run_time_ns);
        e.1 += pb.run_cnt.saturating_sub(pa.run_cnt);
        e.2 += pb.misses.saturating_sub(pa.misses);
    }
    out
}

pub(crate) fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
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

pub(crate) fn footer_of(dump: &Path) -> Value {
    use std::io::{Seek as _, SeekFrom};
    let Ok(mut file) = fs::File::open(dump) else {
        return Value::Null;
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut s = vec![];
    if file
        .seek(SeekFrom::Start(len.saturating_sub(64 << 10)))
        .is_err()
        || file.read_to_end(&mut s).is_err()
    {
        return Value::Null;
    }
    let tailtxt = String::from_utf8_lossy(&s);
    tailtxt
        .lines()
        .rev()
        .find_map(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .filter(|v| v["type"] == "footer")
        })
        .unwrap_or(Value::Null)
}

pub(crate) fn prober_stats(text: &str) -> Value {
    let re_num = |l: &str, key: &str| -> Option<u64> {
        let i = l.find(key)?;
        l[..i].split_whitespace().last()?.parse().ok()
    };
    let Some(l) = text.lines().find(|l| l.contains("packets transmitted")) else {
        return Value::Null;
    };
    let max_ms = text
        .lines()
        .find_map(|l| l.strip_prefix("round-trip min/avg/max = "))
        .and_then(|r| {
            r.split('/')
                .nth(2)
                .and_then(|x| x.trim_end_matches(" ms").parse::<f64>().ok())
        });
    json!({
        "sent": re_num(l, "packets transmitted"),
        "received": re_num(l, "packets received"),
        "lost": re_num(l, " lost"),
        "max_rtt_ms": max_ms,
    })
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
                && args.first().is_some_and(|a| a.ends_with(b"xtask"))
                && args.iter().any(|a| *a == b"bench")
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

pub(crate) fn other_tracing_programs(ours: &[u64]) -> Vec<String> {
    bpftool_progs()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| {
            matches!(
                p.kind.as_str(),
                "tracepoint" | "raw_tracepoint" | "kprobe" | "tracing" | "perf_event"
            )
        })
        .filter(|p| !ours.contains(&p.id))
        .map(|p| format!("{} ({})", p.name, p.kind))
        .collect()
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

pub(crate) fn costs_json(c: &Costs, secs: f64) -> Value {
    let mut m = serde_json::Map::new();
    for (name, (t, n, miss, kind)) in c {
        m.insert(
            name.clone(),
            json!({"type": kind, "run_time_ns": t, "run_cnt": n, "ns_per_run": if *n > 0 { *t as f64 / *n as f64 } else { f64::NAN },
                   "runs_per_s": *n as f64 / secs, "recursion_misses": miss}),
        );
    }
    Value::Object(m)
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
