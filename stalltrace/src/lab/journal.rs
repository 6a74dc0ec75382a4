//! What the lab changed on this machine, written down before each change, so that a
//! lab killed by SIGKILL, the OOM killer or a closed SSH session can be undone later:
//! `stalltrace lab --cleanup` (run by itself at the start of the next lab) ends the
//! processes that are left (SIGTERM, a bounded wait, then SIGKILL; it returns only once
//! they are gone, and says how each went), restores the sysctls to the values recorded
//! before they were touched and removes the namespace, links, files and cgroups.
//!
//! The journal is `/run/stalltrace/lab.json` (directory 0700, root's); a lock file next
//! to it (`flock`) makes a second lab refuse while one runs.
use std::{
    fs::{self, File, OpenOptions},
    io::Write as _,
    os::unix::{
        fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _},
        io::AsRawFd as _,
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::exit::{CodedError, ExitCode};

pub const DIR: &str = "/run/stalltrace";

/// A child process, named by pid and start time so a reused pid is never killed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proc {
    pub pid: u32,
    pub start_ticks: u64,
    pub what: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The lab process that wrote this.
    pub pid: u32,
    pub namespace: Option<String>,
    /// Links in the root namespace (the host end of the veth pair).
    pub links: Vec<String>,
    /// (path, value before the lab changed it), in the order changed.
    pub sysctls: Vec<(String, String)>,
    /// Directories the lab made (removed with what is in them).
    pub dirs: Vec<PathBuf>,
    /// cgroup directories the lab made, parents first (removed children first).
    pub cgroups: Vec<PathBuf>,
    /// Directories kept for the user (the dump's): removed only while still empty.
    #[serde(default)]
    pub kept: Vec<PathBuf>,
    pub procs: Vec<Proc>,
}

/// The running lab's journal, holding the lock.
pub struct Journal {
    dir: PathBuf,
    state: State,
    _lock: File,
    /// Drop undoes what the state records (off only to simulate a killed lab in tests).
    armed: bool,
}

/// `/proc/PID/stat` field 22: when the process started, in clock ticks since boot.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

fn private_dir(dir: &Path) -> anyhow::Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let md =
                fs::symlink_metadata(dir).with_context(|| format!("checking {}", dir.display()))?;
            anyhow::ensure!(
                md.is_dir() && !md.file_type().is_symlink(),
                "{} exists and is not a directory; remove it",
                dir.display()
            );
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("creating {}", dir.display())),
    }
}

/// Takes the lab lock without waiting: `None` when another lab holds it. The lock file
/// is removed by the lab that ends (a clean machine keeps no `/run/stalltrace`), so a lock
/// taken on a file already unlinked by that lab is dropped and taken again on the new one.
fn lock(dir: &Path) -> anyhow::Result<Option<File>> {
    let path = dir.join("lab.lock");
    for _ in 0..10 {
        private_dir(dir)?;
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            // A FIFO planted there must not block the open.
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
            .context("opening the lab's lock file")?;
        let held = f.metadata().context("checking the lab's lock file")?;
        anyhow::ensure!(
            held.is_file(),
            "{} is a {}, not a regular file; remove it",
            path.display(),
            stalltrace_analysis::output::kind(&held.file_type())
        );
        // SAFETY: flock(2) on an fd we own; LOCK_NB never blocks.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Ok(None);
        }
        if fs::symlink_metadata(&path).is_ok_and(|m| m.ino() == held.ino() && m.dev() == held.dev())
        {
            return Ok(Some(f));
        }
    }
    anyhow::bail!("the lab's lock file {} keeps changing", path.display())
}

/// Removes the lock file and the directory while the lock is still held (the last
/// step of a lab that ends, or of a clean-up); with the temporary journal a lab killed
/// while saving leaves.
fn release(dir: &Path) {
    let _ = fs::remove_file(dir.join("lab.json.tmp"));
    let _ = fs::remove_file(dir.join("lab.lock"));
    let _ = fs::remove_dir(dir);
}

fn read_state(dir: &Path) -> anyhow::Result<Option<State>> {
    let p = dir.join("lab.json");
    match fs::read(&p) {
        Ok(b) => Ok(Some(
            serde_json::from_slice(&b).with_context(|| format!("reading {}", p.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

impl Journal {
    /// Takes the lab lock (refusing if another lab holds it), undoes what a dead lab
    /// left (said on stderr), and starts a fresh journal for this one.
    pub fn begin() -> anyhow::Result<Self> {
        Self::begin_in(Path::new(DIR))
    }

    pub fn begin_in(dir: &Path) -> anyhow::Result<Self> {
        let Some(lock) = lock(dir)? else {
            let who = read_state(dir).ok().flatten().map(|s| s.pid).unwrap_or(0);
            return Err(CodedError::new(
                ExitCode::Failure,
                format!("another stalltrace lab is running (pid {who}); wait for it to finish"),
            )
            .into());
        };
        if let Some(old) = read_state(dir)? {
            let (done, survivors) = undo(&old);
            if !survivors.is_empty() {
                return Err(CodedError::new(
                    ExitCode::Failure,
                    format!(
                        "a previous lab (pid {}) left processes that do not die: {}",
                        old.pid,
                        survivors.join(", ")
                    ),
                )
                .into());
            }
            crate::errln!(
                "lab: a previous lab (pid {}) did not clean up; undone now: {}",
                old.pid,
                if done.is_empty() {
                    "nothing was left".into()
                } else {
                    done.join(", ")
                }
            );
        }
        let mut j = Self {
            dir: dir.to_path_buf(),
            state: State {
                pid: std::process::id(),
                ..State::default()
            },
            _lock: lock,
            armed: true,
        };
        j.save()?;
        Ok(j)
    }

    /// Writes the journal: to a temporary file, synced, renamed over the old one.
    fn save(&mut self) -> anyhow::Result<()> {
        let tmp = self.dir.join("lab.json.tmp");
        let _ = fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec_pretty(&self.state)?)?;
        f.sync_all()?;
        fs::rename(&tmp, self.dir.join("lab.json")).context("saving the lab journal")?;
        Ok(())
    }

    /// Records a change before it is made.
    pub fn note(&mut self, f: impl FnOnce(&mut State)) -> anyhow::Result<()> {
        f(&mut self.state);
        self.save()
    }

    /// Sets a sysctl (a /proc/sys path) after recording its value.
    pub fn set_sysctl(&mut self, path: &str, value: &str) -> anyhow::Result<()> {
        let old = fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        let old = old.trim().to_string();
        if !self.state.sysctls.iter().any(|(p, _)| p == path) {
            self.note(|s| s.sysctls.push((path.to_string(), old)))?;
        }
        fs::write(path, value).with_context(|| format!("writing {value} to {path}"))
    }

    /// Puts back every sysctl the lab changed, and forgets them.
    pub fn restore_sysctls(&mut self) -> anyhow::Result<()> {
        for (p, v) in self.state.sysctls.iter().rev() {
            fs::write(p, v).with_context(|| format!("restoring {p} to {v}"))?;
        }
        self.note(|s| s.sysctls.clear())
    }

    /// A process started by the lab (killed by `--cleanup` if the lab dies first).
    pub fn child(&mut self, pid: u32, what: &str) -> anyhow::Result<()> {
        let start_ticks = start_ticks(pid).unwrap_or(0);
        self.note(|s| {
            s.procs.push(Proc {
                pid,
                start_ticks,
                what: what.into(),
            })
        })
    }

    /// A private directory (0700) made by the lab under `parent`, with a name nobody
    /// can predict and create first.
    pub fn private_dir(&mut self, parent: &Path, tag: &str) -> anyhow::Result<PathBuf> {
        let mut buf = [0u8; 8];
        // SAFETY: getrandom(2) writes at most buf.len() bytes into buf.
        let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
        anyhow::ensure!(
            n == 8,
            "getrandom failed: {}",
            std::io::Error::last_os_error()
        );
        let dir = parent.join(format!("stalltrace-{tag}.{:016x}", u64::from_ne_bytes(buf)));
        self.note(|s| s.dirs.push(dir.clone()))?;
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// Undoes what is left and removes the journal (the normal end of a lab).
    pub fn finish(mut self) -> Vec<String> {
        let (mut done, survivors) = undo(&self.state);
        done.extend(survivors);
        self.state = State::default();
        let _ = fs::remove_file(self.dir.join("lab.json"));
        release(&self.dir);
        done
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        if self.armed && self.state != State::default() {
            let _ = undo(&self.state);
            let _ = fs::remove_file(self.dir.join("lab.json"));
            release(&self.dir);
        }
    }
}

/// `stalltrace lab --cleanup`: undoes what a dead lab left; idempotent.
pub fn cleanup() -> anyhow::Result<Vec<String>> {
    cleanup_in(Path::new(DIR))
}

pub fn cleanup_in(dir: &Path) -> anyhow::Result<Vec<String>> {
    if !dir.exists() {
        return Ok(vec![]);
    }
    let Some(_lock) = lock(dir)? else {
        let who = read_state(dir).ok().flatten().map(|s| s.pid).unwrap_or(0);
        return Err(CodedError::new(
            ExitCode::Failure,
            format!("a stalltrace lab is running (pid {who}); it cleans up after itself"),
        )
        .into());
    };
    let Some(state) = read_state(dir)? else {
        release(dir);
        return Ok(vec![]);
    };
    let (done, survivors) = undo(&state);
    if !survivors.is_empty() {
        // The journal stays: a later --cleanup tries again.
        return Err(CodedError::new(
            ExitCode::Failure,
            format!(
                "{}; and: {}",
                survivors.join(", "),
                if done.is_empty() {
                    "nothing else was left".to_string()
                } else {
                    done.join(", ")
                }
            ),
        )
        .into());
    }
    fs::remove_file(dir.join("lab.json")).context("removing the lab journal")?;
    release(dir);
    Ok(done)
}

/// Whether the process the journal names still runs: same start time, not a zombie.
fn running(p: &Proc) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{}/stat", p.pid)) else {
        return false;
    };
    let zombie = stat
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
    !zombie && start_ticks(p.pid) == Some(p.start_ticks)
}

/// How long the journaled processes get to end after SIGTERM (the recorder writes its
/// footer and detaches), and then after SIGKILL.
const TERM_WAIT: Duration = Duration::from_secs(5);
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Waits up to `limit` for every process of `ps` to end; the ones still running.
fn wait_gone<'a>(ps: &[&'a Proc], limit: Duration) -> Vec<&'a Proc> {
    let t0 = Instant::now();
    loop {
        let left: Vec<&Proc> = ps.iter().copied().filter(|p| running(p)).collect();
        if left.is_empty() || t0.elapsed() >= limit {
            return left;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn signal(p: &Proc, sig: i32) {
    if let Ok(pid) = i32::try_from(p.pid) {
        // SAFETY: kill(2); the pid is the lab's child, checked by its start time just
        // before (a pid reused since has another start time and is never signalled).
        unsafe { libc::kill(pid, sig) };
    }
}

/// Ends the processes a lab journaled: SIGTERM, a bounded wait, then SIGKILL for the
/// ones left and another bounded wait. Returns what happened to each, and the ones
/// still running after all that.
fn stop_procs(procs: &[Proc]) -> (Vec<String>, Vec<String>) {
    let me = std::process::id();
    let live: Vec<&Proc> = procs
        .iter()
        .rev()
        .filter(|p| p.pid != me && running(p))
        .collect();
    if live.is_empty() {
        return (vec![], vec![]);
    }
    let t0 = Instant::now();
    for p in &live {
        signal(p, libc::SIGTERM);
    }
    let left = wait_gone(&live, TERM_WAIT);
    let took = t0.elapsed();
    let mut done: Vec<String> = live
        .iter()
        .filter(|p| !left.iter().any(|l| l.pid == p.pid))
        .map(|p| {
            format!(
                "stopped {} (pid {}): gone {} ms after SIGTERM",
                p.what,
                p.pid,
                took.as_millis()
            )
        })
        .collect();
    for p in &left {
        if running(p) {
            signal(p, libc::SIGKILL);
        }
    }
    let survivors = wait_gone(&left, KILL_WAIT);
    for p in &left {
        if !survivors.iter().any(|s| s.pid == p.pid) {
            done.push(format!(
                "killed {} (pid {}): still running {} s after SIGTERM, gone after SIGKILL",
                p.what,
                p.pid,
                TERM_WAIT.as_secs()
            ));
        }
    }
    let survivors = survivors
        .iter()
        .map(|p| {
            format!(
                "{} (pid {}) still runs {} s after SIGKILL",
                p.what,
                p.pid,
                KILL_WAIT.as_secs()
            )
        })
        .collect();
    (done, survivors)
}

/// Undoes everything `s` records that is still there; says what it did, and what it
/// could not undo (a process that would not die).
fn undo(s: &State) -> (Vec<String>, Vec<String>) {
    // Every process is gone before its cgroup is removed (a cgroup with a task in it
    // is busy) and before the machine is said to be clean.
    let (mut done, survivors) = stop_procs(&s.procs);
    for (p, v) in s.sysctls.iter().rev() {
        let now = fs::read_to_string(p).unwrap_or_default();
        if now.trim() != v && fs::write(p, v).is_ok() {
            done.push(format!("{p} back to {v}"));
        }
    }
    if let Some(ns) = &s.namespace {
        if crate::lab::netns::namespace_exists(ns)
            && crate::lab::netns::run(&["ip", "netns", "del", ns]).is_ok()
        {
            done.push(format!("namespace {ns} removed"));
        }
    }
    for l in &s.links {
        if crate::lab::netns::link_exists(l)
            && crate::lab::netns::run(&["ip", "link", "del", l]).is_ok()
        {
            done.push(format!("link {l} removed"));
        }
    }
    for d in s.dirs.iter().rev() {
        if d.exists() && fs::remove_dir_all(d).is_ok() {
            done.push(format!("{} removed", d.display()));
        }
    }
    for k in &s.kept {
        // Only an empty one goes: a lab killed before its recorder wrote anything.
        if fs::remove_dir(k).is_ok() {
            done.push(format!("empty {} removed", k.display()));
        }
    }
    for c in s.cgroups.iter().rev() {
        if c.exists() && fs::remove_dir(c).is_ok() {
            done.push(format!("cgroup {} removed", c.display()));
        }
    }
    (done, survivors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_labs_journal_is_undone_once_and_a_live_lab_is_refused() {
        let root = std::env::temp_dir().join(format!("st-journal-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        let dir = root.join("run");
        let made = {
            let mut j = Journal::begin_in(&dir).unwrap();
            assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
            // A second lab is refused while this one holds the lock.
            let e = Journal::begin_in(&dir).err().unwrap();
            assert!(
                format!("{e}").contains("another stalltrace lab is running"),
                "{e}"
            );
            assert!(cleanup_in(&dir).is_err());
            let d = j.private_dir(&root, "t").unwrap();
            fs::write(d.join("f"), b"x").unwrap();
            // Leave it as a killed lab would: the journal stays (and, killed while
            // saving, its temporary copy), the lock goes.
            fs::write(dir.join("lab.json.tmp"), b"{").unwrap();
            j.armed = false;
            drop(j);
            d
        };
        assert!(made.exists());
        let done = cleanup_in(&dir).unwrap();
        assert_eq!(done, vec![format!("{} removed", made.display())]);
        assert!(!made.exists());
        assert_eq!(
            cleanup_in(&dir).unwrap(),
            Vec::<String>::new(),
            "idempotent"
        );
        assert!(
            !dir.exists(),
            "the clean-up removes the lock and its directory"
        );
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_lab_that_ends_leaves_no_directory_and_the_next_one_starts() {
        let root = std::env::temp_dir().join(format!("st-journal-end-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        let dir = root.join("run");
        let j = Journal::begin_in(&dir).unwrap();
        assert!(dir.join("lab.lock").exists() && dir.join("lab.json").exists());
        assert_eq!(j.finish(), Vec::<String>::new());
        assert!(
            !dir.exists(),
            "lock, journal and directory removed at the end"
        );
        // An error path (drop without finish) cleans up the same way.
        let mut j = Journal::begin_in(&dir).unwrap();
        j.note(|s| s.links.push("st-no-such-link".into())).unwrap();
        drop(j);
        assert!(!dir.exists(), "removed by drop too");
        fs::remove_dir_all(&root).unwrap();
    }
}
