//! Turns kernel records into dump records: names for syscalls and policies, the file
//! behind an fd argument and the cgroup path, read from /proc and cgroupfs while the
//! task still lives (so the dump can be read on another machine).
use std::{
    collections::HashMap,
    fs,
    net::{Ipv4Addr, Ipv6Addr},
    os::unix::fs::MetadataExt,
    path::Path,
};

use tracer_common::{
    EventKind, Holder, PacketEvent, PacketHookKind, SyscallEvent, WaitEvent, PROTO_ICMP,
    PROTO_ICMPV6, PROTO_TCP, TCP_ACK, TCP_RST, TCP_SYN,
};

use stalltrace_analysis::dump::{
    HolderRec, PacketKind, PacketRec, Record, RxContext, SyscallRec, SyscallRef, TaskRef, WaitKind,
    WaitRec,
};

use crate::{
    events::{comm_str, RawEvent},
    samples::Sampler,
    syscall::{fd_path, syscall_name, takes_fd},
};

pub fn policy_name(p: u32) -> &'static str {
    match p {
        0 => "SCHED_OTHER",
        1 => "SCHED_FIFO",
        2 => "SCHED_RR",
        3 => "SCHED_BATCH",
        5 => "SCHED_IDLE",
        6 => "SCHED_DEADLINE",
        7 => "SCHED_EXT",
        _ => "unknown",
    }
}

/// Kernel prio (0..139) to what users set: RT priority 1..99, or nice -20..19.
pub fn user_priority(prio: u32) -> i32 {
    if prio < 100 {
        99 - prio as i32
    } else {
        // A corrupt record's prio past i32::MAX must not wrap negative and overflow.
        i32::try_from(prio).unwrap_or(i32::MAX) - 120
    }
}

/// Long syscalls kept to explain later waits (they exit before the wait they caused
/// ends, so they reach us first).
const RECENT_SYSCALLS: usize = 512;

#[derive(Default)]
pub struct Enricher {
    cgroups: HashMap<u64, String>,
    cgroups_scanned: bool,
    recent: std::collections::VecDeque<SyscallRec>,
    /// Samples kept until their wait comes, then attached to its holders.
    sampler: Option<Sampler>,
    /// The recorder's own process: its threads are left out of holders.
    self_tgid: u32,
    /// Pods, containers and units of holders, from their cgroups.
    resolver: crate::identity::Resolver,
}

impl Enricher {
    /// An enricher that attaches the sampler's samples to the holders of each wait.
    pub fn with_sampler(sampler: Sampler) -> Self {
        Self {
            sampler: Some(sampler),
            ..Default::default()
        }
    }

    /// Names pods and containers from these kubelet log directories.
    pub fn with_pod_dirs(
        mut self,
        pods: std::path::PathBuf,
        containers: std::path::PathBuf,
    ) -> Self {
        self.resolver = crate::identity::Resolver::new(pods, containers);
        self
    }

    /// Leaves this process's threads out of the holders it reports.
    pub fn exclude_self(mut self) -> Self {
        self.self_tgid = std::process::id();
        self
    }

    pub fn sampler(&self) -> Option<&Sampler> {
        self.sampler.as_ref()
    }

    /// The dump record of a kernel record; `None` for a stack sample, which is kept
    /// and shows up in the holders of the wait it falls in.
    pub fn record(&mut self, ev: &RawEvent) -> Option<Record> {
        Some(match ev {
            RawEvent::Packet(p) => Record::Packet(packet(p)),
            RawEvent::Wait(w) => Record::Wait(self.wait(w)),
            RawEvent::Syscall(s) => {
                let rec = self.syscall(s);
                if self.recent.len() == RECENT_SYSCALLS {
                    self.recent.pop_front();
                }
                self.recent.push_back(rec.clone());
                Record::Syscall(rec)
            }
            RawEvent::Sample(s) => {
                if let Some(c) = self.sampler.as_mut() {
                    c.push(s);
                }
                return None;
            }
        })
    }

    /// cgroup v2 path of a cgroup id (the id is the directory's inode number in the
    /// unified hierarchy: `/sys/fs/cgroup` on v2, `/sys/fs/cgroup/unified` on hybrid
    /// layouts), for a task that is gone by the time its cgroup is asked.
    fn cgroup_path(&mut self, id: u64) -> Option<String> {
        if id == 0 {
            return None;
        }
        if !self.cgroups.contains_key(&id) && !self.cgroups_scanned {
            self.cgroups_scanned = true;
            let v2 = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
                .into_iter()
                .map(Path::new)
                .find(|p| p.join("cgroup.controllers").exists());
            if let Some(root) = v2 {
                scan_cgroups(root, "", 0, &mut self.cgroups);
            }
        }
        self.cgroups.get(&id).cloned()
    }

    /// The process's name and the task's pod/container/unit, while it lives.
    fn who(
        &mut self,
        pid: u32,
        tgid: u32,
    ) -> (
        Option<String>,
        Option<stalltrace_analysis::identity::Identity>,
    ) {
        if pid == 0 {
            return (None, None);
        }
        let process = fs::read_to_string(format!("/proc/{tgid}/comm"))
            .ok()
            .map(|s| s.trim_end().to_string());
        let id = self.resolver.identity_of_pid(pid).filter(|i| {
            i.pod_uid.is_some()
                || i.container_id.is_some()
                || i.unit.is_some()
                || i.cgroup.as_deref().is_some_and(|c| c != "/")
        });
        (process, id)
    }

    /// What `h` was doing in [start, end]: see [`HolderRec::syscall`].
    fn holder_syscall(&self, h: &Holder, start: u64, end: u64) -> Option<SyscallRef> {
        let mut best: Option<SyscallRef> = None;
        for s in self
            .recent
            .iter()
            .filter(|s| s.pid == h.pid && s.ts_ns > start && s.start_ns < end)
        {
            // Saturating: a record from a broken or hostile ring buffer may end before
            // it starts (its own or the wait's window).
            let overlap = s.ts_ns.min(end).saturating_sub(s.start_ns.max(start));
            match best.as_mut() {
                Some(b) if b.nr == s.nr && b.path == s.path => {
                    b.calls += 1;
                    b.in_window_ns = b.in_window_ns.saturating_add(overlap);
                    b.since_ns = b.since_ns.min(s.start_ns);
                }
                Some(b) if b.in_window_ns >= overlap => {}
                _ => {
                    best = Some(SyscallRef {
                        nr: s.nr,
                        name: s.name.clone(),
                        arg0: s.arg0,
                        path: s.path.clone(),
                        since_ns: s.start_ns,
                        calls: 1,
                        in_window_ns: overlap,
                    })
                }
            }
        }
        if best.is_some() {
            return best;
        }
        // In flight when it left the CPU: relevant only if it covers most of its run
        // (a busy loop that ends by calling nanosleep was not "inside nanosleep").
        if h.sys_nr < 0 || h.sys_start_ns == 0 || h.sys_start_ns > end.saturating_sub(h.run_ns / 2)
        {
            return None;
        }
        let name = syscall_name(h.sys_nr);
        let path = fd_path(h.pid, &name, h.sys_arg0);
        Some(SyscallRef {
            nr: h.sys_nr,
            name,
            arg0: h.sys_arg0,
            path,
            since_ns: h.sys_start_ns,
            calls: 1,
            in_window_ns: end.saturating_sub(h.sys_start_ns.max(start)),
        })
    }

    fn holder(&mut self, h: &Holder, start: u64, end: u64) -> HolderRec {
        let (process, identity) = self.who(h.pid, h.tgid);
        let cgroup = identity
            .as_ref()
            .and_then(|i| i.cgroup.clone())
            .or_else(|| self.cgroup_path(h.cgroup_id));
        HolderRec {
            pid: h.pid,
            tgid: h.tgid,
            comm: comm_str(&h.comm),
            process,
            identity,
            run_ns: h.run_ns,
            cgroup_id: h.cgroup_id,
            cgroup,
            policy: policy_name(h.policy).to_string(),
            priority: user_priority(h.prio),
            syscall: self.holder_syscall(h, start, end),
            stacks: None,
            activity: None,
        }
    }

    fn wait(&mut self, w: &WaitEvent) -> WaitRec {
        let kind = if w.header.kind == EventKind::RxThreadWait as u32 {
            WaitKind::RxThread
        } else {
            WaitKind::NetRxSoftirq
        };
        let rx_comm = comm_str(&w.header.comm);
        // A thread wait ends when the thread runs; a softirq wait when NET_RX starts.
        let rx_context =
            RxContext::classify(&rx_comm, w.header.pid, kind == WaitKind::NetRxSoftirq);
        let me = self.self_tgid;
        let mut holders: Vec<HolderRec> = w
            .holders
            .iter()
            .filter(|h| h.run_ns > 0 && (me == 0 || h.tgid != me))
            .map(|h| self.holder(h, w.wait_start_ns, w.header.ts_ns))
            .collect();
        if let Some(c) = self.sampler.as_mut() {
            c.attach(w.header.cpu, w.wait_start_ns, w.header.ts_ns, &mut holders);
        }
        WaitRec {
            kind,
            cpu: w.header.cpu,
            start_ns: w.wait_start_ns,
            ts_ns: w.header.ts_ns,
            wait_ns: w.header.ts_ns.saturating_sub(w.wait_start_ns),
            rx: TaskRef {
                pid: w.header.pid,
                tgid: w.header.tgid,
                comm: rx_comm,
            },
            rx_context,
            waker: TaskRef {
                pid: w.waker_pid,
                tgid: 0,
                comm: waker_comm(w.waker_pid, &w.waker_comm),
            },
            holders,
            nr_switches: w.nr_switches,
            nr_other_runs: w.nr_other_runs,
            run_ns: w.run_ns,
            truncated: w.truncated != 0,
            drain_of_ns: (w.drain_of_ns != 0).then_some(w.drain_of_ns),
        }
    }

    fn syscall(&mut self, s: &SyscallEvent) -> SyscallRec {
        let name = syscall_name(s.nr);
        SyscallRec {
            ts_ns: s.header.ts_ns,
            start_ns: s.start_ns,
            dur_ns: s.header.ts_ns.saturating_sub(s.start_ns),
            cpu_ns: s.cpu_ns,
            cpu: s.header.cpu,
            pid: s.header.pid,
            tgid: s.header.tgid,
            comm: comm_str(&s.header.comm),
            nr: s.nr,
            path: fd_path(s.header.pid, &name, s.arg0).or_else(|| {
                // Exited since: the file a sample saw behind that fd.
                let sampler = self.sampler.as_ref().filter(|_| takes_fd(&name))?;
                sampler.file_of(s.header.tgid, s.arg0)
            }),
            name,
            arg0: s.arg0,
            ret: s.ret,
            cgroup_id: s.cgroup_id,
        }
    }
}

/// The waker's name: from the kernel record, or (NET_RX raises, where the kernel keeps
/// only the pid to stay cheap) from /proc while the task lives; pid 0 is the idle task.
fn waker_comm(pid: u32, comm: &[u8]) -> String {
    let c = comm_str(comm);
    if !c.is_empty() {
        return c;
    }
    if pid == 0 {
        return "swapper".into();
    }
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_else(|_| "?".into())
}

fn scan_cgroups(dir: &Path, rel: &str, depth: u32, out: &mut HashMap<u64, String>) {
    // Bounded: deep or huge hierarchies are cut rather than stalling the recorder.
    if depth > 8 || out.len() > 20_000 {
        return;
    }
    if let Ok(md) = fs::metadata(dir) {
        out.insert(
            md.ino(),
            if rel.is_empty() {
                "/".into()
            } else {
                rel.to_string()
            },
        );
    }
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            let name = e.file_name().to_string_lossy().into_owned();
            scan_cgroups(&e.path(), &format!("{rel}/{name}"), depth + 1, out);
        }
    }
}

fn addr(family: u8, a: &[u8; 16]) -> String {
    if family == 4 {
        Ipv4Addr::new(a[0], a[1], a[2], a[3]).to_string()
    } else {
        Ipv6Addr::from(*a).to_string()
    }
}

pub fn packet(p: &PacketEvent) -> PacketRec {
    let comm = comm_str(&p.header.comm);
    let proto = match p.proto {
        PROTO_ICMP => "icmp",
        PROTO_ICMPV6 => "icmpv6",
        PROTO_TCP => "tcp",
        _ => "other",
    };
    let kind = match (
        p.proto,
        p.icmp_type,
        p.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST),
    ) {
        (PROTO_ICMP, 8, _) | (PROTO_ICMPV6, 128, _) => PacketKind::EchoRequest,
        (PROTO_ICMP, _, _) | (PROTO_ICMPV6, _, _) => PacketKind::EchoReply,
        (_, _, f) if f == TCP_SYN => PacketKind::Syn,
        (_, _, f) if f == TCP_SYN | TCP_ACK => PacketKind::SynAck,
        (_, _, f) if f & TCP_RST != 0 => PacketKind::Rst,
        _ => PacketKind::OtherTcp,
    };
    PacketRec {
        ts_ns: p.header.ts_ns,
        cpu: p.header.cpu,
        pid: p.header.pid,
        tgid: p.header.tgid,
        context: RxContext::classify(&comm, p.header.pid, p.in_softirq != 0),
        comm,
        hook: if PacketHookKind::from_u8(p.hook) == Some(PacketHookKind::Kprobe) {
            "kprobe"
        } else {
            "tracepoint"
        }
        .into(),
        proto: proto.into(),
        kind,
        src: addr(p.family, &p.saddr),
        dst: addr(p.family, &p.daddr),
        ident: p.ident,
        seq: p.seq,
        tcp_seq: (p.proto == PROTO_TCP).then_some(p.tcp_seq),
        rx_start_ns: (p.rx_start_ns != 0).then_some(p.rx_start_ns),
        drain_start_ns: (p.drain_start_ns != 0).then_some(p.drain_start_ns),
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::EventKind;

    use super::*;
    use crate::events::tests as ev;

    #[test]
    fn packet_record_names_context_and_kind() {
        let r = packet(&ev::packet());
        assert_eq!(r.context, RxContext::Ksoftirqd);
        assert_eq!(r.kind, PacketKind::EchoRequest);
        assert_eq!((r.src.as_str(), r.dst.as_str()), ("10.0.0.1", "10.0.0.2"));
        assert_eq!((r.ident, r.seq, r.cpu), (0x1234, 1953, 11));
        assert_eq!(r.rx_start_ns, Some(123_000_000));
    }

    #[test]
    fn wait_record_keeps_holders_and_names_syscall() {
        let mut e = Enricher::default();
        let Some(Record::Wait(w)) = e.record(&RawEvent::Wait(ev::wait(EventKind::SoftirqWait)))
        else {
            panic!("not a wait")
        };
        assert_eq!(w.kind, WaitKind::NetRxSoftirq);
        assert_eq!(w.wait_ns, 123_456_789 - 24_000_000);
        assert_eq!(w.holders.len(), 1, "empty holder slots are dropped");
        let h = &w.holders[0];
        assert_eq!((h.pid, h.tgid, h.comm.as_str()), (10436, 10137, "cadvisor"));
        assert_eq!(h.policy, "SCHED_OTHER");
        assert_eq!(h.syscall.as_ref().map(|s| s.name.as_str()), Some("read"));
    }

    #[test]
    fn stack_samples_end_up_in_the_holders_of_their_wait() {
        struct Map;
        impl crate::stacks::StackSource for Map {
            fn ips(&mut self, id: u32) -> Option<Vec<u64>> {
                (id == 5).then(|| vec![0x1010, 0x2020])
            }
        }
        struct User;
        impl crate::stacks::UserSymbolizer for User {
            fn frames(&mut self, _tgid: u32, ips: &[u64]) -> Vec<String> {
                ips.iter().map(|i| format!("{i:#x}")).collect()
            }
        }
        let mut m = std::collections::BTreeMap::new();
        m.insert(0x1000, "vfs_read".to_string());
        m.insert(0x2000, "ksys_read".to_string());
        let ksyms = crate::stacks::KernelSymbols::from_map(m).unwrap();
        let stacks = crate::stacks::StackCollector::new(499, Box::new(Map), ksyms, Box::new(User));
        let mut e = Enricher::with_sampler(crate::samples::Sampler::new(499, Some(stacks)));
        let w = ev::wait(EventKind::SoftirqWait);
        for ts in [30_000_000, 60_000_000, 200_000_000] {
            let mut s = ev::sample();
            s.header.ts_ns = ts;
            s.header.pid = 10436;
            s.header.cpu = w.header.cpu;
            s.kstack_id = 5;
            assert_eq!(
                e.record(&RawEvent::Sample(s)),
                None,
                "samples are not dump records"
            );
        }
        let Some(Record::Wait(rec)) = e.record(&RawEvent::Wait(w)) else {
            panic!("not a wait")
        };
        let st = rec.holders[0].stacks.as_ref().expect("the holder's stacks");
        // Two of the three samples fall in [24 ms, 123 ms].
        assert_eq!(st.samples, 2);
        assert_eq!(st.top[0].kernel, vec!["vfs_read+0x10", "ksys_read+0x20"]);
        assert!(st.top[0].user.is_empty(), "user id -14: no user stack");
        // And what it was doing: inside openat() of the path the samples carried.
        let a = rec.holders[0]
            .activity
            .as_ref()
            .expect("the holder's activity");
        assert_eq!(a.samples, 2);
        assert_eq!(a.syscalls[0].name, "openat");
        assert_eq!(
            a.syscalls[0].path.as_deref(),
            Some("/proc/76/status"),
            "/proc/self of tgid 76"
        );
        let stats = e.sampler().map(|c| c.stats()).unwrap();
        assert_eq!((stats.samples, stats.attributed), (3, 2));
    }

    /// Found by fuzzing (ring target): a wait whose start is after its end, and a
    /// syscall that ends before it starts, overflowed the overlap arithmetic.
    #[test]
    fn inverted_windows_do_not_overflow() {
        let mut e = Enricher::default();
        let mut s = ev::syscall();
        s.header.pid = 10436;
        s.start_ns = u64::MAX;
        s.header.ts_ns = 1_000;
        e.record(&RawEvent::Syscall(s));
        let mut w = ev::wait(EventKind::SoftirqWait);
        w.wait_start_ns = u64::MAX;
        w.header.ts_ns = 500;
        w.holders[0].sys_start_ns = 1;
        w.holders[0].run_ns = 2;
        let Some(Record::Wait(rec)) = e.record(&RawEvent::Wait(w)) else {
            panic!("not a wait")
        };
        let sys = rec.holders[0].syscall.as_ref().expect("in flight");
        assert_eq!(sys.in_window_ns, 0);
        // And overlapping syscalls whose overlaps add up past u64.
        let mut e = Enricher::default();
        for _ in 0..3 {
            let mut s = ev::syscall();
            s.header.pid = 10436;
            s.start_ns = 1;
            s.header.ts_ns = u64::MAX;
            e.record(&RawEvent::Syscall(s));
        }
        let mut w = ev::wait(EventKind::SoftirqWait);
        w.wait_start_ns = 0;
        w.header.ts_ns = u64::MAX;
        let Some(Record::Wait(rec)) = e.record(&RawEvent::Wait(w)) else {
            panic!("not a wait")
        };
        let sys = rec.holders[0].syscall.as_ref().expect("the syscalls");
        assert_eq!((sys.calls, sys.in_window_ns), (3, u64::MAX));
    }

    #[test]
    fn priorities_read_as_users_set_them() {
        assert_eq!(user_priority(49), 50); // chrt -f 50
        assert_eq!(user_priority(120), 0);
        assert_eq!(user_priority(139), 19);
        // Found by fuzzing (ring target): prio u32::MAX overflowed.
        assert_eq!(user_priority(u32::MAX), i32::MAX - 120);
        assert_eq!(syscall_name(0), "read");
        assert_eq!(syscall_name(-1), "syscall_-1");
        assert_eq!(syscall_name(100_000), "syscall_100000");
    }
}
