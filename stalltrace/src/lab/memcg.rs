//! The 2019 GitHub incident's culprit, built for real: memory cgroups charged with page cache and then
//! removed, so they linger as dying ones; and a cadvisor-like walker that reads
//! `memory.stat` (and `cpu.stat`, `io.stat` where present) of every cgroup in a loop,
//! SCHED_FIFO on the RX CPU. On the 2019 GitHub incident's 4.9 kernel one read walked every dying
//! cgroup and took 100+ ms inside the kernel; that was fixed in 5.2 (the lab measures
//! and says what a single read costs here), so here the stall comes from the walk
//! itself holding the CPU, standing in for the 2019 GitHub incident's long non-preemptible read.
//!
//! Everything is made below the lab's own memory cgroup (never elsewhere; the lab's
//! own tasks never move): a helper process moves itself through the new cgroups and
//! writes a small file in each (its page cache stays charged there), the cgroups are
//! removed (now dying), and at the end the files are deleted, which frees their cache
//! and with it the dying cgroups. The node's caches are never dropped.
use std::{
    fs,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context as _};
use stalltrace_analysis::{correlate::Report, units::human_ns};

use super::{
    hog::HogArgs,
    scenario::{Lab, Scenario},
};
use crate::exit::{CodedError, ExitCode};

/// Cgroups made; of these, the first [`LIVE`] stay (the walker reads them), the rest
/// are removed while charged and linger as dying.
const MADE: usize = 400;
const LIVE: usize = 60;
/// Page cache written in each (a few pages pin the cgroup).
const CHARGE: usize = 64 << 10;

pub struct MemcgStat;

/// The memory controller's directory for this process (v1 `memory` line, or v2).
fn own_memcg() -> anyhow::Result<PathBuf> {
    let text = fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
    for l in text.lines() {
        let mut f = l.splitn(3, ':');
        let (_, ctl, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
        if ctl.split(',').any(|c| c == "memory") {
            let dir = Path::new("/sys/fs/cgroup/memory").join(path.trim_start_matches('/'));
            if dir.is_dir() {
                return Ok(dir);
            }
        }
    }
    // cgroup v2: the unified line, if the memory controller is enabled below it.
    let v2 = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| Path::new("/sys/fs/cgroup").join(p.trim_start_matches('/')));
    if let Some(dir) = v2 {
        let ctl = fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
        if ctl.split_whitespace().any(|c| c == "memory") {
            return Ok(dir);
        }
        bail!(CodedError::new(
            ExitCode::KernelFeature,
            format!(
                "the memcg-stat lab needs the memory controller below its cgroup ({}): it is not enabled there (cgroup.subtree_control)",
                dir.display()
            )
        ));
    }
    bail!(CodedError::new(
        ExitCode::KernelFeature,
        "the memcg-stat lab needs a memory cgroup hierarchy (v1 memory controller, or v2 with memory enabled)"
    ))
}

/// On cgroup v2 a new cgroup's children get the memory controller (and memory.stat)
/// only once it is in the cgroup's `cgroup.subtree_control`; v1 has no such file.
fn enable_memory_below(dir: &Path) -> anyhow::Result<()> {
    let ctl = dir.join("cgroup.subtree_control");
    if !ctl.exists() {
        return Ok(());
    }
    fs::write(&ctl, "+memory").with_context(|| {
        format!(
            "enabling the memory controller below {} (cgroup v2)",
            dir.display()
        )
    })
}

/// `stalltrace charge-cgroups` (hidden): the helper that charges the lab's cgroups.
#[derive(clap::Args, Debug, Clone)]
pub struct ChargeArgs {
    /// The cgroups to charge, in order (at most 10000).
    #[arg(long, num_args = 1..=MAX_CHARGED, required = true)]
    pub cgroups: Vec<PathBuf>,
    /// Existing files to write into, one per cgroup.
    #[arg(long, num_args = 1..=MAX_CHARGED, required = true)]
    pub files: Vec<PathBuf>,
    /// The cgroup to go back to (where the lab runs).
    #[arg(long)]
    pub back: PathBuf,
}

/// Moves itself into each cgroup and writes page cache into that cgroup's file: the
/// pages are charged there, and nothing else is (no fork, no new file, no new dentry:
/// the files were made by the lab in its own cgroup), so deleting the files later
/// releases the cgroups.
/// Cgroups one `charge-cgroups` charges at most (the lab makes 400).
const MAX_CHARGED: usize = 10_000;

pub fn charge_run(a: ChargeArgs) -> anyhow::Result<ExitCode> {
    if a.cgroups.len() != a.files.len() {
        bail!(CodedError::new(
            ExitCode::Usage,
            format!(
                "{} cgroups but {} files: one file per cgroup",
                a.cgroups.len(),
                a.files.len()
            )
        ));
    }
    let me = std::process::id().to_string();
    let page = vec![0x5au8; CHARGE];
    for (cg, file) in a.cgroups.iter().zip(&a.files) {
        fs::write(cg.join("cgroup.procs"), &me)
            .with_context(|| format!("joining {}", cg.display()))?;
        // Only the regular files the lab made: never through a link, never a device.
        let mut f = fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(file)
            .with_context(|| format!("opening {}", file.display()))?;
        let md = f
            .metadata()
            .with_context(|| format!("checking {}", file.display()))?;
        if !md.is_file() {
            bail!(CodedError::new(
                ExitCode::Usage,
                format!(
                    "{} is a {}, not a regular file",
                    file.display(),
                    stalltrace_analysis::output::kind(&md.file_type())
                )
            ));
        }
        f.write_all(&page)?;
    }
    fs::write(a.back.join("cgroup.procs"), &me)
        .with_context(|| format!("going back to {}", a.back.display()))?;
    Ok(ExitCode::Ok)
}

/// Charges each cgroup with page cache in its own file under `files` (made here, in the
/// lab's cgroup), through the helper.
fn charge(cgroups: &[PathBuf], files: &Path, back: &Path) -> anyhow::Result<()> {
    let paths: Vec<PathBuf> = (0..cgroups.len())
        .map(|i| files.join(format!("f{i}")))
        .collect();
    for p in &paths {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(p)
            .with_context(|| format!("creating {}", p.display()))?;
    }
    let exe = std::env::current_exe().context("finding the stalltrace binary")?;
    let mut cmd = Command::new(exe);
    super::tied::tie_to_lab(&mut cmd, libc::SIGKILL, None);
    let st = cmd
        .arg("charge-cgroups")
        .arg("--cgroups")
        .args(cgroups)
        .arg("--files")
        .args(&paths)
        .arg("--back")
        .arg(back)
        .status()
        .context("starting the cgroup charger")?;
    if !st.success() {
        bail!("charging the lab's cgroups failed ({st})");
    }
    Ok(())
}

/// Times a few reads of `file`: (median, max) ns.
fn read_cost(file: &Path) -> Option<(u64, u64)> {
    let mut t: Vec<u64> = (0..5)
        .filter_map(|_| {
            let t0 = Instant::now();
            fs::read(file).ok()?;
            u64::try_from(t0.elapsed().as_nanos()).ok()
        })
        .collect();
    t.sort_unstable();
    Some((*t.get(t.len() / 2)?, *t.last()?))
}

impl Scenario for MemcgStat {
    fn name(&self) -> &'static str {
        "memcg-stat"
    }

    fn summary(&self) -> &'static str {
        "the 2019 GitHub incident's culprit: dying memory cgroups (charged with page cache, then removed) and a SCHED_FIFO walker (stat-walker) reading memory.stat of every cgroup in a loop, as cadvisor did"
    }

    fn culprit(&self) -> &'static str {
        "stat-walker"
    }

    fn prepare(&self, lab: &mut Lab<'_>) -> anyhow::Result<String> {
        let own = own_memcg()?;
        let parent = lab.journal.private_dir(&own, "lab")?;
        enable_memory_below(&parent)?;
        // tmpfs: its pages are page cache charged to the writer's cgroup, and freed the
        // moment the file is deleted (no journal, no buffer heads).
        let files = lab
            .journal
            .private_dir(Path::new("/dev/shm"), "lab-cache")?;
        let made: Vec<PathBuf> = (0..MADE).map(|i| parent.join(format!("c{i}"))).collect();
        // Recorded before they exist: a killed lab's clean-up removes them (children
        // first), after deleting the files whose cache keeps the removed ones dying.
        lab.journal.note(|s| {
            s.dirs.retain(|d| d != &parent);
            s.cgroups.push(parent.clone());
            s.cgroups.extend(made.iter().cloned());
        })?;
        for d in &made {
            fs::create_dir(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let facts_before = crate::doctor::cgroup_facts(&crate::doctor::Roots::live());
        charge(&made, &files, &own)?;
        for d in &made[LIVE..] {
            fs::remove_dir(d).with_context(|| format!("removing {}", d.display()))?;
        }
        let facts = crate::doctor::cgroup_facts(&crate::doctor::Roots::live());
        let dying = |f: &stalltrace_analysis::dump::CgroupFacts| f.memcg_dying.unwrap_or(0);
        crate::outln!(
            "lab: made {MADE} memory cgroups under {}, charged each with {} KiB of page cache, removed {}: dying memory cgroups {} → {}{}",
            parent.display(),
            CHARGE >> 10,
            MADE - LIVE,
            dying(&facts_before),
            dying(&facts),
            facts
                .memcg_live
                .map(|l| format!(" ({l} live)"))
                .unwrap_or_default()
        );
        let one = parent.join("c0").join("memory.stat");
        if let Some((median, max)) = read_cost(&one) {
            let root = facts
                .root_stat_read_median_ns
                .map(|r| format!(", the hierarchy root's {}", human_ns(r)))
                .unwrap_or_default();
            let verdict = if max >= 10_000_000 {
                "a single read could stall RX here, as on the 2019 GitHub incident's 4.9 node"
            } else {
                "a single read would not stall RX on this kernel (the per-read walk of dying cgroups was removed in 5.2): the walker's loop holds the CPU instead, standing in for the 2019 GitHub incident's long read"
            };
            crate::outln!(
                "lab: one memory.stat read costs {} (max {}){root}: {verdict}",
                human_ns(median),
                human_ns(max)
            );
        }
        let how = super::napi::threaded_napi(lab)?;
        Ok(how)
    }

    fn hog(&self, lab: &mut Lab<'_>, mut base: HogArgs) -> anyhow::Result<HogArgs> {
        let own = own_memcg()?;
        let parent = lab
            .journal
            .state()
            .cgroups
            .iter()
            .find(|c| c.parent() == Some(own.as_path()))
            .cloned()
            .context("the lab's cgroups are not in its journal")?;
        base.walk_stats = Some(parent);
        Ok(base)
    }

    /// The walker blamed is not enough: its activity must show memory.stat.
    fn check(&self, report: &Report) -> Result<(), String> {
        let Some(c) = report.culprits.first() else {
            return Err("no culprit".into());
        };
        let reads_stat = c.activity.as_ref().is_some_and(|a| {
            a.syscalls.iter().any(|x| {
                x.path
                    .as_deref()
                    .is_some_and(|p| p.ends_with("/memory.stat"))
            })
        });
        if reads_stat {
            Ok(())
        } else {
            Err(format!(
                "its activity does not show memory.stat: {}",
                c.activity
                    .as_ref()
                    .and_then(stalltrace_analysis::activity::phrase)
                    .unwrap_or_default()
            ))
        }
    }
}
