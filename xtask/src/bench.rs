//! `cargo xtask bench`: what stalltrace costs on this machine, next to bpftrace doing
//! the seed's job. Prints numbers and writes `bench/results.{md,json}` (a `--quick`
//! smoke run writes `target/bench/results-quick.*` instead); asserts nothing.
//!
//! Parts (issue 7):
//! 1. Kernel cost per event: `run_time_ns / run_cnt` of every program (found by the
//!    tracer's open program fds, named via `bpftool prog show -j`, whatever their type)
//!    with `kernel.bpf_stats_enabled=1`, under an ICMP echo flood over veth into a
//!    namespace made here: `record` in its default mode (a `--peer` filter that does
//!    not match the flood), `record` of every echo, and the bpftrace script
//!    `bench/seed-equivalent.bt`; one more run with `--stacks` (default-mode filter).
//! 2. Effect on the node: echo requests received per second in the flood namespace,
//!    runs alternating none / default / every-echo / bpftrace, medians and ratios;
//!    measured with bpf_stats off, then a second window with it on for part 1. A
//!    10 ms prober into a second namespace runs through every flood.
//! 3. Ring-buffer headroom: every-echo recordings at rising echo rates.
//! 4. `analyze` throughput and peak RSS on generated dumps (`stalltrace_testkit::benchdump`).
//! 5. `record`'s own CPU while idle and during the flood.
//!
//! Safety: floods go only to the namespaces made here (10.213.230-249.x), bounded by
//! `timeout` and `-c`; namespaces, veths, floods, probers, tracers and the bpf_stats
//! sysctl are cleaned up on every exit path (errors, panics, Ctrl-C, SIGTERM).
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

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Smoke run: one round, short windows, 100 k / 1 M event dumps; writes
    /// target/bench/results-quick.{md,json} instead of bench/results.*.
    #[arg(long)]
    pub quick: bool,
    /// Rounds of the alternating flood runs [default: 5, 1 with --quick].
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Skip the kernel parts (1, 2, 3, 5).
    #[arg(long)]
    pub skip_kernel: bool,
    /// Skip the analyze part (4).
    #[arg(long)]
    pub skip_analyze: bool,
    /// Skip the `perf` profile of a default-mode flood.
    #[arg(long)]
    pub no_perf: bool,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    let h = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, h);
        libc::signal(libc::SIGTERM, h);
    }
}

/// Sleeps, checking for Ctrl-C/SIGTERM every 50 ms (an error unwinds into clean-up).
fn pause(d: Duration) -> anyhow::Result<()> {
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

fn run_cmd(args: &[&str]) -> anyhow::Result<String> {
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
struct Proc {
    name: String,
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
}

impl Proc {
    fn spawn(name: &str, argv: &[String], dir: &Path) -> anyhow::Result<Self> {
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

    fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    fn text(&self) -> String {
        let mut s = fs::read_to_string(&self.out).unwrap_or_default();
        s.push_str(&fs::read_to_string(&self.err).unwrap_or_default());
        s
    }

    /// Waits until its output contains `marker` (or it exits, or `timeout`).
    fn wait_for(&mut self, marker: &str, timeout: Duration) -> anyhow::Result<()> {
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
    fn stop(&mut self, grace: Duration) -> String {
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

fn tail(s: &str, n: usize) -> String {
    let l: Vec<&str> = s.lines().collect();
    l[l.len().saturating_sub(n)..].join("\n")
}

/// A namespace with a veth pair to the root namespace: 10.213.`subnet`.1 ↔ .2.
struct Ns {
    name: String,
    host_if: String,
    addr: String,
    /// A process living in the namespace: its /proc/PID/net/snmp is the namespace's.
    sleeper: Option<Proc>,
}

impl Ns {
    fn create(
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

    fn snmp_pid(&self) -> anyhow::Result<u32> {
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

const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Restores kernel.bpf_stats_enabled on drop.
struct StatsGuard {
    prev: String,
}

impl StatsGuard {
    fn new() -> anyhow::Result<Self> {
        let prev = fs::read_to_string(STATS)
            .context("reading kernel.bpf_stats_enabled")?
            .trim()
            .to_string();
        Ok(Self { prev })
    }
    fn was_on(&self) -> bool {
        self.prev == "1"
    }
    fn set(&self, on: bool) -> anyhow::Result<()> {
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
fn in_echos(pid: u32) -> anyhow::Result<u64> {
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
fn cpu_secs(pid: u32) -> f64 {
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

const PROG_NAMES: [&str; 9] = [
    "netif_receive_skb",
    "icmp_echo",
    "softirq_raise",
    "softirq_entry",
    "softirq_exit",
    "sched_switch",
    "sched_wakeup",
    "sys_enter",
    "sys_exit",
];

/// The kernel keeps 15 characters of a program's name.
fn canonical(name: &str) -> String {
    PROG_NAMES
        .iter()
        .find(|n| n.starts_with(name) || name.starts_with(*n))
        .map(|n| n.to_string())
        .unwrap_or(name.into())
}

#[derive(Debug, Clone, Default)]
struct Prog {
    id: u64,
    name: String,
    kind: String,
    run_time_ns: u64,
    run_cnt: u64,
    misses: u64,
}

fn bpftool_progs() -> anyhow::Result<Vec<Prog>> {
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
fn prog_ids_of(pid: u32) -> Vec<u64> {
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
fn tracer_progs(pid: u32, after_id: u64) -> anyhow::Result<Vec<u64>> {
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

fn snapshot(ids: &[u64]) -> anyhow::Result<BTreeMap<u64, Prog>> {
    Ok(bpftool_progs()?
        .into_iter()
        .filter(|p| ids.contains(&p.id))
        .map(|p| (p.id, p))
        .collect())
}

/// Per program name: (run_time_ns, run_cnt, misses) deltas, summed over programs
/// of the same name.
type Costs = BTreeMap<String, (u64, u64, u64, String)>;

fn delta(a: &BTreeMap<u64, Prog>, b: &BTreeMap<u64, Prog>) -> Costs {
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

fn median(v: &[f64]) -> f64 {
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

// ---------------------------------------------------------------------------------
// The run

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    None,
    Default,
    Every,
    Bpftrace,
    /// Default-mode filter plus `--stacks` (measured once, after the rounds).
    Stacks,
}

impl Mode {
    fn key(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Default => "stalltrace_default",
            Mode::Every => "stalltrace_every_echo",
            Mode::Bpftrace => "bpftrace",
            Mode::Stacks => "stalltrace_stacks",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Mode::None => "no tracer",
            Mode::Default => "stalltrace record, default mode (--peer of the probe namespace: the flood does not match)",
            Mode::Every => "stalltrace record, every ICMP echo (no filter; the same job as bpftrace)",
            Mode::Bpftrace => "bpftrace bench/seed-equivalent.bt (the seed's job)",
            Mode::Stacks => "stalltrace record --stacks, default-mode filter",
        }
    }
    fn short(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Default => "stalltrace default",
            Mode::Every => "stalltrace every echo",
            Mode::Bpftrace => "bpftrace",
            Mode::Stacks => "stalltrace --stacks",
        }
    }
}

struct Ctx {
    root: PathBuf,
    bin: PathBuf,
    dir: PathBuf,
    quick: bool,
    flood: Ns,
    probe: Ns,
    flood_pid: u32,
    stats: StatsGuard,
    seq: u32,
    ksoftirqd0: u32,
}

impl Ctx {
    fn name(&mut self, tag: &str) -> String {
        self.seq += 1;
        format!("{:03}-{tag}", self.seq)
    }

    /// Starts a tracer and waits until its programs are attached.
    fn start_tracer(
        &mut self,
        mode: Mode,
        extra: &[&str],
    ) -> anyhow::Result<Option<(Proc, Vec<u64>, PathBuf)>> {
        let before = bpftool_progs()?.iter().map(|p| p.id).max().unwrap_or(0);
        let tag = self.name(mode.key());
        let dump = self.dir.join(format!("{tag}.jsonl"));
        let (argv, marker): (Vec<String>, &str) = match mode {
            Mode::None => return Ok(None),
            Mode::Default | Mode::Every | Mode::Stacks => {
                let mut a: Vec<String> = vec![
                    self.bin.display().to_string(),
                    "record".into(),
                    "--quiet".into(),
                    "--force".into(),
                ];
                a.extend([
                    "--duration".into(),
                    "600s".into(),
                    "-o".into(),
                    dump.display().to_string(),
                ]);
                if mode == Mode::Default || mode == Mode::Stacks {
                    a.extend(["--peer".into(), self.probe.addr.clone()]);
                }
                if mode == Mode::Stacks {
                    a.push("--stacks".into());
                }
                a.extend(extra.iter().map(|s| s.to_string()));
                (a, "recording to")
            }
            Mode::Bpftrace => {
                let script = self.root.join("bench/seed-equivalent.bt");
                (
                    vec![
                        "timeout".into(),
                        "-s".into(),
                        "INT".into(),
                        "600".into(),
                        "bpftrace".into(),
                        script.display().to_string(),
                    ],
                    "Attaching",
                )
            }
        };
        let mut p = Proc::spawn(&tag, &argv, &self.dir)?;
        p.wait_for(marker, Duration::from_secs(90))?;
        // bpftrace runs under `timeout`: its programs are held by the child.
        let mut holder = p.pid();
        if mode == Mode::Bpftrace {
            if let Some(c) = fs::read_to_string(format!("/proc/{holder}/task/{holder}/children"))
                .ok()
                .and_then(|c| c.split_whitespace().next().and_then(|x| x.parse().ok()))
            {
                holder = c;
            }
        }
        pause(Duration::from_millis(300))?;
        let ids = tracer_progs(holder, before)?;
        if ids.is_empty() {
            bail!("{tag}: no BPF programs found for pid {holder}");
        }
        Ok(Some((p, ids, dump)))
    }

    fn start_flood(&mut self, rate: Option<&str>, secs: u64) -> anyhow::Result<Proc> {
        let tag = self.name("flood");
        let mut argv: Vec<String> = ["timeout", "-s", "INT"].map(String::from).into();
        argv.push((secs + 5).to_string());
        argv.extend(
            [
                "taskset", "-c", "0", "hping3", "--icmp", "-q", "-c", "50000000",
            ]
            .map(String::from),
        );
        match rate {
            None => argv.push("--flood".into()),
            Some(r) => argv.extend(["-i".into(), r.into()]),
        }
        argv.push(self.flood.addr.clone());
        Proc::spawn(&tag, &argv, &self.dir)
    }

    fn start_prober(&mut self, secs: u64) -> anyhow::Result<Proc> {
        let tag = self.name("prober");
        let count = (secs * 100 + 500).to_string();
        let argv: Vec<String> = vec![
            "timeout".into(),
            "-s".into(),
            "INT".into(),
            (secs + 10).to_string(),
            self.bin.display().to_string(),
            "probe".into(),
            self.probe.addr.clone(),
            "--interval".into(),
            "10ms".into(),
            "--count".into(),
            count,
        ];
        let mut p = Proc::spawn(&tag, &argv, &self.dir)?;
        p.wait_for("PROBE", Duration::from_secs(10))?;
        Ok(p)
    }
}

/// Packets dropped because a CPU's input backlog was full, all CPUs.
fn softnet_drops() -> u64 {
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

fn child_of(pid: u32) -> Option<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn find_comm(name: &str) -> u32 {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .find(|p| fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == name))
        .unwrap_or(0)
}

fn footer_of(dump: &Path) -> Value {
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

fn prober_stats(text: &str) -> Value {
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

fn bpftrace_lost(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Lost "))
        .filter_map(|r| {
            r.split_whitespace()
                .next()
                .and_then(|x| x.parse::<u64>().ok())
        })
        .sum()
}

struct FloodRun {
    mode: Mode,
    round: usize,
    pps: f64,
    /// Echo requests per CPU-second spent by the flood path (hping3, whose context runs
    /// most of the softirq work, + ksoftirqd/0): insensitive to other tenants' load.
    per_cpu_s: f64,
    /// Packets the kernel dropped at the per-CPU backlog (softnet_stat column 2).
    backlog_drops: u64,
    pps_stats_on: f64,
    tracer_cpu_pct: f64,
    costs: Costs,
    cost_secs: f64,
    probes: Value,
    recorded: Value,
}

fn flood_run(cx: &mut Ctx, mode: Mode, round: usize, tp: f64, tc: f64) -> anyhow::Result<FloodRun> {
    let total = (tp + tc + 3.0) as u64;
    let tracer = cx.start_tracer(mode, &[])?;
    let mut prober = cx.start_prober(total + 2)?;
    pause(Duration::from_millis(300))?;
    let d0 = softnet_drops();
    let mut flood = cx.start_flood(None, total)?;
    pause(Duration::from_millis(1000))?;
    let tpid = tracer.as_ref().map(|t| t.0.pid()).unwrap_or(0);
    let tpid = if mode == Mode::Bpftrace {
        fs::read_to_string(format!("/proc/{tpid}/task/{tpid}/children"))
            .ok()
            .and_then(|c| c.split_whitespace().next().and_then(|x| x.parse().ok()))
            .unwrap_or(tpid)
    } else {
        tpid
    };
    let hping = child_of(flood.pid())
        .and_then(|p| child_of(p).or(Some(p)))
        .unwrap_or(0);
    let ksoft = cx.ksoftirqd0;
    let path_cpu = || cpu_secs(hping) + cpu_secs(ksoft);
    // Window P: bpf_stats off (unless it was on before the bench).
    let e0 = in_echos(cx.flood_pid)?;
    let c0 = cpu_secs(tpid);
    let p0 = path_cpu();
    let t0 = Instant::now();
    pause(Duration::from_secs_f64(tp))?;
    let e1 = in_echos(cx.flood_pid)?;
    let c1 = cpu_secs(tpid);
    let p1 = path_cpu();
    let dt = t0.elapsed().as_secs_f64();
    // Window C: bpf_stats on.
    let mut costs = Costs::new();
    let t1 = Instant::now();
    if let Some((_, ids, _)) = &tracer {
        cx.stats.set(true)?;
        let s0 = snapshot(ids)?;
        pause(Duration::from_secs_f64(tc))?;
        let s1 = snapshot(ids)?;
        cx.stats.set(false)?;
        costs = delta(&s0, &s1);
    } else {
        pause(Duration::from_secs_f64(tc))?;
    }
    let e2 = in_echos(cx.flood_pid)?;
    let dc = t1.elapsed().as_secs_f64();
    flood.stop(Duration::from_secs(3));
    let backlog_drops = softnet_drops().saturating_sub(d0);
    pause(Duration::from_millis(300))?;
    let probes = prober_stats(&prober.stop(Duration::from_secs(5)));
    let recorded = match tracer {
        Some((mut p, _, dump)) => {
            let text = p.stop(Duration::from_secs(30));
            let v = if mode == Mode::Bpftrace {
                let lines = fs::read_to_string(&p.out)
                    .map(|s| {
                        s.lines()
                            .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
                            .count()
                    })
                    .unwrap_or(0);
                json!({"lines": lines, "lost": bpftrace_lost(&text)})
            } else {
                let f = footer_of(&dump);
                json!({"packets": f["counts"]["packets"], "lost": f["lost"]})
            };
            let _ = fs::remove_file(&dump);
            let _ = fs::remove_file(&p.out);
            v
        }
        None => Value::Null,
    };
    let r = FloodRun {
        mode,
        round,
        pps: (e1 - e0) as f64 / dt,
        backlog_drops,
        per_cpu_s: if p1 > p0 {
            (e1 - e0) as f64 / (p1 - p0)
        } else {
            f64::NAN
        },
        pps_stats_on: (e2 - e1) as f64 / dc,
        tracer_cpu_pct: if tpid != 0 {
            100.0 * (c1 - c0) / dt
        } else {
            f64::NAN
        },
        costs,
        cost_secs: dc,
        probes,
        recorded,
    };
    println!(
        "  round {} {:<22} {:>9.0} echo req/s ({:>9.0} per flood CPU-s; stats on: {:>9.0}), tracer CPU {:>5.1}%, probes {}",
        round + 1,
        mode.short(),
        r.pps,
        r.per_cpu_s,
        r.pps_stats_on,
        r.tracer_cpu_pct,
        r.probes
    );
    Ok(r)
}

fn pick_subnets() -> anyhow::Result<(u8, u8)> {
    let used = run_cmd(&["ip", "-o", "-4", "addr", "show"])?;
    let free: Vec<u8> = (230u8..=249)
        .filter(|s| !used.contains(&format!("10.213.{s}.")))
        .collect();
    if free.len() < 2 {
        bail!("no free 10.213.230-249 subnets (leftovers of a killed bench? `ip -o -4 addr show | grep 10.213.2`)");
    }
    Ok((free[0], free[1]))
}

fn other_tracing_programs(ours: &[u64]) -> Vec<String> {
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
fn steal_secs() -> f64 {
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

fn proc_cpu_table() -> BTreeMap<u32, (String, f64)> {
    let mut m = BTreeMap::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() {
                let comm = fs::read_to_string(format!("/proc/{pid}/comm"))
                    .unwrap_or_default()
                    .trim()
                    .to_string();
                m.insert(pid, (comm, cpu_secs(pid)));
            }
        }
    }
    m
}

pub fn run(root: &Path, bin: &Path, a: BenchArgs) -> anyhow::Result<()> {
    install_signal_handlers();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("cargo xtask bench needs root (namespaces, BPF, sysctl): run it as root");
    }
    let dir = root.join("target/bench");
    fs::create_dir_all(&dir)?;
    let rounds = a.rounds.unwrap_or(if a.quick { 1 } else { 5 });
    let (tp, tc) = if a.quick { (2.0, 1.5) } else { (4.0, 3.0) };
    let started = Instant::now();
    let mut res = serde_json::Map::new();
    let uname = run_cmd(&["uname", "-r"])
        .unwrap_or_default()
        .trim()
        .to_string();
    let bt_ver = run_cmd(&["bpftrace", "--version"])
        .unwrap_or_default()
        .trim()
        .to_string();
    let load0 = fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string();
    res.insert(
        "machine".into(),
        json!({"kernel": uname, "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
               "bpftrace": bt_ver, "loadavg_at_start": load0, "quick": a.quick, "rounds": rounds,
               "window_stats_off_s": tp, "window_stats_on_s": tc}),
    );
    println!("bench: kernel {uname}, {bt_ver}, load average at start {load0}");

    if !a.skip_kernel {
        kernel_parts(root, bin, &dir, &a, rounds, tp, tc, &mut res)?;
    }
    if !a.skip_analyze {
        analyze_part(bin, &dir, a.quick, &mut res)?;
    }
    res.insert("elapsed_s".into(), json!(started.elapsed().as_secs_f64()));
    res.insert(
        "loadavg_at_end".into(),
        json!(fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()),
    );
    let (md_path, json_path) = if a.quick {
        (dir.join("results-quick.md"), dir.join("results-quick.json"))
    } else {
        (
            root.join("bench/results.md"),
            root.join("bench/results.json"),
        )
    };
    let v = Value::Object(res);
    fs::write(&json_path, serde_json::to_string_pretty(&v)? + "\n")?;
    let md = render_md(&v, a.quick);
    fs::write(&md_path, &md)?;
    println!("\n{md}");
    println!("wrote {} and {}", md_path.display(), json_path.display());
    Ok(())
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call site; a struct would only rename them"
)]
fn kernel_parts(
    root: &Path,
    bin: &Path,
    dir: &Path,
    a: &BenchArgs,
    rounds: usize,
    tp: f64,
    tc: f64,
    res: &mut serde_json::Map<String, Value>,
) -> anyhow::Result<()> {
    let (sf, sp) = pick_subnets()?;
    let me = std::process::id() % 100_000;
    let stats = StatsGuard::new()?;
    let flood = Ns::create(
        &format!("stb{me}f"),
        &format!("stb{me}fh"),
        &format!("stb{me}fn"),
        sf,
        dir,
    )?;
    let probe = Ns::create(
        &format!("stb{me}p"),
        &format!("stb{me}ph"),
        &format!("stb{me}pn"),
        sp,
        dir,
    )?;
    let flood_pid = flood.snmp_pid()?;
    println!(
        "bench: flood namespace {} ({}), probe namespace {} ({})",
        flood.name, flood.addr, probe.name, probe.addr
    );
    if stats.was_on() {
        println!("bench: note: kernel.bpf_stats_enabled was already 1; the 'stats off' windows run with it on");
    }
    let others = other_tracing_programs(&[]);
    res.insert("other_tracing_programs_at_start".into(), json!(others));
    if !others.is_empty() {
        println!("bench: note: {} other tracing BPF programs attached on this machine (other users' tools): numbers are noisier", others.len());
    }
    let mut cx = Ctx {
        root: root.into(),
        bin: bin.into(),
        dir: dir.into(),
        quick: a.quick,
        flood,
        probe,
        flood_pid,
        stats,
        seq: 0,
        ksoftirqd0: find_comm("ksoftirqd/0"),
    };

    // 5a. record idle.
    println!("bench: record's CPU while idle");
    let idle_secs = if cx.quick { 2.0 } else { 5.0 };
    let idle = {
        let (mut p, ids, dump) = cx.start_tracer(Mode::Default, &[])?.context("no tracer")?;
        pause(Duration::from_millis(500))?;
        cx.stats.set(true)?;
        let s0 = snapshot(&ids)?;
        let c0 = cpu_secs(p.pid());
        let t0 = Instant::now();
        pause(Duration::from_secs_f64(idle_secs))?;
        let c1 = cpu_secs(p.pid());
        let dt = t0.elapsed().as_secs_f64();
        let s1 = snapshot(&ids)?;
        cx.stats.set(false)?;
        p.stop(Duration::from_secs(20));
        let _ = fs::remove_file(dump);
        let costs = delta(&s0, &s1);
        let kernel_ns: u64 = costs.values().map(|c| c.0).sum();
        json!({"cpu_pct": 100.0 * (c1 - c0) / dt, "secs": dt, "kernel_bpf_cpu_pct": 100.0 * kernel_ns as f64 / 1e9 / dt,
               "programs": costs_json(&costs, dt)})
    };
    println!(
        "  idle: record {:.2}% of a CPU; its programs {:.2}% (bpf_stats)",
        idle["cpu_pct"].as_f64().unwrap_or(0.0),
        idle["kernel_bpf_cpu_pct"].as_f64().unwrap_or(0.0)
    );
    res.insert("record_idle".into(), idle);

    // 1 + 2: alternating flood runs.
    println!(
        "bench: {rounds} rounds of floods, alternating {}",
        [Mode::None, Mode::Default, Mode::Every, Mode::Bpftrace]
            .map(Mode::short)
            .join(" / ")
    );
    let modes = [Mode::None, Mode::Default, Mode::Every, Mode::Bpftrace];
    let tb = Instant::now();
    let steal0 = steal_secs();
    let mut runs = vec![];
    // CPU of processes that are not ours, by comm, over the runs (pids seen at both
    // ends of a run: our tracers, floods and probers live inside one run).
    let mut others: BTreeMap<String, f64> = BTreeMap::new();
    for r in 0..rounds {
        for m in modes {
            let before = proc_cpu_table();
            runs.push(flood_run(&mut cx, m, r, tp, tc)?);
            for (pid, (comm, c)) in proc_cpu_table() {
                if let Some((_, b)) = before.get(&pid) {
                    if pid != std::process::id()
                        && !comm.starts_with("ksoftirqd/")
                        && comm != "sleep"
                    {
                        *others.entry(comm).or_default() += c - b;
                    }
                }
            }
        }
    }
    let wall = tb.elapsed().as_secs_f64();
    res.insert(
        "steal_pct".into(),
        json!(100.0 * (steal_secs() - steal0) / wall),
    );
    let mut busy: Vec<(f64, String)> = others
        .into_iter()
        .map(|(c, s)| (100.0 * s / wall, c))
        .filter(|(pct, _)| *pct >= 3.0)
        .collect();
    busy.sort_by(|a, b| b.0.total_cmp(&a.0));
    res.insert(
        "other_busy_processes".into(),
        json!(busy
            .iter()
            .map(|(p, n)| json!({"process": n, "cpu_pct": p}))
            .collect::<Vec<_>>()),
    );
    res.insert("kernel".into(), summarize_floods(&runs));

    // --stacks: one run with the default-mode filter; the sampler records only while an
    // RX wait is pending, which a flood keeps true much of the time (a worst case).
    let st = flood_run(&mut cx, Mode::Stacks, 0, tp, tc)?;
    let none_pps: Vec<f64> = runs
        .iter()
        .filter(|r| r.mode == Mode::None)
        .map(|r| r.pps)
        .collect();
    let none_cpu: Vec<f64> = runs
        .iter()
        .filter(|r| r.mode == Mode::None)
        .map(|r| r.per_cpu_s)
        .collect();
    res.insert(
        "stacks".into(),
        json!({
            "pps": st.pps,
            "pps_ratio_vs_none": st.pps / median(&none_pps),
            "per_cpu_s_ratio_vs_none": st.per_cpu_s / median(&none_cpu),
            "tracer_cpu_pct": st.tracer_cpu_pct,
            "programs": costs_json(&st.costs, st.cost_secs),
            "probes": st.probes,
        }),
    );

    // perf profile of a default-mode flood.
    if !a.no_perf && Command::new("perf").arg("--version").output().is_ok() {
        let mut profiles = vec![];
        for m in [Mode::Default, Mode::Every] {
            profiles.push(
                perf_profile(&mut cx, m).unwrap_or_else(|e| json!({"error": format!("{e:#}")})),
            );
        }
        res.insert("perf".into(), json!(profiles));
    }

    // 3. ring-buffer headroom.
    res.insert("ring_buffer".into(), headroom(&mut cx)?);
    Ok(())
}

fn costs_json(c: &Costs, secs: f64) -> Value {
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

fn summarize_floods(runs: &[FloodRun]) -> Value {
    let mut out = serde_json::Map::new();
    let none: Vec<f64> = runs
        .iter()
        .filter(|r| r.mode == Mode::None)
        .map(|r| r.pps)
        .collect();
    let none_med = median(&none);
    for m in [Mode::None, Mode::Default, Mode::Every, Mode::Bpftrace] {
        let rs: Vec<&FloodRun> = runs.iter().filter(|r| r.mode == m).collect();
        let pps: Vec<f64> = rs.iter().map(|r| r.pps).collect();
        // Paired ratio: each run against the untraced run of its round.
        let paired: Vec<f64> = rs
            .iter()
            .filter_map(|r| {
                runs.iter()
                    .find(|n| n.mode == Mode::None && n.round == r.round)
                    .map(|n| r.pps / n.pps)
            })
            .collect();
        let mut agg = Costs::new();
        let mut secs = 0.0;
        for r in &rs {
            secs += r.cost_secs;
            for (k, v) in &r.costs {
                let e = agg.entry(k.clone()).or_insert((0, 0, 0, v.3.clone()));
                e.0 += v.0;
                e.1 += v.1;
                e.2 += v.2;
            }
        }
        let total_ns: u64 = agg.values().map(|c| c.0).sum();
        let pkt_runs = agg.get("netif_receive_skb").map(|c| c.1).unwrap_or(0);
        let probes_lost: u64 = rs.iter().filter_map(|r| r.probes["lost"].as_u64()).sum();
        let probes_sent: u64 = rs.iter().filter_map(|r| r.probes["sent"].as_u64()).sum();
        let max_rtt = rs
            .iter()
            .filter_map(|r| r.probes["max_rtt_ms"].as_f64())
            .fold(f64::NAN, f64::max);
        out.insert(
            m.key().into(),
            json!({
                "label": m.label(),
                "pps_runs": pps,
                "pps_median": median(&pps),
                "pps_ratio_vs_none": median(&pps) / none_med,
                "pps_ratio_paired": paired,
                "pps_ratio_paired_median": median(&paired),
                "per_flood_cpu_s_runs": rs.iter().map(|r| r.per_cpu_s).collect::<Vec<_>>(),
                "per_flood_cpu_s_median": median(&rs.iter().map(|r| r.per_cpu_s).collect::<Vec<_>>()),
                "per_flood_cpu_s_ratio_vs_none": median(&rs.iter().map(|r| r.per_cpu_s).collect::<Vec<_>>())
                    / median(&runs.iter().filter(|r| r.mode == Mode::None).map(|r| r.per_cpu_s).collect::<Vec<_>>()),
                "pps_stats_on_median": median(&rs.iter().map(|r| r.pps_stats_on).collect::<Vec<_>>()),
                "tracer_cpu_pct_median": median(&rs.iter().map(|r| r.tracer_cpu_pct).collect::<Vec<_>>()),
                "programs": costs_json(&agg, secs),
                "bpf_ns_per_packet_all_programs": if pkt_runs > 0 { total_ns as f64 / pkt_runs as f64 } else { f64::NAN },
                "bpf_cpu_pct": 100.0 * total_ns as f64 / 1e9 / secs.max(1e-9),
                "backlog_drops": rs.iter().map(|r| r.backlog_drops).sum::<u64>(),
                "probes_sent": probes_sent,
                "probes_lost": probes_lost,
                "probe_max_rtt_ms": max_rtt,
                "recorded": rs.iter().map(|r| r.recorded.clone()).collect::<Vec<_>>(),
            }),
        );
    }
    let ns = |k: &str| {
        out.get(k)
            .and_then(|v| v["programs"]["netif_receive_skb"]["ns_per_run"].as_f64())
            .unwrap_or(f64::NAN)
    };
    let all = |k: &str| {
        out.get(k)
            .and_then(|v| v["bpf_ns_per_packet_all_programs"].as_f64())
            .unwrap_or(f64::NAN)
    };
    let vals = [
        ("ns_per_packet_default", ns("stalltrace_default")),
        ("ns_per_echo_every", ns("stalltrace_every_echo")),
        ("ns_per_echo_bpftrace", ns("bpftrace")),
        (
            "overhead_ratio_vs_bpftrace",
            ns("stalltrace_every_echo") / ns("bpftrace"),
        ),
        (
            "overhead_ratio_vs_bpftrace_all_programs",
            all("stalltrace_every_echo") / all("bpftrace"),
        ),
    ];
    for (k, x) in vals {
        out.insert(k.into(), json!(x));
    }
    Value::Object(out)
}

fn perf_profile(cx: &mut Ctx, mode: Mode) -> anyhow::Result<Value> {
    println!(
        "bench: perf profile (cpu-clock, CPU 0, the flood's tasks) of a flood under {}",
        mode.short()
    );
    let secs = if cx.quick { 2 } else { 3 };
    let (mut t, _, dump) = cx.start_tracer(mode, &[])?.context("no tracer")?;
    let mut flood = cx.start_flood(None, secs + 3)?;
    pause(Duration::from_millis(700))?;
    let data = cx.dir.join("perf.data");
    let tag = cx.name("perf");
    let argv: Vec<String> = vec![
        "perf".into(),
        "record".into(),
        "-q".into(),
        "-C".into(),
        "0".into(),
        "-e".into(),
        "cpu-clock".into(),
        "-F".into(),
        "1999".into(),
        "-o".into(),
        data.display().to_string(),
        "--".into(),
        "sleep".into(),
        secs.to_string(),
    ];
    let mut p = Proc::spawn(&tag, &argv, &cx.dir)?;
    pause(Duration::from_secs(secs + 1))?;
    for _ in 0..100 {
        if p.child
            .as_mut()
            .map(|c| matches!(c.try_wait(), Ok(Some(_))))
            .unwrap_or(true)
        {
            break;
        }
        pause(Duration::from_millis(100))?;
    }
    p.stop(Duration::from_secs(5));
    flood.stop(Duration::from_secs(3));
    t.stop(Duration::from_secs(20));
    let _ = fs::remove_file(dump);
    let rep = run_cmd(&[
        "perf",
        "report",
        "-i",
        &data.display().to_string(),
        "--stdio",
        "--no-children",
        "--comms",
        "hping3,ksoftirqd/0",
        "--percentage",
        "relative",
        "--sort",
        "sym",
        "--percent-limit",
        "0.7",
        "-g",
        "none",
    ])?;
    let top: Vec<Value> = rep
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('%'))
        .take(30)
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let pct = it.next()?.trim_end_matches('%').parse::<f64>().ok()?;
            let sym = it
                .filter(|w| *w != "[k]" && *w != "[.]")
                .collect::<Vec<_>>()
                .join(" ");
            Some(json!({"pct": pct, "symbol": sym}))
        })
        .collect();
    let glue = |s: &str| {
        [
            "bpf_",
            "htab_",
            "__htab_",
            "perf_trace_",
            "trace_call_bpf",
            "copy_from_kernel_nofault",
        ]
        .iter()
        .any(|p| s.starts_with(p))
    };
    let bpf: f64 = top
        .iter()
        .filter(|v| v["symbol"].as_str().is_some_and(glue))
        .filter_map(|v| v["pct"].as_f64())
        .sum();
    let _ = fs::remove_file(&data);
    Ok(json!({"mode": mode.key(), "secs": secs, "top": top, "bpf_symbols_pct": bpf}))
}

fn headroom(cx: &mut Ctx) -> anyhow::Result<Value> {
    println!(
        "bench: ring-buffer headroom (record every echo, default 4 MiB ring) at rising echo rates"
    );
    let secs: u64 = if cx.quick { 2 } else { 3 };
    let steps: Vec<(Option<&str>, &str)> = if cx.quick {
        vec![
            (Some("u1000"), "4MiB"),
            (Some("u50"), "4MiB"),
            (None, "4MiB"),
        ]
    } else {
        vec![
            (Some("u1000"), "4MiB"),
            (Some("u200"), "4MiB"),
            (Some("u50"), "4MiB"),
            (Some("u20"), "4MiB"),
            (None, "4MiB"),
        ]
    };
    let mut out = vec![];
    let mut any_loss = false;
    let run_step = |cx: &mut Ctx, rate: Option<&str>, ring: &str| -> anyhow::Result<Value> {
        let (mut t, _, dump) = cx
            .start_tracer(Mode::Every, &["--ring-buffer", ring])?
            .context("no tracer")?;
        let e0 = in_echos(cx.flood_pid)?;
        let t0 = Instant::now();
        let mut flood = cx.start_flood(rate, secs)?;
        pause(Duration::from_secs(secs))?;
        flood.stop(Duration::from_secs(3));
        let dt = t0.elapsed().as_secs_f64();
        let e1 = in_echos(cx.flood_pid)?;
        pause(Duration::from_millis(300))?;
        let text = t.stop(Duration::from_secs(30));
        let f = footer_of(&dump);
        let _ = fs::remove_file(&dump);
        let recorded = f["counts"]["packets"].as_u64().unwrap_or(0);
        let lost = f["lost"]["packets"].as_u64().unwrap_or(0);
        let shown: Vec<String> = text
            .lines()
            .filter(|l| {
                l.contains("lost") && (l.starts_with("warning:") || l.starts_with("stopped"))
            })
            .map(String::from)
            .collect();
        let v = json!({
            "hping3_rate": rate.unwrap_or("--flood"), "ring_buffer": ring, "secs": dt,
            "echo_requests_per_s": (e1 - e0) as f64 / dt,
            "events_recorded": recorded, "events_lost": lost,
            "events_recorded_per_s": recorded as f64 / dt,
            "events_offered_per_s": (recorded + lost) as f64 / dt,
            "user_sees": shown,
        });
        println!(
            "  {:>8} ring {:>6}: {:>9.0} events/s offered, {:>9.0} recorded/s, lost {}",
            rate.unwrap_or("--flood"),
            ring,
            v["events_offered_per_s"].as_f64().unwrap_or(0.0),
            v["events_recorded_per_s"].as_f64().unwrap_or(0.0),
            lost
        );
        Ok(v)
    };
    for (rate, ring) in steps {
        let v = run_step(cx, rate, ring)?;
        any_loss |= v["events_lost"].as_u64().unwrap_or(0) > 0;
        out.push(v);
    }
    if !any_loss {
        // Nothing lost with the default ring: show what a user sees when it overflows.
        out.push(run_step(cx, None, "16KiB")?);
    }
    let best = out
        .iter()
        .filter(|v| v["ring_buffer"] == "4MiB" && v["events_lost"].as_u64() == Some(0))
        .filter_map(|v| v["events_recorded_per_s"].as_f64())
        .fold(0.0, f64::max);
    Ok(
        json!({"steps": out, "max_rate_without_loss_per_s": best, "any_loss_with_default_ring": any_loss}),
    )
}

// ---------------------------------------------------------------------------------
// 4. analyze

fn analyze_part(
    bin: &Path,
    dir: &Path,
    quick: bool,
    res: &mut serde_json::Map<String, Value>,
) -> anyhow::Result<()> {
    let sizes: [u64; 2] = if quick {
        [100_000, 1_000_000]
    } else {
        [1_000_000, 10_000_000]
    };
    let mut out = vec![];
    for n in sizes {
        let dump = dir.join(format!("dump-{n}.jsonl"));
        let marker = dir.join(format!("dump-{n}.v1.done"));
        let t0 = Instant::now();
        if !(dump.exists() && marker.exists()) {
            println!("bench: generating {} ({n} records)", dump.display());
            let w = stalltrace_testkit::benchdump::write(&dump, n)
                .with_context(|| format!("writing {}", dump.display()))?;
            fs::write(&marker, format!("{w:?}"))?;
        }
        let gen_s = t0.elapsed().as_secs_f64();
        let size = fs::metadata(&dump).map(|m| m.len()).unwrap_or(0);
        // Warm the page cache so the first run is not a disk benchmark.
        let mut f = fs::File::open(&dump)?;
        let mut buf = vec![0u8; 1 << 20];
        while f.read(&mut buf)? > 0 {}
        let mut best: Option<Value> = None;
        for _ in 0..if quick { 1 } else { 2 } {
            let v = time_analyze(bin, &dump)?;
            let better = best
                .as_ref()
                .is_none_or(|b| v["wall_s"].as_f64() < b["wall_s"].as_f64());
            if better {
                best = Some(v);
            }
        }
        let mut v = best.context("no analyze run")?;
        let wall = v["wall_s"].as_f64().unwrap_or(f64::NAN);
        v["records"] = json!(n);
        v["bytes"] = json!(size);
        v["events_per_s"] = json!(n as f64 / wall);
        v["generate_s"] = json!(gen_s);
        println!(
            "  analyze {n} records ({:.0} MiB): {:.2} s, {:.0} events/s, peak RSS {:.1} MiB",
            size as f64 / (1 << 20) as f64,
            wall,
            n as f64 / wall,
            v["peak_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0
        );
        out.push(v);
    }
    res.insert("analyze".into(), json!(out));
    Ok(())
}

/// Runs `analyze --format json` with its report to /dev/null; wall time, CPU and peak
/// RSS from wait4's rusage.
fn time_analyze(bin: &Path, dump: &Path) -> anyhow::Result<Value> {
    // Through /usr/bin/time when present: rusage of a child forked from this (larger)
    // process can report the parent's RSS as the child's peak.
    let tf = dump.with_extension("time");
    let gnu_time = Path::new("/usr/bin/time").exists();
    let mut cmd = if gnu_time {
        let mut c = Command::new("/usr/bin/time");
        c.args(["-f", "%M", "-o"]).arg(&tf).arg(bin);
        c
    } else {
        Command::new(bin)
    };
    let t0 = Instant::now();
    let child = cmd
        .args(["analyze", "--format", "json"])
        .arg(dump)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting stalltrace analyze")?;
    let pid = child.id() as i32;
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waiting for our own child with valid pointers.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            break;
        }
        if r < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            bail!("wait4: {}", std::io::Error::last_os_error());
        }
        if STOP.load(Ordering::SeqCst) {
            // SAFETY: our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!(
            "stalltrace analyze {} failed (status {status})",
            dump.display()
        );
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let mut rss = ru.ru_maxrss as f64;
    if gnu_time {
        if let Some(k) = fs::read_to_string(&tf)
            .ok()
            .and_then(|s| s.lines().last().and_then(|l| l.trim().parse::<f64>().ok()))
        {
            rss = k;
        }
        let _ = fs::remove_file(&tf);
    }
    Ok(
        json!({"wall_s": wall, "user_s": tv(ru.ru_utime), "sys_s": tv(ru.ru_stime), "peak_rss_kib": rss}),
    )
}

// ---------------------------------------------------------------------------------
// Report

fn f(v: &Value, digits: usize) -> String {
    match v.as_f64() {
        Some(x) if x.is_finite() => format!("{x:.digits$}"),
        _ => "–".into(),
    }
}

fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return "–".into();
    }
    let s = format!("{:.0}", x);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

fn render_md(v: &Value, quick: bool) -> String {
    let mut s = String::new();
    let m = &v["machine"];
    s += "# stalltrace benchmarks\n\n";
    s += &format!(
        "Produced by `cargo xtask bench{}` on this machine: kernel {}, {} CPUs, {}; load average at start {}, at end {}; {:.0} s in all.{}\n\n",
        if quick { " --quick" } else { "" },
        m["kernel"].as_str().unwrap_or(""),
        m["cpus"],
        m["bpftrace"].as_str().unwrap_or(""),
        m["loadavg_at_start"].as_str().unwrap_or(""),
        v["loadavg_at_end"].as_str().unwrap_or(""),
        v["elapsed_s"].as_f64().unwrap_or(0.0),
        if quick { " **Quick smoke run: one round, short windows; not the figures to quote.**" } else { "" }
    );
    s += &format!(
        "Hypervisor steal during the flood runs: {}% of the CPUs.\n\n",
        f(&v["steal_pct"], 1)
    );
    if let Some(b) = v["other_busy_processes"].as_array() {
        if !b.is_empty() {
            s += "Machine noise: other processes busy during the flood runs (share of one CPU): ";
            s += &b
                .iter()
                .map(|x| {
                    format!(
                        "{} {:.0}%",
                        x["process"].as_str().unwrap_or(""),
                        x["cpu_pct"].as_f64().unwrap_or(0.0)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            s += ". Runs alternate to spread that noise evenly; read ratios, not absolute rates.\n\n";
        }
    }
    if let Some(o) = v["other_tracing_programs_at_start"].as_array() {
        if !o.is_empty() {
            s += &format!("{} tracing BPF programs of other users were attached when the bench started (they add their own cost to every configuration).\n\n", o.len());
        }
    }
    let k = &v["kernel"];
    if k.is_object() {
        s += &format!(
            "Set-up: `hping3 --icmp --flood` pinned to CPU 0 into a namespace over veth (10.213.x.2), {} round(s) alternating the configurations below; each run measures {} s with `kernel.bpf_stats_enabled=0` (received packets per second) then {} s with it at 1 (per-program `run_time_ns / run_cnt` from `bpftool prog show -j`, and the rate again). A 10 ms `stalltrace probe` into a second namespace runs through every flood.\n\n",
            m["rounds"], m["window_stats_off_s"], m["window_stats_on_s"]
        );
        s += "## Kernel cost per event (ns per program run, bpf_stats)\n\n";
        s += "| program | default mode ns/run | runs/s | every echo ns/run | runs/s | bpftrace ns/run | runs/s |\n|---|---:|---:|---:|---:|---:|---:|\n";
        let modes = ["stalltrace_default", "stalltrace_every_echo", "bpftrace"];
        let mut names: Vec<String> = vec![];
        for md in modes {
            if let Some(p) = k[md]["programs"].as_object() {
                for n in p.keys() {
                    if !names.contains(n) {
                        names.push(n.clone());
                    }
                }
            }
        }
        names.sort_by_key(|n| PROG_NAMES.iter().position(|p| p == n).unwrap_or(99));
        for n in &names {
            s += &format!("| `{n}` |");
            for md in modes {
                let p = &k[md]["programs"][n];
                if p.is_null() {
                    s += " – | – |";
                } else {
                    let miss = p["recursion_misses"].as_u64().unwrap_or(0);
                    s += &format!(
                        " {}{} | {} |",
                        f(&p["ns_per_run"], 0),
                        if miss > 0 {
                            format!(" ({miss} missed)")
                        } else {
                            String::new()
                        },
                        thousands(p["runs_per_s"].as_f64().unwrap_or(f64::NAN))
                    );
                }
            }
            s += "\n";
        }
        s += "| **all programs, ns per received packet** |";
        for md in modes {
            s += &format!(
                " **{}** | |",
                f(&k[md]["bpf_ns_per_packet_all_programs"], 0)
            );
        }
        s += "\n| all programs, % of one CPU |";
        for md in modes {
            s += &format!(" {}% | |", f(&k[md]["bpf_cpu_pct"], 1));
        }
        s += "\n\n";
        s += "\"missed\": runs the kernel skipped (per-CPU recursion guard: another BPF program was running on that CPU).\n\n";
        let stk = &v["stacks"];
        if let Some(sp) = stk["programs"]["stack_sample"].as_object() {
            s += &format!(
                "With `--stacks` (one run, default-mode filter; a flood keeps NET_RX pending much of the time, so the sampler records far more than on a quiet node): `stack_sample` {} ns per run at {} runs/s; received packets {} of the untraced rate ({} per flood CPU-second); recorder CPU {}%.\n\n",
                f(&sp["ns_per_run"].clone(), 0),
                thousands(sp["runs_per_s"].as_f64().unwrap_or(f64::NAN)),
                f(&stk["pps_ratio_vs_none"], 3),
                f(&stk["per_cpu_s_ratio_vs_none"], 3),
                f(&stk["tracer_cpu_pct"], 1)
            );
        }
        s += &format!(
            "Per recorded echo, stalltrace's packet hook costs {} ns against bpftrace's {} ns: ratio **{}** (`overhead_ratio_vs_bpftrace`); counting every program per packet, {}. In the default mode the packet hook costs **{} ns** per packet (`ns_per_packet_default`).\n\n",
            f(&k["ns_per_echo_every"], 0),
            f(&k["ns_per_echo_bpftrace"], 0),
            f(&k["overhead_ratio_vs_bpftrace"], 3),
            f(&k["overhead_ratio_vs_bpftrace_all_programs"], 3),
            f(&k["ns_per_packet_default"], 0)
        );
        s += "## Effect on the node (echo requests received per second in the flood namespace)\n\n";
        s += "| configuration | median pps | ratio vs none (medians) | per-round ratios | echoes per flood CPU-s (ratio) | median pps, bpf_stats on | tracer CPU % (user+sys) | probes sent / lost, max RTT | backlog drops (all runs) |\n|---|---:|---:|---|---:|---:|---:|---|---:|\n";
        for md in [
            "none",
            "stalltrace_default",
            "stalltrace_every_echo",
            "bpftrace",
        ] {
            let x = &k[md];
            let paired = x["pps_ratio_paired"]
                .as_array()
                .map(|a| a.iter().map(|r| f(r, 2)).collect::<Vec<_>>().join(", "))
                .unwrap_or_default();
            s += &format!(
                "| {} | {} | {} | {} | {} ({}) | {} | {} | {} / {}, {} ms | {} |\n",
                x["label"].as_str().unwrap_or(md),
                thousands(x["pps_median"].as_f64().unwrap_or(f64::NAN)),
                f(&x["pps_ratio_vs_none"], 3),
                paired,
                thousands(x["per_flood_cpu_s_median"].as_f64().unwrap_or(f64::NAN)),
                f(&x["per_flood_cpu_s_ratio_vs_none"], 3),
                thousands(x["pps_stats_on_median"].as_f64().unwrap_or(f64::NAN)),
                f(&x["tracer_cpu_pct_median"], 1),
                x["probes_sent"],
                x["probes_lost"],
                f(&x["probe_max_rtt_ms"], 1),
                thousands(x["backlog_drops"].as_f64().unwrap_or(f64::NAN))
            );
        }
        s += "\n\"Echoes per flood CPU-s\": echo requests received per CPU-second used by the flood path (hping3, in whose context most of the receive softirq runs — this kernel has no IRQ time accounting — plus ksoftirqd/0). It measures the per-packet cost the tracer adds and is far less sensitive to other tenants than the wall-clock rate.\n\nPer-run details (recorded packets and lost events per run) are in `results.json`.\n\n";
    }
    if let Some(ps) = v["perf"].as_array() {
        s += "## Where the time goes (perf, cpu-clock on CPU 0, samples of the flood's tasks hping3 + ksoftirqd/0)\n\n";
        s += "| default mode: % | symbol | every echo: % | symbol |\n|---:|---|---:|---|\n";
        let col = |i: usize| {
            ps.get(i)
                .and_then(|p| p["top"].as_array().cloned())
                .unwrap_or_default()
        };
        let (a, b) = (col(0), col(1));
        for i in 0..a.len().max(b.len()).min(20) {
            let cell = |c: &Vec<Value>| {
                c.get(i)
                    .map(|x| {
                        (
                            f(&x["pct"], 2),
                            format!("`{}`", x["symbol"].as_str().unwrap_or("")),
                        )
                    })
                    .unwrap_or_default()
            };
            let (pa, sa) = cell(&a);
            let (pb, sb) = cell(&b);
            s += &format!("| {pa} | {sa} | {pb} | {sb} |\n");
        }
        s += &format!(
            "\nBPF programs, helpers, maps and tracepoint glue (`bpf_*`, `htab_*`, `perf_trace_*`, `trace_call_bpf`, `copy_from_kernel_nofault`; symbols above 0.7% only, so a lower bound): {}% (default mode), {}% (every echo) of the flood's samples. In every-echo mode `native_write_msr` is the ring buffer's per-record wakeup: `bpf_ringbuf_output` → `irq_work_queue` → self-IPI through the x2APIC MSR, a VM exit here.\n\n",
            f(&ps.first().map(|p| p["bpf_symbols_pct"].clone()).unwrap_or_default(), 1),
            f(&ps.get(1).map(|p| p["bpf_symbols_pct"].clone()).unwrap_or_default(), 1)
        );
    }
    let rb = &v["ring_buffer"];
    if rb.is_object() {
        s += "## Ring-buffer headroom (record every echo)\n\n| hping3 rate | ring | echo req/s | events offered/s | recorded/s | lost |\n|---|---|---:|---:|---:|---:|\n";
        for x in rb["steps"].as_array().cloned().unwrap_or_default() {
            s += &format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                x["hping3_rate"].as_str().unwrap_or(""),
                x["ring_buffer"].as_str().unwrap_or(""),
                thousands(x["echo_requests_per_s"].as_f64().unwrap_or(f64::NAN)),
                thousands(x["events_offered_per_s"].as_f64().unwrap_or(f64::NAN)),
                thousands(x["events_recorded_per_s"].as_f64().unwrap_or(f64::NAN)),
                x["events_lost"]
            );
        }
        s += &format!(
            "\nHighest rate recorded with no loss (default 4 MiB ring): **{} events/s**{}.\n\n",
            thousands(
                rb["max_rate_without_loss_per_s"]
                    .as_f64()
                    .unwrap_or(f64::NAN)
            ),
            if rb["any_loss_with_default_ring"] == json!(false) {
                " — nothing was lost at any rate this machine's flood reached with the default ring; the 16 KiB row shows what a user sees when the ring overflows"
            } else {
                ""
            }
        );
        if let Some(x) = rb["steps"].as_array().and_then(|a| {
            a.iter()
                .find(|x| x["events_lost"].as_u64().unwrap_or(0) > 0)
        }) {
            s += "What the user sees when events are dropped:\n\n```\n";
            for l in x["user_sees"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .take(4)
            {
                s += l.as_str().unwrap_or("");
                s += "\n";
            }
            s += "```\n\n(and the dump's footer carries `lost: {packets, waits, syscalls}`).\n\n";
        }
    }
    if let Some(a) = v["analyze"].as_array() {
        s += "## analyze (generated dumps, `stalltrace_testkit::benchdump`; report to /dev/null; best of runs)\n\n| records | size | wall s | events/s | user+sys s | peak RSS |\n|---:|---:|---:|---:|---:|---:|\n";
        for x in a {
            s += &format!(
                "| {} | {:.0} MiB | {} | {} | {} | {:.1} MiB |\n",
                thousands(x["records"].as_f64().unwrap_or(f64::NAN)),
                x["bytes"].as_f64().unwrap_or(0.0) / (1 << 20) as f64,
                f(&x["wall_s"], 2),
                thousands(x["events_per_s"].as_f64().unwrap_or(f64::NAN)),
                f(
                    &json!(
                        x["user_s"].as_f64().unwrap_or(0.0) + x["sys_s"].as_f64().unwrap_or(0.0)
                    ),
                    2
                ),
                x["peak_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0
            );
        }
        s += "\n";
    }
    if v["record_idle"].is_object() {
        s += "## record's own CPU (user+sys of the recorder process, share of one CPU)\n\n| state | record CPU % | its BPF programs, % of one CPU |\n|---|---:|---:|\n";
        s += &format!(
            "| idle (default mode, no traffic) | {} | {} |\n",
            f(&v["record_idle"]["cpu_pct"], 2),
            f(&v["record_idle"]["kernel_bpf_cpu_pct"], 2)
        );
        for md in ["stalltrace_default", "stalltrace_every_echo"] {
            s += &format!(
                "| flood, {} | {} | {} |\n",
                if md == "stalltrace_default" {
                    "default mode"
                } else {
                    "every echo"
                },
                f(&k[md]["tracer_cpu_pct_median"], 1),
                f(&k[md]["bpf_cpu_pct"], 1)
            );
        }
        s += &format!(
            "| flood, bpftrace (for comparison) | {} | {} |\n\n",
            f(&k["bpftrace"]["tracer_cpu_pct_median"], 1),
            f(&k["bpftrace"]["bpf_cpu_pct"], 1)
        );
    }
    s += &targets_md(v);
    s
}

fn targets_md(v: &Value) -> String {
    let k = &v["kernel"];
    let mut rows: Vec<(String, String, Option<bool>)> = vec![];
    let r = k["overhead_ratio_vs_bpftrace"].as_f64();
    if k.is_object() {
        rows.push((
            "per recorded echo ≤ 1/10 of bpftrace".into(),
            format!(
                "{} (all programs: {})",
                f(&k["overhead_ratio_vs_bpftrace"], 3),
                f(&k["overhead_ratio_vs_bpftrace_all_programs"], 3)
            ),
            r.map(|x| x <= 0.1),
        ));
        let n = k["ns_per_packet_default"].as_f64();
        rows.push((
            "< 100 ns per packet, default mode".into(),
            format!(
                "{} ns (all programs per packet: {} ns)",
                f(&k["ns_per_packet_default"], 0),
                f(
                    &k["stalltrace_default"]["bpf_ns_per_packet_all_programs"],
                    0
                )
            ),
            n.map(|x| x < 100.0),
        ));
        let d = &k["stalltrace_default"];
        let p = d["pps_ratio_vs_none"].as_f64();
        let c = d["per_flood_cpu_s_ratio_vs_none"].as_f64();
        rows.push((
            "received pps with stalltrace ≥ 0.97 of untraced (judged on both the wall-clock and the per-CPU-s ratio)".into(),
            format!("wall clock {} (paired median {}), per flood CPU-s {}", f(&d["pps_ratio_vs_none"], 3), f(&d["pps_ratio_paired_median"], 3), f(&d["per_flood_cpu_s_ratio_vs_none"], 3)),
            p.zip(c).map(|(x, y)| x >= 0.97 && y >= 0.97),
        ));
        let lost = k["stalltrace_default"]["probes_lost"].as_u64();
        let ev_lost: u64 = k["stalltrace_default"]["recorded"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x["lost"]["packets"].as_u64()).sum())
            .unwrap_or(0);
        rows.push((
            "no probe lost at 10 ms probing during the flood".into(),
            format!(
                "{} of {} probes lost (untraced: {} of {}), {} packet events lost by the recorder",
                k["stalltrace_default"]["probes_lost"],
                k["stalltrace_default"]["probes_sent"],
                k["none"]["probes_lost"],
                k["none"]["probes_sent"],
                ev_lost
            ),
            lost.map(|l| l == 0 && ev_lost == 0),
        ));
    }
    if let Some(a) = v["analyze"].as_array() {
        let eps: Vec<f64> = a
            .iter()
            .filter_map(|x| x["events_per_s"].as_f64())
            .collect();
        let rss: Vec<f64> = a
            .iter()
            .filter_map(|x| x["peak_rss_kib"].as_f64())
            .collect();
        let min_eps = eps.iter().copied().fold(f64::INFINITY, f64::min);
        rows.push((
            "analyze ≥ 1 M events/s".into(),
            format!("{} events/s (slowest dump)", thousands(min_eps)),
            Some(min_eps >= 1e6),
        ));
        if rss.len() == 2 {
            rows.push((
                "analyze memory flat as the dump grows".into(),
                format!(
                    "peak RSS {:.1} → {:.1} MiB for 10× the records",
                    rss[0] / 1024.0,
                    rss[1] / 1024.0
                ),
                Some(rss[1] <= rss[0] * 1.5 + 4096.0),
            ));
        }
    }
    let mut s = "## Targets\n\n| target | measured | met? |\n|---|---|---|\n".to_string();
    for (t, m, ok) in rows {
        s += &format!(
            "| {t} | {m} | {} |\n",
            match ok {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "–",
            }
        );
    }
    s += "\nThese are measurements, not assertions: the bench never fails on a number.\n";
    s
}
