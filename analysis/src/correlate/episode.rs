//! A stall episode: one kernel wait (or several waits on one CPU that ended together),
//! the probes and packets it delayed, and who held the CPU meanwhile. These types are
//! what the live recorder prints and what the JSON report carries (see
//! `docs/report-schema.md`), so field names are part of the report contract.
use serde::Serialize;

use crate::dump::{
    Activity, HolderRec, HolderStacks, PacketKind, ProbeStatus, RxContext, SyscallRec, WaitKind,
    WaitRec,
};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Episode {
    /// 1, 2, … in the order episodes closed (the same live and offline).
    pub id: u64,
    pub cpu: u32,
    /// Earliest wait start (NET_RX raise or RX-thread wakeup), boot ns.
    pub start_ns: u64,
    /// When the delayed RX work finally ran (latest wait end), boot ns.
    pub end_ns: u64,
    /// `end_ns - start_ns`: how long RX work was held off.
    pub wait_ns: u64,
    /// Wall-clock start (RFC 3339, ms), when the dump's boot-to-wall offset is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_wall: Option<String>,
    /// The kernel waits merged into this episode.
    pub waits: Vec<WaitPart>,
    /// The context that ran the delayed RX work.
    pub rx: RxTask,
    /// The task that held the CPU longest during the wait.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub culprit: Option<Culprit>,
    /// Every task seen holding the CPU in the window, longest first (culprit included).
    pub holders: Vec<HolderSummary>,
    /// Probes answered at or above the stall threshold that this wait explains.
    pub probes_delayed: u32,
    /// Probes whose packet was processed in the delayed RX run (any RTT).
    pub probes_in_run: u32,
    /// Probes in the delayed RX run that the prober reported lost.
    pub probes_lost: u32,
    /// Packets processed in the delayed RX run.
    pub packets_delayed: u32,
    /// … of which after the first RX run that ended the wait, in the same backlog
    /// drain (several RX runs, a budget at a time, short waits in between).
    #[serde(skip_serializing_if = "is_zero")]
    pub packets_in_drain: u32,
    /// The longest any of them was processed after the wait before it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worst_rtt_ns: Option<u64>,
    /// The 2019 GitHub incident's view: probe packets just before the episode, then those it delayed.
    pub lines: Vec<ProbeLine>,
    /// Lines left out of `lines` to keep episodes bounded.
    pub lines_omitted: u32,
    /// The kernel's run history was shorter than the window: holders may be incomplete.
    pub truncated: bool,
    /// Why the culprit may have been slow, when its activity points somewhere: it was
    /// reading cgroup statistics files, with the node's dying memory cgroups.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// The cgroup statistics file a culprit was reading (from its samples, else from its
/// exact syscall).
pub fn cgroup_file_read(c: &Culprit) -> Option<String> {
    if let Some(f) = c.activity.as_ref().and_then(Activity::cgroup_stat_file) {
        return Some(f.to_string());
    }
    let sys = c.syscall.as_ref()?;
    crate::activity::cgroup_stat_file(sys.path.as_deref()?).map(str::to_string)
}

/// `reading cgroup statistics (memory.stat) with 3120 dying memory cgroups (1904
/// live) at record time: see stalltrace doctor`, when the culprit read such files.
pub fn why(c: &Culprit, facts: Option<&crate::dump::CgroupFacts>) -> Option<String> {
    let file = cgroup_file_read(c)?;
    let node = facts
        .and_then(|f| f.dying_phrase("at record time"))
        .map(|p| format!(" with {p}"))
        .unwrap_or_default();
    Some(format!(
        "reading cgroup statistics ({file}){node}: `stalltrace doctor` says why such reads are slow and what to do"
    ))
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WaitPart {
    pub kind: WaitKind,
    pub start_ns: u64,
    pub ts_ns: u64,
    pub wait_ns: u64,
    pub nr_switches: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RxTask {
    pub pid: u32,
    pub tgid: u32,
    pub comm: String,
    pub context: RxContext,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Culprit {
    pub pid: u32,
    pub tgid: u32,
    /// The thread's name.
    pub comm: String,
    /// The process's name, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    /// Its pod and container (or systemd unit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<crate::identity::Identity>,
    pub policy: String,
    pub priority: i32,
    pub cgroup_id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// Time on the CPU inside the wait window.
    pub run_ns: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syscall: Option<CulpritSyscall>,
    /// Its stacks sampled inside the wait (`record --stacks`), most frequent first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stacks: Option<HolderStacks>,
    /// What it was doing inside the wait, from samples.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activity: Option<Activity>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CulpritSyscall {
    pub nr: i64,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// When the syscall was entered (boot ns).
    pub since_ns: u64,
    /// Whole duration of the syscall, when its exit was recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dur_ns: Option<u64>,
    /// Time on the CPU during the syscall, when its exit was recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_ns: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HolderSummary {
    pub pid: u32,
    pub tgid: u32,
    pub comm: String,
    pub run_ns: u64,
}

/// One row of the 2019 GitHub incident's table: who processed which probe packet, and its RTT.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeLine {
    pub ts_ns: u64,
    pub cpu: u32,
    pub tgid: u32,
    pub pid: u32,
    pub comm: String,
    pub context: RxContext,
    pub kind: PacketKind,
    /// Sequence on the wire (ICMP echo seq; for TCP the probe's source port).
    pub wire_seq: u16,
    /// The prober's sequence number, when the packet was matched to a probe.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<ProbeStatus>,
    /// Processed in the delayed RX run (the 2019 GitHub incident's `**`).
    pub delayed: bool,
    /// Processed this long after the stall's latest wait before it ended, in the same
    /// backlog drain (not in the RX run right after a wait).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_wait_ns: Option<u64>,
    /// RTT at or above the stall threshold (printed without parentheses).
    pub over_threshold: bool,
}

/// Holders of several merged waits: one entry per task. Waits whose windows overlap
/// saw the same time, so a task's longest run among them counts; waits one after the
/// other (a backlog drain's) saw different time, so its runs add up. The stacks and
/// the activity of the window with the most samples are kept.
pub fn merge_holders(waits: &[WaitRec]) -> Vec<HolderRec> {
    let mut sorted: Vec<&WaitRec> = waits.iter().collect();
    sorted.sort_by_key(|w| (w.start_ns, w.ts_ns));
    let mut out: Vec<HolderRec> = Vec::new();
    let mut cluster: Vec<HolderRec> = Vec::new();
    let mut cluster_end = 0;
    for (i, w) in sorted.iter().enumerate() {
        if i > 0 && w.start_ns >= cluster_end {
            for h in cluster.drain(..) {
                absorb(&mut out, &h, true);
            }
        }
        cluster_end = if i > 0 && w.start_ns < cluster_end {
            cluster_end.max(w.ts_ns)
        } else {
            w.ts_ns
        };
        for h in &w.holders {
            absorb(&mut cluster, h, false);
        }
    }
    for h in cluster {
        absorb(&mut out, &h, true);
    }
    // Longest first; pid breaks ties so the order never depends on input order.
    out.sort_by(|a, b| b.run_ns.cmp(&a.run_ns).then(a.pid.cmp(&b.pid)));
    out
}

/// Adds holder `h` to `out`: a new task, or its time on the CPU taken as the longer
/// (`add` false: the same window) or added (`add` true: another window).
fn absorb(out: &mut Vec<HolderRec>, h: &HolderRec, add: bool) {
    let Some(o) = out.iter_mut().find(|o| o.pid == h.pid) else {
        out.push(h.clone());
        return;
    };
    let samples = |s: &Option<HolderStacks>| s.as_ref().map_or(0, |s| s.samples);
    let keep_stacks = if samples(&o.stacks) >= samples(&h.stacks) {
        o.stacks.take()
    } else {
        h.stacks.clone()
    };
    let sampled = |a: &Option<Activity>| a.as_ref().map_or(0, |a| a.samples);
    let keep_activity = if sampled(&o.activity) >= sampled(&h.activity) {
        o.activity.take()
    } else {
        h.activity.clone()
    };
    let run = if add {
        o.run_ns.saturating_add(h.run_ns)
    } else {
        o.run_ns.max(h.run_ns)
    };
    if h.run_ns > o.run_ns {
        let keep_sys = o.syscall.take();
        *o = h.clone();
        if o.syscall.is_none() {
            o.syscall = keep_sys;
        }
    } else if o.syscall.is_none() {
        o.syscall.clone_from(&h.syscall);
    }
    o.run_ns = run;
    o.stacks = keep_stacks;
    o.activity = keep_activity;
}

/// The culprit: the longest holder that is not the RX context itself (ksoftirqd cannot
/// be what kept ksoftirqd off its CPU), nor the recorder (`recorder`: its process id,
/// when the dump says it).
pub fn pick_culprit(
    holders: &[HolderRec],
    rx_pid: u32,
    recorder: Option<u32>,
) -> Option<&HolderRec> {
    holders
        .iter()
        .filter(|h| recorder.is_none_or(|r| h.tgid != r))
        .find(|h| h.pid != rx_pid || rx_pid == 0)
}

/// Fills the culprit's syscall from the holder's own record and, when the kernel also
/// reported that syscall's exit, from the long-syscall record that overlaps the wait.
pub fn culprit_syscall(
    h: &HolderRec,
    start_ns: u64,
    end_ns: u64,
    recent: &mut dyn Iterator<Item = &SyscallRec>,
) -> Option<CulpritSyscall> {
    let best = recent
        .filter(|s| s.pid == h.pid)
        .filter_map(|s| {
            let lo = s.start_ns.max(start_ns);
            let hi = s.ts_ns.min(end_ns);
            hi.checked_sub(lo).filter(|d| *d > 0).map(|d| (d, s))
        })
        .max_by(|a, b| a.0.cmp(&b.0).then(b.1.start_ns.cmp(&a.1.start_ns)))
        .map(|(_, s)| s);
    match (&h.syscall, best) {
        (Some(r), Some(s)) if r.nr == s.nr => Some(CulpritSyscall {
            nr: r.nr,
            name: r.name.clone(),
            path: r.path.clone().or_else(|| s.path.clone()),
            since_ns: r.since_ns,
            dur_ns: Some(s.dur_ns),
            cpu_ns: Some(s.cpu_ns),
        }),
        (Some(r), _) => Some(CulpritSyscall {
            nr: r.nr,
            name: r.name.clone(),
            path: r.path.clone(),
            since_ns: r.since_ns,
            dur_ns: None,
            cpu_ns: None,
        }),
        (None, Some(s)) => Some(CulpritSyscall {
            nr: s.nr,
            name: s.name.clone(),
            path: s.path.clone(),
            since_ns: s.start_ns,
            dur_ns: Some(s.dur_ns),
            cpu_ns: Some(s.cpu_ns),
        }),
        (None, None) => None,
    }
}

impl Culprit {
    pub fn from_holder(h: &HolderRec, syscall: Option<CulpritSyscall>) -> Self {
        Self {
            pid: h.pid,
            tgid: h.tgid,
            comm: h.comm.clone(),
            process: h.process.clone(),
            identity: h.identity.clone(),
            policy: h.policy.clone(),
            priority: h.priority,
            cgroup_id: h.cgroup_id,
            cgroup: h.cgroup.clone(),
            run_ns: h.run_ns,
            syscall,
            stacks: h.stacks.clone(),
            activity: h.activity.clone(),
        }
    }
}

/// Boot-clock ns to an RFC 3339 wall-clock string, when the offset gives a valid time.
pub fn wall_time(boot_ns: u64, boot_to_wall_ns: Option<i64>) -> Option<String> {
    let off = boot_to_wall_ns?;
    let wall = i128::from(boot_ns) + i128::from(off);
    let wall = u64::try_from(wall).ok()?;
    let t = std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_nanos(wall))?;
    Some(humantime::format_rfc3339_millis(t).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dump::{SyscallRef, TaskRef};

    fn holder(pid: u32, run_ns: u64, sys: bool) -> HolderRec {
        HolderRec {
            pid,
            tgid: pid,
            comm: format!("t{pid}"),
            process: None,
            identity: None,
            run_ns,
            cgroup_id: 1,
            cgroup: None,
            policy: "SCHED_OTHER".into(),
            priority: 0,
            syscall: sys.then(|| SyscallRef {
                nr: 0,
                name: "read".into(),
                arg0: 3,
                path: Some("/x".into()),
                since_ns: 5,
                calls: 1,
                in_window_ns: 0,
            }),
            stacks: None,
            activity: None,
        }
    }

    fn wait(holders: Vec<HolderRec>) -> WaitRec {
        WaitRec {
            kind: WaitKind::RxThread,
            cpu: 0,
            start_ns: 0,
            ts_ns: 10,
            wait_ns: 10,
            rx: TaskRef {
                pid: 9,
                tgid: 9,
                comm: "ksoftirqd/0".into(),
            },
            rx_context: RxContext::Ksoftirqd,
            waker: TaskRef {
                pid: 1,
                tgid: 1,
                comm: "x".into(),
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
    fn merging_keeps_longest_run_and_any_syscall() {
        let a = wait(vec![holder(1, 50, false), holder(2, 10, false)]);
        let b = wait(vec![
            holder(2, 70, false),
            holder(1, 40, true),
            holder(9, 100, false),
        ]);
        let m = merge_holders(&[a, b]);
        let got: Vec<(u32, u64)> = m.iter().map(|h| (h.pid, h.run_ns)).collect();
        assert_eq!(got, vec![(9, 100), (2, 70), (1, 50)]);
        assert!(
            m[2].syscall.is_some(),
            "syscall from the shorter record is kept"
        );
        // The RX thread itself is never the culprit.
        assert_eq!(pick_culprit(&m, 9, None).map(|h| h.pid), Some(2));
        // Nor the recorder itself.
        assert_eq!(pick_culprit(&m, 9, Some(2)).map(|h| h.pid), Some(1));
    }

    #[test]
    fn merging_keeps_the_stacks_with_most_samples() {
        let st = |n| {
            Some(HolderStacks {
                samples: n,
                top: vec![crate::dump::StackRec {
                    count: n,
                    kernel: vec![format!("f{n}+0x0")],
                    user: vec![],
                }],
                ..Default::default()
            })
        };
        let mut a = holder(1, 50, false);
        a.stacks = st(3);
        let mut b = holder(1, 80, false);
        b.stacks = st(2);
        let c = holder(1, 90, true);
        let m = merge_holders(&[wait(vec![a]), wait(vec![b]), wait(vec![c])]);
        assert_eq!(m[0].run_ns, 90);
        assert_eq!(m[0].stacks.as_ref().map(|s| s.samples), Some(3));
        let cul = Culprit::from_holder(&m[0], None);
        assert_eq!(
            cul.stacks.as_ref().map(|s| s.top[0].kernel.clone()),
            Some(vec!["f3+0x0".to_string()])
        );
    }

    /// Of one task's records in several waits: the activity with most samples, and on
    /// equal run times the first record.
    #[test]
    fn merging_keeps_the_most_sampled_activity_and_the_first_of_equal_runs() {
        let sampled = |n| {
            Some(crate::dump::Activity {
                samples: n,
                ..Default::default()
            })
        };
        let mut a = holder(1, 50, false);
        a.activity = sampled(5);
        let mut b = holder(1, 50, false);
        b.activity = sampled(2);
        b.comm = "renamed".into();
        let m = merge_holders(&[wait(vec![a]), wait(vec![b])]);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].activity.as_ref().map(|x| x.samples), Some(5));
        assert_eq!(m[0].comm, "t1");
    }

    /// Only a record of the same syscall that overlaps the wait by more than nothing
    /// gives the holder's syscall its duration.
    #[test]
    fn only_an_overlapping_record_of_the_same_syscall_adds_duration() {
        let h = holder(7, 90, true);
        let rec = |nr, start_ns, ts_ns| SyscallRec {
            ts_ns,
            start_ns,
            dur_ns: ts_ns - start_ns,
            cpu_ns: 1,
            cpu: 0,
            pid: 7,
            tgid: 7,
            comm: "t7".into(),
            nr,
            name: "x".into(),
            arg0: 3,
            path: None,
            ret: 0,
            cgroup_id: 1,
        };
        // Starts where the wait (100..300) ends: no overlap.
        let touching = [rec(0, 300, 400)];
        let s = culprit_syscall(&h, 100, 300, &mut touching.iter());
        assert_eq!(s.map(|s| s.dur_ns), Some(None));
        // Overlaps, but is another syscall (1, write) than the holder's (0, read).
        let other = [rec(1, 50, 400)];
        let s = culprit_syscall(&h, 100, 300, &mut other.iter());
        assert_eq!(s.map(|s| (s.nr, s.dur_ns)), Some((0, None)));
    }

    #[test]
    fn syscall_record_overlapping_the_wait_adds_duration() {
        let h = holder(7, 90, true);
        let rec = |start_ns, ts_ns| SyscallRec {
            ts_ns,
            start_ns,
            dur_ns: ts_ns - start_ns,
            cpu_ns: 1,
            cpu: 0,
            pid: 7,
            tgid: 7,
            comm: "t7".into(),
            nr: 0,
            name: "read".into(),
            arg0: 3,
            path: None,
            ret: 0,
            cgroup_id: 1,
        };
        let recs = [rec(0, 20), rec(50, 400), rec(1000, 2000)];
        let s = culprit_syscall(&h, 100, 300, &mut recs.iter()).unwrap();
        assert_eq!(s.dur_ns, Some(350));
        assert_eq!(s.path.as_deref(), Some("/x"));
        let none = culprit_syscall(&holder(7, 1, false), 3000, 4000, &mut recs.iter());
        assert!(none.is_none());
    }

    #[test]
    fn wall_time_formats_or_declines() {
        assert_eq!(
            wall_time(1_500_000_000, Some(0)).as_deref(),
            Some("1970-01-01T00:00:01.500Z")
        );
        assert_eq!(wall_time(5, Some(-10)), None);
        assert_eq!(wall_time(5, None), None);
    }
}
