//! `cargo xtask field`: stalltrace on two machines joined by a NIC, with default flags.
//!
//! Two qemu guests, each with its own kernel and clock: a *node* (the machine under
//! suspicion, running stalltrace) and a *prober* (another machine running hping3, ping
//! and Prometheus at it). They are linked by virtio-net devices over qemu socket
//! netdevs on the host's loopback (no host network is touched), so the node's packets
//! take a real driver path: MSI interrupt → NAPI poll → RPS → NET_RX softirq →
//! `ksoftirqd/N` or a threaded-NAPI `napi/eth0-N` kthread. Each guest runs
//! `scripts/field/guest.sh` in its role; the two step through the cases of a plan
//! together by files in a shared directory, never by clocks.
//!
//! Each case is then judged on the host from outside the tool: the planted task's pid
//! read from the node's `/proc`, the prober's own log parsed here (not by stalltrace's
//! parser), the node's kernel counters (`/proc/net/snmp`), and the dump's records
//! counted here; stalltrace's own report (`analyze --format json`) is what is judged.
mod judge;

use std::{
    env, fs,
    io::{Read as _, Seek as _, SeekFrom},
    net::TcpListener,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::{
    root,
    vmtest::{self, apt, Qemu},
};

/// What one case plants and checks (`scripts/field/guest.sh` has the same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Case {
    /// The blog post's set-up: hping3 --icmp and ping -D from the prober, a flood
    /// burst wakes ksoftirqd on the node's RX CPU, a SCHED_FIFO task starves it;
    /// `record --peer PROBER`.
    SeedKsoftirqd,
    /// The same with threaded NAPI on the node's NIC (no flood needed).
    SeedNapi,
    /// hping3 -S -p PORT (SYN probes, RST answers) against a starved threaded NAPI;
    /// `record --tcp-port PORT`.
    Hping3Syn,
    /// The node's own prober: `record --probe PROBER` (echo replies).
    ProbeIcmp,
    /// `stalltrace probe NODE` on the prober, its log analysed with the node's dump.
    ProbeCmd,
    /// `record --probe PROBER6` over IPv6.
    ProbeIcmp6,
    /// `record --probe PROBER --tcp 8080` against a listener (SYN-ACK answers).
    ProbeTcpOpen,
    /// `record --probe PROBER --tcp 8081`, a closed port (RST answers).
    ProbeTcpClosed,
    /// `record --peer PROBER6` while the prober pings the node over IPv6 and the node
    /// pings the prober (requests and replies).
    PeerIcmp6,
    /// `watch` on the node scraped by Prometheus on the prober across the link.
    Watch,
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::SeedKsoftirqd => "seed-ksoftirqd",
            Case::SeedNapi => "seed-napi",
            Case::Hping3Syn => "hping3-syn",
            Case::ProbeCmd => "probe-cmd",
            Case::ProbeIcmp => "probe-icmp",
            Case::ProbeIcmp6 => "probe-icmp6",
            Case::ProbeTcpOpen => "probe-tcp-open",
            Case::ProbeTcpClosed => "probe-tcp-closed",
            Case::PeerIcmp6 => "peer-icmp6",
            Case::Watch => "watch",
        }
    }

    /// Cases whose stall depends on how the two guests' timing overlaps: run
    /// `--runs` times.
    fn repeated(self) -> bool {
        matches!(
            self,
            Case::SeedKsoftirqd | Case::SeedNapi | Case::Hping3Syn | Case::ProbeCmd
        )
    }

    const ALL: [Case; 10] = [
        Case::SeedKsoftirqd,
        Case::SeedNapi,
        Case::Hping3Syn,
        Case::ProbeCmd,
        Case::ProbeIcmp,
        Case::ProbeIcmp6,
        Case::ProbeTcpOpen,
        Case::ProbeTcpClosed,
        Case::PeerIcmp6,
        Case::Watch,
    ];
}

#[derive(clap::Args, Debug)]
pub struct FieldArgs {
    /// Kernel series for both guests (`6.1`, `5.10`, …, as `cargo xtask vmtest`).
    /// Repeatable. Default: 6.1 and 5.10.
    #[arg(long = "kernel", value_name = "NAME")]
    pub kernels: Vec<String>,
    /// Cases to run (repeatable). Default: all.
    #[arg(long = "case", value_enum)]
    pub cases: Vec<Case>,
    /// Runs of each case a stall from another machine (seed-ksoftirqd, seed-napi,
    /// hping3-syn, probe-cmd).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub runs: u32,
    /// Time limit for one pair of guests, in seconds (default: 3 minutes per case plus
    /// 4 minutes).
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Judge the files the last run left (target/field/<release>/shared) again, without
    /// booting: for work on the judge or on `analyze`.
    #[arg(long)]
    pub rejudge: bool,
}

/// The default kernels: 6.1 (kprobes, NET_RX deferral to a busy ksoftirqd, threaded
/// NAPI) and 5.10 (the deferral, no threaded NAPI, no bpf_task_pt_regs).
const DEFAULT_KERNELS: &[&str] = &["6.1", "5.10"];

/// Addresses on the link (guest.sh sets them).
pub const NODE_MAC: &str = "52:54:00:5e:00:02";
pub const PROBER_MAC: &str = "52:54:00:5e:00:01";

pub fn run(a: FieldArgs) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let path = vmtest::setup_vm()?;
    let bin = build(&path)?;
    let cases = if a.cases.is_empty() {
        Case::ALL.to_vec()
    } else {
        a.cases.clone()
    };
    let mut plan = vec![];
    for c in &cases {
        let n = if c.repeated() { a.runs } else { 1 };
        for i in 1..=n {
            plan.push((format!("{}-{i}", c.name()), *c));
        }
    }
    let kernels: Vec<String> = if a.kernels.is_empty() {
        DEFAULT_KERNELS.iter().map(|k| k.to_string()).collect()
    } else {
        a.kernels.clone()
    };
    let mut failed = false;
    let mut summary = vec![];
    for entry in &kernels {
        let k = apt::resolve(&apt::Entry::parse(entry))
            .and_then(|(p, src)| vmtest::fetch(&p, &src))
            .with_context(|| format!("preparing kernel {entry}"))?;
        let work = root().join("target/field").join(&k.release);
        let shared = work.join("shared");
        let limit = a.timeout.unwrap_or(180 * plan.len() as u64 + 240);
        let boot = if a.rejudge {
            Ok(())
        } else {
            boot_with_retries(&k, &work, &shared, &bin, &plan, Duration::from_secs(limit))
        };
        let verdicts = match boot {
            Ok(()) => judge::all(&bin, &k.release, &shared, &plan),
            Err(e) => {
                println!("field: {}: {e:#}", k.release);
                failed = true;
                continue;
            }
        };
        let text = judge::table(&k.release, &verdicts);
        println!("{text}");
        let _ = fs::write(work.join("results.md"), &text);
        failed |= verdicts.iter().any(|v| v.failed());
        summary.push(text);
    }
    println!(
        "field: {} kernel(s), {:.0} s in all; tables in target/field/<release>/results.md",
        kernels.len(),
        t0.elapsed().as_secs_f64()
    );
    if failed {
        bail!("the field harness failed");
    }
    Ok(())
}

/// `cargo build --release -p stalltrace`: what users run.
fn build(path: &std::ffi::OsString) -> anyhow::Result<PathBuf> {
    crate::cargo(path, &["build", "--release", "-p", "stalltrace"])?;
    let target = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    Ok(target.join("release/stalltrace"))
}

const PR_SET_PDEATHSIG: i32 = 1;
const SIGKILL: u64 = 9;

extern "C" {
    fn prctl(option: i32, arg2: u64, arg3: u64, arg4: u64, arg5: u64) -> i32;
}

/// A port on the host's loopback nobody listens on now (the node's qemu listens on it).
fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(l.local_addr()?.port())
}

/// One machine of the pair.
struct Guest<'a> {
    role: &'a str,
    /// qemu's `-netdev` (a socket that listens or connects).
    netdev: String,
    mac: &'a str,
    mem_mb: u32,
    /// vCPUs: the node needs an RX CPU beside CPU 0; the prober one only, so that two
    /// emulated machines on two host CPUs delay the prober less.
    cpus: u32,
    console: &'a Path,
}

fn qemu(k: &vmtest::Kernel, initrd: &Path, shared: &Path, g: &Guest<'_>) -> anyhow::Result<Qemu> {
    let Guest {
        role,
        netdev,
        mac,
        mem_mb,
        cpus,
        console,
    } = g;
    let virtfs = |path: &Path, tag: &str, ro: bool| {
        format!(
            "local,path={},mount_tag={tag},security_model=none,multidevs=remap{}",
            path.display(),
            if ro { ",readonly=on" } else { "" }
        )
    };
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-cpu", "max", "-smp"])
        .arg(cpus.to_string())
        .arg("-m")
        .arg(mem_mb.to_string())
        .args(["-display", "none", "-monitor", "none", "-no-reboot"])
        .arg("-netdev")
        .arg(netdev)
        .arg("-device")
        .arg(format!("virtio-net-pci,netdev=n0,mac={mac}"))
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(k.dir.join("vmlinuz"))
        .arg("-initrd")
        .arg(initrd)
        .arg("-virtfs")
        .arg(virtfs(Path::new("/"), "hostroot", true))
        .arg("-virtfs")
        .arg(virtfs(shared, "results", false))
        .arg("-virtfs")
        .arg(virtfs(&root(), "repo", true))
        .arg("-append")
        .arg(format!(
            "console=ttyS0 panic=-1 quiet st_cmd=/results/guest.sh st_repo={} st_role={role}",
            root().display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: runs in the child between fork and exec and only calls prctl(2), which
    // is async-signal-safe: qemu dies with this process (killed by CI, say).
    unsafe {
        cmd.pre_exec(|| {
            prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
            Ok(())
        });
    }
    Ok(Qemu(Some(cmd.spawn().with_context(|| {
        format!("starting qemu-system-x86_64 for the {role}")
    })?)))
}

/// Boots the node and the prober, follows their consoles until both power off (or the
/// limit), and leaves each case's files in `shared/<id>/`.
/// A guest that made no progress this long has hung under emulation (the guest kernel's
/// timers stop: RCU stalls, soft lockups), not failed a test.
const HANG_S: u64 = 300;

/// Boots the pair; when the emulator hangs, boots it again (at most twice) for the cases
/// not finished yet. A third hang is a failure.
fn boot_with_retries(
    k: &vmtest::Kernel,
    work: &Path,
    shared: &Path,
    bin: &Path,
    plan: &[(String, Case)],
    limit: Duration,
) -> anyhow::Result<()> {
    let _ = fs::remove_dir_all(shared);
    fs::create_dir_all(shared)?;
    let mut left: Vec<(String, Case)> = plan.to_vec();
    for attempt in 0..3 {
        match boot_pair(k, work, shared, bin, &left, limit)? {
            Boot::Done => return Ok(()),
            Boot::Hung(why) => {
                left.retain(|(id, _)| {
                    let d = shared.join(id);
                    !(d.join("done").exists() && d.join("prober-done").exists())
                });
                for (id, _) in &left {
                    let _ = fs::remove_dir_all(shared.join(id));
                }
                println!(
                    "field: {why}; {} cases left{}",
                    left.len(),
                    if attempt < 2 {
                        ", booting the pair again"
                    } else {
                        ""
                    }
                );
                if left.is_empty() {
                    return Ok(());
                }
            }
        }
    }
    bail!(
        "the guests hung under emulation three times (consoles in {})",
        work.display()
    )
}

/// How a pair's boot ended.
enum Boot {
    /// Both guests powered off after the plan.
    Done,
    /// No progress for [`HANG_S`]: qemu killed.
    Hung(String),
}

fn boot_pair(
    k: &vmtest::Kernel,
    work: &Path,
    shared: &Path,
    bin: &Path,
    plan: &[(String, Case)],
    limit: Duration,
) -> anyhow::Result<Boot> {
    fs::create_dir_all(work)?;
    fs::create_dir_all(shared)?;
    fs::write(
        shared.join("env"),
        format!(
            "export CI=true RUST_BACKTRACE=1 STALLTRACE_BIN='{}' ST_FTRACE='{}'\n",
            bin.display(),
            // The kernel's own scheduler trace of the RX CPU beside each recording, for
            // a case whose waits went unseen (docs/field.md).
            std::env::var("STALLTRACE_FIELD_FTRACE").is_ok_and(|v| v == "1") as u8
        ),
    )?;
    // The guests run a copy: the script may be edited while they run.
    fs::copy(
        root().join("scripts/field/guest.sh"),
        shared.join("guest.sh"),
    )
    .context("copying scripts/field/guest.sh")?;
    let plan_text: String = plan
        .iter()
        .map(|(id, c)| format!("{id}\t{}\n", c.name()))
        .collect();
    fs::write(shared.join("plan"), plan_text)?;
    let initrd = vmtest::initramfs(k, work)?;
    let port = free_port()?;
    let consoles = [
        work.join("node-console.log"),
        work.join("prober-console.log"),
    ];
    // A hung attempt's consoles are kept beside the next one's.
    for c in &consoles {
        let _ = fs::rename(c, c.with_extension("prev.log"));
    }
    println!(
        "field: booting node and prober ({}, {}) under qemu (TCG), linked by virtio-net over 127.0.0.1:{port}; {} cases, limit {} s",
        k.release,
        k.package,
        plan.len(),
        limit.as_secs()
    );
    let t0 = Instant::now();
    let node = qemu(
        k,
        &initrd,
        shared,
        &Guest {
            role: "node",
            netdev: format!("socket,id=n0,listen=127.0.0.1:{port}"),
            mac: NODE_MAC,
            mem_mb: 2048,
            cpus: 2,
            console: &consoles[0],
        },
    )?;
    // The node's qemu must listen before the prober's connects.
    std::thread::sleep(Duration::from_millis(1500));
    let prober = qemu(
        k,
        &initrd,
        shared,
        &Guest {
            role: "prober",
            netdev: format!("socket,id=n0,connect=127.0.0.1:{port}"),
            mac: PROBER_MAC,
            mem_mb: 1536,
            cpus: 1,
            console: &consoles[1],
        },
    )?;
    let mut guests = [(node, 0u64, "node"), (prober, 0u64, "prober")];
    let mut problem = None;
    let mut progress = Instant::now();
    let mut hung = None;
    loop {
        let mut running = 0;
        for (i, (q, seen, role)) in guests.iter_mut().enumerate() {
            if follow(&consoles[i], seen, role) {
                progress = Instant::now();
            }
            if let Some(child) = q.0.as_mut() {
                match child.try_wait() {
                    Ok(Some(st)) => {
                        if !st.success() {
                            let mut err = String::new();
                            if let Some(mut e) = child.stderr.take() {
                                let _ = e.read_to_string(&mut err);
                            }
                            problem.get_or_insert(format!(
                                "the {role}'s qemu exited with {st}: {}",
                                err.trim()
                            ));
                        }
                        q.0 = None;
                    }
                    Ok(None) => running += 1,
                    Err(e) => {
                        problem.get_or_insert(format!("waiting for the {role}'s qemu: {e}"));
                        q.0 = None;
                    }
                }
            }
        }
        if running == 0 {
            break;
        }
        if t0.elapsed() > limit {
            problem = Some(format!(
                "the guests did not finish within {} s; qemu killed",
                limit.as_secs()
            ));
            break;
        }
        if progress.elapsed() > Duration::from_secs(HANG_S) {
            let lockup: Vec<String> = consoles
                .iter()
                .flat_map(|c| {
                    fs::read_to_string(c)
                        .unwrap_or_default()
                        .lines()
                        .filter(|l| l.contains("soft lockup") || l.contains("self-detected stall"))
                        .take(1)
                        .map(str::to_string)
                        .collect::<Vec<_>>()
                })
                .collect();
            hung = Some(format!(
                "the guests made no progress for {HANG_S} s (guest kernel: {}); qemu killed",
                if lockup.is_empty() {
                    "no lockup message".to_string()
                } else {
                    lockup.join(" | ")
                }
            ));
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    drop(guests);
    println!(
        "field: guests done after {:.0} s",
        t0.elapsed().as_secs_f64()
    );
    for (c, role) in consoles.iter().zip(["node", "prober"]) {
        let text = fs::read_to_string(c).unwrap_or_default();
        if let Some(l) = text
            .lines()
            .find(|l| l.contains("STALLTRACE-GUEST-FATAL") || l.contains("STALLTRACE-FIELD-NOLINK"))
        {
            problem.get_or_insert(format!("the {role} failed: {}", l.trim()));
        }
    }
    match (problem, hung) {
        (Some(p), _) => bail!("{p} (consoles in {})", work.display()),
        (None, Some(h)) => Ok(Boot::Hung(h)),
        (None, None) => Ok(Boot::Done),
    }
}

/// Prints a console's new progress lines; true when there were some.
fn follow(console: &Path, seen: &mut u64, role: &str) -> bool {
    let Ok(mut f) = fs::File::open(console) else {
        return false;
    };
    if f.seek(SeekFrom::Start(*seen)).is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let mut any = false;
    if let Ok(n) = f.read_to_end(&mut buf) {
        *seen += n as u64;
        for l in String::from_utf8_lossy(&buf).lines() {
            let l = l.trim_matches(|c: char| c.is_control() || c == ' ');
            if l.starts_with("guest") || l.starts_with("STALLTRACE-CASE-END") || l.contains("FATAL")
            {
                println!("  [{role}] {l}");
                any = true;
            }
        }
    }
    any
}
