//! The header every record starts with, filled in one place.
use aya_ebpf::helpers::{bpf_get_current_comm, bpf_get_smp_processor_id};
use tracer_common::{EventHeader, EventKind, COMM_LEN};

/// The context a record is about: its thread, process and name.
#[derive(Clone, Copy)]
pub struct Subject {
    pub pid: u32,
    pub tgid: u32,
    pub comm: [u8; COMM_LEN],
}

impl Subject {
    /// The task running now, from `bpf_get_current_pid_tgid()`'s result (which the
    /// caller has read already).
    #[inline(always)]
    pub fn current(pid_tgid: u64) -> Self {
        Self {
            pid: pid_tgid as u32,
            tgid: (pid_tgid >> 32) as u32,
            comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
        }
    }
}

/// Fills a record's header: its kind, this CPU, when (`ts`, boot ns), and who it is
/// about.
#[inline(always)]
pub fn fill_header(h: &mut EventHeader, kind: EventKind, ts: u64, who: Subject) {
    h.kind = kind as u32;
    // SAFETY: helper with no arguments.
    h.cpu = unsafe { bpf_get_smp_processor_id() };
    h.ts_ns = ts;
    h.pid = who.pid;
    h.tgid = who.tgid;
    h.comm = who.comm;
}
