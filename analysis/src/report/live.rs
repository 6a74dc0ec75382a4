//! Live lines of `record`: packets in the 2019 GitHub incident's table layout, waits and long syscalls
//! in plain words.
use crate::{
    dump::{HolderRec, PacketRec, RxContext, SyscallRec, WaitKind, WaitRec},
    stacks,
    units::human_ns,
};

pub const PACKET_HEADER: &str =
    "  TGID    PID PROCESS          CPU CONTEXT          PACKET            ID   SEQ";

pub fn context_name(c: RxContext) -> &'static str {
    match c {
        RxContext::Ksoftirqd => "ksoftirqd",
        RxContext::Napi => "threaded-napi",
        RxContext::BacklogNapi => "backlog-napi",
        RxContext::Idle => "softirq(idle)",
        RxContext::ProcessSoftirq => "softirq(process)",
        RxContext::Process => "process",
    }
}

pub fn packet_line(p: &PacketRec) -> String {
    let kind = serde_json::to_value(p.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    format!(
        "{:>6} {:>6} {:<16} {:>3} {:<16} {:<14} {:>6} {:>5}",
        p.tgid,
        p.pid,
        p.comm,
        p.cpu,
        context_name(p.context),
        format!("{} {kind}", p.proto),
        p.ident,
        p.seq
    )
}

/// `stall-hog (pid 4242, SCHED_FIFO 50)`.
pub fn task_words(h: &HolderRec) -> String {
    let sched = match h.policy.as_str() {
        "SCHED_FIFO" | "SCHED_RR" => format!("{} {}", h.policy, h.priority),
        "unknown" if h.priority > 0 && h.priority < 100 => {
            format!("RT {}", h.priority)
        }
        p => format!("{p} nice {}", h.priority),
    };
    // The policy goes inside the last parenthesis: `stall-hog (pid 4242, SCHED_FIFO 50)`.
    let mut who = super::who(&h.comm, h.pid, h.tgid, h.process.as_deref());
    match who.pop() {
        Some(')') => who.push_str(&format!(", {sched})")),
        Some(c) => {
            who.push(c);
            who.push_str(&format!(" ({sched})"));
        }
        None => {}
    }
    format!("{who}{}", super::where_words(h.identity.as_ref()))
}

/// What the holder was doing: from its samples (`inside pread64() of /path (24 of 25
/// samples)`, `91% in syscalls — …`), else from exact syscall tracing (`inside read()
/// of /path for 98 ms`, `inside pread64() of /path (3 calls, 92 ms of the wait)`).
pub fn syscall_words(h: &HolderRec, until_ns: u64) -> String {
    if let Some(a) = h.activity.as_ref().and_then(crate::activity::phrase) {
        return a;
    }
    match &h.syscall {
        None => "not sampled (the wait was shorter than the sampler's period)".into(),
        Some(s) => {
            let of = s
                .path
                .as_deref()
                .map(|p| format!(" of {p}"))
                .unwrap_or_default();
            if s.calls > 1 {
                format!(
                    "inside {}(){of} ({} calls, {} of the wait)",
                    s.name,
                    s.calls,
                    human_ns(s.in_window_ns)
                )
            } else if s.since_ns > 0 && s.since_ns < until_ns {
                format!(
                    "inside {}(){of} for {}",
                    s.name,
                    human_ns(until_ns - s.since_ns)
                )
            } else {
                format!("inside {}(){of}", s.name)
            }
        }
    }
}

pub fn wait_sentence(w: &WaitRec) -> String {
    let head = match w.kind {
        WaitKind::NetRxSoftirq => format!(
            "CPU {}: NET_RX waited {} (raised by {} pid {}); RX ran in {}",
            w.cpu,
            human_ns(w.wait_ns),
            w.waker.comm,
            w.waker.pid,
            rx_words(w)
        ),
        WaitKind::RxThread => format!(
            "CPU {}: RX thread {} waited {} from wakeup (by {} pid {}) to run",
            w.cpu,
            w.rx.comm,
            human_ns(w.wait_ns),
            w.waker.comm,
            w.waker.pid
        ),
    };
    let held = match w.holders.first() {
        None => "; no task held the CPU (idle, or interrupts)".to_string(),
        Some(h) => {
            let others = w.holders.len().saturating_sub(1) + w.nr_other_runs as usize;
            let more = if others > 0 {
                format!(
                    "; {others} other run{} on the CPU",
                    if others == 1 { "" } else { "s" }
                )
            } else {
                String::new()
            };
            format!(
                "; CPU held by {} for {}, {}{more}{}",
                task_words(h),
                human_ns(h.run_ns),
                syscall_words(h, w.ts_ns),
                stack_words(h)
            )
        }
    };
    let trunc = if w.truncated {
        " (more switches than the history holds: its briefest runs are left out)"
    } else {
        ""
    };
    format!("{head}{held}{trunc}")
}

/// `; kernel stack in 27 of 40 samples: copy_page_to_iter ← filemap_read ← …` (leaf
/// first, read "called from"), or nothing without samples.
pub fn stack_words(h: &HolderRec) -> String {
    let Some((n, of, side, frames)) = h.stacks.as_ref().and_then(stacks::headline) else {
        return String::new();
    };
    format!(
        "; {side} stack in {n} of {of} samples: {}",
        stacks::short_stack(frames, stacks::HEADLINE_FRAMES)
    )
}

fn rx_words(w: &WaitRec) -> String {
    match w.rx_context {
        RxContext::ProcessSoftirq => format!("softirq on {}'s stack (pid {})", w.rx.comm, w.rx.pid),
        RxContext::Idle => "softirq on the idle CPU".into(),
        _ => w.rx.comm.clone(),
    }
}

pub fn syscall_sentence(s: &SyscallRec) -> String {
    let of = s
        .path
        .as_deref()
        .map(|p| format!(" of {p}"))
        .unwrap_or_default();
    format!(
        "CPU {}: {} (pid {}, tgid {}) spent {} on CPU inside {}(){of} ({} wall)",
        s.cpu,
        s.comm,
        s.pid,
        s.tgid,
        human_ns(s.cpu_ns),
        s.name,
        human_ns(s.dur_ns)
    )
}

/// Waits on one CPU whose windows overlap and that end this close together are one
/// stall (the correlator's merge gap).
const SAME_STALL_NS: u64 = 1_000_000;

/// Says whether a wait is news for the live stream: the second wait of one stall (NET_RX
/// and its RX thread; the request's and the reply's RX run) says nothing the first
/// did not, so the stream prints one sentence per stall.
#[derive(Default)]
pub struct StallDedup {
    /// Per CPU: the window of the last wait let through.
    last: std::collections::HashMap<u32, (u64, u64)>,
}

impl StallDedup {
    /// True the first time a stall is seen.
    pub fn is_new(&mut self, w: &WaitRec) -> bool {
        let start = w.start_ns.min(w.ts_ns);
        let seen = self.last.get(&w.cpu).is_some_and(|&(s, e)| {
            start <= e && s <= w.ts_ns && e.abs_diff(w.ts_ns) <= SAME_STALL_NS
        });
        if !seen {
            self.last.insert(w.cpu, (start, w.ts_ns));
        }
        !seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dump::{SyscallRef, TaskRef};

    #[test]
    fn one_sentence_per_stall() {
        let w = |cpu, start, end, kind| WaitRec {
            kind,
            cpu,
            start_ns: start,
            ts_ns: end,
            wait_ns: end - start,
            rx: TaskRef {
                pid: 9,
                tgid: 9,
                comm: "ksoftirqd/1".into(),
            },
            rx_context: RxContext::Ksoftirqd,
            waker: TaskRef {
                pid: 1,
                tgid: 1,
                comm: "x".into(),
            },
            holders: vec![],
            nr_switches: 1,
            nr_other_runs: 0,
            run_ns: 0,
            truncated: false,
            drain_of_ns: None,
        };
        let mut d = StallDedup::default();
        // The 2019 GitHub incident's stall: the RX thread's wait, then NET_RX's, ending 4 µs apart.
        assert!(d.is_new(&w(11, 1_000, 99_001_000, WaitKind::RxThread)));
        assert!(!d.is_new(&w(11, 500, 99_005_000, WaitKind::NetRxSoftirq)));
        // Another CPU, and the next stall on this one, are news.
        assert!(d.is_new(&w(3, 500, 99_005_000, WaitKind::NetRxSoftirq)));
        assert!(d.is_new(&w(11, 130_000_000, 229_000_000, WaitKind::RxThread)));
    }

    #[test]
    fn wait_sentence_names_culprit_and_rx_thread() {
        let w = WaitRec {
            kind: WaitKind::RxThread,
            cpu: 1,
            start_ns: 1_000_000_000,
            ts_ns: 1_712_000_000,
            wait_ns: 712_000_000,
            rx: TaskRef {
                pid: 258,
                tgid: 258,
                comm: "napi/vB-258".into(),
            },
            rx_context: RxContext::Napi,
            waker: TaskRef {
                pid: 881,
                tgid: 0,
                comm: "ping".into(),
            },
            holders: vec![HolderRec {
                pid: 4242,
                tgid: 4242,
                comm: "stall-hog".into(),
                process: None,
                identity: None,
                run_ns: 705_000_000,
                cgroup_id: 1,
                cgroup: None,
                policy: "SCHED_FIFO".into(),
                priority: 50,
                syscall: Some(SyscallRef {
                    nr: 0,
                    name: "read".into(),
                    arg0: 3,
                    path: Some("/tmp/big".into()),
                    since_ns: 1_614_000_000,
                    calls: 1,
                    in_window_ns: 98_000_000,
                }),
                stacks: None,
                activity: None,
            }],
            nr_switches: 1,
            nr_other_runs: 0,
            run_ns: 0,
            truncated: false,
            drain_of_ns: None,
        };
        assert_eq!(
            wait_sentence(&w),
            "CPU 1: RX thread napi/vB-258 waited 712 ms from wakeup (by ping pid 881) to run; \
             CPU held by stall-hog (pid 4242, SCHED_FIFO 50) for 705 ms, inside read() of /tmp/big for 98 ms"
        );
        let mut w = w;
        w.holders[0].stacks = Some(crate::dump::HolderStacks {
            samples: 40,
            user_mode: 0,
            missing: 0,
            distinct: 2,
            top: vec![crate::dump::StackRec {
                count: 27,
                kernel: [
                    "copy_page_to_iter+0xa3",
                    "shmem_file_read_iter+0x117",
                    "vfs_read+0x23a",
                    "ksys_read+0x6b",
                    "__x64_sys_read+0x19",
                    "do_syscall_64+0x71",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect(),
                user: vec!["__libc_read+0x13 [libc.so.6]".into()],
            }],
        });
        assert!(
            wait_sentence(&w).ends_with(
                "inside read() of /tmp/big for 98 ms; kernel stack in 27 of 40 samples: \
                 copy_page_to_iter ← shmem_file_read_iter ← vfs_read ← ksys_read ← __x64_sys_read ← …"
            ),
            "{}",
            wait_sentence(&w)
        );
        // Samples in user space only: the user stack.
        if let Some(st) = w.holders[0].stacks.as_mut() {
            st.top[0].kernel.clear();
        }
        assert!(wait_sentence(&w).ends_with("; user stack in 27 of 40 samples: __libc_read"));
    }

    fn holder(policy: &str, priority: i32) -> HolderRec {
        HolderRec {
            pid: 4242,
            tgid: 4242,
            comm: "hog".into(),
            process: None,
            identity: None,
            run_ns: 5_000_000,
            cgroup_id: 1,
            cgroup: None,
            policy: policy.into(),
            priority,
            syscall: None,
            stacks: None,
            activity: None,
        }
    }

    fn wait(kind: WaitKind, rx_context: RxContext, holders: Vec<HolderRec>) -> WaitRec {
        WaitRec {
            kind,
            cpu: 2,
            start_ns: 1_000_000_000,
            ts_ns: 1_010_000_000,
            wait_ns: 10_000_000,
            rx: TaskRef {
                pid: 5,
                tgid: 5,
                comm: "stress".into(),
            },
            rx_context,
            waker: TaskRef {
                pid: 6,
                tgid: 6,
                comm: "nic".into(),
            },
            holders,
            nr_switches: 1,
            nr_other_runs: 0,
            run_ns: 0,
            truncated: false,
            drain_of_ns: None,
        }
    }

    #[test]
    fn packet_line_fills_the_header_columns() {
        let p = PacketRec {
            ts_ns: 1,
            cpu: 11,
            pid: 76,
            tgid: 76,
            comm: "ksoftirqd/11".into(),
            context: RxContext::Ksoftirqd,
            hook: "kprobe".into(),
            proto: "icmp".into(),
            kind: crate::dump::PacketKind::EchoRequest,
            src: "10.0.0.1".into(),
            dst: "10.0.0.11".into(),
            ident: 7982,
            seq: 1953,
            tcp_seq: None,
            rx_start_ns: None,
            drain_start_ns: None,
        };
        // Widths 6, 6, 16, 3, 16, 14, 6, 5 as in PACKET_HEADER.
        assert_eq!(
            packet_line(&p),
            "    76     76 ksoftirqd/11      11 ksoftirqd        icmp echo_request   7982  1953"
        );
    }

    /// Real-time priorities are 1..=99: an `unknown` policy with one is worded RT.
    #[test]
    fn unknown_policy_is_rt_only_with_a_real_time_priority() {
        for (policy, priority, want) in [
            ("unknown", 0, "unknown nice 0"),
            ("unknown", 1, "RT 1"),
            ("unknown", 50, "RT 50"),
            ("unknown", 99, "RT 99"),
            ("unknown", 100, "unknown nice 100"),
            ("unknown", -5, "unknown nice -5"),
            ("SCHED_RR", 10, "SCHED_RR 10"),
            ("SCHED_OTHER", -5, "SCHED_OTHER nice -5"),
        ] {
            assert_eq!(
                task_words(&holder(policy, priority)),
                format!("hog (pid 4242, {want})"),
                "{policy} {priority}"
            );
        }
    }

    #[test]
    fn syscall_words_say_calls_or_time_inside_when_known() {
        let mut h = holder("SCHED_OTHER", 0);
        let call = |calls, since_ns| SyscallRef {
            nr: 0,
            name: "read".into(),
            arg0: 3,
            path: Some("/x".into()),
            since_ns,
            calls,
            in_window_ns: 3_000_000,
        };
        for (calls, since_ns, want) in [
            (2, 500, "inside read() of /x (2 calls, 3 ms of the wait)"),
            // 1000 - 400 ns
            (1, 400, "inside read() of /x for 600 ns"),
            // Entered when unknown (0), or not before the end: no time.
            (1, 0, "inside read() of /x"),
            (1, 1_000, "inside read() of /x"),
        ] {
            h.syscall = Some(call(calls, since_ns));
            assert_eq!(syscall_words(&h, 1_000), want, "{calls} {since_ns}");
        }
    }

    #[test]
    fn wait_sentence_counts_the_other_runs_and_words_the_rx_context() {
        let mut w = wait(
            WaitKind::NetRxSoftirq,
            RxContext::ProcessSoftirq,
            vec![holder("SCHED_OTHER", 0), holder("SCHED_OTHER", 0)],
        );
        w.nr_other_runs = 2;
        // 1 more holder + 2 other runs
        assert_eq!(
            wait_sentence(&w),
            "CPU 2: NET_RX waited 10 ms (raised by nic pid 6); RX ran in softirq on stress's \
             stack (pid 5); CPU held by hog (pid 4242, SCHED_OTHER nice 0) for 5 ms, not \
             sampled (the wait was shorter than the sampler's period); 3 other runs on the CPU"
        );
        w.holders.pop();
        w.nr_other_runs = 1;
        w.rx_context = RxContext::Idle;
        // 0 more holders + 1 other run
        assert!(
            wait_sentence(&w).starts_with(
                "CPU 2: NET_RX waited 10 ms (raised by nic pid 6); RX ran in softirq on the idle CPU;"
            ),
            "{}",
            wait_sentence(&w)
        );
        assert!(wait_sentence(&w).ends_with("; 1 other run on the CPU"));
        w.nr_other_runs = 0;
        w.rx_context = RxContext::Ksoftirqd;
        assert!(wait_sentence(&w).contains("; RX ran in stress;"));
        assert!(!wait_sentence(&w).contains("other run"));
    }

    #[test]
    fn syscall_sentence_says_cpu_and_wall_time() {
        let s = SyscallRec {
            ts_ns: 300_000_000,
            start_ns: 100_000_000,
            dur_ns: 200_000_000,
            cpu_ns: 150_000_000,
            cpu: 4,
            pid: 10,
            tgid: 9,
            comm: "cadvisor".into(),
            nr: 0,
            name: "read".into(),
            arg0: 7,
            path: Some("/sys/fs/cgroup/memory.stat".into()),
            ret: 10,
            cgroup_id: 1,
        };
        assert_eq!(
            syscall_sentence(&s),
            "CPU 4: cadvisor (pid 10, tgid 9) spent 150 ms on CPU inside read() of \
             /sys/fs/cgroup/memory.stat (200 ms wall)"
        );
    }

    /// A wait ending within the merge gap of the last one is a new stall all the same
    /// when it started after the last one ended.
    #[test]
    fn a_wait_after_the_last_one_ended_is_a_new_stall() {
        let mut d = StallDedup::default();
        let mut w = wait(WaitKind::RxThread, RxContext::Ksoftirqd, vec![]);
        (w.start_ns, w.ts_ns) = (1_000, 2_000);
        assert!(d.is_new(&w));
        // Starts 500 ns after that one ended, ends 600 ns later (< 1 ms apart).
        (w.start_ns, w.ts_ns) = (2_500, 2_600);
        assert!(d.is_new(&w));
    }

    /// `backlog_napi/N` (threaded backlog processing: PREEMPT_RT kernels, or the
    /// `thread_backlog_napi` boot parameter; this project's kernels have none, so the
    /// root tests cannot plant one): classified from its name as an RX thread of its
    /// own kind, in a wait and for the packets it processes, and worded as one.
    #[test]
    fn backlog_napi_is_an_rx_thread_context() {
        for (comm, pid, softirq, want) in [
            ("backlog_napi/1", 31, false, RxContext::BacklogNapi),
            ("backlog_napi/11", 99, true, RxContext::BacklogNapi),
            ("napi/eth0-8", 7, true, RxContext::Napi),
            ("ksoftirqd/3", 30, true, RxContext::Ksoftirqd),
            ("backlog", 5, true, RxContext::ProcessSoftirq),
            ("swapper/1", 0, true, RxContext::Idle),
            ("backlog_napi", 5, false, RxContext::Process),
        ] {
            assert_eq!(RxContext::classify(comm, pid, softirq), want, "{comm}");
        }
        assert_eq!(context_name(RxContext::BacklogNapi), "backlog-napi");
        let w = WaitRec {
            kind: WaitKind::RxThread,
            cpu: 1,
            start_ns: 1_000_000_000,
            ts_ns: 1_050_000_000,
            wait_ns: 50_000_000,
            rx: TaskRef {
                pid: 31,
                tgid: 31,
                comm: "backlog_napi/1".into(),
            },
            rx_context: RxContext::classify("backlog_napi/1", 31, false),
            waker: TaskRef {
                pid: 881,
                tgid: 881,
                comm: "ping".into(),
            },
            holders: vec![],
            nr_switches: 1,
            nr_other_runs: 0,
            run_ns: 0,
            truncated: false,
            drain_of_ns: None,
        };
        assert!(
            wait_sentence(&w)
                .starts_with("CPU 1: RX thread backlog_napi/1 waited 50 ms from wakeup"),
            "{}",
            wait_sentence(&w)
        );
        let json = serde_json::to_value(&w).unwrap();
        assert_eq!(json["rx_context"], "backlog_napi");
    }
}
