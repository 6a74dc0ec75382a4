//! Probers: the built-in ICMP echo / TCP SYN prober (`stalltrace probe`, and the
//! library API `record --probe` uses), and hping3 / ping logs as input ([`log`]).
//!
//! Recorder API:
//! ```ignore
//! let cfg = ProberConfig::new(probe::resolve_host("10.0.0.7", false)?);
//! let (tx, rx) = std::sync::mpsc::channel();
//! let h = probe::spawn(cfg, tx)?;      // sockets are open when this returns
//! let id = h.wire_ident();             // echo id as the kernel reads it, for the BPF filter
//! // … ProbeRec arrive on rx (ok / dup at the answer, lost after the timeout) …
//! let stats = h.stop();
//! ```
mod clock;
mod engine;
mod icmp;
mod schedule;
mod stats;
mod tcp;
mod transport;

use std::{
    net::{IpAddr, ToSocketAddrs},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc::Sender,
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context;

pub use clock::boot_ns;
use engine::{Engine, EngineConfig, Outcome};
use icmp::{IcmpTransport, OpenError, SockKind};
pub use stats::ProbeStats;
use tcp::{TcpTransport, PORT_SPAN};
use transport::{ReplyInfo, Transport};

use stalltrace_analysis::{
    dump::ProbeRec,
    units::{duration_in, MS, SEC},
};

use crate::exit::{CodedError, ExitCode};

const PROBE_HELP: &str = "\
Examples:
  sudo stalltrace probe 10.0.0.7                      # ICMP echo every 10ms until Ctrl-C
  sudo stalltrace probe 10.0.0.7 --tcp 443 -c 1000    # TCP SYN to port 443, 1000 probes
  stalltrace probe 10.0.0.7 -i 1s                     # unprivileged ping socket if allowed
  stalltrace probe --parse-log hping3.log             # how stalltrace reads a prober's log
  stalltrace probe --bench-schedule -c 10000 -i 10ms  # send-schedule drift, no packets sent

Each answer prints one hping3-style line; Ctrl-C or SIGTERM ends the run, prints the
statistics and exits 0.";

#[derive(clap::Args, Debug)]
#[command(after_help = PROBE_HELP)]
pub struct ProbeArgs {
    /// Host to probe (IPv4 or IPv6 address, or a name).
    #[arg(required_unless_present_any = ["parse_log", "bench_schedule"])]
    pub host: Option<String>,
    /// Send TCP SYNs to this port instead of ICMP echo requests (needs root or CAP_NET_RAW).
    #[arg(long, value_name = "PORT")]
    pub tcp: Option<u16>,
    /// Time between probes, 1ms to 60s (sends follow an absolute schedule: probe i at
    /// start + i × interval).
    #[arg(short, long, default_value = "10ms", value_parser = duration_in::<MS, { 60 * SEC }>)]
    pub interval: Duration,
    /// Stop after this many probes (default: until Ctrl-C).
    #[arg(short, long, value_name = "N")]
    pub count: Option<u64>,
    /// ICMP payload bytes, up to 65000; the first 8 are the run's random cookie, so at
    /// least 8 are sent.
    #[arg(short, long, value_name = "B", default_value_t = 8,
          value_parser = clap::value_parser!(u16).range(0..=65_000))]
    pub size: u16,
    /// A probe without an answer after this long is lost (1ms to 60s).
    #[arg(short = 'W', long, default_value = "1s", value_parser = duration_in::<MS, { 60 * SEC }>)]
    pub timeout: Duration,
    /// Resolve HOST to an IPv6 address.
    #[arg(short = '6')]
    pub ipv6: bool,
    /// Parse a hping3 or ping log and print its probes as JSON lines (one ProbeRec each);
    /// a summary goes to stderr.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["host", "tcp", "bench_schedule"])]
    pub parse_log: Option<PathBuf>,
    /// Benchmark: run the send scheduler alone (no sockets, no root) for --count slots
    /// (default 10000) at --interval and print its drift.
    #[arg(long)]
    pub bench_schedule: bool,
}

/// The shortest time between probes: below a millisecond the probes become a load of
/// their own on the path they measure, and the 16-bit wire sequence wraps in a minute.
pub const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// What the built-in prober does.
#[derive(Debug, Clone)]
pub struct ProberConfig {
    pub target: IpAddr,
    /// TCP SYN probes to this port; ICMP echo when `None`.
    pub tcp_port: Option<u16>,
    pub interval: Duration,
    /// Probes to send; `None` runs until stopped.
    pub count: Option<u64>,
    /// ICMP payload bytes (at least the 8-byte cookie).
    pub size: usize,
    pub timeout: Duration,
}

impl ProberConfig {
    /// ICMP echo every 10 ms, 1 s timeout, until stopped.
    pub fn new(target: IpAddr) -> Self {
        Self {
            target,
            tcp_port: None,
            interval: Duration::from_millis(10),
            count: None,
            size: icmp::COOKIE_LEN,
            timeout: Duration::from_secs(1),
        }
    }

    pub fn validate(&self) -> Result<(), CodedError> {
        let usage = |m: String| CodedError::new(ExitCode::Usage, m);
        if self.interval < MIN_INTERVAL {
            return Err(usage(format!(
                "--interval {:?} is below {MIN_INTERVAL:?}: faster probes load the path they measure \
                 (and wrap the 16-bit wire sequence within a minute)",
                self.interval
            )));
        }
        if self.timeout.is_zero() {
            return Err(usage("--timeout must be above zero".into()));
        }
        if self.size > 65_000 {
            return Err(usage(format!(
                "--size {} is too large (at most 65000 bytes)",
                self.size
            )));
        }
        // Every probe in flight needs its own wire sequence (ICMP) or source port (TCP).
        let span = if self.tcp_port.is_some() {
            u128::from(PORT_SPAN)
        } else {
            65_536
        };
        let in_flight = self.timeout.as_nanos() / self.interval.as_nanos() + 1;
        if in_flight >= span {
            return Err(usage(format!(
                "--timeout {:?} / --interval {:?} puts {in_flight} probes in flight; at most {} can be told apart: raise the interval or lower the timeout",
                self.timeout,
                self.interval,
                span - 1
            )));
        }
        Ok(())
    }
}

/// Resolves `host` to one address of the wanted family.
pub fn resolve_host(host: &str, ipv6: bool) -> anyhow::Result<IpAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        if ip.is_ipv6() != ipv6 && ipv6 {
            anyhow::bail!(CodedError::new(
                ExitCode::Usage,
                format!("{host} is not an IPv6 address, but -6 was given")
            ));
        }
        return Ok(ip);
    }
    let addrs = (host, 0u16)
        .to_socket_addrs()
        .map_err(|e| CodedError::new(ExitCode::Usage, format!("cannot resolve {host}: {e}")))?;
    addrs
        .map(|a| a.ip())
        .find(|ip| ip.is_ipv6() == ipv6)
        .ok_or_else(|| {
            anyhow::Error::new(CodedError::new(
                ExitCode::Usage,
                format!("{host} has no IPv{} address", if ipv6 { 6 } else { 4 }),
            ))
        })
}

/// A non-zero echo id from random bits (0 reads as "unset" in some tools).
fn echo_ident(r: u64) -> u16 {
    (r as u16).max(1)
}

/// An opened prober: the sockets exist, nothing is sent yet.
struct Opened {
    engine: Engine,
    wire_ident: Option<u16>,
    tcp_ports: Option<(u16, u16)>,
    describe: String,
}

/// Unpredictable bits for the echo id, the payload cookie and the TCP port base: a
/// tenant who cannot guess them cannot forge answers.
fn random_u64() -> anyhow::Result<u64> {
    getrandom::u64().context("reading random bytes for the prober's identifiers")
}

fn open(cfg: &ProberConfig) -> anyhow::Result<Opened> {
    cfg.validate()?;
    let map_open = |e: OpenError| -> anyhow::Error {
        match e {
            OpenError::NoPermission(m) => CodedError::new(ExitCode::Privileges, m).into(),
            OpenError::Io { .. } => anyhow::Error::new(e),
        }
    };
    let (transport, wire_ident, tcp_ports, describe): (Box<dyn Transport>, _, _, _) = match cfg
        .tcp_port
    {
        None => {
            // A random echo id per run (never the pid: 1 in every container, and
            // what ping uses), written big-endian; a random cookie opens every
            // payload and replies without it are not ours.
            let ident = echo_ident(random_u64()?);
            let cookie = random_u64()?;
            let t = IcmpTransport::open(cfg.target, cfg.size, ident, cookie).map_err(map_open)?;
            let id = t.wire_ident();
            let how = match t.kind() {
                SockKind::Raw => "raw socket",
                SockKind::Dgram => "unprivileged ping socket",
            };
            let proto = if cfg.target.is_ipv4() {
                "icmp"
            } else {
                "icmpv6"
            };
            (
                Box::new(t) as Box<dyn Transport>,
                Some(id),
                None,
                format!("{proto} echo, {how}, echo id {id}"),
            )
        }
        Some(port) => {
            let range = tcp::ephemeral_ports();
            let base = tcp::port_base(range, random_u64()?)
                .map_err(|m| CodedError::new(ExitCode::Usage, m))?;
            let t = TcpTransport::open(cfg.target, port, base).map_err(map_open)?;
            let base = t.base_port();
            let last = base + (PORT_SPAN - 1);
            (
                Box::new(t) as Box<dyn Transport>,
                None,
                Some((base, last)),
                format!("tcp SYN to port {port}, source ports {base}-{last}"),
            )
        }
    };
    let engine = Engine::new(
        transport,
        EngineConfig {
            target: cfg.target,
            interval: cfg.interval,
            count: cfg.count,
            timeout: cfg.timeout,
        },
    );
    Ok(Opened {
        engine,
        wire_ident,
        tcp_ports,
        describe,
    })
}

/// A prober running on its own thread, sending [`ProbeRec`]s to the sink.
pub struct ProberHandle {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<ProbeStats>>,
    wire_ident: Option<u16>,
    tcp_port: Option<u16>,
    tcp_ports: Option<(u16, u16)>,
}

/// Starts the built-in prober. Sockets are opened before this returns, so permission
/// problems surface here (exit code 3 via [`CodedError`]).
pub fn spawn(cfg: ProberConfig, sink: Sender<ProbeRec>) -> anyhow::Result<ProberHandle> {
    let Opened {
        mut engine,
        wire_ident,
        tcp_ports,
        ..
    } = open(&cfg)?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("stalltrace-probe".into())
        .spawn(move || {
            let res = engine.run(&flag, |o| match o {
                Outcome::Answer { rec, .. } | Outcome::Lost { rec } => sink.send(rec).is_ok(),
                Outcome::Late { .. } => true,
            });
            let mut st = engine.into_stats();
            if let Err(e) = res {
                st.error = Some(format!("prober stopped: {e}"));
            }
            st
        })
        .context("starting the prober thread")?;
    Ok(ProberHandle {
        stop,
        thread: Some(thread),
        wire_ident,
        tcp_port: cfg.tcp_port,
        tcp_ports,
    })
}

impl ProberHandle {
    /// The ICMP echo id as the kernel reads it big-endian off the wire (ICMP only).
    pub fn wire_ident(&self) -> Option<u16> {
        self.wire_ident
    }

    /// The TCP destination port probed (TCP only).
    pub fn tcp_port(&self) -> Option<u16> {
        self.tcp_port
    }

    /// First and last TCP source port the probes use (TCP only).
    pub fn tcp_source_ports(&self) -> Option<(u16, u16)> {
        self.tcp_ports
    }

    /// Whether the prober ended by itself (count reached, sink gone, error).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Stops sending, and returns the run's statistics (probes still in flight are
    /// neither received nor reported lost).
    pub fn stop(mut self) -> ProbeStats {
        self.finish()
    }

    fn finish(&mut self) -> ProbeStats {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(st)) => st,
            Some(Err(_)) => ProbeStats {
                error: Some("the prober thread panicked".into()),
                ..Default::default()
            },
            None => ProbeStats::default(),
        }
    }
}

impl Drop for ProberHandle {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.finish();
        }
    }
}

/// Set by SIGINT/SIGTERM during `stalltrace probe`.
static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    SIGNALLED.store(true, Ordering::Relaxed);
}

/// SIGINT and SIGTERM end the run; without SA_RESTART they also interrupt the wait.
fn install_signal_handlers() -> anyhow::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the
        // handler only stores to an atomic, which is async-signal-safe.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .context("installing the SIGINT/SIGTERM handler");
        }
    }
    Ok(())
}

/// One hping3-style line for an answer (`DUP! ` / `LATE! ` marked).
fn reply_line(mark: &str, seq: u64, rtt_ns: u64, info: &ReplyInfo) -> String {
    let opt = |k: &str, v: Option<String>| v.map(|v| format!("{k}={v} ")).unwrap_or_default();
    let rtt = stalltrace_analysis::units::ms(rtt_ns, 3);
    match info {
        ReplyInfo::Icmp { len, from, ttl, ip_id } => format!(
            "{mark}len={len} ip={from} {}{}icmp_seq={seq} rtt={rtt} ms",
            opt("ttl", ttl.map(|t| t.to_string())),
            opt("id", ip_id.map(|t| t.to_string()))
        ),
        ReplyInfo::Tcp { len, from, ttl, df, ip_id, sport, flags, win } => format!(
            "{mark}len={len} ip={from} {}{}{}sport={sport} flags={flags} seq={seq} win={win} rtt={rtt} ms",
            opt("ttl", ttl.map(|t| t.to_string())),
            if *df { "DF " } else { "" },
            opt("id", ip_id.map(|t| t.to_string()))
        ),
    }
}

pub fn run(a: ProbeArgs) -> anyhow::Result<ExitCode> {
    if let Some(path) = &a.parse_log {
        return print_parsed_log(path);
    }
    install_signal_handlers()?;
    if a.bench_schedule {
        if a.interval < MIN_INTERVAL {
            anyhow::bail!(CodedError::new(
                ExitCode::Usage,
                format!("--interval must be at least {MIN_INTERVAL:?}")
            ));
        }
        let count = a.count.unwrap_or(10_000);
        let d = schedule::bench(count, a.interval, &SIGNALLED);
        use std::io::Write;
        let _ = writeln!(
            std::io::stdout(),
            "{count} slots at {:?}: {}",
            a.interval,
            d.line()
        );
        return Ok(ExitCode::Ok);
    }
    let host = a
        .host
        .as_deref()
        .ok_or_else(|| CodedError::new(ExitCode::Usage, "HOST is required"))?;
    let target = resolve_host(host, a.ipv6)?;
    let cfg = ProberConfig {
        target,
        tcp_port: a.tcp,
        interval: a.interval,
        count: a.count,
        size: usize::from(a.size),
        timeout: a.timeout,
    };
    let Opened {
        mut engine,
        describe,
        ..
    } = open(&cfg)?;
    // Write errors (a closed pipe: `| head`) end the run quietly instead of panicking
    // as println! would.
    use std::io::Write;
    let mut out = std::io::stdout();
    if writeln!(
        out,
        "PROBE {host} ({target}): {describe}, interval {:?}, timeout {:?}",
        cfg.interval, cfg.timeout
    )
    .is_err()
    {
        return Ok(ExitCode::Ok);
    }
    let is_tcp = cfg.tcp_port.is_some();
    let res = engine.run(&SIGNALLED, |o| {
        let line = match o {
            Outcome::Answer { rec, reply } => {
                let mark = if rec.status == stalltrace_analysis::dump::ProbeStatus::Dup {
                    "DUP! "
                } else {
                    ""
                };
                reply_line(
                    mark,
                    u64::from(rec.seq),
                    rec.rtt_ns.unwrap_or(0),
                    &reply.info,
                )
            }
            Outcome::Lost { rec } => {
                let key = if is_tcp { "seq" } else { "icmp_seq" };
                match &rec.send_error {
                    Some(e) => format!("not sent {key}={}: {e}", rec.seq),
                    None => format!("no answer for {key}={} within {:?}", rec.seq, cfg.timeout),
                }
            }
            Outcome::Late { seq, rtt_ns, reply } => reply_line("LATE! ", seq, rtt_ns, &reply.info),
        };
        writeln!(out, "{line}").is_ok()
    });
    let _ = write!(
        std::io::stdout(),
        "{}",
        engine.stats().render(&target.to_string())
    );
    res.with_context(|| format!("probing {target}"))?;
    Ok(ExitCode::Ok)
}

/// `--parse-log`: the records as JSON lines on stdout, a summary on stderr.
fn print_parsed_log(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let parsed = stalltrace_analysis::probelog::parse_file(path)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for p in &parsed.probes {
        serde_json::to_writer(&mut out, p).context("writing JSON")?;
        writeln!(out).context("writing JSON")?;
    }
    out.flush().context("writing JSON")?;
    crate::errln!("{}", parsed.summary_line());
    Ok(ExitCode::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_rejects_ambiguous_in_flight() {
        let mut c = ProberConfig::new("127.0.0.1".parse().unwrap());
        assert!(c.validate().is_ok());
        for fast in [
            Duration::ZERO,
            Duration::from_micros(10),
            Duration::from_micros(999),
        ] {
            c.interval = fast;
            let e = c.validate().unwrap_err();
            assert_eq!(e.code, ExitCode::Usage);
            assert!(e.to_string().contains("below 1ms"), "{e}");
        }
        c.interval = MIN_INTERVAL;
        assert!(c.validate().is_ok());
        c.tcp_port = Some(80);
        assert!(c.validate().is_ok()); // 1001 in flight < 8192 ports
        c.timeout = Duration::from_secs(9);
        let e = c.validate().unwrap_err(); // 9001 in flight > 8192 ports
        assert!(e.to_string().contains("9001 probes in flight"), "{e}");
    }

    #[test]
    fn lines_look_like_hping3() {
        let info = ReplyInfo::Icmp {
            len: 28,
            from: "10.0.0.2".parse().unwrap(),
            ttl: Some(64),
            ip_id: Some(34179),
        };
        assert_eq!(
            reply_line("", 5, 412_000, &info),
            "len=28 ip=10.0.0.2 ttl=64 id=34179 icmp_seq=5 rtt=0.412 ms"
        );
        let info = ReplyInfo::Tcp {
            len: 40,
            from: "10.0.0.2".parse().unwrap(),
            ttl: Some(64),
            df: true,
            ip_id: Some(0),
            sport: 9876,
            flags: "RA".into(),
            win: 0,
        };
        assert_eq!(
            reply_line("DUP! ", 7, 1_000_000, &info),
            "DUP! len=40 ip=10.0.0.2 ttl=64 DF id=0 sport=9876 flags=RA seq=7 win=0 rtt=1.000 ms"
        );
        // Our own lines parse back with the hping3 parser (same keys).
        let parsed = stalltrace_analysis::probelog::parse_str(&reply_line(
            "",
            5,
            412_000,
            &ReplyInfo::Icmp {
                len: 28,
                from: "10.0.0.2".parse().unwrap(),
                ttl: None,
                ip_id: None,
            },
        ));
        assert_eq!(parsed.probes.len(), 1);
        assert_eq!(parsed.probes[0].rtt_ns, Some(412_000));
    }

    /// Moves this thread into a network namespace of its own with loopback up, so that
    /// no other ICMP traffic on the machine reaches the test's raw socket: a raw ICMP
    /// socket receives every echo reply in its namespace, and a benchmark's hping3
    /// flood fills its receive queue until the kernel drops our own answers. False
    /// where no namespace may be made (not root): the test then uses the current one,
    /// with the unprivileged ping socket, which only receives its own echo id.
    fn private_netns() -> bool {
        // SAFETY: unshare(CLONE_NEWNET) takes no pointers and only moves this thread.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return false;
        }
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
            .expect("a socket for the interface ioctls");
        let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
        // SAFETY: an all-zero ifreq is a valid value (empty name, zero flags).
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, c) in req.ifr_name.iter_mut().zip(b"lo") {
            *d = *c as libc::c_char;
        }
        // SAFETY: `req` is a valid ifreq naming "lo"; the ioctl writes its flags.
        let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) };
        assert_eq!(
            rc,
            0,
            "SIOCGIFFLAGS lo: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: SIOCGIFFLAGS just filled the union's flags member.
        let flags = unsafe { req.ifr_ifru.ifru_flags };
        req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
        // SAFETY: `req` is a valid ifreq naming "lo" with its flags set; the ioctl reads it.
        let rc = unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) };
        assert_eq!(
            rc,
            0,
            "SIOCSIFFLAGS lo up: {}",
            std::io::Error::last_os_error()
        );
        true
    }

    /// The recorder's API end to end, on loopback (skips where no ICMP socket may be
    /// opened: not root and no ping_group_range). Nothing here depends on how fast or
    /// busy the machine is: runs end after a count of probes or of records, the timeout
    /// is far beyond any scheduling hiccup, and (as root) the test has a network
    /// namespace to itself, so other ICMP traffic cannot crowd out its answers.
    #[test]
    fn spawn_streams_records_and_stop_returns_stats() {
        // On a thread of its own: the namespace stays with that thread, not with the
        // test harness's thread (which may run other tests after this one).
        let t = std::thread::spawn(|| {
            private_netns();
            spawn_streams_records_and_stop_returns_stats_here();
        });
        if let Err(panic) = t.join() {
            std::panic::resume_unwind(panic);
        }
    }

    fn spawn_streams_records_and_stop_returns_stats_here() {
        let mut cfg = ProberConfig::new("127.0.0.1".parse().unwrap());
        cfg.count = Some(20);
        cfg.interval = Duration::from_millis(5);
        cfg.timeout = Duration::from_secs(30);
        let (tx, rx) = std::sync::mpsc::channel();
        let before = boot_ns();
        let h = match spawn(cfg.clone(), tx) {
            Ok(h) => h,
            Err(e) if crate::exit::classify(&e) == ExitCode::Privileges => {
                let why = format!("needs a raw or ping socket: {e}");
                stalltrace_testkit::ci::require(
                    "spawn_streams_records_and_stop_returns_stats",
                    false,
                    &why,
                );
                return;
            }
            Err(e) => panic!("{e:#}"),
        };
        let id = h.wire_ident().expect("ICMP has an echo id");
        assert_eq!(h.tcp_port(), None);
        assert_eq!(h.tcp_source_ports(), None);
        // The prober ends by itself after 20 probes and closes the stream.
        let recs: Vec<ProbeRec> = rx.iter().collect();
        // The stream closes as the run ends, just before the thread returns its stats.
        while !h.is_finished() {
            std::thread::sleep(Duration::from_millis(1));
        }
        let st = h.stop();
        assert_eq!(recs.len(), 20);
        for (i, r) in recs.iter().enumerate() {
            assert_eq!(
                (r.seq, r.status, r.wire_ident, r.wire_seq),
                (
                    i as u32,
                    stalltrace_analysis::dump::ProbeStatus::Ok,
                    Some(id),
                    Some(i as u16)
                )
            );
            assert_eq!(
                (r.source.as_str(), r.proto),
                ("builtin", stalltrace_analysis::dump::ProbeProto::Icmp)
            );
            let sent = r.sent_ns.unwrap();
            assert!(
                sent >= before && sent <= boot_ns(),
                "sent_ns is CLOCK_BOOTTIME"
            );
            assert!(r.rtt_ns.unwrap() > 0);
        }
        assert!(recs.windows(2).all(|w| w[1].sent_ns >= w[0].sent_ns));
        assert_eq!((st.transmitted, st.received, st.lost), (20, 20, 0));
        assert_eq!(st.rtts.len(), 20);
        assert!(st.error.is_none());

        // Unbounded, stopped by the caller after 5 records: however many probes went
        // out meanwhile, the statistics account for exactly the records streamed.
        cfg.count = None;
        let (tx, rx) = std::sync::mpsc::channel();
        let h = spawn(cfg, tx).unwrap();
        let mut recs: Vec<ProbeRec> = rx.iter().take(5).collect();
        assert!(!h.is_finished());
        let st = h.stop();
        // The prober thread is gone, so the stream ends after what it had sent.
        recs.extend(rx.iter());
        assert!(recs.len() >= 5);
        let count = |s| recs.iter().filter(|r| r.status == s).count() as u64;
        assert_eq!(
            (st.received, st.lost, st.duplicates),
            (
                count(stalltrace_analysis::dump::ProbeStatus::Ok),
                count(stalltrace_analysis::dump::ProbeStatus::Lost),
                count(stalltrace_analysis::dump::ProbeStatus::Dup)
            ),
            "{st:?}"
        );
        assert_eq!(st.lost, 0);
        assert!(st.transmitted >= st.received + st.lost, "{st:?}");
        assert_eq!(st.rtts.len(), st.received);
        // Loopback answers in order: the streamed records are probes 0, 1, 2, …
        let seqs: Vec<u32> = recs.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (0..recs.len() as u32).collect::<Vec<_>>());
        assert!(st.error.is_none());
    }

    #[test]
    fn resolve_literal_addresses() {
        assert_eq!(
            resolve_host("10.1.2.3", false).unwrap(),
            "10.1.2.3".parse::<IpAddr>().unwrap()
        );
        assert!(resolve_host("fd00::2", true).unwrap().is_ipv6());
        assert!(resolve_host("10.1.2.3", true).is_err());
    }
}
