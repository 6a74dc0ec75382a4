//! Decoding ring-buffer records into the shared `#[repr(C)]` types. The kind id in the
//! header selects the type; the length must match exactly, so a kernel/user mismatch
//! shows up as an error, not as garbage.
use std::mem::size_of;

use thiserror::Error;
use tracer_common::{EventHeader, EventKind, PacketEvent, SampleEvent, SyscallEvent, WaitEvent};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RawEvent {
    Packet(PacketEvent),
    Wait(WaitEvent),
    Syscall(SyscallEvent),
    Sample(SampleEvent),
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than an event header")]
    Short(usize),
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
    #[error("retired event kind {0}: a kernel object older than this stalltrace")]
    RetiredKind(u32),
    #[error("event kind {kind} has {len} bytes, expected {want}")]
    Length { kind: u32, len: usize, want: usize },
}

/// Copies a `T` out of `bytes` whose length was checked by the caller.
fn read<T: Copy>(bytes: &[u8]) -> T {
    debug_assert!(bytes.len() >= size_of::<T>());
    // SAFETY: the caller checked bytes.len() >= size_of::<T>(); T is one of the
    // tracer-common #[repr(C)] types made only of integers and byte arrays, for which
    // every bit pattern is valid; read_unaligned copes with any alignment.
    unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) }
}

pub fn decode(bytes: &[u8]) -> Result<RawEvent, DecodeError> {
    if bytes.len() < size_of::<EventHeader>() {
        return Err(DecodeError::Short(bytes.len()));
    }
    let h: EventHeader = read(bytes);
    let want = match EventKind::from_u32(h.kind) {
        Some(EventKind::Packet) => size_of::<PacketEvent>(),
        Some(EventKind::SoftirqWait | EventKind::RxThreadWait) => size_of::<WaitEvent>(),
        Some(EventKind::Syscall) => size_of::<SyscallEvent>(),
        Some(EventKind::Sample) => size_of::<SampleEvent>(),
        Some(EventKind::StackSample) => return Err(DecodeError::RetiredKind(h.kind)),
        None => return Err(DecodeError::UnknownKind(h.kind)),
    };
    // The ring buffer rounds records up to 8 bytes; all our types are multiples of 8.
    if bytes.len() != want {
        return Err(DecodeError::Length {
            kind: h.kind,
            len: bytes.len(),
            want,
        });
    }
    Ok(match EventKind::from_u32(h.kind) {
        Some(EventKind::Packet) => RawEvent::Packet(read(bytes)),
        Some(EventKind::Syscall) => RawEvent::Syscall(read(bytes)),
        Some(EventKind::Sample) => RawEvent::Sample(read(bytes)),
        _ => RawEvent::Wait(read(bytes)),
    })
}

/// The bytes of a record as the kernel writes them (tests and benchmarks).
pub fn encode<T: Copy>(v: &T) -> Vec<u8> {
    let mut out = vec![0u8; size_of::<T>()];
    // SAFETY: `out` has exactly size_of::<T>() bytes; T is a padding-free #[repr(C)]
    // type, so every byte of `v` is initialised.
    unsafe {
        std::ptr::copy_nonoverlapping((v as *const T).cast::<u8>(), out.as_mut_ptr(), out.len())
    };
    out
}

/// Task name bytes up to the first NUL.
pub fn comm_str(c: &[u8]) -> String {
    let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
    String::from_utf8_lossy(&c[..end]).into_owned()
}

#[cfg(test)]
pub mod tests {
    use tracer_common::*;

    use super::*;

    pub fn comm(s: &str) -> [u8; COMM_LEN] {
        let mut c = [0u8; COMM_LEN];
        c[..s.len()].copy_from_slice(s.as_bytes());
        c
    }

    pub fn header(kind: EventKind, name: &str) -> EventHeader {
        EventHeader {
            kind: kind as u32,
            cpu: 11,
            ts_ns: 123_456_789,
            pid: 76,
            tgid: 76,
            comm: comm(name),
        }
    }

    pub fn packet() -> PacketEvent {
        PacketEvent {
            header: header(EventKind::Packet, "ksoftirqd/11"),
            saddr: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            daddr: [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            family: 4,
            proto: PROTO_ICMP,
            icmp_type: 8,
            tcp_flags: 0,
            in_softirq: 1,
            hook: PacketHookKind::Tracepoint as u8,
            _pad0: [0; 2],
            ident: 0x1234,
            seq: 1953,
            tcp_seq: 0,
            rx_start_ns: 123_000_000,
            drain_start_ns: 24_000_000,
        }
    }

    pub fn holder(pid: u32, tgid: u32, name: &str, run_ns: u64) -> Holder {
        Holder {
            pid,
            tgid,
            run_ns,
            cgroup_id: 4242,
            prio: 120,
            policy: 0,
            sys_nr: 0,
            sys_arg0: 7,
            sys_start_ns: 1,
            comm: comm(name),
        }
    }

    pub fn wait(kind: EventKind) -> WaitEvent {
        WaitEvent {
            header: header(kind, "ksoftirqd/11"),
            wait_start_ns: 24_000_000,
            vec: if kind == EventKind::RxThreadWait {
                VEC_THREAD
            } else {
                NET_RX_SOFTIRQ
            },
            waker_pid: 0,
            waker_comm: comm("swapper/11"),
            nr_switches: 2,
            nr_other_runs: 1,
            truncated: 0,
            _pad0: 0,
            run_ns: 150_000,
            drain_of_ns: 24_000_000,
            holders: [
                holder(10436, 10137, "cadvisor", 98_000_000),
                holder(0, 0, "", 0),
                holder(0, 0, "", 0),
            ],
        }
    }

    pub fn syscall() -> SyscallEvent {
        SyscallEvent {
            header: header(EventKind::Syscall, "cadvisor"),
            nr: 0,
            arg0: 7,
            start_ns: 1,
            ret: 577,
            cgroup_id: 4242,
            cpu_ns: 98_000_000,
        }
    }

    pub fn sample() -> SampleEvent {
        let mut path = [0u8; SAMPLE_PATH_LEN];
        path[..17].copy_from_slice(b"/proc/self/status");
        SampleEvent {
            header: header(EventKind::Sample, "stat-reader"),
            wait_start_ns: 123_000_000,
            pending: PENDING_NET_RX | PENDING_RX_THREAD,
            mode: SampleMode::Syscall as u32,
            nr: 257,
            arg0: u64::MAX - 99,
            kstack_id: 17,
            ustack_id: -14,
            path,
        }
    }

    #[test]
    fn round_trip_every_kind() {
        let p = packet();
        assert_eq!(decode(&encode(&p)), Ok(RawEvent::Packet(p)));
        for k in [EventKind::SoftirqWait, EventKind::RxThreadWait] {
            let w = wait(k);
            assert_eq!(decode(&encode(&w)), Ok(RawEvent::Wait(w)));
        }
        let s = syscall();
        assert_eq!(decode(&encode(&s)), Ok(RawEvent::Syscall(s)));
        let k = sample();
        let b = encode(&k);
        assert_eq!(b.len(), 80 + SAMPLE_PATH_LEN);
        assert_eq!(decode(&b), Ok(RawEvent::Sample(k)));
        // Negative stack ids (no such stack) survive the trip.
        let Ok(RawEvent::Sample(d)) = decode(&b) else {
            panic!("not a sample")
        };
        assert_eq!((d.kstack_id, d.ustack_id, d.nr), (17, -14, 257));
        assert!(matches!(
            decode(&b[..136]),
            Err(DecodeError::Length {
                kind: 6,
                len: 136,
                want
            }) if want == 80 + SAMPLE_PATH_LEN
        ));
        // The retired stack-sample kind is refused, not misread.
        let mut old = b[..64].to_vec();
        old[0] = 5;
        assert_eq!(decode(&old), Err(DecodeError::RetiredKind(5)));
    }

    #[test]
    fn rejects_bad_records() {
        assert_eq!(decode(&[0u8; 8]), Err(DecodeError::Short(8)));
        let mut b = encode(&packet());
        b[0] = 99;
        assert_eq!(decode(&b), Err(DecodeError::UnknownKind(99)));
        let b = encode(&packet());
        assert!(matches!(
            decode(&b[..b.len() - 8]),
            Err(DecodeError::Length { kind: 1, .. })
        ));
    }

    #[test]
    fn kind_ids_are_stable() {
        // Released ids never change meaning: old dumps and new decoders must agree.
        assert_eq!(EventKind::Packet as u32, 1);
        assert_eq!(EventKind::SoftirqWait as u32, 2);
        assert_eq!(EventKind::RxThreadWait as u32, 3);
        assert_eq!(EventKind::Syscall as u32, 4);
        assert_eq!(EventKind::StackSample as u32, 5);
        assert_eq!(EventKind::Sample as u32, 6);
        for id in 1..=6 {
            assert_eq!(EventKind::from_u32(id).map(|k| k as u32), Some(id));
        }
        assert_eq!(EventKind::from_u32(0), None);
    }

    #[test]
    fn comm_stops_at_nul() {
        assert_eq!(comm_str(&comm("napi/vB-258")), "napi/vB-258");
        assert_eq!(comm_str(b"abcdefghijklmnop"), "abcdefghijklmnop");
    }
}
