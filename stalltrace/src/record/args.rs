//! `stalltrace record`'s flags, as typed: every value bounded here, checked against
//! each other and the machine in [`super::plan`].
use std::{net::IpAddr, path::PathBuf, time::Duration};

use stalltrace_analysis::units::{duration_in, parse_size, DAY, MS, SEC, US};

use crate::kernel::packet_path::AttachMode;

pub const AFTER_HELP: &str = "\
Examples:
  sudo stalltrace record -o stalls.jsonl                 # every ICMP echo, until Ctrl-C
  sudo stalltrace record --peer 10.0.0.7 --duration 60s  # only traffic to/from one host
  sudo stalltrace record --icmp-id 4242 --quiet          # one prober's echoes, waits only
  sudo stalltrace record --tcp 30927                     # TCP SYN probes to a NodePort
  sudo stalltrace record --probe 10.0.0.7                # probe every 10 ms and record together
  sudo stalltrace record --probe 10.0.0.7 --tcp 30927    # TCP SYN probes instead of ICMP
  sudo stalltrace record --probe-log hping3.log          # a prober elsewhere writes hping3.log
  sudo stalltrace record -o - --duration 10s | gzip > stalls.jsonl.gz   # the dump on stdout";

#[derive(clap::Args, Debug, Clone)]
#[command(after_help = AFTER_HELP)]
pub struct RecordArgs {
    #[command(flatten)]
    pub trace: TraceArgs,
    /// Stop after this long (e.g. 30s, 5m; at most 10 years); default: until Ctrl-C or
    /// SIGTERM.
    #[arg(long, value_parser = duration_in::<MS, { 3650 * DAY }>, value_name = "D")]
    pub duration: Option<Duration>,
    /// Dump file (JSON Lines, a new file of mode 0600); default
    /// stalltrace-<unix time>.jsonl. `-` writes the dump to standard output: the live
    /// lines and the final report then go to standard error.
    #[arg(short, long, value_name = "DUMP")]
    pub output: Option<PathBuf>,
    /// Replace the dump file if it exists and is a regular file or a symbolic link (the
    /// path is unlinked, never written through). A device, FIFO, socket or directory is
    /// refused even so.
    #[arg(long)]
    pub force: bool,
    /// Print waits and syscalls only, not every packet.
    #[arg(short, long)]
    pub quiet: bool,
    /// Load every program through the verifier and print the plan; attach nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print a summary every D while recording: per-CPU RX delay histograms and the
    /// culprits ranked so far.
    #[arg(long, value_parser = duration_in::<{ 100 * MS }, DAY>, value_name = "D")]
    pub summary_every: Option<Duration>,
    /// hping3 or ping output of a prober running elsewhere (possibly another host):
    /// the final report matches its probes to this recording by wire id/sequence.
    #[arg(long, value_name = "FILE", conflicts_with = "probe")]
    pub probe_log: Option<PathBuf>,
}

/// What to trace and how: the flags `record` and `watch` share.
#[derive(clap::Args, Debug, Clone)]
pub struct TraceArgs {
    /// Only ICMP echoes with this identifier (either byte order: hping3 writes it in
    /// host order).
    #[arg(long, value_name = "N")]
    pub icmp_id: Option<u16>,
    /// Only packets from or to this address.
    #[arg(long, value_name = "ADDR")]
    pub peer: Option<IpAddr>,
    /// Also record TCP SYN / SYN-ACK / RST to or from this port; with --probe, probe
    /// with TCP SYNs to it instead of ICMP echoes.
    #[arg(long, visible_alias = "tcp-port", value_name = "PORT",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub tcp: Option<u16>,
    /// Which hook reports packets. auto takes kprobe:icmp_echo only when IPv4 echo
    /// requests are all the run needs (an IPv4 --peer, no --probe, no --tcp), else
    /// tracepoint:net:netif_receive_skb; --dry-run, features and the dump header say
    /// which and why.
    #[arg(long, value_enum, default_value = "auto")]
    pub attach: AttachMode,
    /// Report RX waits longer than this (shorter ones only go to the histograms).
    #[arg(long, value_parser = duration_in::<US, { 10 * SEC }>, default_value = "1ms", value_name = "D")]
    pub wait_threshold: Duration,
    /// Report syscalls that held the CPU longer than this.
    #[arg(long, value_parser = duration_in::<US, { 10 * SEC }>, default_value = "10ms", value_name = "D")]
    pub syscall_threshold: Duration,
    /// A probe slower than this is stalled (used by the episode report).
    #[arg(long, value_parser = duration_in::<US, { 60 * SEC }>, default_value = "50ms", value_name = "D")]
    pub stall_threshold: Duration,
    /// Ring buffer size (a power of two from 4KiB to 1GiB, e.g. 256KiB, 4MiB, 64MiB).
    /// Raise it when the recorder reports lost events.
    #[arg(long, value_parser = ring_size, default_value = "4MiB", value_name = "BYTES")]
    pub ring_buffer: u32,
    /// Also trace every syscall exactly (raw_syscalls hooks on the whole node, ~270 ns
    /// per syscall): long syscalls become records with their exact duration. Without
    /// it, what culprits were doing comes from samples taken during waits.
    #[arg(long)]
    pub syscalls: bool,
    /// (Now the default: syscalls are not traced unless --syscalls.)
    #[arg(long, hide = true, conflicts_with = "syscalls")]
    pub no_syscalls: bool,
    /// Probe this host with the built-in prober while recording (ICMP echo, or TCP SYN
    /// with --tcp); its probes go into the dump and are matched to kernel events.
    #[arg(long, value_name = "HOST")]
    pub probe: Option<String>,
    /// With --probe: time between probes (1ms to 60s).
    #[arg(long, value_parser = duration_in::<MS, { 60 * SEC }>, default_value = "10ms", value_name = "D")]
    pub interval: Duration,
    /// Kernel BTF to read struct offsets from, for kernels without
    /// /sys/kernel/btf/vmlinux (e.g. a BTFHub file for this exact kernel).
    #[arg(long, value_name = "FILE")]
    pub btf: Option<PathBuf>,
    /// Also take the kernel and user stacks of each sample, and attach each wait's
    /// holders' most frequent stacks, symbolized, to the dump.
    #[arg(long)]
    pub stacks: bool,
    /// Samples a second per CPU, taken only while an RX wait is pending there (the
    /// default gives 25 samples in a 50 ms wait); 10 to 10000.
    #[arg(long, visible_alias = "stacks-hz", value_name = "HZ", default_value_t = DEFAULT_SAMPLE_HZ,
          value_parser = clap::value_parser!(u64).range(10..=10_000))]
    pub sample_hz: u64,
    /// Where the kubelet keeps pod logs (`<namespace>_<pod>_<uid>/<container>/`): pod
    /// and container names come from it.
    #[arg(long, value_name = "DIR", default_value = crate::identity::DEFAULT_PODS_DIR)]
    pub pods_dir: PathBuf,
    /// Where the kubelet links container logs (`<pod>_<namespace>_<container>-<id>.log`).
    #[arg(long, value_name = "DIR", default_value = crate::identity::DEFAULT_CONTAINERS_DIR)]
    pub containers_dir: PathBuf,
}

/// Default `--sample-hz`: at least 20 samples in a 50 ms wait needs 400 Hz; a prime
/// near 500 does not beat in step with periodic work (250/1000 Hz ticks, 10 ms probes).
/// Outside waits a tick costs ~150 ns, so 1 000 ticks a second per node CPU is cheap.
pub const DEFAULT_SAMPLE_HZ: u64 = 499;

/// `--ring-buffer`: a power of two of at least a page, at most 1 GiB.
pub fn ring_size(s: &str) -> Result<u32, String> {
    let v = parse_size(s, 4096, 1 << 30)?;
    if !v.is_power_of_two() {
        return Err(format!(
            "{s:?} is not a power of two (examples: 256KiB, 4MiB)"
        ));
    }
    u32::try_from(v).map_err(|_| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_sizes_are_bounded_powers_of_two() {
        assert_eq!(ring_size("4MiB"), Ok(4 << 20));
        assert_eq!(ring_size("256KiB"), Ok(256 << 10));
        assert_eq!(ring_size("65536"), Ok(65536));
        assert_eq!(ring_size("1GiB"), Ok(1 << 30));
        assert!(ring_size("3MiB").is_err());
        assert!(ring_size("1KiB").is_err());
        assert!(ring_size("2GiB").is_err());
        assert!(ring_size("17592186044420MiB").is_err());
        assert!(ring_size("lots").is_err());
    }
}
