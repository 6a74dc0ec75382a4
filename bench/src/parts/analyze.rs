//! `stalltrace analyze` on generated dumps (`stalltrace_testkit::benchdump`): one dump
//! at a time (events per second single-threaded, peak RSS), then a directory of
//! several copies of the smaller one at once (`analyze DIR`, one thread per CPU):
//! throughput over all dumps, and peak RSS for few and for many dumps (flat in their
//! number). Reports go to /dev/null; the page cache is warmed first; best of runs.
use std::{
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

use crate::sys::*;

/// One `analyze` run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Run {
    /// Dumps analysed (1: a single dump, no parallelism).
    pub(crate) dumps: usize,
    /// Records over all dumps.
    pub(crate) records: u64,
    pub(crate) bytes: u64,
    pub(crate) wall_s: f64,
    pub(crate) user_s: f64,
    pub(crate) sys_s: f64,
    pub(crate) peak_rss_kib: f64,
    pub(crate) events_per_s: f64,
    pub(crate) generate_s: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct AnalyzePart {
    /// One dump each, growing.
    pub(crate) single: Vec<Run>,
    /// Copies of the smaller dump analysed together, few then many.
    pub(crate) multi: Vec<Run>,
}

fn warm(path: &Path) -> anyhow::Result<()> {
    let mut f = fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    while f.read(&mut buf)? > 0 {}
    Ok(())
}

/// Best of `n` runs of `analyze --format json ARGS` (by wall time).
fn best_of(bin: &Path, args: &[PathBuf], n: usize) -> anyhow::Result<Run> {
    let mut best: Option<Run> = None;
    for _ in 0..n {
        let r = time_analyze(bin, args)?;
        if best.as_ref().is_none_or(|b| r.wall_s < b.wall_s) {
            best = Some(r);
        }
    }
    best.context("no analyze run")
}

pub(crate) fn run(bin: &Path, dir: &Path, quick: bool) -> anyhow::Result<AnalyzePart> {
    let sizes: [u64; 2] = if quick {
        [100_000, 1_000_000]
    } else {
        [1_000_000, 10_000_000]
    };
    let mut part = AnalyzePart::default();
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
        warm(&dump)?;
        let mut r = best_of(bin, std::slice::from_ref(&dump), if quick { 1 } else { 2 })?;
        r.dumps = 1;
        r.records = n;
        r.bytes = size;
        r.events_per_s = n as f64 / r.wall_s;
        r.generate_s = gen_s;
        println!(
            "  analyze {n} records ({:.0} MiB): {:.2} s, {:.0} events/s, peak RSS {:.1} MiB",
            size as f64 / (1 << 20) as f64,
            r.wall_s,
            r.events_per_s,
            r.peak_rss_kib / 1024.0
        );
        part.single.push(r);
    }
    // Several dumps at once: hard links to the smaller dump in a directory of their own.
    let n = sizes[0];
    let src = dir.join(format!("dump-{n}.jsonl"));
    let size = fs::metadata(&src).map(|m| m.len()).unwrap_or(0);
    for copies in [2usize, 8] {
        let many = dir.join(format!("many-{copies}"));
        let _ = fs::remove_dir_all(&many);
        fs::create_dir_all(&many)?;
        for i in 0..copies {
            fs::hard_link(&src, many.join(format!("d{i}.jsonl")))
                .with_context(|| format!("linking {}", src.display()))?;
        }
        let mut r = best_of(bin, std::slice::from_ref(&many), if quick { 1 } else { 2 })?;
        let _ = fs::remove_dir_all(&many);
        r.dumps = copies;
        r.records = n * copies as u64;
        r.bytes = size * copies as u64;
        r.events_per_s = r.records as f64 / r.wall_s;
        println!(
            "  analyze DIR of {copies} dumps of {n} records: {:.2} s, {:.0} events/s over all, peak RSS {:.1} MiB",
            r.wall_s,
            r.events_per_s,
            r.peak_rss_kib / 1024.0
        );
        part.multi.push(r);
    }
    Ok(part)
}

/// Runs `analyze --format json ARGS` with its report to /dev/null; wall time, CPU and
/// peak RSS.
fn time_analyze(bin: &Path, args: &[PathBuf]) -> anyhow::Result<Run> {
    // Through /usr/bin/time when present: rusage of a child forked from this (larger)
    // process can report the parent's RSS as the child's peak.
    let tf = std::env::temp_dir().join(format!("stalltrace-bench-{}.time", std::process::id()));
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
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
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
        if stopped() {
            // SAFETY: our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    // Cut-short dumps (the generated ones have no footer when cut) still exit 0.
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("stalltrace analyze {args:?} failed (status {status})");
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
    Ok(Run {
        wall_s: wall,
        user_s: tv(ru.ru_utime),
        sys_s: tv(ru.ru_stime),
        peak_rss_kib: rss,
        ..Default::default()
    })
}
