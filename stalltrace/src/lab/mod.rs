//! `stalltrace lab`: builds its own namespace and veth pair, makes a threaded-NAPI
//! kthread do the namespace's RX on one CPU, plants a named culprit on that CPU, probes
//! across the pair while recording, and checks that the tool blames the planted task.
//! Everything it makes is removed whatever happens (guards run on errors, panics and
//! Ctrl-C/SIGTERM).
pub mod flood;
pub mod hog;
pub mod ksoftirqd;
pub mod verdict;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use stalltrace_analysis::units::parse_duration;
use stalltrace_testkit::netns::{Netns, NetnsError};

use self::hog::{Hog, HogArgs};
use crate::{
    exit::{CodedError, ExitCode},
    kernel::preflight,
};

pub const NS_NAME: &str = "stlab";
pub const HOST_IF: &str = "stl-h";
pub const NS_IF: &str = "stl-n";
pub const SUBNET: u8 = 254;

pub struct Scenario {
    pub name: &'static str,
    pub summary: &'static str,
    pub culprit: &'static str,
    pub reads_file: bool,
}

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "rt-hog",
        summary: "a SCHED_FIFO busy loop (stall-hog) holds the RX CPU in 100 ms bursts; the napi thread starves",
        culprit: "stall-hog",
        reads_file: false,
    },
    Scenario {
        name: "slow-syscall",
        summary: "a SCHED_FIFO reader (stat-reader) sits inside 256 MiB read()s of a file in 100 ms bursts, as cadvisor read memory.stat",
        culprit: "stat-reader",
        reads_file: true,
    },
    ksoftirqd::SCENARIO,
];

#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "Examples:
  sudo stalltrace lab                          # the rt-hog scenario
  sudo stalltrace lab --scenario slow-syscall --duration 5s
  stalltrace lab --list")]
pub struct LabArgs {
    /// Scenario to run (see --list).
    #[arg(long, default_value = "rt-hog")]
    pub scenario: String,
    /// How long the culprit runs (the recording lasts about 3 s longer).
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    pub duration: Duration,
    /// List the scenarios and exit.
    #[arg(long)]
    pub list: bool,
    /// Where to keep the dump (default: /tmp/stalltrace-lab-<scenario>-<pid>.jsonl).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// CPU to starve (default: the last CPU).
    #[arg(long)]
    pub cpu: Option<u32>,
    /// Record with --stacks: each wait carries the culprit's sampled stacks.
    #[arg(long)]
    pub stacks: bool,
}

/// Removes a file on drop.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// A child process killed (SIGINT first, so a recorder writes its footer) on drop.
struct ChildGuard(Option<Child>);

impl ChildGuard {
    fn interrupt_and_wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let c = self.0.as_mut()?;
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if let Ok(Some(st)) = c.try_wait() {
                self.0 = None;
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.interrupt_and_wait(Duration::from_secs(10)).is_none() {
            if let Some(c) = self.0.as_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

pub fn list() {
    for s in SCENARIOS {
        crate::outln!("{:<14} {}", s.name, s.summary);
    }
}

pub fn run(a: LabArgs) -> anyhow::Result<ExitCode> {
    if a.list {
        list();
        return Ok(ExitCode::Ok);
    }
    let Some(sc) = SCENARIOS.iter().find(|s| s.name == a.scenario) else {
        let names: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
        return Err(CodedError::new(
            ExitCode::Usage,
            format!(
                "unknown scenario {:?}; choose one of: {}",
                a.scenario,
                names.join(", ")
            ),
        )
        .into());
    };
    preflight::check_privileges("stalltrace lab")?;
    let cpus = crate::sys::allowed_cpus();
    if cpus < 2 {
        return Err(CodedError::new(
            ExitCode::KernelFeature,
            "stalltrace lab needs at least 2 CPUs (one to starve, one for the prober); this process may run on 1 (see its CPU affinity)",
        )
        .into());
    }
    let cpu = a.cpu.unwrap_or(cpus - 1);
    if cpu == 0 || cpu >= cpus {
        return Err(CodedError::new(
            ExitCode::Usage,
            format!("--cpu must be between 1 and {}", cpus - 1),
        )
        .into());
    }
    if !Path::new("/proc/self/ns/net").exists() {
        return Err(CodedError::new(
            ExitCode::KernelFeature,
            "this kernel has no network namespaces",
        )
        .into());
    }

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing signal handlers")?;
    }

    crate::outln!("lab: scenario {} — {}", sc.name, sc.summary);
    let ns = Netns::create(NS_NAME, HOST_IF, NS_IF, SUBNET).map_err(|e| match e {
        NetnsError::NamespaceTaken(_) | NetnsError::LinkTaken(_) => {
            anyhow::Error::new(CodedError::new(ExitCode::Failure, e.to_string()))
        }
        e => anyhow::Error::new(e).context("building the lab namespace"),
    })?;
    if sc.name == ksoftirqd::NAME {
        ksoftirqd::prepare(&ns, cpu)?;
    } else {
        let napi_pid = ns.threaded_napi(cpu).context("enabling threaded NAPI")?;
        crate::outln!(
            "lab: namespace {} ({} <-> {}), RX by napi thread pid {napi_pid} pinned to CPU {cpu}",
            ns.name,
            ns.host_addr,
            ns.ns_addr
        );
    }

    let _file = if sc.reads_file {
        let p = PathBuf::from(format!(
            "/dev/shm/stalltrace-lab-{}.dat",
            std::process::id()
        ));
        let guard = TempFile(p.clone());
        fs::write(&p, vec![0u8; 256 << 20]).with_context(|| format!("writing {}", p.display()))?;
        Some(guard)
    } else {
        None
    };

    let dump = a.output.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!(
            "stalltrace-lab-{}-{}.jsonl",
            sc.name,
            std::process::id()
        ))
    });
    let exe = std::env::current_exe().context("finding the stalltrace binary")?;
    let record_for = a.duration + Duration::from_secs(3);
    // Recorder and its prober on CPU 0: the starved CPU runs only the napi thread and
    // the culprit. Waits under 20 ms are left to the histograms to keep the output short.
    let mut recorder = ChildGuard(Some(
        Command::new("taskset")
            .args(["-c", "0"])
            .arg(&exe)
            .args([
                "record",
                "--quiet",
                "--force",
                "--wait-threshold",
                "20ms",
                "--probe",
                &ns.ns_addr,
            ])
            .args(["--interval", "10ms", "-o"])
            .arg(&dump)
            .args(["--duration", &format!("{}ms", record_for.as_millis())])
            .args(a.stacks.then_some("--stacks"))
            .stdin(Stdio::null())
            .spawn()
            .context("starting the recorder")?,
    ));
    wait_for_header(&dump, &stop)?;
    std::thread::sleep(Duration::from_millis(300));

    let hog_args = HogArgs {
        cpu,
        fifo: 50,
        name: sc.culprit.into(),
        duration: a.duration,
        burst: Duration::from_millis(100),
        gap: Duration::from_millis(30),
        read_file: _file.as_ref().map(|f| f.0.clone()),
        read_size: 256 << 20,
    };
    let hog_args = if sc.name == ksoftirqd::NAME {
        ksoftirqd::hog_args(hog_args)
    } else {
        hog_args
    };
    let hog = Hog::spawn(&hog_args)?;
    let hog_pid = hog.pid;
    crate::outln!(
        "lab: planted {} (pid {hog_pid}, SCHED_FIFO 50) on CPU {cpu} for {:?}",
        sc.culprit,
        a.duration
    );
    let _flood = if sc.name == ksoftirqd::NAME {
        Some(ksoftirqd::flood(&ns, hog_pid, sc.culprit, a.duration)?)
    } else {
        None
    };
    let t0 = Instant::now();
    while t0.elapsed() < a.duration + Duration::from_millis(500) {
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted; cleaned up");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    hog.wait()?;
    let status = recorder.interrupt_and_wait(Duration::from_secs(15));
    match status {
        Some(s) if s.success() => {}
        Some(s) => bail!("the recorder failed ({s})"),
        None => bail!("the recorder did not stop"),
    }
    drop(ns);

    if sc.name == ksoftirqd::NAME {
        if let Some(why) = ksoftirqd::not_reproduced(&dump)? {
            crate::outln!(
                "lab: dump kept at {} (stalltrace analyze {0} for the report again)",
                dump.display()
            );
            crate::outln!("lab: NO STALL — {why}");
            return Ok(ExitCode::LabMismatch);
        }
    }
    let v = verdict::judge(&dump, hog_pid, sc.culprit)?;
    crate::outln!("{}", v.summary);
    crate::outln!(
        "lab: dump kept at {} (stalltrace analyze {0} for the report again)",
        dump.display()
    );
    if v.blamed_planted {
        crate::outln!(
            "lab: PASS — the tool blamed the planted culprit {} (pid {hog_pid})",
            sc.culprit
        );
        Ok(ExitCode::Ok)
    } else {
        crate::outln!(
            "lab: FAIL — the planted culprit was {} (pid {hog_pid}); see the report above",
            sc.culprit
        );
        Ok(ExitCode::LabMismatch)
    }
}

fn wait_for_header(dump: &Path, stop: &AtomicBool) -> anyhow::Result<()> {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(60) {
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted; cleaned up");
        }
        if fs::read_to_string(dump)
            .map(|s| s.contains("\"type\":\"header\""))
            .unwrap_or(false)
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("the recorder did not start within 60 s")
}
