//! Which hook reports packets, decided once per run from what the run must see (its
//! flags) and what the kernel offers. The checked plan keeps the decision with its
//! reason; `features`, `record --dry-run`, the recorder's stderr and the dump header
//! (`packet_hook`, `options.packet_hook_reason`) say both.
//!
//! `kprobe:icmp_echo` (the 2019 GitHub incident's hook) runs only for the IPv4 echo requests this host
//! answers, so other packets cost nothing, but it never sees echo replies, ICMPv6 or
//! TCP. `tracepoint:net:netif_receive_skb` sees every packet received.
//!
//! | `--attach` | what the run needs | packets via |
//! | --- | --- | --- |
//! | `auto` | IPv4 echo requests alone: `--peer` IPv4, no `--probe`, no `--tcp`, ICMP recorded | `kprobe:icmp_echo` where the kernel has kprobes; else, or when it does not attach, the tracepoint |
//! | `auto` | anything more: `--probe` (it receives the answers), `--tcp`, an IPv6 `--peer`, or no `--peer` (every echo of both families, replies included) | the tracepoint |
//! | `tracepoint` | anything | the tracepoint |
//! | `kprobe` | `--probe`, `--tcp` or an IPv6 `--peer` | refused: a usage error (exit 2) saying why, before anything loads |
//! | `kprobe` | otherwise (without `--peer`: IPv4 echo requests from anyone, and it says what it misses) | `kprobe:icmp_echo` (exit 4 where the kernel has no kprobes) |
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tracer_common::Filter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// kprobe:icmp_echo when IPv4 echo requests are all the run needs (--peer IPv4, no
    /// --probe, no --tcp) and the kernel has kprobes; else the tracepoint.
    Auto,
    /// kprobe:icmp_echo (IPv4 echo requests only: refused with --probe, --tcp or an IPv6
    /// --peer; fails where kprobes are missing).
    Kprobe,
    /// tracepoint:net:netif_receive_skb (requests and replies, IPv4/IPv6, TCP).
    Tracepoint,
}

pub const KPROBE: &str = "kprobe:icmp_echo";
pub const TRACEPOINT: &str = "tracepoint:net:netif_receive_skb";

/// What a recording must see of the packets, from its flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    /// `--probe`: the built-in prober receives the answers.
    pub probe: bool,
    /// `--tcp PORT`.
    pub tcp_port: Option<u16>,
    /// `--peer`; none: every echo, from and to anyone.
    pub peer: Option<IpAddr>,
    /// ICMP echoes are recorded.
    pub icmp: bool,
}

impl Needs {
    /// From the in-kernel filter the flags give (without the prober's target: a run
    /// with `--probe` is decided by that alone) and whether the built-in prober runs.
    pub fn of(filter: &Filter, probe: bool) -> Self {
        let peer = match filter.peer_family {
            4 => Some(IpAddr::from([
                filter.peer[0],
                filter.peer[1],
                filter.peer[2],
                filter.peer[3],
            ])),
            6 => Some(IpAddr::from(filter.peer)),
            _ => None,
        };
        Self {
            probe,
            tcp_port: (filter.tcp_port_set != 0).then_some(filter.tcp_port),
            peer,
            icmp: filter.icmp != 0,
        }
    }

    /// What of it `kprobe:icmp_echo` never sees, in the order the reason says it.
    pub fn unseen_by_kprobe(&self) -> Vec<Unseen> {
        let mut out = vec![];
        if self.probe {
            out.push(Unseen::ProbeAnswers {
                tcp: self.tcp_port.is_some(),
            });
        } else if let Some(p) = self.tcp_port {
            out.push(Unseen::Tcp(p));
        }
        match self.peer {
            Some(IpAddr::V6(a)) => out.push(Unseen::Ipv6Peer(a)),
            Some(IpAddr::V4(_)) => {}
            None if !self.probe => out.push(Unseen::EveryEcho),
            None => {}
        }
        if !self.icmp {
            out.push(Unseen::NoIcmp);
        }
        out
    }
}

/// Something a run needs that `kprobe:icmp_echo` never sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unseen {
    /// The built-in prober receives the answers: echo replies, or SYN-ACKs and RSTs.
    ProbeAnswers { tcp: bool },
    /// TCP SYNs, SYN-ACKs and RSTs of a port.
    Tcp(u16),
    /// ICMPv6 echoes.
    Ipv6Peer(Ipv6Addr),
    /// Without `--peer`, every echo: replies and ICMPv6 too.
    EveryEcho,
    /// No ICMP echo is recorded at all.
    NoIcmp,
}

impl Unseen {
    fn words(&self) -> String {
        match self {
            Unseen::ProbeAnswers { tcp: false } => "--probe receives echo replies".into(),
            Unseen::ProbeAnswers { tcp: true } => {
                "--probe with --tcp receives SYN-ACKs and RSTs".into()
            }
            Unseen::Tcp(p) => format!("--tcp {p} records TCP SYNs, SYN-ACKs and RSTs"),
            Unseen::Ipv6Peer(a) => format!("--peer {a} is IPv6 (ICMPv6 echoes)"),
            Unseen::EveryEcho => {
                "without --peer every echo is recorded, replies and ICMPv6 included".into()
            }
            Unseen::NoIcmp => "no ICMP echo is recorded".into(),
        }
    }

    /// What `--attach kprobe` may still do without: all of a run without `--peer`
    /// (the user asked for the 2019 GitHub incident's hook and gets IPv4 echo requests from anyone).
    fn refuses_kprobe(&self) -> bool {
        !matches!(self, Unseen::EveryEcho)
    }
}

fn list(u: &[Unseen]) -> String {
    u.iter().map(Unseen::words).collect::<Vec<_>>().join("; ")
}

/// `A, which kprobe:icmp_echo never sees` (or `A; B, none of which …`).
fn never_sees(u: &[Unseen]) -> String {
    if u.len() > 1 {
        format!("{}, none of which {KPROBE} sees", list(u))
    } else {
        format!("{}, which {KPROBE} never sees", list(u))
    }
}

/// The hook that reports packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketHook {
    Kprobe,
    Tracepoint,
}

impl PacketHook {
    /// `kprobe:icmp_echo` or `tracepoint:net:netif_receive_skb`.
    pub fn name(self) -> &'static str {
        match self {
            PacketHook::Kprobe => KPROBE,
            PacketHook::Tracepoint => TRACEPOINT,
        }
    }

    /// `kprobe` or `tracepoint`, as the dump's `packet_hook` says it.
    pub fn short(self) -> &'static str {
        match self {
            PacketHook::Kprobe => "kprobe",
            PacketHook::Tracepoint => "tracepoint",
        }
    }
}

/// Why that hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// `auto`: IPv4 echo requests of one peer are all the run needs.
    RequestsOnly { peer: Ipv4Addr },
    /// The run needs what the kprobe never sees.
    Needs(Vec<Unseen>),
    /// `auto`: the kprobe would do, but this kernel has none.
    NoKprobes(String),
    /// `auto`: the kprobe would do, but it did not attach.
    KprobeFailed(String),
    /// `--attach tracepoint`.
    AskedTracepoint,
    /// `--attach kprobe`, and what it will not see.
    AskedKprobe(Vec<Unseen>),
}

/// The decision: which hook, why, and what the user asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketPath {
    pub hook: PacketHook,
    pub why: Why,
    pub mode: AttachMode,
}

impl PacketPath {
    /// Why, in words (the dump header's `packet_hook_reason`).
    pub fn reason(&self) -> String {
        match &self.why {
            Why::RequestsOnly { peer } => format!(
                "only IPv4 echo requests from {peer} are needed (--peer, no --probe, no --tcp), \
                 and {KPROBE} runs for those alone, not for every packet received"
            ),
            Why::Needs(u) => never_sees(u),
            Why::NoKprobes(why) => why.clone(),
            Why::KprobeFailed(why) => format!(
                "{KPROBE} did not attach ({why}); the tracepoint sees the same echo requests"
            ),
            Why::AskedTracepoint => "--attach tracepoint".into(),
            Why::AskedKprobe(u) if u.is_empty() => "--attach kprobe".into(),
            Why::AskedKprobe(_) => "--attach kprobe: IPv4 echo requests only (without --peer, \
                 echo replies and ICMPv6 echoes go unrecorded)"
                .into(),
        }
    }

    /// `packets via HOOK: REASON`.
    pub fn line(&self) -> String {
        format!("packets via {}: {}", self.hook.name(), self.reason())
    }

    /// `auto` chose the kprobe: if it does not attach, the tracepoint serves instead.
    pub fn may_fall_back(&self) -> bool {
        self.mode == AttachMode::Auto && self.hook == PacketHook::Kprobe
    }

    /// The tracepoint, after the kprobe `auto` chose did not attach.
    pub fn fell_back(&self, why: String) -> Self {
        Self {
            hook: PacketHook::Tracepoint,
            why: Why::KprobeFailed(why),
            mode: self.mode,
        }
    }
}

/// Decides the packet hook; `Err` is a usage error: `--attach kprobe` for a run it
/// cannot serve, with why. `kprobes` is whether this kernel can attach kprobes.
pub fn decide(
    mode: AttachMode,
    needs: &Needs,
    kprobes: Result<(), String>,
) -> Result<PacketPath, String> {
    let unseen = needs.unseen_by_kprobe();
    let path = |hook, why| PacketPath { hook, why, mode };
    match mode {
        AttachMode::Tracepoint => Ok(path(PacketHook::Tracepoint, Why::AskedTracepoint)),
        AttachMode::Kprobe => {
            let refused: Vec<Unseen> = unseen
                .iter()
                .filter(|u| u.refuses_kprobe())
                .cloned()
                .collect();
            if refused.is_empty() {
                Ok(path(PacketHook::Kprobe, Why::AskedKprobe(unseen)))
            } else {
                Err(format!(
                    "--attach kprobe cannot serve this run: {} (it sees IPv4 echo requests \
                     only); use --attach auto or --attach tracepoint",
                    never_sees(&refused)
                ))
            }
        }
        AttachMode::Auto => Ok(match (needs.peer, unseen.is_empty(), kprobes) {
            (_, false, _) => path(PacketHook::Tracepoint, Why::Needs(unseen)),
            (_, true, Err(why)) => path(PacketHook::Tracepoint, Why::NoKprobes(why)),
            (Some(IpAddr::V4(peer)), true, Ok(())) => {
                path(PacketHook::Kprobe, Why::RequestsOnly { peer })
            }
            // Unreachable by `unseen_by_kprobe` (no peer or IPv6 is unseen), and the
            // tracepoint is right for both anyway.
            (_, true, Ok(())) => path(PacketHook::Tracepoint, Why::Needs(unseen)),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9));
    const V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd99, 0, 0, 0, 0, 0, 0, 2));

    fn needs(probe: bool, tcp: Option<u16>, peer: Option<IpAddr>) -> Needs {
        Needs {
            probe,
            tcp_port: tcp,
            peer,
            icmp: true,
        }
    }

    fn hook(mode: AttachMode, n: Needs, kprobes: bool) -> Result<PacketHook, String> {
        let k = if kprobes {
            Ok(())
        } else {
            Err("no kprobes here".into())
        };
        decide(mode, &n, k).map(|p| p.hook)
    }

    /// The whole table for `auto`, on a kernel with kprobes: the kprobe only for an
    /// IPv4 peer's echo requests with nothing else asked.
    #[test]
    fn auto_takes_the_kprobe_only_for_ipv4_echo_requests_alone() {
        use PacketHook::*;
        let cases = [
            (needs(false, None, Some(V4)), Kprobe),
            (needs(false, None, None), Tracepoint),
            (needs(false, None, Some(V6)), Tracepoint),
            (needs(true, None, Some(V4)), Tracepoint),
            (needs(true, None, None), Tracepoint),
            (needs(true, Some(80), None), Tracepoint),
            (needs(false, Some(80), Some(V4)), Tracepoint),
            (needs(false, Some(80), None), Tracepoint),
            (needs(true, Some(80), Some(V6)), Tracepoint),
            (
                Needs {
                    icmp: false,
                    ..needs(false, None, Some(V4))
                },
                Tracepoint,
            ),
        ];
        for (n, want) in cases {
            assert_eq!(hook(AttachMode::Auto, n, true), Ok(want), "{n:?}");
            // Without kprobes it is the tracepoint whatever the run needs.
            assert_eq!(hook(AttachMode::Auto, n, false), Ok(Tracepoint), "{n:?}");
            assert_eq!(
                hook(AttachMode::Tracepoint, n, true),
                Ok(Tracepoint),
                "{n:?}"
            );
        }
    }

    /// `--attach kprobe` is refused for what it never sees, and says which; without
    /// `--peer` it is the user's choice and says what it misses.
    #[test]
    fn asked_kprobe_is_refused_for_a_run_it_cannot_serve() {
        for (n, says) in [
            (needs(true, None, Some(V4)), "--probe receives echo replies"),
            (
                needs(true, Some(443), None),
                "--probe with --tcp receives SYN-ACKs and RSTs",
            ),
            (needs(false, Some(80), Some(V4)), "--tcp 80 records TCP"),
            (needs(false, None, Some(V6)), "--peer fd99::2 is IPv6"),
        ] {
            let e = hook(AttachMode::Kprobe, n, true).expect_err("refused");
            assert!(e.contains(says), "{e}");
            assert!(
                e.contains("use --attach auto or --attach tracepoint"),
                "{e}"
            );
            // Refused on a kernel without kprobes too: a usage error comes first.
            assert!(hook(AttachMode::Kprobe, n, false).is_err());
        }
        let p = decide(AttachMode::Kprobe, &needs(false, None, None), Ok(()));
        let p = p.expect("allowed without --peer");
        assert_eq!(p.hook, PacketHook::Kprobe);
        assert!(
            p.reason()
                .contains("echo replies and ICMPv6 echoes go unrecorded"),
            "{}",
            p.reason()
        );
        assert_eq!(
            hook(AttachMode::Kprobe, needs(false, None, Some(V4)), false),
            Ok(PacketHook::Kprobe),
            "the attach itself then fails with exit 4"
        );
    }

    #[test]
    fn the_reason_names_what_the_kprobe_would_miss() {
        let p = decide(AttachMode::Auto, &needs(true, None, Some(V4)), Ok(())).unwrap();
        assert_eq!(
            p.line(),
            "packets via tracepoint:net:netif_receive_skb: --probe receives echo replies, \
             which kprobe:icmp_echo never sees"
        );
        let p = decide(
            AttachMode::Auto,
            &needs(false, Some(8080), Some(V6)),
            Ok(()),
        )
        .unwrap();
        assert_eq!(
            p.reason(),
            "--tcp 8080 records TCP SYNs, SYN-ACKs and RSTs; --peer fd99::2 is IPv6 (ICMPv6 \
             echoes), none of which kprobe:icmp_echo sees"
        );
        let p = decide(AttachMode::Auto, &needs(false, None, Some(V4)), Ok(())).unwrap();
        assert!(p
            .reason()
            .starts_with("only IPv4 echo requests from 10.0.0.9"));
        assert!(p.may_fall_back());
        let back = p.fell_back("EINVAL".into());
        assert_eq!(back.hook, PacketHook::Tracepoint);
        assert!(back
            .reason()
            .contains("kprobe:icmp_echo did not attach (EINVAL)"));
        let p = decide(
            AttachMode::Auto,
            &needs(false, None, Some(V4)),
            Err("this kernel has no kprobe support".into()),
        )
        .unwrap();
        assert_eq!(p.reason(), "this kernel has no kprobe support");
        assert!(!p.may_fall_back());
    }

    /// The needs come from the filter the flags make: an IPv6 peer, a TCP port.
    #[test]
    fn needs_are_read_from_the_filter() {
        let mut f = Filter::all_icmp();
        assert_eq!(Needs::of(&f, false), needs(false, None, None));
        f.peer_family = 6;
        f.peer = [0xfd, 0x99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        f.tcp_port_set = 1;
        f.tcp_port = 8080;
        assert_eq!(Needs::of(&f, true), needs(true, Some(8080), Some(V6)));
        f.peer_family = 4;
        f.peer[..4].copy_from_slice(&[10, 0, 0, 9]);
        assert_eq!(Needs::of(&f, false).peer, Some(V4));
    }
}
