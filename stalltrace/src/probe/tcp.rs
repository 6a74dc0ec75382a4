//! TCP SYN prober: a raw socket sends bare SYNs, one source port per probe (base +
//! sequence, as hping3 does) so probes spread over the target's RX queues the way
//! real connections do. RTT = SYN → SYN-ACK or RST. We never answer a SYN-ACK: no
//! socket owns our source port, so our kernel sends the RST that closes it.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd, RawFd},
    time::Instant,
};

use etherparse::{Ipv4HeaderSlice, TcpHeader, TcpSlice};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::{
    engine::{recv_from, Reply, ReplyInfo, Sent, Transport},
    icmp::{is_perm, OpenError},
};
use stalltrace_analysis::dump::ProbeProto;

/// Source ports used per run: probe i leaves from `base + i % PORT_SPAN`.
pub const PORT_SPAN: u16 = 8192;

pub struct TcpTransport {
    sock: Socket,
    target: IpAddr,
    dest: SockAddr,
    src: IpAddr,
    dport: u16,
    base: u16,
    isn: u32,
    buf: Vec<u8>,
}

impl TcpTransport {
    /// `base` is the first source port; `base + PORT_SPAN` must fit in 16 bits.
    pub fn open(target: IpAddr, dport: u16, base: u16) -> Result<Self, OpenError> {
        let base = base.min(u16::MAX - PORT_SPAN);
        let domain = if target.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        let sock = Socket::new(domain, Type::RAW, Some(Protocol::TCP)).map_err(|e| {
            if is_perm(&e) {
                OpenError::NoPermission(
                    "TCP SYN probes need a raw socket: run as root or give the binary CAP_NET_RAW \
                     (setcap cap_net_raw+ep), or probe with ICMP instead (drop --tcp)"
                        .into(),
                )
            } else {
                OpenError::Io {
                    what: "opening a raw TCP socket".into(),
                    source: e,
                }
            }
        })?;
        sock.set_nonblocking(true).map_err(|source| OpenError::Io {
            what: "making the TCP socket non-blocking".into(),
            source,
        })?;
        // The checksum covers the source address: ask routing which one it will use.
        let any: SocketAddr = if target.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let src = UdpSocket::bind(any)
            .and_then(|u| u.connect((target, dport)).map(|_| u))
            .and_then(|u| u.local_addr())
            .map_err(|source| OpenError::Io {
                what: format!("finding a route to {target}"),
                source,
            })?
            .ip();
        Ok(Self {
            sock,
            target,
            // Raw IPv6 sockets refuse a port other than 0 or the protocol number.
            dest: SocketAddr::new(target, 0).into(),
            src,
            dport,
            base,
            isn: std::process::id().wrapping_mul(2_654_435_761),
            buf: vec![0u8; 65536],
        })
    }

    pub fn base_port(&self) -> u16 {
        self.base
    }

    pub fn syn(
        &self,
        counter: u64,
    ) -> Result<(TcpHeader, u16), etherparse::err::ValueTooBigError<usize>> {
        let sport = self.base + (counter % u64::from(PORT_SPAN)) as u16;
        let mut h = TcpHeader::new(
            sport,
            self.dport,
            self.isn.wrapping_add(counter as u32),
            64240,
        );
        h.syn = true;
        h.checksum = match (self.src, self.target) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                h.calc_checksum_ipv4_raw(s.octets(), d.octets(), &[])?
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                h.calc_checksum_ipv6_raw(s.octets(), d.octets(), &[])?
            }
            // Routing answered with the other family: the send below will fail.
            _ => 0,
        };
        Ok((h, sport))
    }
}

/// Flags in hping3's order and spelling (`SA`, `RA`).
pub fn flags_str(t: &TcpSlice<'_>) -> String {
    let mut f = String::new();
    for (on, c) in [
        (t.rst(), 'R'),
        (t.syn(), 'S'),
        (t.ack(), 'A'),
        (t.fin(), 'F'),
        (t.psh(), 'P'),
        (t.urg(), 'U'),
    ] {
        if on {
            f.push(c);
        }
    }
    if f.is_empty() {
        f.push_str("none");
    }
    f
}

impl Transport for TcpTransport {
    fn send(&mut self, counter: u64) -> std::io::Result<Sent> {
        let (h, sport) = self
            .syn(counter)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        self.sock.send_to(&h.to_bytes(), &self.dest)?;
        // For TCP the record's ident is the probe's source port, seq its destination port.
        Ok(Sent {
            wire_ident: sport,
            wire_seq: self.dport,
        })
    }

    fn try_recv(&mut self) -> std::io::Result<Option<Reply>> {
        let (n, from) = recv_from(&self.sock, &mut self.buf)?;
        let at = Instant::now();
        let pkt = &self.buf[..n.min(self.buf.len())];
        // Raw IPv4 sockets deliver the IP header; raw IPv6 sockets do not.
        let (seg, ttl, df, ip_id, src) = match self.target {
            IpAddr::V4(_) => {
                let Ok(ip) = Ipv4HeaderSlice::from_slice(pkt) else {
                    return Ok(None);
                };
                (
                    &pkt[ip.slice().len()..],
                    Some(ip.ttl()),
                    ip.dont_fragment(),
                    Some(ip.identification()),
                    IpAddr::V4(ip.source_addr()),
                )
            }
            IpAddr::V6(_) => match from {
                Some(a) => (pkt, None, false, None, a.ip()),
                None => return Ok(None),
            },
        };
        if src != self.target {
            return Ok(None);
        }
        let Ok(t) = TcpSlice::from_slice(seg) else {
            return Ok(None);
        };
        let dst = t.destination_port();
        if t.source_port() != self.dport || !(self.base..self.base + PORT_SPAN).contains(&dst) {
            return Ok(None);
        }
        if !(t.rst() || (t.syn() && t.ack())) {
            return Ok(None);
        }
        let info = ReplyInfo::Tcp {
            len: n,
            from: src,
            ttl,
            df,
            ip_id,
            sport: t.source_port(),
            flags: flags_str(&t),
            win: t.window_size(),
        };
        Ok(Some(Reply {
            slot: u64::from(dst - self.base),
            at,
            info,
        }))
    }

    fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    fn modulus(&self) -> u64 {
        u64::from(PORT_SPAN)
    }

    fn proto(&self) -> ProbeProto {
        ProbeProto::Tcp
    }
}
