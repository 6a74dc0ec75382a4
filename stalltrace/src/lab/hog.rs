//! The planted culprit: `stalltrace hog` (hidden) pins itself to a CPU, takes a
//! real-time priority and holds the CPU in bursts, busy-looping or inside large
//! `read()`s of a file (as cadvisor sat inside reads of memory.stat). Bounded in time;
//! dies with its parent.
use std::{
    ffi::CString,
    fs::File,
    os::unix::fs::FileExt,
    path::PathBuf,
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use stalltrace_analysis::units::{duration_in, parse_size, MS, SEC};

use crate::exit::{CodedError, ExitCode};

#[derive(clap::Args, Debug, Clone)]
pub struct HogArgs {
    /// CPU to hold (0 to 1023, and one this machine has).
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..1024))]
    pub cpu: u32,
    /// SCHED_FIFO priority, 1 to 99 (0 = stay SCHED_OTHER).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i32).range(0..=99))]
    pub fifo: i32,
    /// Task name (comm) to take, so the report can name it (1 to 15 characters).
    #[arg(long, default_value = "stall-hog", value_parser = super::culprit_name)]
    pub name: String,
    /// Total run time (1ms to 10m); the hog exits by itself after it.
    #[arg(long, value_parser = duration_in::<MS, { 600 * SEC }>, default_value = "3s")]
    pub duration: Duration,
    /// Length of each burst holding the CPU (1ms to 10s).
    #[arg(long, value_parser = duration_in::<MS, { 10 * SEC }>, default_value = "100ms")]
    pub burst: Duration,
    /// Sleep between bursts (0 to 10s; lets the starved RX thread drain its backlog).
    #[arg(long, value_parser = duration_in::<0, { 10 * SEC }>, default_value = "30ms")]
    pub gap: Duration,
    /// Hold the CPU inside read()s of this file instead of a busy loop.
    #[arg(long)]
    pub read_file: Option<PathBuf>,
    /// Bytes per read() (the file should be at least this big); at most 1GiB.
    #[arg(long, default_value = "64MiB", value_parser = read_size)]
    pub read_size: usize,
    /// Hold the CPU in many short syscalls instead: open, read and close this file over
    /// and over (as a metrics agent walks thousands of small files).
    #[arg(long, conflicts_with = "read_file")]
    pub poll_file: Option<PathBuf>,
    /// Hold the CPU walking this cgroup directory instead: read memory.stat (and
    /// cpu.stat, io.stat where present) of every cgroup below it, over and over.
    #[arg(long, conflicts_with_all = ["read_file", "poll_file"])]
    pub walk_stats: Option<PathBuf>,
    /// Do the work in a second thread of this name (the process keeps `--name`), as a
    /// multi-threaded daemon's worker would.
    #[arg(long, value_parser = super::culprit_name)]
    pub thread_name: Option<String>,
    /// Take a new name (`<name>-<burst>`) before each burst: many distinct culprits
    /// from one process, for the agent's bounded-series test.
    #[arg(long, hide = true)]
    pub rename_each_burst: bool,
    /// Do each burst in a new child process (with `--rename-each-burst`, named per
    /// burst): thousands of short-lived culprits, for the agent's bounded-memory test.
    #[arg(long, hide = true, conflicts_with = "thread_name")]
    pub fork_each_burst: bool,
}

/// `--read-size`: 0 to 1 GiB.
fn read_size(s: &str) -> Result<usize, String> {
    let v = parse_size(s, 0, 1 << 30)?;
    usize::try_from(v).map_err(|e| e.to_string())
}

/// What the hog does in its bursts.
enum Work {
    Spin,
    /// One long read() per iteration: the CPU is held inside the syscall.
    Read {
        file: File,
        buf: Vec<u8>,
    },
    /// open, read, close of a small file, again and again: many short syscalls.
    Poll {
        path: PathBuf,
        buf: Vec<u8>,
    },
    /// Statistics files of every cgroup below a directory, as cadvisor reads them.
    Walk {
        files: Vec<PathBuf>,
        next: usize,
        buf: Vec<u8>,
    },
}

/// The statistics files of every cgroup below `root` (bounded).
fn stat_files(root: &std::path::Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        if out.len() > 100_000 {
            break;
        }
        for f in ["memory.stat", "cpu.stat", "io.stat"] {
            let p = d.join(f);
            if p.exists() {
                out.push(p);
            }
        }
        if let Ok(rd) = std::fs::read_dir(&d) {
            dirs.extend(
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    out
}

impl Work {
    fn step(&mut self) {
        match self {
            Work::Spin => {
                for _ in 0..10_000 {
                    std::hint::spin_loop();
                }
            }
            Work::Read { file, buf } => {
                let _ = file.read_at(buf, 0);
            }
            Work::Poll { path, buf } => {
                if let Ok(mut f) = File::open(&*path) {
                    let _ = std::io::Read::read(&mut f, buf);
                }
            }
            Work::Walk { files, next, buf } => {
                if let Some(p) = files.get(*next) {
                    if let Ok(mut f) = File::open(p) {
                        let _ = std::io::Read::read(&mut f, buf);
                    }
                }
                *next = (*next + 1) % files.len().max(1);
            }
        }
    }
}

fn set_name(name: &str) -> anyhow::Result<()> {
    let name = CString::new(name).context("hog name")?;
    // SAFETY: valid NUL-terminated name, truncated by the kernel to 15 bytes; names
    // the calling thread.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
    Ok(())
}

/// Bursts of work until the run's end, sleeping `gap` between them.
fn bursts(a: &HogArgs, mut work: Work) {
    let end = Instant::now() + a.duration;
    let stem: String = a.name.chars().take(9).collect();
    for burst in 0u32.. {
        if Instant::now() >= end {
            break;
        }
        let burst_end = (Instant::now() + a.burst).min(end);
        if a.fork_each_burst {
            forked_burst(a, &stem, burst, burst_end, &mut work);
        } else {
            if a.rename_each_burst {
                let _ = set_name(&format!("{stem}-{burst}"));
            }
            while Instant::now() < burst_end {
                work.step();
            }
        }
        std::thread::sleep(a.gap.min(end.saturating_duration_since(Instant::now())));
    }
}

/// One burst in a child process of its own, which exits when the burst ends (or when
/// the hog dies); the hog waits for it.
fn forked_burst(a: &HogArgs, stem: &str, burst: u32, burst_end: Instant, work: &mut Work) {
    // SAFETY: fork(2) from the hog, which has one thread when it forks (--thread-name
    // conflicts with this mode): the child may run any code. It only spins and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: prctl(2) and _exit(2) on the child itself.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
        if a.rename_each_burst {
            let _ = set_name(&format!("{stem}-{burst}"));
        }
        while Instant::now() < burst_end {
            work.step();
        }
        // SAFETY: as above; no destructor of the parent's state runs in the child.
        unsafe { libc::_exit(0) };
    }
    if pid > 0 {
        let mut status = 0;
        // SAFETY: waitpid(2) on our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
    }
}

pub fn run(a: HogArgs) -> anyhow::Result<ExitCode> {
    // SAFETY: sysconf has no preconditions.
    let cpus = u32::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) })
        .unwrap_or(1)
        .max(1);
    if a.cpu >= cpus {
        return Err(CodedError::new(
            ExitCode::Usage,
            format!("--cpu {}: this machine has CPUs 0 to {}", a.cpu, cpus - 1),
        )
        .into());
    }
    set_name(&a.name)?;
    let work = if let Some(p) = &a.read_file {
        let file = File::open(p).with_context(|| format!("opening {}", p.display()))?;
        Work::Read {
            file,
            buf: vec![0u8; a.read_size],
        }
    } else if let Some(root) = &a.walk_stats {
        Work::Walk {
            files: stat_files(root),
            next: 0,
            buf: vec![0u8; 16 << 10],
        }
    } else if let Some(p) = &a.poll_file {
        Work::Poll {
            path: p.clone(),
            buf: vec![0u8; 4096],
        }
    } else {
        Work::Spin
    };
    match a.thread_name.clone() {
        None => {
            pin(a.cpu)?;
            if a.fifo > 0 {
                set_fifo(a.fifo)?;
            }
            bursts(&a, work);
        }
        Some(t) => {
            // The worker takes the CPU and the priority; the process's first thread
            // only waits for it.
            let args = a.clone();
            let worker = std::thread::Builder::new()
                .name(t.clone())
                .spawn(move || -> anyhow::Result<()> {
                    set_name(&t)?;
                    pin(args.cpu)?;
                    if args.fifo > 0 {
                        set_fifo(args.fifo)?;
                    }
                    bursts(&args, work);
                    Ok(())
                })
                .context("starting the worker thread")?;
            worker
                .join()
                .map_err(|_| anyhow::anyhow!("the worker thread panicked"))??;
        }
    }
    Ok(ExitCode::Ok)
}

fn pin(cpu: u32) -> anyhow::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it; sched_setaffinity reads it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        anyhow::bail!("pinning to CPU {cpu}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn set_fifo(prio: i32) -> anyhow::Result<()> {
    let try_set = || {
        let p = libc::sched_param {
            sched_priority: prio,
        };
        // SAFETY: valid sched_param pointer.
        unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &p) }
    };
    if try_set() == 0 {
        return Ok(());
    }
    // With RT group scheduling, a cgroup without an RT budget refuses SCHED_FIFO: the
    // root cgroup has one.
    let _ = std::fs::write(
        "/sys/fs/cgroup/cgroup.procs",
        std::process::id().to_string(),
    );
    if try_set() == 0 {
        return Ok(());
    }
    Err(CodedError::new(
        ExitCode::Privileges,
        format!(
            "cannot take SCHED_FIFO {prio}: {}",
            std::io::Error::last_os_error()
        ),
    )
    .into())
}

/// A running hog child, killed and reaped on drop.
pub struct Hog {
    child: Option<Child>,
    pub pid: u32,
}

impl Hog {
    pub fn spawn(a: &HogArgs) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding the stalltrace binary")?;
        let mut c = Command::new(exe);
        c.arg("hog")
            .args([
                "--cpu",
                &a.cpu.to_string(),
                "--fifo",
                &a.fifo.to_string(),
                "--name",
                &a.name,
            ])
            .args(["--duration", &format!("{}ms", a.duration.as_millis())])
            .args(["--burst", &format!("{}ms", a.burst.as_millis())])
            .args(["--gap", &format!("{}ms", a.gap.as_millis())])
            .args(["--read-size", &a.read_size.to_string()]);
        if let Some(p) = &a.read_file {
            c.arg("--read-file").arg(p);
        }
        if let Some(p) = &a.poll_file {
            c.arg("--poll-file").arg(p);
        }
        if let Some(p) = &a.walk_stats {
            c.arg("--walk-stats").arg(p);
        }
        if let Some(t) = &a.thread_name {
            c.args(["--thread-name", t]);
        }
        if a.rename_each_burst {
            c.arg("--rename-each-burst");
        }
        if a.fork_each_burst {
            c.arg("--fork-each-burst");
        }
        super::tied::tie_to_lab(&mut c, libc::SIGKILL, None);
        let child = c.spawn().context("starting the hog")?;
        let pid = child.id();
        Ok(Self {
            child: Some(child),
            pid,
        })
    }

    /// Waits for the hog to finish by itself; an error exit is reported.
    pub fn wait(mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            let st = c.wait().context("waiting for the hog")?;
            if !st.success() {
                anyhow::bail!("the hog failed ({st})");
            }
        }
        Ok(())
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
