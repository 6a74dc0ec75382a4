//! What the engine sends and receives through: a prober's socket (ICMP or TCP), its
//! probes on the wire and the answers that are its own. Below the clock (which waits on
//! a transport's socket) and the engine.
use std::{net::IpAddr, os::fd::RawFd, time::Instant};

use stalltrace_analysis::dump::ProbeProto;

/// What a prober put on the wire for one probe, as the kernel reads it big-endian.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    pub wire_ident: u16,
    pub wire_seq: u16,
}

/// Details of an answer, for the hping3-style line.
#[derive(Debug, Clone)]
pub enum ReplyInfo {
    Icmp {
        len: usize,
        from: IpAddr,
        ttl: Option<u8>,
        ip_id: Option<u16>,
    },
    Tcp {
        len: usize,
        from: IpAddr,
        ttl: Option<u8>,
        df: bool,
        ip_id: Option<u16>,
        sport: u16,
        flags: String,
        win: u16,
    },
}

/// An answer that belongs to this prober: `slot` is the sequence modulo
/// [`Transport::modulus`] (the 16-bit echo sequence, or the source-port offset).
#[derive(Debug, Clone)]
pub struct Reply {
    pub slot: u64,
    pub at: Instant,
    pub info: ReplyInfo,
}

pub trait Transport: Send {
    /// Sends probe number `counter` (its wire sequence is derived from it).
    fn send(&mut self, counter: u64) -> std::io::Result<Sent>;
    /// Reads one pending packet without blocking; `Ok(None)` when it was not ours or
    /// nothing was pending.
    fn try_recv(&mut self) -> std::io::Result<Option<Reply>>;
    fn fd(&self) -> RawFd;
    /// How many sequences the wire can tell apart (65536 for ICMP).
    fn modulus(&self) -> u64;
    fn proto(&self) -> ProbeProto;
    /// Answers ignored so far because they could not be ours (a TCP answer that does
    /// not acknowledge the probe's random sequence number).
    fn forged(&self) -> u64 {
        0
    }
    /// When the next answer becomes readable, for a simulated network that knows it in
    /// advance (the virtual clock jumps there); real sockets cannot tell.
    #[cfg(test)]
    fn ready_at(&self) -> Option<Instant> {
        None
    }
}

/// Reads one datagram into `buf` with `recvfrom(MSG_DONTWAIT)`; returns its length and
/// the sender.
pub fn recv_from(
    sock: &socket2::Socket,
    buf: &mut [u8],
) -> std::io::Result<(usize, Option<std::net::SocketAddr>)> {
    // SAFETY: `[u8]` and `[MaybeUninit<u8>]` have the same layout, and `recv_from`
    // only writes initialised bytes into it (socket2 documents it never de-initialises).
    let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [std::mem::MaybeUninit<u8>]) };
    let (n, addr) = sock.recv_from_with_flags(uninit, libc::MSG_DONTWAIT)?;
    Ok((n, addr.as_socket()))
}
