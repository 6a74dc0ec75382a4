//! `stalltrace-bench floor`: the floor's empty programs (floor-ebpf, built by build.rs)
//! loaded and attached the way stalltrace attaches its own (raw tracepoints on the same
//! tracepoints, one cpu-clock perf event per CPU at the sampler's rate, the kprobe on
//! `icmp_echo` where the kernel has kprobes), held until SIGINT/SIGTERM. The bench runs
//! it as a tracer of its own, next to stalltrace's configurations.
use std::time::Duration;

use anyhow::{bail, Context as _};
use aya::{
    programs::{
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
        KProbe, PerfEvent, RawTracePoint,
    },
    Ebpf,
};

use crate::sys::{install_signal_handlers, stopped};

/// The object build.rs left (empty when built with AYA_BUILD_SKIP=1).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/floor"));

/// The hooks of stalltrace's default mode; `--syscalls` adds sys_enter/sys_exit.
const DEFAULT_HOOKS: [&str; 6] = [
    "netif_receive_skb",
    "softirq_raise",
    "softirq_entry",
    "softirq_exit",
    "sched_switch",
    "sched_wakeup",
];

#[derive(clap::Args, Debug)]
pub struct FloorArgs {
    /// Also the syscall hooks (as `record --syscalls` attaches them).
    #[arg(long)]
    syscalls: bool,
    /// The cpu-clock rate per CPU (stalltrace's sampler default).
    #[arg(long, default_value_t = 499)]
    hz: u64,
}

pub fn run(a: FloorArgs) -> anyhow::Result<()> {
    install_signal_handlers();
    if OBJECT.is_empty() {
        bail!("this stalltrace-bench was built without its floor programs (AYA_BUILD_SKIP)");
    }
    let mut ebpf = Ebpf::load(OBJECT).context("loading the floor's programs")?;
    let mut hooks: Vec<&str> = DEFAULT_HOOKS.to_vec();
    if a.syscalls {
        hooks.extend(["sys_enter", "sys_exit"]);
    }
    let mut attached = vec![];
    for h in hooks {
        let p: &mut RawTracePoint = ebpf
            .program_mut(h)
            .with_context(|| format!("no program {h}"))?
            .try_into()?;
        p.load().with_context(|| format!("loading {h}"))?;
        p.attach(h).with_context(|| format!("attaching {h}"))?;
        attached.push(format!("raw_tracepoint:{h}"));
    }
    // The packet hook stalltrace prefers where kprobes exist; this host may have none.
    let kp: &mut KProbe = ebpf
        .program_mut("icmp_echo")
        .context("no program icmp_echo")?
        .try_into()?;
    kp.load().context("loading icmp_echo")?;
    match kp.attach("icmp_echo", 0) {
        Ok(_) => attached.push("kprobe:icmp_echo".into()),
        Err(e) => println!("floor: kprobe:icmp_echo not attached ({e}): no kprobes here"),
    }
    let pe: &mut PerfEvent = ebpf
        .program_mut("cpu_clock")
        .context("no program cpu_clock")?
        .try_into()?;
    pe.load().context("loading cpu_clock")?;
    let cpus = aya::util::online_cpus()
        .map_err(|(path, e)| anyhow::anyhow!("reading the online CPUs from {path}: {e}"))?;
    for &cpu in &cpus {
        pe.attach(
            PerfEventConfig::Software(SoftwareEvent::CpuClock),
            PerfEventScope::AllProcessesOneCpu { cpu },
            SamplePolicy::Frequency(a.hz),
            false,
        )
        .with_context(|| format!("attaching cpu_clock on CPU {cpu}"))?;
    }
    attached.push(format!("perf_event:cpu-clock@{}Hz", a.hz));
    println!("floor attached: {}", attached.join(", "));
    while !stopped() {
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
