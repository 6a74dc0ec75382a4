//! The recording as a checked plan: every flag resolved and checked against the
//! others and against this machine (privileges, BTF, perf events, the output path, the
//! probe target) before anything is loaded into the kernel.
use std::{net::IpAddr, path::PathBuf, time::Duration};

use stalltrace_analysis::dump::Options;
use tracer_common::{Filter, KernelConfig};

use super::args::{RecordArgs, TraceArgs};
use crate::{
    exit::{CodedError, ExitCode},
    kernel::{
        loader::LoadOptions,
        offsets,
        packet_path::{self, Needs, PacketPath},
        preflight,
    },
    probe::{self, ProberConfig},
};

/// What to trace, checked: what `record` and `watch` share.
pub struct TracePlan {
    pub load: LoadOptions,
    /// Which hook reports packets, and why: decided here, once, from what the run
    /// must see and what this kernel offers.
    pub packets: PacketPath,
    /// Trace syscalls exactly (raw_syscalls hooks).
    pub syscalls: bool,
    /// The sampler's rate.
    pub sample_hz: u64,
    /// `--stacks`: samples carry stacks.
    pub stacks: bool,
    pub stall_threshold_ns: u64,
    pub probe: Option<ProberConfig>,
    pub pods_dir: PathBuf,
    pub containers_dir: PathBuf,
    /// What the user should know before it starts (offsets that could not be read).
    pub notes: Vec<String>,
}

pub struct RecordPlan {
    pub trace: TracePlan,
    pub output: PathBuf,
    pub force: bool,
    pub duration: Option<Duration>,
    pub quiet: bool,
    pub summary_every: Option<Duration>,
    pub probe_log: Option<PathBuf>,
    pub dry_run: bool,
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The in-kernel packet filter: what to record.
pub fn filter(a: &TraceArgs, probe_target: Option<IpAddr>) -> Filter {
    let mut f = Filter::all_icmp();
    if let Some(id) = a.icmp_id {
        f.icmp_id_set = 1;
        f.icmp_id = id;
    }
    match a.peer.or(probe_target) {
        Some(IpAddr::V4(p)) => {
            f.peer_family = 4;
            f.peer[..4].copy_from_slice(&p.octets());
        }
        Some(IpAddr::V6(p)) => {
            f.peer_family = 6;
            f.peer = p.octets();
        }
        None => {}
    }
    if let Some(port) = a.tcp {
        f.tcp_port_set = 1;
        f.tcp_port = port;
    }
    f
}

/// `stalltrace-<unix time>.jsonl` in the working directory.
fn default_output() -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    PathBuf::from(format!("stalltrace-{secs}.jsonl"))
}

impl RecordPlan {
    pub fn check(a: &RecordArgs) -> anyhow::Result<Self> {
        let trace = TracePlan::check(&a.trace, "stalltrace record")?;
        if let Some(p) = &a.probe_log {
            std::fs::metadata(p).map_err(|e| {
                CodedError::new(
                    ExitCode::BadInput,
                    format!("{}: cannot read: {e}", p.display()),
                )
            })?;
        }
        let output = a.output.clone().unwrap_or_else(default_output);
        if !a.dry_run {
            super::output_check(&output, a.force, a.probe_log.is_some())?;
        }
        Ok(Self {
            trace,
            output,
            force: a.force,
            duration: a.duration,
            quiet: a.quiet,
            summary_every: a.summary_every,
            probe_log: a.probe_log.clone(),
            dry_run: a.dry_run,
        })
    }
}

impl TracePlan {
    /// Checks the tracing flags against each other and this machine; `what` names the
    /// command in the privileges error.
    pub fn check(a: &TraceArgs, what: &str) -> anyhow::Result<Self> {
        // A bad command line is said first, whoever runs it.
        let needs = Needs::of(&filter(a, None), a.probe.is_some());
        let packets = packet_path::decide(a.attach, &needs, preflight::kprobe_support())
            .map_err(|e| CodedError::new(ExitCode::Usage, e))?;
        preflight::check_privileges(what)?;
        let probe_target = match &a.probe {
            Some(h) => Some(probe::resolve_host(h, false)?),
            None => None,
        };
        let btf = preflight::check_btf(a.btf.as_deref())?;
        if a.stacks {
            preflight::check_perf_cpu_clock()?;
        }
        let (offsets, notes) = offsets::read(&btf)
            .map_err(|e| CodedError::new(ExitCode::KernelFeature, e.to_string()))?;
        let probe = probe_target.map(|t| {
            let mut c = ProberConfig::new(t);
            c.tcp_port = a.tcp;
            c.interval = a.interval;
            c
        });
        if let Some(p) = &probe {
            p.validate()?;
        }
        let config = KernelConfig {
            wait_threshold_ns: ns(a.wait_threshold),
            syscall_threshold_ns: ns(a.syscall_threshold),
            track_syscalls: u32::from(a.syscalls),
            nr_exit: syscalls::Sysno::exit as u32,
            nr_exit_group: syscalls::Sysno::exit_group as u32,
            stacks: u32::from(a.stacks),
            // Packets and samples wake the reader only past a quarter of the ring;
            // the 100 ms tick drains the rest.
            wakeup_bytes: a.ring_buffer / 4,
            self_tgid: std::process::id(),
            // A stall-length wait opens a backlog drain (tracer-ebpf/src/drain.rs):
            // at most the stall threshold after its latest wait, and 20 ms after RX work
            // ran out (a device's interrupt moderation, or an emulated one, late).
            drain_window_ns: ns(a.stall_threshold),
            drain_grace_ns: ns(a.stall_threshold).min(20_000_000),
        };
        Ok(Self {
            load: LoadOptions {
                filter: filter(a, probe_target),
                offsets,
                config,
                ring_bytes: a.ring_buffer,
                stacks: a.stacks,
            },
            packets,
            syscalls: a.syscalls,
            sample_hz: a.sample_hz,
            stacks: a.stacks,
            stall_threshold_ns: ns(a.stall_threshold),
            probe,
            pods_dir: a.pods_dir.clone(),
            containers_dir: a.containers_dir.clone(),
            notes,
        })
    }

    /// What the dump header says about how the recording was made; `sampler_hz` when
    /// the sampler runs, `degraded` what this kernel did not allow, `packets` the
    /// packet path as attached.
    pub fn options(&self, sampling: bool, degraded: Vec<String>, packets: &PacketPath) -> Options {
        let f = &self.load.filter;
        let peer = match f.peer_family {
            4 => Some(IpAddr::from([f.peer[0], f.peer[1], f.peer[2], f.peer[3]]).to_string()),
            6 => Some(IpAddr::from(f.peer).to_string()),
            _ => None,
        };
        Options {
            icmp_id: (f.icmp_id_set != 0).then_some(f.icmp_id),
            peer,
            tcp_port: (f.tcp_port_set != 0).then_some(f.tcp_port),
            wait_threshold_ns: self.load.config.wait_threshold_ns,
            syscall_threshold_ns: self.load.config.syscall_threshold_ns,
            stall_threshold_ns: self.stall_threshold_ns,
            ring_buffer_bytes: self.load.ring_bytes,
            probe: self.probe.as_ref().map(|p| match p.tcp_port {
                Some(port) => format!("tcp:{}:{port}", p.target),
                None => format!("icmp:{}", p.target),
            }),
            stacks_hz: (self.stacks && sampling).then_some(self.sample_hz),
            sampler_hz: sampling.then_some(self.sample_hz),
            syscalls: self.syscalls,
            recorder_pid: Some(std::process::id()),
            degraded,
            packet_hook_reason: Some(packets.reason()),
        }
    }
}
