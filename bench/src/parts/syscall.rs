//! The syscall tax: nanoseconds per `getpid()` (a raw syscall, nothing cached) in a
//! tight loop on CPU 1, untraced, under `stalltrace record` in its default mode, under
//! `record --syscalls` (the opt-in exact tracing) and under the floor of `--syscalls`
//! (empty programs on the same hooks, syscall hooks included), in alternating rounds;
//! the best of several repetitions per run (noise only ever adds time). Also counts the
//! syscall programs each configuration attaches, and their bpf_stats.
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde::{Deserialize, Serialize};

use crate::bpf::{delta, snapshot, Programs, SYSCALL_PROGS};
use crate::ctx::{Ctx, Mode};
use crate::stats::Spread;

const MODES: [Mode; 4] = [
    Mode::None,
    Mode::Default,
    Mode::Syscalls,
    Mode::FloorSyscalls,
];

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct SyscallMode {
    pub(crate) label: String,
    pub(crate) ns_per_getpid: Spread,
    /// Per round: this configuration's ns minus the untraced run's.
    pub(crate) added_ns: Spread,
    pub(crate) syscall_programs: Vec<String>,
    pub(crate) programs_stats_on: Programs,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct SyscallPart {
    pub(crate) calls_per_run: u64,
    pub(crate) repetitions: usize,
    pub(crate) rounds: usize,
    pub(crate) modes: BTreeMap<String, SyscallMode>,
}

/// ns per getpid() over `n` calls, best of `reps`, on a thread pinned to CPU 1.
fn getpid_ns(n: u64, reps: usize) -> anyhow::Result<f64> {
    let h = std::thread::spawn(move || -> anyhow::Result<f64> {
        // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes within it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(1, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                bail!(
                    "pinning the getpid loop to CPU 1: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
        let mut best = f64::INFINITY;
        for _ in 0..reps {
            let t0 = Instant::now();
            for _ in 0..n {
                // SAFETY: getpid has no arguments and cannot fail.
                unsafe { libc::syscall(libc::SYS_getpid) };
            }
            best = best.min(t0.elapsed().as_nanos() as f64 / n as f64);
        }
        Ok(best)
    });
    h.join()
        .map_err(|_| anyhow::anyhow!("the getpid loop panicked"))?
}

pub(crate) fn run(cx: &mut Ctx, rounds: usize) -> anyhow::Result<SyscallPart> {
    let (n, reps) = if cx.quick {
        (500_000, 3)
    } else {
        (2_000_000, 7)
    };
    println!(
        "bench: syscall tax: getpid() x {n} on CPU 1 (best of {reps}), {rounds} rounds alternating {}",
        MODES.map(Mode::short).join(" / ")
    );
    let mut runs: Vec<(Mode, usize, f64)> = vec![];
    let mut out = SyscallPart {
        calls_per_run: n,
        repetitions: reps,
        rounds,
        modes: BTreeMap::new(),
    };
    for r in 0..rounds {
        for m in MODES {
            let tracer = cx.start_tracer(m, &[])?;
            let ns = getpid_ns(n, reps)?;
            runs.push((m, r, ns));
            if let Some((mut p, ids, dump)) = tracer {
                if r == 0 {
                    let progs = snapshot(&ids)?;
                    let sys: Vec<String> = progs
                        .values()
                        .filter(|p| SYSCALL_PROGS.contains(&p.name.as_str()))
                        .map(|p| format!("{} ({})", p.name, p.kind))
                        .collect();
                    cx.stats.set(true)?;
                    let s0 = snapshot(&ids)?;
                    let t0 = Instant::now();
                    let on = getpid_ns(n, 1);
                    let dt = t0.elapsed().as_secs_f64();
                    let s1 = snapshot(&ids)?;
                    cx.stats.set(false)?;
                    on?;
                    let e = out.modes.entry(m.key().into()).or_default();
                    e.syscall_programs = sys;
                    e.programs_stats_on = delta(&s0, &s1, dt);
                }
                p.stop(Duration::from_secs(20));
                let _ = std::fs::remove_file(dump);
            }
            println!(
                "  round {} {:<22} {:>7.1} ns per getpid()",
                r + 1,
                m.short(),
                ns
            );
        }
    }
    for m in MODES {
        let added = runs.iter().filter(|x| x.0 == m).filter_map(|x| {
            runs.iter()
                .find(|u| u.0 == Mode::None && u.1 == x.1)
                .map(|u| x.2 - u.2)
        });
        let e = out.modes.entry(m.key().into()).or_default();
        e.label = m.label().into();
        e.ns_per_getpid = Spread::of(runs.iter().filter(|x| x.0 == m).map(|x| x.2));
        e.added_ns = Spread::of(added);
    }
    Ok(out)
}
