//! What every part shares: the configurations a part runs under ([`Mode`]: untraced,
//! the floor, stalltrace's modes, bpftrace peers) and [`Ctx`], which owns the bench's
//! namespaces and starts tracers (waiting until their programs are attached and
//! finding their program ids), hogs, floods and probers, each killed on drop.
use std::{fs, path::PathBuf, time::Duration};

use anyhow::{bail, Context as _};

use crate::bpf::{max_prog_id, tracer_progs};
use crate::sys::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    None,
    Default,
    Every,
    Bpftrace,
    /// Default-mode filter plus `--stacks` (measured once, after the rounds).
    Stacks,
    /// Default-mode filter plus `--syscalls` (exact syscall tracing, opt-in).
    Syscalls,
    /// bpftrace `bench/runqslower.bt`: the scheduler peer.
    Runqslower,
    /// Empty programs on the default mode's hooks (the floor).
    Floor,
    /// The floor plus empty syscall hooks (the floor of `--syscalls`).
    FloorSyscalls,
}

impl Mode {
    pub(crate) fn key(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Default => "stalltrace_default",
            Mode::Every => "stalltrace_every_echo",
            Mode::Bpftrace => "bpftrace",
            Mode::Stacks => "stalltrace_stacks",
            Mode::Syscalls => "stalltrace_syscalls",
            Mode::Runqslower => "bpftrace_runqslower",
            Mode::Floor => "floor",
            Mode::FloorSyscalls => "floor_syscalls",
        }
    }
    pub(crate) fn label(self) -> &'static str {
        match self {
            Mode::None => "no tracer",
            Mode::Default => "stalltrace record, default mode (--peer of the probe namespace: the flood does not match)",
            Mode::Every => "stalltrace record, every ICMP echo (no filter; the same job as bpftrace)",
            Mode::Bpftrace => "bpftrace bench/seed-equivalent.bt (the 2019 GitHub incident's job)",
            Mode::Stacks => "stalltrace record --stacks, default-mode filter",
            Mode::Syscalls => "stalltrace record --syscalls, default-mode filter",
            Mode::Runqslower => "bpftrace bench/runqslower.bt (wakeup/switch hooks, hash map)",
            Mode::Floor => "floor: an empty program on each of the default mode's hooks",
            Mode::FloorSyscalls => "floor of --syscalls: empty programs, syscall hooks too",
        }
    }
    pub(crate) fn short(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Default => "stalltrace default",
            Mode::Every => "stalltrace every echo",
            Mode::Bpftrace => "bpftrace",
            Mode::Stacks => "stalltrace --stacks",
            Mode::Syscalls => "stalltrace --syscalls",
            Mode::Runqslower => "bpftrace runqslower",
            Mode::Floor => "floor (empty programs)",
            Mode::FloorSyscalls => "floor --syscalls",
        }
    }
}

/// The planted culprit's name in stalls the bench makes.
pub(crate) const HOG_NAME: &str = "bench-hog";

/// The bench's state across parts: its namespaces, the paths it runs, a counter that
/// names each child's output files.
pub(crate) struct Ctx {
    pub(crate) root: PathBuf,
    pub(crate) bin: PathBuf,
    pub(crate) dir: PathBuf,
    pub(crate) quick: bool,
    pub(crate) flood: Ns,
    pub(crate) probe: Ns,
    pub(crate) flood_pid: u32,
    pub(crate) stats: StatsGuard,
    pub(crate) seq: u32,
    pub(crate) ksoftirqd0: u32,
    /// A namespace whose RX runs on a threaded-NAPI kthread pinned to CPU 1 (for
    /// stalls: a SCHED_FIFO hog on CPU 1 starves it); made when first needed.
    pub(crate) stall_ns: Option<stalltrace::lab::netns::Netns>,
    pub(crate) stall_subnet: u8,
}

impl Ctx {
    pub(crate) fn name(&mut self, tag: &str) -> String {
        self.seq += 1;
        format!("{:03}-{tag}", self.seq)
    }

    /// A fresh dump path in the bench's directory.
    pub(crate) fn dump_path(&mut self, tag: &str) -> PathBuf {
        let n = self.name(tag);
        self.dir.join(format!("{n}.jsonl"))
    }

    /// The threaded-NAPI namespace (made on first use): (namespace, its address).
    pub(crate) fn stall_ns(&mut self) -> anyhow::Result<String> {
        if self.stall_ns.is_none() {
            let me = std::process::id() % 100_000;
            let ns = stalltrace::lab::netns::Netns::create(
                &format!("stb{me}s"),
                &format!("stb{me}sh"),
                &format!("stb{me}sn"),
                self.stall_subnet,
            )
            .context("creating the stall namespace")?;
            let napi = ns
                .threaded_napi(1)
                .context("threaded NAPI in the stall namespace")?;
            println!(
                "bench: stall namespace {} ({}), RX by napi thread pid {napi} pinned to CPU 1",
                ns.name, ns.ns_addr
            );
            self.stall_ns = Some(ns);
        }
        Ok(self
            .stall_ns
            .as_ref()
            .map(|n| n.ns_addr.clone())
            .unwrap_or_default())
    }

    /// Starts `stalltrace <args>` and waits for `marker` in its output; returns it with
    /// the ids of the BPF programs it holds.
    pub(crate) fn start_stalltrace(
        &mut self,
        tag: &str,
        args: &[String],
        marker: &str,
    ) -> anyhow::Result<(Proc, Vec<u64>)> {
        let before = max_prog_id()?;
        let tag = self.name(tag);
        let mut argv = vec![self.bin.display().to_string()];
        argv.extend(args.iter().cloned());
        let mut p = Proc::spawn(&tag, &argv, &self.dir)?;
        p.wait_for(marker, Duration::from_secs(90))?;
        pause(Duration::from_millis(300))?;
        let ids = tracer_progs(p.pid(), before)?;
        if ids.is_empty() {
            bail!("{tag}: no BPF programs found for pid {}", p.pid());
        }
        Ok((p, ids))
    }

    /// `stalltrace hog` on CPU 1 at SCHED_FIFO 50 for `secs`, in 100 ms bursts with 30
    /// ms gaps (the lab's rt-hog culprit); it exits by itself.
    pub(crate) fn start_hog(&mut self, secs: u64) -> anyhow::Result<Proc> {
        let tag = self.name("hog");
        let argv: Vec<String> = vec![
            "timeout".into(),
            "-s".into(),
            "KILL".into(),
            (secs + 5).to_string(),
            self.bin.display().to_string(),
            "hog".into(),
            "--cpu".into(),
            "1".into(),
            "--fifo".into(),
            "50".into(),
            "--name".into(),
            HOG_NAME.into(),
            "--duration".into(),
            format!("{secs}s"),
            "--burst".into(),
            "100ms".into(),
            "--gap".into(),
            "30ms".into(),
        ];
        Proc::spawn(&tag, &argv, &self.dir)
    }

    /// An hping3 flood (or rate `-i r`) pinned to CPU 0 to `addr`, bounded by `secs`.
    pub(crate) fn start_flood_to(
        &mut self,
        addr: &str,
        rate: Option<&str>,
        secs: u64,
    ) -> anyhow::Result<Proc> {
        let tag = self.name("flood");
        let mut argv: Vec<String> = ["timeout", "-s", "INT"].map(String::from).into();
        argv.push(secs.to_string());
        argv.extend(
            [
                "taskset",
                "-c",
                "0",
                "hping3",
                "--icmp",
                "-q",
                "-c",
                "500000000",
            ]
            .map(String::from),
        );
        match rate {
            None => argv.push("--flood".into()),
            Some(r) => argv.extend(["-i".into(), r.into()]),
        }
        argv.push(addr.into());
        Proc::spawn(&tag, &argv, &self.dir)
    }

    /// Starts a tracer and waits until its programs are attached: the process, its
    /// program ids and the dump it writes (stalltrace only).
    pub(crate) fn start_tracer(
        &mut self,
        mode: Mode,
        extra: &[&str],
    ) -> anyhow::Result<Option<(Proc, Vec<u64>, PathBuf)>> {
        let before = max_prog_id()?;
        let tag = self.name(mode.key());
        let dump = self.dir.join(format!("{tag}.jsonl"));
        let (argv, marker): (Vec<String>, &str) = match mode {
            Mode::None => return Ok(None),
            Mode::Default | Mode::Every | Mode::Stacks | Mode::Syscalls => {
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
                if mode != Mode::Every {
                    a.extend(["--peer".into(), self.probe.addr.clone()]);
                }
                if mode == Mode::Stacks {
                    a.push("--stacks".into());
                }
                if mode == Mode::Syscalls {
                    a.push("--syscalls".into());
                }
                a.extend(extra.iter().map(|s| s.to_string()));
                (a, "recording to")
            }
            Mode::Floor | Mode::FloorSyscalls => {
                let mut a = vec![
                    std::env::current_exe()
                        .context("the bench's own path")?
                        .display()
                        .to_string(),
                    "floor".into(),
                ];
                if mode == Mode::FloorSyscalls {
                    a.push("--syscalls".into());
                }
                (a, "floor attached")
            }
            Mode::Bpftrace | Mode::Runqslower => {
                let script = self.root.join(if mode == Mode::Bpftrace {
                    "bench/seed-equivalent.bt"
                } else {
                    "bench/runqslower.bt"
                });
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
        if matches!(mode, Mode::Bpftrace | Mode::Runqslower) {
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

    /// A flood into the flood namespace.
    pub(crate) fn start_flood(&mut self, rate: Option<&str>, secs: u64) -> anyhow::Result<Proc> {
        let addr = self.flood.addr.clone();
        self.start_flood_to(&addr, rate, secs + 5)
    }

    /// `stalltrace probe` every 10 ms into the probe namespace, for about `secs`.
    pub(crate) fn start_prober(&mut self, secs: u64) -> anyhow::Result<Proc> {
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
