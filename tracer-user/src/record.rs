//! `stalltrace record`: load, attach, stream the ring buffer into the dump and the
//! terminal until Ctrl-C, SIGTERM or `--duration`; then drain, write the footer with
//! lost-event counts and histograms, and detach.
use std::{
    io::{self, Write},
    net::IpAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
};
use tracer_common::{Config, Filter};

use crate::{
    attribution::{Config as CorConfig, Correlator, Report},
    dump::{
        Counts, DumpWriter, Footer, Header, Lost, Options, ProbeRec, ProbeStatus, Record,
        DUMP_FORMAT, DUMP_VERSION,
    },
    enrich::Enricher,
    events::decode,
    exit::{CodedError, ExitCode},
    kernel::{
        loader::{AttachMode, Hists, LoadError, LoadOptions, Tracer},
        offsets, preflight,
    },
    live, probe, report, stacks,
    timefmt::{human_ns, parse_duration},
};

#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "Examples:
  sudo stalltrace record -o stalls.jsonl                 # every ICMP echo, until Ctrl-C
  sudo stalltrace record --peer 10.0.0.7 --duration 60s  # only traffic to/from one host
  sudo stalltrace record --icmp-id 4242 --quiet          # one prober's echoes, waits only
  sudo stalltrace record --tcp-port 30927                # TCP SYN probes to a NodePort
  sudo stalltrace record --probe 10.0.0.7                # probe every 10 ms and record together
  sudo stalltrace record --probe 10.0.0.7 --tcp 30927    # TCP SYN probes instead of ICMP
  sudo stalltrace record --probe-log hping3.log          # a prober elsewhere writes hping3.log")]
pub struct RecordArgs {
    /// Only ICMP echoes with this identifier (either byte order: hping3 writes it in
    /// host order).
    #[arg(long, value_name = "N")]
    pub icmp_id: Option<u16>,
    /// Only packets from or to this address.
    #[arg(long, value_name = "ADDR")]
    pub peer: Option<IpAddr>,
    /// Also record TCP SYN / SYN-ACK / RST to or from this port.
    #[arg(long, value_name = "PORT")]
    pub tcp_port: Option<u16>,
    /// Stop after this long (e.g. 30s, 5m); default: until Ctrl-C or SIGTERM.
    #[arg(long, value_parser = parse_duration, value_name = "D")]
    pub duration: Option<Duration>,
    /// Dump file (JSON Lines); default stalltrace-<unix time>.jsonl.
    #[arg(short, long, value_name = "DUMP")]
    pub output: Option<PathBuf>,
    /// Overwrite the dump file if it exists.
    #[arg(long)]
    pub force: bool,
    /// Which hook reports packets.
    #[arg(long, value_enum, default_value = "auto")]
    pub attach: AttachMode,
    /// Report RX waits longer than this (shorter ones only go to the histograms).
    #[arg(long, value_parser = parse_duration, default_value = "1ms", value_name = "D")]
    pub wait_threshold: Duration,
    /// Report syscalls that held the CPU longer than this.
    #[arg(long, value_parser = parse_duration, default_value = "10ms", value_name = "D")]
    pub syscall_threshold: Duration,
    /// A probe slower than this is stalled (used by the episode report).
    #[arg(long, value_parser = parse_duration, default_value = "50ms", value_name = "D")]
    pub stall_threshold: Duration,
    /// Ring buffer size (power of two, e.g. 256KiB, 4MiB, 64MiB). Raise it when the
    /// recorder reports lost events.
    #[arg(long, value_parser = parse_size, default_value = "4MiB", value_name = "BYTES")]
    pub ring_buffer: u32,
    /// Do not trace syscalls (saves the per-syscall hook cost; culprits are then named
    /// without the syscall they were in).
    #[arg(long)]
    pub no_syscalls: bool,
    /// Print waits and syscalls only, not every packet.
    #[arg(short, long)]
    pub quiet: bool,
    /// Load every program through the verifier and print the plan; attach nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Probe this host with the built-in prober while recording (ICMP echo, or TCP SYN
    /// with --tcp); its probes go into the dump and are matched to kernel events.
    #[arg(long, value_name = "HOST")]
    pub probe: Option<String>,
    /// With --probe: send TCP SYNs to this port instead of ICMP echoes.
    #[arg(long, value_name = "PORT", requires = "probe")]
    pub tcp: Option<u16>,
    /// With --probe: time between probes.
    #[arg(long, value_parser = parse_duration, default_value = "10ms", value_name = "D")]
    pub interval: Duration,
    /// Kernel BTF to read struct offsets from, for kernels without
    /// /sys/kernel/btf/vmlinux (e.g. a BTFHub file for this exact kernel).
    #[arg(long, value_name = "FILE")]
    pub btf: Option<PathBuf>,
    /// Print a summary every D while recording: per-CPU RX delay histograms and the
    /// culprits ranked so far.
    #[arg(long, value_parser = parse_duration, value_name = "D")]
    pub summary_every: Option<Duration>,
    /// hping3 or ping output of a prober running elsewhere (possibly another host):
    /// the final report matches its probes to this recording by wire id/sequence.
    #[arg(long, value_name = "FILE", conflicts_with = "probe")]
    pub probe_log: Option<PathBuf>,
    /// Sample the kernel and user stacks of whoever holds a CPU while an RX wait is
    /// pending there (perf cpu-clock sampler; nothing is sampled outside waits), and
    /// attach each wait's holders' most frequent stacks, symbolized, to the dump.
    #[arg(long)]
    pub stacks: bool,
    /// With --stacks: samples a second per CPU (499 gives 25-50 samples in a 50-100 ms
    /// wait; the sampler only records while a wait is pending).
    #[arg(long, value_name = "HZ", default_value_t = DEFAULT_STACKS_HZ,
          value_parser = clap::value_parser!(u64).range(1..=10_000), requires = "stacks")]
    pub stacks_hz: u64,
}

/// Default `--stacks-hz`: a prime near 500, so the sampler does not beat in step with
/// periodic work (HZ ticks, 10 ms probes) and a 50-100 ms wait gets 25-50 samples.
pub const DEFAULT_STACKS_HZ: u64 = 499;

/// `4MiB`, `256KiB`, `65536`: a power of two of at least one page.
pub fn parse_size(s: &str) -> Result<u32, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("MiB").or_else(|| s.strip_suffix('M')) {
        (n, 1u64 << 20)
    } else if let Some(n) = s.strip_suffix("KiB").or_else(|| s.strip_suffix('K')) {
        (n, 1u64 << 10)
    } else {
        (s, 1)
    };
    let v = num
        .trim()
        .parse::<u64>()
        .map_err(|e| format!("{s:?}: {e} (examples: 256KiB, 4MiB)"))?
        * mult;
    if !v.is_power_of_two() || !(4096..=1 << 30).contains(&v) {
        return Err(format!(
            "{s:?}: must be a power of two between 4KiB and 1024MiB"
        ));
    }
    Ok(v as u32)
}

/// Output that survives a closed pipe (`stalltrace record | head`): printing stops,
/// recording goes on.
struct Out {
    w: io::LineWriter<io::Stdout>,
    broken: bool,
}

impl Out {
    fn line(&mut self, s: &str) {
        if !self.broken && writeln!(self.w, "{s}").is_err() {
            self.broken = true;
        }
    }
}

pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; clock ids used are always supported.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn read_trim(p: &str) -> String {
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub fn run(args: RecordArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(record(args))
}

fn filter_for(args: &RecordArgs, probe_target: Option<IpAddr>) -> Filter {
    let mut f = Filter::all_icmp();
    if let Some(id) = args.icmp_id {
        f.icmp_id_set = 1;
        f.icmp_id = id;
    }
    if let Some(p) = args.peer.or(probe_target) {
        match p {
            IpAddr::V4(a) => {
                f.peer_family = 4;
                f.peer[..4].copy_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                f.peer_family = 6;
                f.peer = a.octets();
            }
        }
    }
    if let Some(port) = args.tcp_port.or(args.tcp) {
        f.tcp_port_set = 1;
        f.tcp_port = port;
    }
    f
}

async fn record(args: RecordArgs) -> anyhow::Result<ExitCode> {
    preflight::check_privileges("stalltrace record")?;
    // Resolve and check the prober's target and the probe log before touching the kernel.
    let probe_target = match &args.probe {
        Some(h) => {
            Some(probe::resolve_host(h, false).with_context(|| format!("resolving --probe {h}"))?)
        }
        None => None,
    };
    if let Some(p) = &args.probe_log {
        if let Err(e) = std::fs::metadata(p) {
            return Err(anyhow::Error::new(CodedError::new(
                ExitCode::BadInput,
                format!("{}: cannot read: {e}", p.display()),
            )));
        }
    }
    let btf = preflight::check_btf(args.btf.as_deref())?;
    if args.stacks {
        preflight::check_perf_cpu_clock()?;
    }
    if let Some(note) = preflight::raise_memlock() {
        log::info!("{note}");
    }
    let (offs, notes) =
        offsets::read(&btf).map_err(|e| CodedError::new(ExitCode::KernelFeature, e.to_string()))?;
    for n in notes {
        crate::errln!("note: {n}");
    }
    let config = Config {
        wait_threshold_ns: args.wait_threshold.as_nanos() as u64,
        syscall_threshold_ns: args.syscall_threshold.as_nanos() as u64,
        track_syscalls: u32::from(!args.no_syscalls),
        nr_exit: syscalls::Sysno::exit as u32,
        nr_exit_group: syscalls::Sysno::exit_group as u32,
        stacks: u32::from(args.stacks),
        // Packets and stack samples wake us only past a quarter of the ring; the
        // 100 ms tick drains the rest.
        wakeup_bytes: args.ring_buffer / 4,
        _pad: 0,
    };
    let opts = LoadOptions {
        filter: filter_for(&args, probe_target),
        offsets: offs,
        config,
        ring_bytes: args.ring_buffer,
        stacks: args.stacks,
    };
    let with_sys = !args.no_syscalls;
    let mut tracer = Tracer::load(&opts, with_sys).map_err(load_err)?;

    if args.dry_run {
        crate::outln!("dry run: every program passed the verifier; nothing attached");
        crate::outln!("would attach: sched:sched_switch sched:sched_wakeup irq:softirq_raise irq:softirq_entry irq:softirq_exit{}",
            if with_sys { " raw_syscalls:sys_enter raw_syscalls:sys_exit" } else { "" });
        let pk = match (args.attach, preflight::kprobe_support()) {
            (AttachMode::Tracepoint, _) | (AttachMode::Auto, Err(_)) => {
                "tracepoint:net:netif_receive_skb".to_string()
            }
            (_, Ok(())) => "kprobe:icmp_echo".to_string(),
            (AttachMode::Kprobe, Err(why)) => format!("kprobe:icmp_echo, which would fail: {why}"),
        };
        crate::outln!("packets via: {pk}");
        if args.stacks {
            crate::outln!(
                "would sample stacks: perf_event cpu-clock at {} Hz on each online CPU, recording only while an RX wait is pending",
                args.stacks_hz
            );
        }
        return Ok(ExitCode::Ok);
    }

    // Signal handlers first, so Ctrl-C during attach still ends cleanly.
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;

    let path = args.output.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "stalltrace-{}.jsonl",
            clock_ns(libc::CLOCK_REALTIME) / 1_000_000_000
        ))
    });
    let mut dump = DumpWriter::create(&path, args.force).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            anyhow::Error::new(CodedError::new(
                ExitCode::Usage,
                format!(
                    "{} exists; choose another -o or pass --force to overwrite it",
                    path.display()
                ),
            ))
        } else {
            anyhow::Error::new(e).context(format!("creating the dump {}", path.display()))
        }
    })?;

    let notes = tracer.attach(args.attach, with_sys).map_err(load_err)?;
    for n in &notes {
        crate::errln!("{n}");
    }
    let enricher = if args.stacks {
        let cpus = tracer.attach_stacks(args.stacks_hz).map_err(load_err)?;
        let map = tracer.take_stacks().map_err(load_err)?;
        let ksyms = stacks::KernelSymbols::load().unwrap_or_else(|e| {
            crate::errln!("note: kernel frames print as addresses: {e}");
            stacks::KernelSymbols::empty()
        });
        crate::errln!(
            "stacks: sampling {} CPUs at {} Hz while an RX wait is pending; {} kernel symbols",
            cpus.len(),
            args.stacks_hz,
            ksyms.len()
        );
        Enricher::with_stacks(stacks::StackCollector::new(
            args.stacks_hz,
            Box::new(map),
            ksyms,
            Box::<stacks::Blazesym>::default(),
        ))
    } else {
        Enricher::default()
    };

    let started = Instant::now();
    let boot_to_wall =
        clock_ns(libc::CLOCK_REALTIME) as i64 - clock_ns(libc::CLOCK_BOOTTIME) as i64;
    let header = Header {
        format: DUMP_FORMAT.into(),
        version: DUMP_VERSION,
        host: read_trim("/proc/sys/kernel/hostname"),
        kernel: read_trim("/proc/sys/kernel/osrelease"),
        cpus: aya::util::nr_cpus().map(|n| n as u32).unwrap_or(0),
        boot_to_wall_ns: boot_to_wall,
        started_at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        hooks: tracer.hooks.clone(),
        packet_hook: tracer.packet_hook.into(),
        options: Options {
            icmp_id: args.icmp_id,
            peer: args.peer.map(|p| p.to_string()),
            tcp_port: args.tcp_port,
            wait_threshold_ns: config.wait_threshold_ns,
            syscall_threshold_ns: config.syscall_threshold_ns,
            stall_threshold_ns: args.stall_threshold.as_nanos() as u64,
            ring_buffer_bytes: args.ring_buffer,
            probe: probe_target.map(|t| match args.tcp {
                Some(p) => format!("tcp:{t}:{p}"),
                None => format!("icmp:{t}"),
            }),
            stacks_hz: args.stacks.then_some(args.stacks_hz),
        },
    };
    let stall_ns = args.stall_threshold.as_nanos() as u64;
    let live = Live::new(&header, stall_ns);
    dump.write(&Record::Header(header))
        .context("writing the dump header")?;
    dump.flush().context("writing the dump")?;

    // The prober starts once the programs are attached, so the kernel sees every probe.
    let (probe_tx, probe_rx) = std::sync::mpsc::channel();
    let prober = match probe_target {
        Some(t) => {
            let mut cfg = probe::ProberConfig::new(t);
            cfg.tcp_port = args.tcp;
            cfg.interval = args.interval;
            Some(probe::spawn(cfg, probe_tx).context("starting the prober")?)
        }
        None => {
            drop(probe_tx);
            None
        }
    };

    let ring = tracer.take_ring().map_err(load_err)?;
    // SAFETY: `register` requires that the fd stays open and is not closed and reused
    // while registered: the RingBuf owns its map fd and is owned by the AsyncFd, so the
    // fd lives exactly as long as the registration.
    let mut ring = unsafe { AsyncFd::register(ring) }
        .map_err(|e| anyhow::anyhow!("polling the ring buffer: {e}"))?;
    let mut out = Out {
        w: io::LineWriter::new(io::stdout()),
        broken: false,
    };
    crate::errln!(
        "recording to {} ({}); Ctrl-C to stop",
        path.display(),
        args.duration
            .map(|d| format!("for {}", human_ns(d.as_nanos() as u64)))
            .unwrap_or_else(|| "until stopped".into())
    );
    if !args.quiet {
        out.line(live::PACKET_HEADER);
    }

    let mut st = State {
        enricher,
        counts: Counts::default(),
        last_lost: 0,
        live,
    };
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut ticks: u64 = 0;
    let mut next_summary = args.summary_every.map(|d| Instant::now() + d);
    let reason = loop {
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sigint.recv() => break "sigint",
            _ = sigterm.recv() => break "sigterm",
            _ = sleep => break "duration",
            _ = tick.tick() => {
                ticks += 1;
                // Records written without a wakeup are collected here.
                drain(ring.get_mut(), &mut st, &mut dump, &mut out, args.quiet)?;
                drain_probes(&probe_rx, &mut st, &mut dump, &mut out, args.quiet)?;
                st.live.tick(clock_ns(libc::CLOCK_BOOTTIME), &mut out);
                dump.flush().context("writing the dump")?;
                if let (Some(at), Some(every)) = (next_summary, args.summary_every) {
                    if Instant::now() >= at {
                        next_summary = Some(at + every);
                        let hists = tracer.hists().map_err(load_err)?;
                        periodic_summary(&mut out, started.elapsed(), &hists, &st.live.cor.culprits_so_far());
                    }
                }
                if !ticks.is_multiple_of(10) {
                    continue;
                }
                let lost = tracer.lost().map_err(load_err)?;
                if lost.total() > st.last_lost {
                    crate::errln!(
                        "warning: {} events lost so far (ring buffer full); raise --ring-buffer (now {} KiB)",
                        lost.total(), args.ring_buffer / 1024
                    );
                    st.last_lost = lost.total();
                }
            }
            g = ring.readable_mut() => {
                let mut g = g.context("polling the ring buffer")?;
                drain(g.get_inner_mut(), &mut st, &mut dump, &mut out, args.quiet)?;
                g.clear_ready();
            }
        }
    };
    // Stop probing, let the last answers land, then take everything still queued.
    let probe_stats = prober.map(|p| {
        std::thread::sleep(Duration::from_millis(100));
        p.stop()
    });
    drain(ring.get_mut(), &mut st, &mut dump, &mut out, args.quiet)?;
    drain_probes(&probe_rx, &mut st, &mut dump, &mut out, args.quiet)?;
    let lost = tracer.lost().map_err(load_err)?;
    let hists = tracer.hists().map_err(load_err)?;
    drop(ring);
    drop(tracer); // detaches every program
    let footer = Footer {
        ended_at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        duration_ns: started.elapsed().as_nanos() as u64,
        counts: st.counts.clone(),
        lost: lost.clone(),
        hist_net_rx: hists.net_rx.clone(),
        hist_rx_thread: hists.rx_thread.clone(),
        hist_net_tx: hists.net_tx.clone(),
        hist_timer: hists.timer.clone(),
        reason: reason.into(),
        stacks: st.enricher.stacks().map(|c| c.stats()),
    };
    let footer_rec = Record::Footer(footer);
    dump.write(&footer_rec).context("writing the dump footer")?;
    dump.finish().context("closing the dump")?;
    if let Some(ps) = &probe_stats {
        if let Some(e) = &ps.error {
            crate::errln!("warning: {e}");
        }
    }
    if let Some(s) = st.enricher.stacks() {
        stacks_summary(&s.stats(), lost.stack_samples);
    }
    summary(&st.counts, &lost, &hists, &path, reason);
    // The final report: the live correlator's, or with an external prober's log, the
    // same engine over the dump and that log.
    let report = match &args.probe_log {
        None => st.live.finish(&footer_rec, &mut out),
        Some(log) => {
            let a = crate::analyze::AnalyzeArgs {
                dump: path.clone(),
                probe_log: Some(log.clone()),
                format: crate::analyze::Format::Text,
                perfetto: None,
                stall_threshold: Some(args.stall_threshold),
            };
            crate::analyze::analyze(&a, |ep| out.line(&report::text::episode_line(ep)))?
        }
    };
    out.line("");
    for l in report::text::render(&report).lines() {
        out.line(l);
    }
    Ok(ExitCode::Ok)
}

struct State {
    enricher: Enricher,
    counts: Counts,
    last_lost: u64,
    live: Live,
}

/// The correlator fed as the dump is written, printing each episode as it closes.
struct Live {
    cor: Correlator,
    stall_ns: u64,
}

impl Live {
    fn new(h: &Header, stall_ns: u64) -> Self {
        let mut cor = Correlator::new(CorConfig::from_header(h, Some(stall_ns)));
        let _ = cor.push(&Record::Header(h.clone()));
        Self { cor, stall_ns }
    }

    fn push(&mut self, rec: &Record, out: &mut Out) {
        for ep in self.cor.push(rec) {
            out.line(&report::text::episode_line(&ep));
        }
    }

    fn tick(&mut self, now_ns: u64, out: &mut Out) {
        for ep in self.cor.tick(now_ns) {
            out.line(&report::text::episode_line(&ep));
        }
    }

    fn finish(mut self, footer: &Record, out: &mut Out) -> Report {
        let _ = self.cor.push(footer);
        for ep in self.cor.flush() {
            out.line(&report::text::episode_line(&ep));
        }
        self.cor.finish()
    }
}

fn drain_probes(
    rx: &std::sync::mpsc::Receiver<ProbeRec>,
    st: &mut State,
    dump: &mut DumpWriter,
    out: &mut Out,
    quiet: bool,
) -> anyhow::Result<()> {
    while let Ok(p) = rx.try_recv() {
        st.counts.probes += 1;
        let slow = p.rtt_ns.is_some_and(|r| r >= st.live.stall_ns);
        if !quiet && (slow || p.status != ProbeStatus::Ok) {
            let rtt = p
                .rtt_ns
                .map(|r| format!("rtt={:.1} ms", r as f64 / 1e6))
                .unwrap_or_else(|| "no answer".into());
            out.line(&format!(
                "probe {} seq={} {rtt}{}",
                p.target,
                p.seq,
                if slow { " (stalled)" } else { "" }
            ));
        }
        let rec = Record::Probe(p);
        st.live.push(&rec, out);
        dump.write(&rec).context("writing the dump")?;
    }
    Ok(())
}

fn drain(
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
    st: &mut State,
    dump: &mut DumpWriter,
    out: &mut Out,
    quiet: bool,
) -> anyhow::Result<()> {
    while let Some(item) = ring.next() {
        let ev = match decode(&item) {
            Ok(ev) => ev,
            Err(e) => {
                log::warn!("skipping a ring-buffer record: {e}");
                continue;
            }
        };
        drop(item);
        let Some(rec) = st.enricher.record(&ev) else {
            continue; // a stack sample: it shows up in the wait it falls in
        };
        match &rec {
            Record::Packet(p) => {
                st.counts.packets += 1;
                if !quiet {
                    out.line(&live::packet_line(p));
                }
            }
            Record::Wait(w) => {
                st.counts.waits += 1;
                out.line(&live::wait_sentence(w));
            }
            Record::Syscall(s) => {
                st.counts.syscalls += 1;
                out.line(&live::syscall_sentence(s));
            }
            _ => {}
        }
        st.live.push(&rec, out);
        dump.write(&rec).context("writing the dump")?;
    }
    Ok(())
}

fn stacks_summary(s: &crate::dump::StackStats, lost: u64) {
    crate::errln!(
        "\nstacks: {} samples at {} Hz while waits were pending, {} attached to holders of reported waits; {} distinct stacks",
        s.samples, s.hz, s.attributed, s.distinct_stacks
    );
    if s.kernel_misses + s.user_misses > 0 {
        crate::errln!(
            "  {} kernel and {} user stacks lost (stack map full or colliding ids)",
            s.kernel_misses,
            s.user_misses
        );
    }
    if lost > 0 {
        crate::errln!("  {lost} samples lost (ring buffer full); raise --ring-buffer");
    }
}

/// One line per CPU and histogram (count, p50/p99 bucket, longest), then the top
/// culprits so far.
fn periodic_summary(
    out: &mut Out,
    elapsed: Duration,
    hists: &Hists,
    culprits: &[crate::attribution::rank::CulpritRank],
) {
    out.line(&format!(
        "-- summary after {} --",
        human_ns(elapsed.as_nanos() as u64)
    ));
    for (name, hs) in hists.named() {
        for h in hs {
            out.line(&format!(
                "  CPU {:>3} {name}: {}",
                h.cpu,
                hist_words(&h.buckets)
            ));
        }
    }
    if culprits.is_empty() {
        out.line("  no stall episode yet");
    }
    for c in culprits.iter().take(3) {
        out.line(&format!(
            "  #{} {} (tgid {}): {} episodes, {} in total, worst {}",
            c.rank,
            c.comm,
            c.tgid,
            c.episodes,
            human_ns(c.total_wait_ns),
            human_ns(c.worst_wait_ns)
        ));
    }
}

/// `1234 waits, p50 < 4 µs, p99 < 64 µs, longest < 131 ms` from log2 µs buckets.
pub fn hist_words(b: &[u64]) -> String {
    let total: u64 = b.iter().sum();
    let upper = |i: usize| human_ns((2u64 << i.min(40)) * 1000);
    let quant = |q: f64| {
        let want = (total as f64 * q).ceil() as u64;
        let mut acc = 0;
        for (i, n) in b.iter().enumerate() {
            acc += n;
            if acc >= want {
                return upper(i);
            }
        }
        upper(b.len().saturating_sub(1))
    };
    let longest = b
        .iter()
        .rposition(|&n| n != 0)
        .map(upper)
        .unwrap_or_else(|| "-".into());
    format!(
        "{total} waits, p50 < {}, p99 < {}, longest < {longest}",
        quant(0.5),
        quant(0.99)
    )
}

fn summary(c: &Counts, lost: &Lost, hists: &Hists, path: &std::path::Path, reason: &str) {
    crate::errln!(
        "\nstopped ({reason}): {} packets, {} waits, {} long syscalls recorded; lost {} (packets {}, waits {}, syscalls {})",
        c.packets, c.waits, c.syscalls, lost.total(), lost.packets, lost.waits, lost.syscalls
    );
    for (name, hs) in hists.named() {
        for h in hs {
            crate::errln!("  CPU {:>3} {name}: {}", h.cpu, hist_words(&h.buckets));
        }
    }
    crate::errln!("dump: {}", path.display());
}

fn load_err(e: LoadError) -> anyhow::Error {
    let code = match &e {
        LoadError::KprobeUnavailable { .. } | LoadError::PerfUnavailable { .. } => {
            ExitCode::KernelFeature
        }
        LoadError::Verifier { .. } | LoadError::Attach { .. } => ExitCode::KernelFeature,
        _ => ExitCode::Failure,
    };
    let hint = match &e {
        LoadError::KprobeUnavailable { .. } => {
            "; use --attach tracepoint (or auto, which falls back by itself)"
        }
        _ => "",
    };
    anyhow::Error::new(CodedError::new(code, format!("{e}{hint}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_words_give_quantiles_from_log2_buckets() {
        // 90 waits under 2 µs, 9 in [4, 8) µs, 1 in [64, 128) ms.
        let mut b = vec![0u64; 32];
        b[0] = 90;
        b[2] = 9;
        b[16] = 1;
        assert_eq!(
            hist_words(&b),
            "100 waits, p50 < 2 µs, p99 < 8 µs, longest < 131 ms"
        );
        assert_eq!(
            hist_words(&[0; 32]),
            "0 waits, p50 < 2 µs, p99 < 2 µs, longest < -"
        );
    }

    #[test]
    fn sizes_parse_as_powers_of_two() {
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_size("256KiB"), Ok(256 << 10));
        assert_eq!(parse_size("65536"), Ok(65536));
        assert!(parse_size("3MiB").is_err());
        assert!(parse_size("1KiB").is_err());
        assert!(parse_size("lots").is_err());
    }
}
