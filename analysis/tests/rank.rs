//! The ranking of culprits and the per-CPU totals, fed episodes one at a time (the
//! 2019 GitHub incident's episode, varied): sums, bounded lists, the worst episode per CPU, stacks.
use stalltrace_analysis::correlate::episode::{Culprit, CulpritSyscall};
use stalltrace_analysis::correlate::rank::{CpuSummary, CulpritRank, Ranking};
use stalltrace_analysis::correlate::{Config, Correlator, Episode};
use stalltrace_analysis::dump::{HolderStacks, Record, StackRec};
use stalltrace_testkit::seed::{self, Seed};

/// The 2019 GitHub incident's one episode (cadvisor holding CPU 11), to vary.
fn seed_episode() -> Episode {
    let recs = seed::records(Seed::default());
    let Record::Header(h) = &recs[0] else {
        panic!("no header")
    };
    let mut c = Correlator::new(Config::from_header(h, None));
    for r in &recs {
        c.push(r);
    }
    let mut eps = c.finish().episodes;
    assert_eq!(eps.len(), 1);
    eps.remove(0)
}

/// An episode on `cpu` that waited `wait_ns`, its culprit thread `comm` (`pid`) of
/// process `process` (`tgid`), with no syscall, stacks or RTT unless set after.
fn episode(cpu: u32, wait_ns: u64, pid: u32, tgid: u32, comm: &str, process: &str) -> Episode {
    let mut e = seed_episode();
    e.cpu = cpu;
    e.wait_ns = wait_ns;
    e.worst_rtt_ns = None;
    e.rx.comm = format!("rx-of-{comm}");
    let Some(c) = e.culprit.as_mut() else {
        panic!("the 2019 GitHub incident's episode has a culprit")
    };
    c.pid = pid;
    c.tgid = tgid;
    c.comm = comm.into();
    c.process = Some(process.into());
    c.syscall = None;
    c.stacks = None;
    c.activity = None;
    e
}

fn culprit(e: &mut Episode) -> &mut Culprit {
    match e.culprit.as_mut() {
        Some(c) => c,
        None => panic!("no culprit"),
    }
}

fn only(r: &Ranking) -> CulpritRank {
    let mut v = r.ranked();
    assert_eq!(v.len(), 1, "{v:#?}");
    v.remove(0)
}

fn cpu(r: &Ranking, n: u32) -> CpuSummary {
    match r.cpus().into_iter().find(|s| s.cpu == n) {
        Some(s) => s,
        None => panic!("no CPU {n}"),
    }
}

#[test]
fn culprit_rows_sum_their_episodes_and_keep_the_worst_rtt() {
    let mut r = Ranking::default();
    let mut a = episode(11, 100, 7, 7, "cadvisor", "cadvisor");
    a.probes_delayed = 2;
    a.packets_delayed = 3;
    a.worst_rtt_ns = Some(5);
    let mut b = a.clone();
    b.cpu = 3;
    b.probes_delayed = 4;
    b.packets_delayed = 6;
    b.worst_rtt_ns = None;
    let mut c = a.clone();
    c.worst_rtt_ns = Some(9);
    for e in [&a, &b, &c] {
        r.add(e);
    }
    let mut none = a.clone();
    none.culprit = None;
    r.add(&none);
    r.add(&none);
    let row = only(&r);
    assert_eq!(row.episodes, 3);
    // 2 + 4 + 2, 3 + 6 + 3
    assert_eq!((row.probes_delayed, row.packets_delayed), (8, 12));
    // max(5, none, 9)
    assert_eq!(row.worst_rtt_ns, Some(9));
    // CPU 11 then 3, sorted.
    assert_eq!(row.cpus, vec![3, 11]);
    assert_eq!(r.without_culprit, 2);
    let s = cpu(&r, 11);
    // a, c and the two without culprit on CPU 11
    assert_eq!(s.episodes, 4);
    // 2 + 2 + 2 + 2, 3 + 3 + 3 + 3
    assert_eq!((s.probes_delayed, s.packets_delayed), (8, 12));
    assert_eq!(s.worst_rtt_ns, Some(9));
    let s3 = cpu(&r, 3);
    assert_eq!(
        (s3.episodes, s3.probes_delayed, s3.packets_delayed),
        (1, 4, 6)
    );
    // b alone, without an RTT: nothing to keep.
    assert_eq!(s3.worst_rtt_ns, None);
}

/// A process's threads: the first 16 pids and thread names, each once, and not the
/// process's own name.
#[test]
fn a_process_keeps_its_first_16_threads_once_each() {
    let mut r = Ranking::default();
    r.add(&episode(11, 100, 100, 100, "cadvisor", "cadvisor"));
    r.add(&episode(11, 100, 101, 100, "hk-1", "cadvisor"));
    r.add(&episode(11, 100, 101, 100, "hk-1", "cadvisor"));
    for i in 2..=17u32 {
        r.add(&episode(
            11,
            100,
            100 + i,
            100,
            &format!("hk-{i}"),
            "cadvisor",
        ));
    }
    let row = only(&r);
    // 1 + 2 + 16
    assert_eq!(row.episodes, 19);
    // 100, then 101..=115: 16 pids; 116 and 117 dropped.
    assert_eq!(row.pids, (100..=115).collect::<Vec<u32>>());
    // hk-1..=hk-16 (hk-17 dropped); the main thread is named after the process.
    let want: Vec<String> = (1..=16).map(|i| format!("hk-{i}")).collect();
    assert_eq!(row.threads, want);
}

#[test]
fn syscalls_count_episodes_by_name_and_path_up_to_eight() {
    let mut r = Ranking::default();
    let call = |name: &str, path: &str| {
        let mut e = episode(11, 100, 7, 7, "cadvisor", "cadvisor");
        culprit(&mut e).syscall = Some(CulpritSyscall {
            nr: 0,
            name: name.into(),
            path: Some(path.into()),
            since_ns: 0,
            dur_ns: None,
            cpu_ns: None,
        });
        e
    };
    for (name, path) in [
        ("read", "/a"),
        ("read", "/b"),
        ("write", "/a"),
        ("read", "/a"),
    ] {
        r.add(&call(name, path));
    }
    let counts = |row: &CulpritRank| -> Vec<(String, String, u64)> {
        row.syscalls
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    s.path.clone().unwrap_or_default(),
                    s.episodes,
                )
            })
            .collect()
    };
    let s = |n: &str, p: &str, k: u64| (n.to_string(), p.to_string(), k);
    // read /a twice first, then by name.
    assert_eq!(
        counts(&only(&r)),
        vec![s("read", "/a", 2), s("read", "/b", 1), s("write", "/a", 1)]
    );
    // Six more distinct paths: 3 + 6 = 9 distinct, the 9th not kept.
    for i in 0..6 {
        r.add(&call("read", &format!("/c{i}")));
    }
    let row = only(&r);
    assert_eq!(row.syscalls.len(), 8);
    assert!(!counts(&row).contains(&s("read", "/c5", 1)), "{row:#?}");
}

/// A CPU's worst episode (longest wait; the first of equal ones) names its culprit
/// and RX context; culprits count distinct processes.
#[test]
fn a_cpu_remembers_its_worst_episode_and_counts_distinct_culprit_processes() {
    let mut r = Ranking::default();
    r.add(&episode(3, 50, 1, 1, "a", "a"));
    r.add(&episode(3, 80, 2, 2, "b", "b"));
    r.add(&episode(3, 80, 3, 3, "c", "c"));
    r.add(&episode(3, 60, 4, 1, "a2", "a"));
    let s = cpu(&r, 3);
    assert_eq!(s.worst_wait_ns, 80);
    assert_eq!(s.culprit.map(|c| c.comm), Some("b".to_string()));
    assert_eq!(s.rx_comm, "rx-of-b");
    // tgids 1, 2, 3 (1 again)
    assert_eq!(s.culprits, 3);
    // 50 + 80 + 80 + 60
    assert_eq!(s.total_wait_ns, 270);
}

#[test]
fn a_cpu_counts_at_most_1024_culprit_processes() {
    let mut r = Ranking::default();
    for tgid in 1..=1026u32 {
        r.add(&episode(3, 50, tgid, tgid, "p", "p"));
    }
    assert_eq!(cpu(&r, 3).culprits, 1024);
}

fn stacks(top: Vec<StackRec>) -> Option<HolderStacks> {
    Some(HolderStacks {
        samples: top.iter().map(|t| t.count).sum(),
        top,
        ..HolderStacks::default()
    })
}

fn kernel(count: u32, frames: &[&str]) -> StackRec {
    StackRec {
        count,
        kernel: frames.iter().map(|f| f.to_string()).collect(),
        user: vec![],
    }
}

/// Stacks that differ only in offsets are one; kernel and user stacks are apart; a
/// stack with neither side is skipped; an episode counts once per stack.
#[test]
fn culprit_stacks_add_samples_by_function_names_and_side() {
    let mut r = Ranking::default();
    let mut e1 = episode(11, 100, 7, 7, "cadvisor", "cadvisor");
    culprit(&mut e1).stacks = stacks(vec![
        kernel(3, &["f+0x1", "g+0x2"]),
        kernel(2, &["f+0x9", "g+0x3"]),
        StackRec {
            count: 4,
            kernel: vec![],
            user: vec!["u+0x1 [bin]".into()],
        },
        StackRec {
            count: 7,
            kernel: vec![],
            user: vec![],
        },
    ]);
    let mut e2 = e1.clone();
    culprit(&mut e2).stacks = stacks(vec![kernel(1, &["f+0x5", "g+0x6"])]);
    r.add(&e1);
    r.add(&e2);
    let got: Vec<(String, Vec<String>, u64, u64)> = only(&r)
        .stacks
        .into_iter()
        .map(|s| (s.side, s.frames, s.samples, s.episodes))
        .collect();
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        got,
        vec![
            // 3 + 2 in the first episode, 1 in the second
            ("kernel".into(), names(&["f", "g"]), 6, 2),
            ("user".into(), names(&["u"]), 4, 1),
        ]
    );
}

/// Past 64 distinct stacks the least sampled is dropped: one that comes back starts
/// from its new samples.
#[test]
fn culprit_stacks_past_64_drop_the_least_sampled() {
    let mut r = Ranking::default();
    let with = |top: Vec<StackRec>| {
        let mut e = episode(11, 100, 7, 7, "cadvisor", "cadvisor");
        culprit(&mut e).stacks = stacks(top);
        e
    };
    let name = |i: usize| format!("s{i}");
    // s0..s62 with 10 samples, s63 with 1: 64 distinct.
    r.add(&with(
        (0..64)
            .map(|i| kernel(if i == 63 { 1 } else { 10 }, &[&name(i)]))
            .collect(),
    ));
    // s64 makes 65: s63 (the least sampled) goes.
    r.add(&with(vec![kernel(10, &[&name(64)])]));
    // s63 comes back with 100 samples: only those.
    r.add(&with(vec![kernel(100, &[&name(63)])]));
    let top = &only(&r).stacks[0];
    assert_eq!(top.frames, vec![name(63)]);
    assert_eq!((top.samples, top.episodes), (100, 1));
}
