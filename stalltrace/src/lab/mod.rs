//! `stalltrace lab`: builds its own namespace and veth pair, routes the namespace's
//! receive work to one CPU, plants a named culprit there, probes across the pair while
//! recording, and checks that the tool blames the planted task. Every change is written
//! to a journal first ([`journal`]), so what a killed lab leaves is undone by
//! `stalltrace lab --cleanup` or by the next lab.
pub mod catalog;
pub mod child;
pub mod flood;
pub mod hog;
pub mod journal;
pub mod ksoftirqd;
pub mod memcg;
pub mod napi;
pub mod netns;
pub mod scenario;
pub mod tied;
pub mod verdict;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use stalltrace_analysis::units::{duration_in, SEC};

use self::{
    catalog::ScenarioName,
    child::ChildGuard,
    hog::{Hog, HogArgs},
    journal::Journal,
    netns::{link_exists, namespace_exists, Netns, NetnsError},
    scenario::{Lab, Scenario},
};
use crate::{
    exit::{CodedError, ExitCode},
    kernel::preflight,
};

pub const NS_NAME: &str = "stlab";
pub const HOST_IF: &str = "stl-h";
pub const NS_IF: &str = "stl-n";
pub const SUBNET: u8 = 254;

#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "Examples:
  sudo stalltrace lab                          # the rt-hog scenario
  sudo stalltrace lab --scenario slow-syscall --duration 5s
  sudo stalltrace lab --cleanup                # undo what a killed lab left
  stalltrace lab --list")]
pub struct LabArgs {
    /// Scenario to run (see --list).
    #[arg(long, value_enum, default_value = "rt-hog")]
    pub scenario: ScenarioName,
    /// How long the culprit runs (the recording lasts about 3 s longer); 1s to 10m.
    #[arg(long, value_parser = duration_in::<SEC, { 600 * SEC }>, default_value = "3s")]
    pub duration: Duration,
    /// List the scenarios and exit.
    #[arg(long)]
    pub list: bool,
    /// Undo what a lab that was killed left behind, from its journal in
    /// /run/stalltrace: its processes (SIGTERM, then SIGKILL after 5 s; returns once
    /// they are gone, saying how each ended), sysctls, namespace, files; then exit.
    #[arg(long, conflicts_with_all = ["list", "output"])]
    pub cleanup: bool,
    /// Where to keep the dump (default: a new private directory under /tmp); a regular
    /// file there is replaced.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// CPU to starve (default: the last CPU).
    #[arg(long)]
    pub cpu: Option<u32>,
    /// Record with --stacks: each wait carries the culprit's sampled stacks.
    #[arg(long)]
    pub stacks: bool,
    /// Record with --syscalls: exact syscall tracing besides the samples.
    #[arg(long)]
    pub syscalls: bool,
    /// The culprit's task name [default: the scenario's].
    #[arg(long, value_parser = culprit_name)]
    pub name: Option<String>,
    /// Do the culprit's work in a second thread of this name (the process keeps its
    /// name), as a multi-threaded daemon's worker would.
    #[arg(long, value_name = "NAME", value_parser = culprit_name)]
    pub thread: Option<String>,
    /// The culprit renames itself before each burst (tests of bounded metrics).
    #[arg(long, hide = true)]
    pub rename_each_burst: bool,
    /// Each of the culprit's bursts is a new short-lived process (tests of bounded
    /// memory through thousands of culprits).
    #[arg(long, hide = true)]
    pub fork_each_burst: bool,
    /// The culprit's bursts (1ms to 10s; tests of an agent through many episodes).
    #[arg(long, hide = true, value_parser = duration_in::<{ stalltrace_analysis::units::MS }, { 10 * SEC }>, default_value = "100ms")]
    pub burst: Duration,
    /// The culprit's sleep between bursts (0 to 10s).
    #[arg(long, hide = true, value_parser = duration_in::<0, { 10 * SEC }>, default_value = "30ms")]
    pub gap: Duration,
    /// Put the culprit into this cgroup directory once it runs (e.g. a kubelet-shaped
    /// path in the unified hierarchy, to see the pod named).
    #[arg(long, value_name = "DIR")]
    pub cgroup: Option<PathBuf>,
}

/// A task name: 1 to 15 bytes (the kernel's limit), no NUL, no control character.
pub(crate) fn culprit_name(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 15 || s.chars().any(char::is_control) {
        return Err(format!("{s:?}: 1 to 15 characters, no control characters"));
    }
    Ok(s.to_string())
}

pub fn list() {
    for n in ScenarioName::all() {
        let s = n.scenario();
        crate::outln!("{:<14} {}", s.name(), s.summary());
    }
}

/// The CPU to starve: `--cpu`, else the last one this process may use.
fn starved_cpu(a: &LabArgs) -> Result<u32, CodedError> {
    let cpus = crate::sys::allowed_cpus();
    if cpus < 2 {
        return Err(CodedError::new(
            ExitCode::KernelFeature,
            "stalltrace lab needs at least 2 CPUs (one to starve, one for the prober); this process may run on 1 (see its CPU affinity)",
        ));
    }
    let cpu = a.cpu.unwrap_or(cpus - 1);
    if cpu == 0 || cpu >= cpus {
        return Err(CodedError::new(
            ExitCode::Usage,
            format!("--cpu must be between 1 and {}", cpus - 1),
        ));
    }
    Ok(cpu)
}

/// Set on SIGINT, SIGTERM, SIGHUP (a closed terminal) and SIGQUIT.
fn stop_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGQUIT,
    ] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing signal handlers")?;
    }
    Ok(stop)
}

/// Sleeps `d`, or less when a signal came (an error that unwinds into clean-up).
fn pause(stop: &AtomicBool, d: Duration) -> anyhow::Result<()> {
    let t0 = Instant::now();
    while t0.elapsed() < d {
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted; cleaned up");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

pub fn run(a: LabArgs) -> anyhow::Result<ExitCode> {
    if a.list {
        list();
        return Ok(ExitCode::Ok);
    }
    preflight::check_privileges("stalltrace lab")?;
    if a.cleanup {
        let done = journal::cleanup()?;
        if done.is_empty() {
            crate::outln!("lab: nothing to clean up");
        }
        for d in done {
            crate::outln!("lab: {d}");
        }
        return Ok(ExitCode::Ok);
    }
    let cpu = starved_cpu(&a)?;
    if let Some(p) = &a.output {
        // The lab's recorder replaces a file there (it passes --force), never anything
        // else: said before anything is built.
        stalltrace_analysis::output::check(p, true).context("the lab's dump")?;
    }
    if !Path::new("/proc/self/ns/net").exists() {
        return Err(CodedError::new(
            ExitCode::KernelFeature,
            "this kernel has no network namespaces",
        )
        .into());
    }
    let stop = stop_flag()?;
    let sc = a.scenario.scenario();
    // First undo what a killed lab left (the journal knows what was its own).
    let mut journal = Journal::begin()?;
    // Someone else's namespace or link by the lab's name is left alone.
    let taken = if namespace_exists(NS_NAME) {
        Some(NetnsError::NamespaceTaken(NS_NAME.into()))
    } else {
        [HOST_IF, NS_IF]
            .into_iter()
            .find(|l| link_exists(l))
            .map(|l| NetnsError::LinkTaken(l.into()))
    };
    if let Some(e) = taken {
        return Err(CodedError::new(ExitCode::Failure, e.to_string()).into());
    }
    crate::outln!("lab: scenario {} — {}", sc.name(), sc.summary());
    journal.note(|s| {
        s.namespace = Some(NS_NAME.into());
        s.links.push(HOST_IF.into());
    })?;
    let ns = Netns::create(NS_NAME, HOST_IF, NS_IF, SUBNET)
        .map_err(|e| anyhow::Error::new(e).context("building the lab namespace"))?;
    let scratch = journal.private_dir(Path::new("/dev/shm"), "lab")?;
    let outcome = run_scenario(&a, sc.as_ref(), &mut journal, &ns, &scratch, cpu, &stop);
    drop(ns);
    let _ = journal.finish();
    outcome
}

/// Everything between the namespace and the verdict, for one scenario.
fn run_scenario(
    a: &LabArgs,
    sc: &dyn Scenario,
    journal: &mut Journal,
    ns: &Netns,
    scratch: &Path,
    cpu: u32,
    stop: &AtomicBool,
) -> anyhow::Result<ExitCode> {
    let mut lab = Lab {
        ns,
        journal,
        scratch,
        cpu,
        rx_by_ksoftirqd: false,
    };
    let how = sc.prepare(&mut lab)?;
    crate::outln!("lab: {how}");
    let dump = match &a.output {
        Some(p) => p.clone(),
        None => lab
            .journal
            .private_dir(Path::new("/tmp"), "lab-dump")
            .map(|d| d.join(format!("{}.jsonl", sc.name())))?,
    };
    // The dump outlives the lab: its directory is removed only if left empty.
    if a.output.is_none() {
        lab.journal.note(|s| {
            if let Some(d) = dump.parent() {
                s.dirs.retain(|x| x != d);
                s.kept.push(d.to_path_buf());
            }
        })?;
    }
    let mut recorder = record(a, ns, &dump, lab.journal)?;
    wait_for_header(&dump, stop)?;
    pause(stop, Duration::from_millis(300))?;

    let culprit = a.name.clone().unwrap_or_else(|| sc.culprit().to_string());
    let base = HogArgs {
        cpu,
        fifo: 50,
        name: culprit.clone(),
        duration: a.duration,
        burst: a.burst,
        gap: a.gap,
        read_file: None,
        read_size: 0,
        poll_file: None,
        thread_name: a.thread.clone(),
        walk_stats: None,
        rename_each_burst: a.rename_each_burst,
        fork_each_burst: a.fork_each_burst,
    };
    let hog_args = sc.hog(&mut lab, base)?;
    let hog = Hog::spawn(&hog_args)?;
    lab.journal.child(hog.pid, "the culprit")?;
    injected_panic("planted");
    let hog_pid = hog.pid;
    if let Some(cg) = &a.cgroup {
        std::fs::write(cg.join("cgroup.procs"), hog_pid.to_string())
            .with_context(|| format!("moving the culprit into {}", cg.display()))?;
    }
    crate::outln!(
        "lab: planted {culprit} (pid {hog_pid}, SCHED_FIFO 50) on CPU {cpu} for {:?}",
        a.duration
    );
    let mut load = sc.load(&mut lab, hog_pid, a.duration)?;
    if load.is_none() && lab.rx_by_ksoftirqd {
        // No threaded NAPI here: ksoftirqd is the RX thread, and the flood wakes it.
        load = ksoftirqd::Ksoftirqd.load(&mut lab, hog_pid, a.duration)?;
    }
    let waited = pause(stop, a.duration + Duration::from_millis(500));
    // The load's global changes go back the moment it is not needed.
    if let Some(l) = load.as_mut() {
        l.stop(lab.journal);
    }
    waited?;
    hog.wait()?;
    match recorder.signal_and_wait(libc::SIGINT, Duration::from_secs(15)) {
        Some(s) if s.success() => {}
        Some(s) => bail!("the recorder failed ({s})"),
        None => bail!("the recorder did not stop"),
    }
    verdict(sc, &culprit, &dump, hog_pid, lab.rx_by_ksoftirqd)
}

/// `stalltrace record` of the lab's traffic, from CPU 0 (the starved CPU runs only the
/// RX work and the culprit), ended by the lab or, if the lab dies, by the kernel
/// (SIGTERM on the parent's death: it still writes its footer and detaches).
fn record(
    a: &LabArgs,
    ns: &Netns,
    dump: &Path,
    journal: &mut Journal,
) -> anyhow::Result<ChildGuard> {
    let exe = std::env::current_exe().context("finding the stalltrace binary")?;
    // The lab stops the recorder with SIGINT once the culprit is done; --duration is
    // only a guard. Setting up the culprit (a 256 MiB file under emulation) can take
    // longer than the stall itself, so the guard is generous.
    let record_for = a.duration + Duration::from_secs(120);
    let mut cmd = Command::new(exe);
    cmd.args(["record", "--quiet", "--force", "--wait-threshold", "20ms"])
        .args(["--probe", &ns.ns_addr, "--interval", "10ms", "-o"])
        .arg(dump)
        .args(["--duration", &format!("{}ms", record_for.as_millis())])
        .args(a.stacks.then_some("--stacks"))
        .args(a.syscalls.then_some("--syscalls"))
        .stdin(Stdio::null());
    tied::tie_to_lab(&mut cmd, libc::SIGTERM, Some(0));
    let child = cmd.spawn().context("starting the recorder")?;
    journal.child(child.id(), "the recorder")?;
    let mut g = ChildGuard::new(child);
    g.grace = Duration::from_secs(10);
    Ok(g)
}

/// Did this kernel show the stall, and was the planted culprit blamed?
fn verdict(
    sc: &dyn Scenario,
    culprit: &str,
    dump: &Path,
    hog_pid: u32,
    via_ksoftirqd: bool,
) -> anyhow::Result<ExitCode> {
    let kept = || {
        crate::outln!(
            "lab: dump kept at {} (stalltrace analyze {0} for the report again)",
            dump.display()
        )
    };
    if let Some(why) = sc.not_reproduced(dump)? {
        kept();
        crate::outln!("lab: NO STALL — {why}");
        return Ok(ExitCode::LabMismatch);
    }
    let v = verdict::judge(dump, hog_pid, culprit, |r| sc.check(r))?;
    crate::outln!("{}", v.summary);
    kept();
    if v.blamed_planted {
        crate::outln!("lab: PASS — the tool blamed the planted culprit {culprit} (pid {hog_pid})");
        Ok(ExitCode::Ok)
    } else if let Some(why) = via_ksoftirqd
        .then(|| ksoftirqd::not_reproduced(dump))
        .transpose()?
        .flatten()
    {
        // A scenario moved onto ksoftirqd (no threaded NAPI, or PREEMPT_RT) stalls only
        // if NET_RX was deferred to it; when it was not, say that, not a wrong blame.
        crate::outln!("lab: NO STALL — {why}");
        Ok(ExitCode::LabMismatch)
    } else {
        crate::outln!(
            "lab: FAIL — the planted culprit was {culprit} (pid {hog_pid}); see the report above"
        );
        Ok(ExitCode::LabMismatch)
    }
}

/// TEST HOOK, debug builds only: `STALLTRACE_LAB_PANIC=planted` panics once the
/// namespace, the recorder and the culprit run, so the integration test
/// (`promises::a_panicking_lab_cleans_up_after_itself`) can show that an unwinding panic
/// undoes the lab like an error does. Release builds compile it to nothing.
#[cfg(debug_assertions)]
fn injected_panic(phase: &str) {
    if std::env::var_os("STALLTRACE_LAB_PANIC").is_some_and(|p| p == phase) {
        panic!("STALLTRACE_LAB_PANIC={phase}: a panic injected for a test");
    }
}

#[cfg(not(debug_assertions))]
fn injected_panic(_phase: &str) {}

fn wait_for_header(dump: &Path, stop: &AtomicBool) -> anyhow::Result<()> {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(60) {
        if std::fs::read_to_string(dump).is_ok_and(|s| s.contains("\"type\":\"header\"")) {
            return Ok(());
        }
        pause(stop, Duration::from_millis(50))?;
    }
    bail!("the recorder did not start within 60 s")
}
