//! The correlator over the 2019 GitHub incident fixture and synthetic streams: episodes, culprits,
//! probe matching, packet-only mode, bounded memory, odd input.
use stalltrace_analysis::correlate::outcome::Unexplained;
use stalltrace_analysis::correlate::{Config, Correlator, Mode, Report};
use stalltrace_analysis::dump::*;
use stalltrace_testkit::seed::{
    self as fixture, Seed, CADVISOR_PID, CADVISOR_TGID, CPU, MEMORY_STAT, MS, US,
};

fn run(recs: &[Record], cfg: Option<Config>, log: Option<Vec<ProbeRec>>) -> Report {
    let Record::Header(h) = &recs[0] else {
        panic!("no header")
    };
    let mut c = Correlator::new(cfg.unwrap_or_else(|| Config::from_header(h, None)));
    if let Some(l) = log {
        c.set_probe_log(l);
    }
    for r in recs {
        c.push(r);
    }
    c.finish()
}

fn probes_of(recs: &[Record]) -> Vec<ProbeRec> {
    recs.iter()
        .filter_map(|r| {
            if let Record::Probe(p) = r {
                Some(p.clone())
            } else {
                None
            }
        })
        .collect()
}

#[test]
fn seed_gives_one_episode_blaming_cadvisor() {
    let r = run(&fixture::records(Seed::default()), None, None);
    assert_eq!(r.mode, Mode::Probes);
    assert_eq!(r.episodes.len(), 1, "{:#?}", r.episodes);
    let e = &r.episodes[0];
    assert_eq!(e.cpu, CPU);
    assert_eq!(
        e.waits.len(),
        2,
        "the softirq and ksoftirqd waits are one stall"
    );
    assert!((98 * MS..=100 * MS).contains(&e.wait_ns), "{}", e.wait_ns);
    let c = e.culprit.as_ref().unwrap();
    assert_eq!(
        (c.comm.as_str(), c.pid, c.tgid),
        ("cadvisor", CADVISOR_PID, CADVISOR_TGID)
    );
    assert_eq!(c.run_ns, 98 * MS);
    let s = c.syscall.as_ref().unwrap();
    assert_eq!(
        (s.nr, s.name.as_str(), s.path.as_deref()),
        (0, "read", Some(MEMORY_STAT))
    );
    assert!(
        s.dur_ns.unwrap() > 200 * MS,
        "joined with the syscall record"
    );
    assert_eq!(
        (e.rx.comm.as_str(), e.rx.context),
        ("ksoftirqd/11", RxContext::Ksoftirqd)
    );
    assert_eq!(e.probes_delayed, 5);
    assert_eq!(e.probes_in_run, 10);
    assert_eq!(e.packets_delayed, 10);
    assert_eq!(e.worst_rtt_ns.map(|n| n / MS), Some(99));
    let seqs: Vec<(u32, bool, bool)> = e
        .lines
        .iter()
        .map(|l| (l.seq.unwrap(), l.delayed, l.over_threshold))
        .collect();
    let mut want = vec![
        (1950, false, false),
        (1951, false, false),
        (1952, false, false),
    ];
    want.extend((1953..=1962).map(|s| (s, true, s <= 1957)));
    assert_eq!(seqs, want);
    assert_eq!(e.lines[1].comm, "cadvisor");
    assert_eq!(e.lines[1].context, RxContext::ProcessSoftirq);
    assert_eq!(
        (
            r.totals.probes_stalled,
            r.totals.probes_explained,
            r.totals.probes_unexplained
        ),
        (5, 5, 0)
    );
    assert_eq!(r.culprits.len(), 1);
    assert_eq!(
        (
            r.culprits[0].tgid,
            r.culprits[0].episodes,
            r.culprits[0].probes_delayed
        ),
        (CADVISOR_TGID, 1, 5)
    );
    assert_eq!(r.cpus.len(), 1);
}

#[test]
fn quiet_recording_has_no_episode() {
    let r = run(
        &fixture::records(Seed {
            stall: false,
            ..Seed::default()
        }),
        None,
        None,
    );
    assert_eq!(r.totals.waits, 1, "a short wait is there");
    assert_eq!(r.totals.stalls_over_threshold, 0);
    assert!(r.episodes.is_empty());
    assert!(r.culprits.is_empty());
    assert_eq!(r.totals.probes_stalled, 0);
    assert!(stalltrace_analysis::report::summary(&r)[0].starts_with("No stall episode"));
}

#[test]
fn a_lower_threshold_turns_the_short_wait_into_an_episode_in_packet_mode() {
    let recs = fixture::records(Seed {
        stall: false,
        probes: false,
        footer: true,
    });
    assert!(run(&recs, None, None).episodes.is_empty());
    let r = run(&recs, Some(Config::new(2 * MS)), None);
    assert_eq!(r.mode, Mode::Packets);
    assert_eq!(r.episodes.len(), 1);
    assert_eq!(r.episodes[0].culprit.as_ref().unwrap().comm, "kworker/11:1");
}

#[test]
fn packet_only_recording_groups_delayed_packets_by_wait() {
    let r = run(
        &fixture::records(Seed {
            probes: false,
            ..Seed::default()
        }),
        None,
        None,
    );
    assert_eq!(r.mode, Mode::Packets);
    assert_eq!(r.episodes.len(), 1);
    let e = &r.episodes[0];
    assert_eq!(e.packets_delayed, 10);
    assert_eq!(e.probes_delayed, 0);
    assert_eq!(e.culprit.as_ref().unwrap().pid, CADVISOR_PID);
    assert!(stalltrace_analysis::report::text::episode_line(e).contains("10 packets delayed"));
}

#[test]
fn probe_log_without_identifier_matches_by_sequence() {
    let with = fixture::records(Seed::default());
    let mut log = probes_of(&with);
    for p in &mut log {
        p.wire_ident = None;
    }
    // The dump's own probe records are ignored in favour of the log.
    let r = run(&with, None, Some(log.clone()));
    assert_eq!(r.totals.probes_ignored, 61);
    assert_eq!(r.totals.probes, 61);
    assert_eq!(r.episodes.len(), 1);
    assert_eq!(r.episodes[0].probes_delayed, 5);
    assert_eq!(r.input.probe_source, "log");
    let without = fixture::records(Seed {
        probes: false,
        ..Seed::default()
    });
    let r2 = run(&without, None, Some(log));
    assert_eq!(r2.episodes, r.episodes);
}

#[test]
fn request_and_reply_seen_count_each_probe_once() {
    let mut recs = fixture::records(Seed::default());
    let footer = recs.pop().unwrap();
    // The prober's side: every reply processed promptly on CPU 3.
    let mut extra = vec![];
    for seq in 1940u32..=2000 {
        let mut p = fixture::packet(
            seq,
            fixture::arrival(seq) + 300 * US,
            fixture::arrival(seq) + 290 * US,
            (0, 0, "swapper/3", RxContext::Idle),
        );
        p.cpu = 3;
        p.kind = PacketKind::EchoReply;
        extra.push(Record::Packet(p));
    }
    // Put replies before the probe results (they are what the prober waited for).
    let mut merged = vec![];
    for r in recs {
        if let Record::Probe(p) = &r {
            if let Some(pos) = extra
                .iter()
                .position(|e| matches!(e, Record::Packet(x) if u32::from(x.seq) == p.seq))
            {
                merged.push(extra.remove(pos));
            }
        }
        merged.push(r);
    }
    merged.push(footer);
    let r = run(&merged, None, None);
    assert_eq!(r.episodes.len(), 1);
    assert_eq!(r.episodes[0].probes_delayed, 5);
    assert_eq!(r.totals.probes_explained, 5);
    assert_eq!(r.totals.probes_unexplained, 0);
}

#[test]
fn stalled_probes_without_a_wait_are_unexplained_with_a_reason() {
    let mut recs = fixture::records(Seed {
        stall: false,
        ..Seed::default()
    });
    for r in &mut recs {
        if let Record::Probe(p) = r {
            if p.seq == 1990 {
                p.rtt_ns = Some(120 * MS);
            }
        }
    }
    let footer = recs.pop().unwrap();
    recs.push(Record::Probe(fixture::probe(2500, 130 * MS))); // never seen by the kernel
    recs.push(footer);
    let r = run(&recs, None, None);
    assert!(r.episodes.is_empty());
    assert_eq!(r.totals.probes_unexplained, 2);
    assert_eq!((r.unexplained_no_wait, r.unexplained_no_packet), (1, 1));
    let u: Vec<(u32, Unexplained, Option<u32>)> = r
        .unexplained
        .iter()
        .map(|u| (u.seq, u.reason, u.cpu))
        .collect();
    assert!(u.contains(&(1990, Unexplained::NoWait, Some(CPU))), "{u:?}");
    assert!(u.contains(&(2500, Unexplained::NoPacket, None)), "{u:?}");
}

fn synth_wait(cpu: u32, start: u64, end: u64, holder: (u32, &str)) -> WaitRec {
    WaitRec {
        kind: WaitKind::RxThread,
        cpu,
        start_ns: start,
        ts_ns: end,
        wait_ns: end - start,
        rx: TaskRef {
            pid: 76,
            tgid: 76,
            comm: format!("ksoftirqd/{cpu}"),
        },
        rx_context: RxContext::Ksoftirqd,
        waker: TaskRef {
            pid: 0,
            tgid: 0,
            comm: "swapper".into(),
        },
        holders: vec![fixture::holder(
            holder.0,
            holder.0,
            holder.1,
            end.saturating_sub(start + MS),
            None,
        )],
        nr_switches: 1,
        nr_other_runs: 0,
        run_ns: 0,
        truncated: false,
        drain_of_ns: None,
    }
}

/// A long live-like stream: a probe every 10 ms on CPU 11, a 120 ms stall every
/// 10 s, alternately blamed on two tasks (one twice as often).
fn long_stream(seconds: u64, mut each: impl FnMut(&Record)) {
    each(&Record::Header(fixture::header(None)));
    let t0 = fixture::T0;
    let mut seq = 0u32;
    let mut t = t0;
    let mut stall_no = 0u64;
    while t < t0 + seconds * 1000 * MS {
        let second = (t - t0) / (1000 * MS);
        let in_stall_at = t0 + (second / 10) * 10_000 * MS + 5_000 * MS;
        let stalled = second % 10 == 5 && t >= in_stall_at && t < in_stall_at + 120 * MS;
        let end = in_stall_at + 120 * MS;
        if stalled && t == in_stall_at {
            let who = if stall_no % 3 == 2 {
                (500, "backup")
            } else {
                (400, "cadvisor")
            };
            stall_no += 1;
            each(&Record::Wait(synth_wait(CPU, t, end, who)));
        }
        let (ts, rx) = if stalled {
            (end + 5 * US, end)
        } else {
            (t + 5 * US, t + 2 * US)
        };
        let mut p = fixture::packet(seq, ts, rx, (0, 0, "swapper/11", RxContext::Idle));
        p.seq = seq as u16;
        each(&Record::Packet(p));
        let mut pr = fixture::probe(seq, ts - t + 300 * US);
        pr.wire_seq = Some(seq as u16);
        each(&Record::Probe(pr));
        seq += 1;
        t += 10 * MS;
    }
}

/// A flood: 50 000 packets within 0.3 s (well inside the 3 s window). The window keeps
/// at most `max_packets`, forgets the oldest beyond it and counts them.
#[test]
fn a_flood_holds_at_most_max_packets_and_counts_the_rest() {
    use stalltrace_testkit::records::echo_request;
    let mut cfg = Config::new(50 * MS);
    cfg.max_packets = 10_000;
    let mut c = Correlator::new(cfg);
    c.push(&Record::Header(fixture::header(None)));
    let mut max_pkts = 0;
    for i in 0..50_000u64 {
        let ts = fixture::T0 + i * 6_000;
        let p = echo_request(
            ts,
            ts,
            1,
            (9, 9, "flooder", RxContext::ProcessSoftirq),
            7,
            i as u16,
        );
        c.push(&Record::Packet(p));
        max_pkts = max_pkts.max(c.retained().0);
    }
    assert_eq!(max_pkts, 10_000);
    let r = c.finish();
    assert_eq!(r.totals.packets_forgotten_early, 40_000);
    assert_eq!(r.totals.packets, 50_000);
}

#[test]
fn memory_stays_bounded_and_the_ranking_adds_up_over_a_long_stream() {
    let mut c = Correlator::new(Config::new(50 * MS));
    let mut max_pkts = 0;
    let mut max_keys = 0;
    let mut closed = 0;
    // 700 s: 70 000 probes, the wire sequence wraps once.
    long_stream(700, |r| {
        closed += c.push(r).len();
        let (pkts, keys) = c.retained();
        max_pkts = max_pkts.max(pkts);
        max_keys = max_keys.max(keys);
    });
    let r = c.finish();
    assert_eq!(r.totals.episodes, 70);
    assert_eq!(closed, 70, "all but none closed while streaming");
    assert!(max_pkts < 1000, "kept {max_pkts} packets");
    assert!(max_keys < 4000, "kept {max_keys} index entries");
    let ranks: Vec<(&str, u64)> = r
        .culprits
        .iter()
        .map(|c| (c.comm.as_str(), c.episodes))
        .collect();
    assert_eq!(ranks, vec![("cadvisor", 47), ("backup", 23)]);
    // Each stall delays the 12 probes sent in it; those of 50 ms or more: 8.
    assert_eq!(r.totals.probes_explained, 70 * 8);
    assert_eq!(r.totals.probes_unexplained, 0);
}

#[test]
fn odd_values_do_not_panic() {
    let mut c = Correlator::new(Config::new(0));
    let mut w = synth_wait(u32::MAX, 0, 10, (1, "x"));
    w.start_ns = u64::MAX; // start after end
    w.wait_ns = u64::MAX;
    w.holders[0].run_ns = u64::MAX;
    c.push(&Record::Wait(w.clone()));
    w.ts_ns = u64::MAX;
    w.start_ns = 0;
    c.push(&Record::Wait(w));
    let mut p = fixture::packet(1, u64::MAX, u64::MAX, (0, 0, "", RxContext::Idle));
    p.cpu = u32::MAX;
    c.push(&Record::Packet(p));
    let mut pr = fixture::probe(1, u64::MAX);
    pr.sent_ns = Some(u64::MAX);
    c.push(&Record::Probe(pr));
    c.tick(u64::MAX);
    let r = c.finish();
    let _ = stalltrace_analysis::report::text::render(&r);
    let _ = stalltrace_analysis::report::json::render(&r).unwrap();
    assert_eq!(
        (r.totals.waits, r.totals.packets, r.totals.probes),
        (2, 1, 1)
    );
}

/// The 2019 GitHub incident's table is one row per probe: when the echo request and its reply are both
/// processed in the delayed run (the lab's veth pair, both directions on one CPU), the
/// probe shows once, and the run still counts both packets.
#[test]
fn request_and_reply_in_one_run_make_one_row() {
    let mut recs = fixture::records(Seed::default());
    let footer = recs.pop().unwrap();
    let mut with_replies = vec![];
    for r in recs {
        if let Record::Packet(p) = &r {
            if (1953..=1962).contains(&u32::from(p.seq)) {
                let mut reply = p.clone();
                reply.kind = PacketKind::EchoReply;
                reply.ts_ns += US;
                with_replies.push(r);
                with_replies.push(Record::Packet(reply));
                continue;
            }
        }
        with_replies.push(r);
    }
    with_replies.push(footer);
    let r = run(&with_replies, None, None);
    assert_eq!(r.episodes.len(), 1);
    let e = &r.episodes[0];
    let delayed: Vec<u32> = e
        .lines
        .iter()
        .filter(|l| l.delayed)
        .filter_map(|l| l.seq)
        .collect();
    assert_eq!(
        delayed,
        (1953..=1962).collect::<Vec<_>>(),
        "one row per probe"
    );
    assert_eq!(
        e.packets_delayed, 20,
        "both packets of each probe were delayed"
    );
    assert_eq!(e.probes_delayed, 5);
    let table = stalltrace_analysis::report::text::episode_table(e);
    let rows = table.iter().skip(1).filter(|l| l.contains("** ")).count();
    assert_eq!(rows, 10, "{table:#?}");
}

/// A flood of echoes that all carry one sequence number (and one RX run): forgetting
/// them is linear, what is kept stays bounded, and nothing is joined wrongly.
#[test]
fn a_constant_sequence_flood_stays_linear_and_bounded() {
    let mut c = Correlator::new(Config::new(50 * MS));
    c.push(&Record::Header(fixture::header(None)));
    let t0 = fixture::T0;
    let mut max_keys = 0;
    for i in 0..300_000u64 {
        // 100 000 packets a second, all seq 7, ten seconds of them.
        let ts = t0 + i * 10 * US;
        let p = fixture::packet(7, ts, ts - US, (0, 0, "swapper/11", RxContext::Idle));
        c.push(&Record::Packet(p));
        if i % 997 == 0 {
            c.push(&Record::Probe(fixture::probe(7, 300 * US)));
        }
        max_keys = max_keys.max(c.retained().0);
    }
    assert!(max_keys <= 300_001, "{max_keys}");
    let r = c.finish();
    assert_eq!(r.totals.packets, 300_000);
    assert!(r.episodes.is_empty());
}

/// The culprit table's INSIDE column says where a culprit was in every episode: a
/// busy loop reads "user space", not an empty cell.
#[test]
fn inside_is_filled_for_a_culprit_in_user_space() {
    let recs: Vec<Record> = fixture::records(Seed::default())
        .into_iter()
        .filter(|r| !matches!(r, Record::Syscall(_)))
        .map(|mut r| {
            if let Record::Wait(w) = &mut r {
                w.holders.iter_mut().for_each(|h| h.syscall = None);
            }
            r
        })
        .collect();
    let r = run(&recs, None, None);
    let text = stalltrace_analysis::report::text::render(&r);
    let row = text
        .lines()
        .find(|l| l.trim_start().starts_with("1   cadvisor"))
        .unwrap_or_else(|| panic!("no culprit row:\n{text}"));
    assert!(row.trim_end().ends_with("user space (1)"), "{row}");
    // And with the read, the row names it.
    let text = stalltrace_analysis::report::text::render(&run(
        &fixture::records(Seed::default()),
        None,
        None,
    ));
    assert!(
        text.contains(&format!("read() of {MEMORY_STAT} (1)")),
        "{text}"
    );
}

/// The 2019 GitHub incident's culprit read memory.stat: the episode and the summary point at the
/// node's memory cgroups, with the count measured at record time when the dump has it.
#[test]
fn a_culprit_reading_cgroup_statistics_is_linked_to_the_doctor() {
    let recs = fixture::records(Seed::default());
    let r = run(&recs, None, None);
    let why = r.episodes[0].why.as_deref().unwrap();
    assert!(
        why.starts_with("reading cgroup statistics (memory.stat): "),
        "{why}"
    );
    assert!(why.contains("stalltrace doctor"), "{why}");
    let mut with_facts = recs.clone();
    if let Record::Header(h) = &mut with_facts[0] {
        h.cgroups = Some(CgroupFacts {
            memcg_live: Some(1904),
            memcg_dying: Some(3120),
            ..Default::default()
        });
    }
    let r = run(&with_facts, None, None);
    let why = r.episodes[0].why.as_deref().unwrap();
    assert!(
        why.contains("with 3120 dying memory cgroups (1904 live) at record time"),
        "{why}"
    );
    let summary = stalltrace_analysis::report::summary(&r).join("\n");
    assert!(
        summary.contains("cadvisor spent its episodes reading cgroup statistics files")
            && summary.contains("The node had 3120 dying memory cgroups"),
        "{summary}"
    );
    assert!(stalltrace_analysis::report::text::episode_line(&r.episodes[0]).ends_with(why));
}

/// Lost probes, of which one never left (the kernel refused the send), and slow
/// answers: counted apart in the totals, the first refusal's reason kept.
#[test]
fn lost_and_refused_probes_are_counted_apart() {
    use stalltrace_testkit::records::probe;
    let mut c = Correlator::new(Config::new(50 * MS));
    c.push(&Record::Header(fixture::header(None)));
    let mut lost = probe(1, 7, 0);
    lost.rtt_ns = None;
    lost.status = ProbeStatus::Lost;
    let mut refused = lost.clone();
    refused.seq = 2;
    refused.send_error = Some("Operation not permitted (os error 1)".into());
    let mut refused2 = refused.clone();
    refused2.seq = 3;
    refused2.send_error = Some("Network is unreachable (os error 101)".into());
    for p in [
        probe(0, 7, 60 * MS),
        lost,
        refused,
        refused2,
        probe(4, 7, 49 * MS),
        probe(5, 7, 50 * MS),
    ] {
        c.push(&Record::Probe(p));
    }
    let t = c.finish().totals;
    assert_eq!((t.probes, t.probes_lost, t.probes_not_sent), (6, 3, 2));
    assert_eq!(
        t.first_send_error.as_deref(),
        Some("Operation not permitted (os error 1)")
    );
    assert_eq!(
        t.probes_stalled, 2,
        "60 ms and exactly 50 ms are stalled, 49 ms is not"
    );
    assert_eq!(t.records, 7, "the header and six probes");
}

/// The stall threshold: the command line's, else the recording's (when set), else
/// 50 ms; a recording that ran a prober is in probe mode from the start.
#[test]
fn the_threshold_comes_from_the_command_line_then_the_recording() {
    let mut h = fixture::header(None);
    h.options.stall_threshold_ns = 0;
    assert_eq!(Config::from_header(&h, None).stall_threshold_ns, 50 * MS);
    h.options.stall_threshold_ns = 30 * MS;
    assert_eq!(Config::from_header(&h, None).stall_threshold_ns, 30 * MS);
    assert_eq!(
        Config::from_header(&h, Some(80 * MS)).stall_threshold_ns,
        80 * MS
    );
    assert_eq!(Config::from_header(&h, None).mode, None);
    h.options.probe = Some("10.0.0.7".into());
    assert_eq!(Config::from_header(&h, None).mode, Some(Mode::Probes));
}

/// A packet processed on `cpu` at `ts` in the RX run that started at `rx`.
fn run_packet(cpu: u32, ts: u64, rx: u64, seq: u16) -> Record {
    Record::Packet(stalltrace_testkit::records::echo_request(
        ts,
        rx,
        cpu,
        (76, 76, "ksoftirqd", RxContext::Ksoftirqd),
        fixture::IDENT,
        seq,
    ))
}

/// A packet-only recording: the 2019 GitHub incident's header without a prober, then `recs`.
fn packet_mode(recs: Vec<Record>) -> Report {
    let mut all = vec![Record::Header(fixture::header(None))];
    all.extend(recs);
    run(&all, None, None)
}

/// Waits are one stall only on one CPU, and only when their windows overlap: a wait
/// on another CPU, or one that began after the stall ended, is another stall even when
/// it ends within the merge gap (1 ms).
#[test]
fn waits_merge_only_on_one_cpu_and_when_their_windows_overlap() {
    let t = fixture::T0;
    let r = packet_mode(vec![
        Record::Wait(synth_wait(1, t, t + 60 * MS, (400, "a"))),
        run_packet(1, t + 60 * MS + 5 * US, t + 60 * MS, 1),
        // CPU 1 again, from 0.2 ms after the first ended to 0.4 ms after.
        Record::Wait(synth_wait(1, t + 60_200 * US, t + 60_400 * US, (600, "c"))),
        // CPU 2, overlapping the first and ending 0.5 ms after it.
        Record::Wait(synth_wait(2, t + 10 * MS, t + 60_500 * US, (500, "b"))),
        run_packet(2, t + 60_505 * US, t + 60_500 * US, 2),
    ]);
    let eps: Vec<(u32, usize, u64)> = r
        .episodes
        .iter()
        .map(|e| (e.cpu, e.waits.len(), e.wait_ns))
        .collect();
    // CPU 1: 60 ms; CPU 2: 60.5 - 10 ms. The 0.2 ms wait is below the threshold.
    assert_eq!(eps, vec![(1, 1, 60 * MS), (2, 1, 50_500 * US)]);
}

/// One stall keeps at most 64 of its waits.
#[test]
fn a_stall_keeps_at_most_64_waits() {
    let t = fixture::T0;
    // 65 overlapping waits ending 10 µs apart (each within the merge gap of the last).
    let mut recs: Vec<Record> = (0..65)
        .map(|i| Record::Wait(synth_wait(1, t, t + 60 * MS + i * 10 * US, (400, "a"))))
        .collect();
    recs.push(run_packet(1, t + 60 * MS + 5 * US, t + 60 * MS, 1));
    let r = packet_mode(recs);
    assert_eq!(r.episodes.len(), 1);
    assert_eq!(r.episodes[0].waits.len(), 64);
}

/// More than 4096 stalls open at once (none due yet): the one that ended first is
/// closed at once, its episode out before its linger.
#[test]
fn past_4096_open_stalls_the_earliest_closes_at_once() {
    let t = fixture::T0;
    let mut c = Correlator::new(Config::from_header(&fixture::header(None), None));
    c.push(&Record::Header(fixture::header(None)));
    let mut early = c.push(&Record::Wait(synth_wait(1, t, t + 60 * MS, (400, "a"))));
    early.extend(c.push(&run_packet(1, t + 60 * MS + 5 * US, t + 60 * MS, 1)));
    // 4096 stalls of 1 µs on CPU 2, 3 µs apart (no two overlap), all within 13 ms: with
    // the first, 4097 open, none due (linger 1 s).
    for j in 0..4096 {
        let start = t + 61 * MS + j * 3 * US;
        early.extend(c.push(&Record::Wait(synth_wait(2, start, start + US, (500, "b")))));
    }
    let ids: Vec<(u32, u64)> = early.iter().map(|e| (e.cpu, e.wait_ns)).collect();
    assert_eq!(ids, vec![(1, 60 * MS)]);
}

/// A packet is kept for exactly the join window (3 s) after it was seen: a wait that
/// arrives then still finds it in its run.
#[test]
fn a_packet_is_kept_for_exactly_the_window() {
    let t = fixture::T0;
    let window = Config::new(50 * MS).window_ns;
    let mut c = Correlator::new(Config::from_header(&fixture::header(None), None));
    c.push(&Record::Header(fixture::header(None)));
    c.push(&run_packet(1, t + 60 * MS + 5 * US, t + 60 * MS, 1));
    // Seen at 60.005 ms; the clock reaches exactly a window later.
    assert!(c.tick(t + 60 * MS + 5 * US + window).is_empty());
    let eps = c.push(&Record::Wait(synth_wait(1, t, t + 60 * MS, (400, "a"))));
    assert_eq!(eps.len(), 1, "{eps:#?}");
    assert_eq!(eps[0].packets_delayed, 1);
}

fn correlate(recs: &[Record]) -> Correlator {
    let mut c = Correlator::new(Config::from_header(&fixture::header(None), None));
    c.push(&Record::Header(fixture::header(None)));
    for r in recs {
        c.push(r);
    }
    c
}

#[test]
fn retained_counts_packets_and_every_index_key() {
    let t = fixture::T0;
    let mut probe = fixture::probe(1, 300 * US);
    probe.wire_seq = Some(1);
    let c = correlate(&[
        run_packet(1, t + 5 * US, t, 1),
        run_packet(1, t + 10 * MS, t + 10 * MS, 2),
        Record::Probe(probe),
    ]);
    // 2 packets; keys: 2 wire sequences + 2 RX runs of packets, 1 probe sequence + 1
    // inline probe.
    assert_eq!(c.retained(), (2, 6));
}

/// A probe joins the newest request not joined yet: two probes of one wire sequence
/// (a wrap) join two packets, and a packet joined once is not taken again.
#[test]
fn each_request_packet_joins_one_probe_newest_first() {
    let t = fixture::T0;
    let probe = |seq: u32| {
        let mut p = fixture::probe(seq, 300 * US);
        p.wire_seq = Some(1);
        Record::Probe(p)
    };
    // Two requests of wire sequence 1, then the two probes that sent them.
    let two = correlate(&[
        run_packet(1, t + 5 * US, t, 1),
        run_packet(1, t + 10 * MS, t + 10 * MS, 1),
        probe(1),
        probe(65_537),
    ])
    .finish();
    assert_eq!(
        (two.totals.probes_answered, two.totals.probes_matched),
        (2, 2)
    );
    // One request, two probes claiming it: the second finds it taken.
    let one = correlate(&[run_packet(1, t + 5 * US, t, 1), probe(1), probe(65_537)]).finish();
    assert_eq!(
        (one.totals.probes_answered, one.totals.probes_matched),
        (2, 1)
    );
}

#[test]
fn culprits_so_far_rank_the_closed_episodes() {
    let mut c = correlate(&fixture::records(Seed::default())[1..]);
    c.flush();
    let names: Vec<String> = c.culprits_so_far().into_iter().map(|r| r.comm).collect();
    assert_eq!(names, vec!["cadvisor".to_string()]);
}

/// Syscalls and inline probes, like packets, are kept for exactly the join window
/// after they were seen: a wait arriving then still joins the syscall and claims the
/// probe.
#[test]
fn syscalls_and_probes_are_kept_for_exactly_the_window() {
    let t = fixture::T0;
    let window = Config::new(50 * MS).window_ns;
    let who = (400, 400, "cadvisor");
    let mut probe = fixture::probe(1, 60 * MS);
    probe.wire_seq = Some(1);
    // All three seen at 60.005 ms (the packet's time; the syscall ended before).
    let mut c = correlate(&[
        run_packet(1, t + 60 * MS + 5 * US, t + 60 * MS, 1),
        Record::Syscall(stalltrace_testkit::records::read_syscall(
            1,
            who,
            MEMORY_STAT,
            t,
            t + 60 * MS,
        )),
        Record::Probe(probe),
    ]);
    assert!(c.tick(t + 60 * MS + 5 * US + window).is_empty());
    let mut w = synth_wait(1, t, t + 60 * MS, (400, "cadvisor"));
    w.holders[0].syscall = Some(stalltrace_testkit::records::inside_read(
        MEMORY_STAT,
        t,
        60 * MS,
    ));
    let eps = c.push(&Record::Wait(w));
    assert_eq!(eps.len(), 1, "{eps:#?}");
    let sys = eps[0].culprit.as_ref().and_then(|c| c.syscall.as_ref());
    // Joined with the syscall record: 60 ms from its entry to its exit.
    assert_eq!(sys.and_then(|s| s.dur_ns), Some(60 * MS), "{sys:#?}");
    let r = c.finish();
    assert_eq!(
        (r.totals.probes_explained, r.totals.probes_unexplained),
        (1, 0)
    );
}

/// A stalled probe whose reply alone was seen is placed on the reply's CPU.
#[test]
fn an_unexplained_probe_seen_only_in_its_reply_is_on_the_replys_cpu() {
    let t = fixture::T0;
    let Record::Packet(mut reply) = run_packet(3, t + 5 * US, t, 1) else {
        unreachable!()
    };
    reply.kind = PacketKind::EchoReply;
    let mut probe = fixture::probe(1, 60 * MS);
    probe.wire_seq = Some(1);
    let r = correlate(&[Record::Packet(reply), Record::Probe(probe)]).finish();
    let u: Vec<(u32, Option<u32>)> = r.unexplained.iter().map(|u| (u.seq, u.cpu)).collect();
    assert_eq!(u, vec![(1, Some(3))]);
}

/// A wait longer than the join window keeps the packets just before it (the context
/// lines) while it is open.
#[test]
fn a_long_wait_keeps_the_packets_before_it() {
    let t = fixture::T0;
    let r = packet_mode(vec![
        run_packet(1, t - 10 * MS, t - 10 * MS, 7),
        Record::Wait(synth_wait(1, t, t + 5_000 * MS, (400, "a"))),
        run_packet(1, t + 5_000 * MS + 5 * US, t + 5_000 * MS, 8),
    ]);
    assert_eq!(r.episodes.len(), 1);
    // The packet 10 ms before the wait, then the delayed one.
    let seqs: Vec<u16> = r.episodes[0].lines.iter().map(|l| l.wire_seq).collect();
    assert_eq!(seqs, vec![7, 8]);
}

/// A lost probe whose request was in a stall's delayed run counts for the stall only
/// when the stall reached the threshold; an answered fast probe in the run still
/// counts for the worst RTT.
#[test]
fn a_lost_probe_counts_only_for_a_stall_over_the_threshold() {
    let t = fixture::T0;
    let probe = |seq: u32, status: ProbeStatus, rtt: Option<u64>| {
        let mut p = fixture::probe(seq, 0);
        (p.wire_seq, p.status, p.rtt_ns) = (Some(seq as u16), status, rtt);
        Record::Probe(p)
    };
    let stall = |len: u64| {
        correlate(&[
            Record::Wait(synth_wait(1, t, t + len, (400, "a"))),
            run_packet(1, t + len + 5 * US, t + len, 1),
            run_packet(1, t + len + 6 * US, t + len, 2),
            probe(1, ProbeStatus::Lost, None),
            probe(2, ProbeStatus::Ok, Some(MS)),
        ])
        .finish()
    };
    let r = stall(60 * MS);
    assert_eq!(r.episodes.len(), 1);
    let e = &r.episodes[0];
    // The lost one; the 1 ms one is the worst RTT answered.
    assert_eq!(
        (e.probes_lost, e.probes_in_run, e.worst_rtt_ns),
        (1, 2, Some(MS))
    );
    // 10 ms < 50 ms: no episode.
    assert!(stall(10 * MS).episodes.is_empty());
}

/// The report lists the first 50 unexplained probes and counts them all.
#[test]
fn unexplained_probes_are_listed_up_to_50() {
    let recs: Vec<Record> = (1..=51u32)
        .map(|seq| {
            let mut p = fixture::probe(seq, 60 * MS);
            p.wire_seq = Some(seq as u16);
            Record::Probe(p)
        })
        .collect();
    let r = correlate(&recs).finish();
    assert_eq!(r.totals.probes_unexplained, 51);
    assert_eq!(r.unexplained.len(), 50);
}

/// Context lines: the packets on the stall's CPU before the run began (its end at the
/// latest), one per wire sequence, at most 3; in packet mode packets without a probe
/// key too.
#[test]
fn context_lines_are_the_packets_before_the_run_once_per_sequence() {
    let t = fixture::T0;
    let Record::Packet(mut reply) = run_packet(1, t - 20 * MS, t - 20 * MS, 5) else {
        unreachable!()
    };
    reply.kind = PacketKind::EchoReply;
    let Record::Packet(mut udp) = run_packet(1, t - 10 * MS, t - 10 * MS, 6) else {
        unreachable!()
    };
    udp.proto = "udp".into();
    // Seen at the stall's end exactly, outside the delayed run.
    let Record::Packet(mut at_end) = run_packet(1, t + 60 * MS, t + MS, 9) else {
        unreachable!()
    };
    at_end.rx_start_ns = None;
    let r = packet_mode(vec![
        run_packet(1, t - 30 * MS, t - 30 * MS, 5),
        Record::Packet(reply),
        Record::Packet(udp),
        Record::Wait(synth_wait(1, t, t + 60 * MS, (400, "a"))),
        Record::Packet(at_end),
        run_packet(1, t + 60 * MS + 5 * US, t + 60 * MS, 8),
    ]);
    assert_eq!(r.episodes.len(), 1);
    // Sequence 5 once (its reply, the newer), the UDP one (no sequence: 0), then the
    // delayed 8.
    let seqs: Vec<u16> = r.episodes[0].lines.iter().map(|l| l.wire_seq).collect();
    assert_eq!(seqs, vec![5, 0, 8]);
}

/// A probe whose request and reply were delayed by two stalls is explained once.
#[test]
fn a_probe_delayed_twice_is_explained_once() {
    let t = fixture::T0;
    let Record::Packet(mut reply) = run_packet(2, t + 70 * MS, t + 70 * MS, 1) else {
        unreachable!()
    };
    reply.kind = PacketKind::EchoReply;
    let mut probe = fixture::probe(1, 100 * MS);
    probe.wire_seq = Some(1);
    let r = correlate(&[
        Record::Wait(synth_wait(1, t, t + 60 * MS, (400, "a"))),
        run_packet(1, t + 60 * MS + 5 * US, t + 60 * MS, 1),
        Record::Wait(synth_wait(2, t + 10 * MS, t + 70 * MS, (500, "b"))),
        Record::Packet(reply),
        Record::Probe(probe),
    ])
    .finish();
    // Both 60 ms stalls explain the 100 ms probe (2 × 60 ≥ 100).
    let delayed: Vec<(u64, u32)> = r
        .episodes
        .iter()
        .map(|e| (e.id, e.probes_delayed))
        .collect();
    // Numbered 1, 2 as they closed.
    assert_eq!(delayed, vec![(1, 1), (2, 1)]);
    assert_eq!(r.totals.probes_explained, 1);
}

/// Episodes past the listing limit are counted, not listed.
#[test]
fn episodes_past_the_listing_limit_are_counted_not_listed() {
    let t = fixture::T0;
    let mut cfg = Config::from_header(&fixture::header(None), None);
    cfg.max_listed_episodes = 1;
    let r = run(
        &[
            Record::Header(fixture::header(None)),
            Record::Wait(synth_wait(1, t, t + 60 * MS, (400, "a"))),
            run_packet(1, t + 60 * MS + 5 * US, t + 60 * MS, 1),
            Record::Wait(synth_wait(2, t, t + 60 * MS, (500, "b"))),
            run_packet(2, t + 60 * MS + 5 * US, t + 60 * MS, 2),
        ],
        Some(cfg),
        None,
    );
    assert_eq!(r.totals.episodes, 2);
    assert_eq!(r.episodes.len(), 1);
    assert_eq!(r.totals.episodes_not_listed, 1);
}

mod drain {
    //! The backlog drain seen between two machines over a NIC: a starved ksoftirqd's
    //! 879 ms wait ends, it runs briefly, waits 9 ms more, and processes the staircase's
    //! probes 10–32 ms after the long wait: they were delayed by it, in the same drain.
    use super::*;
    use stalltrace_testkit::records as b;

    const CPU1: u32 = 1;
    const ID: u16 = 0x4242;
    const HOG: (u32, u32, &str) = (4040, 4040, "fzqhogd");
    const KSOFTIRQD: b::Rx<'static> = (21, 21, "ksoftirqd/1", RxContext::Ksoftirqd);

    fn wait(start: u64, end: u64, drain_of: Option<u64>, hog_ns: u64) -> Record {
        let mut w = b::wait(
            WaitKind::RxThread,
            CPU1,
            start,
            end,
            KSOFTIRQD,
            b::task(0, 0, "swapper/1"),
            vec![b::holder(HOG.0, HOG.1, HOG.2, hog_ns, None)],
        );
        w.drain_of_ns = drain_of;
        for h in &mut w.holders {
            h.policy = "SCHED_FIFO".into();
            h.priority = 50;
        }
        Record::Wait(w)
    }

    fn packet(seq: u16, ts: u64, rx: u64, drain: Option<u64>) -> Record {
        let mut p = b::echo_request(ts, rx, CPU1, KSOFTIRQD, ID, seq);
        p.drain_start_ns = drain;
        Record::Packet(p)
    }

    /// Probes every 10 ms from t0 + 10 ms; those arriving inside [w_start, drained)
    /// are processed at `processed_at(seq)`.
    fn stream(drain_marks: bool) -> (Vec<Record>, Vec<ProbeRec>, u64) {
        let t0 = 10_000 * MS;
        let w1 = (t0 + 100 * MS, t0 + 979 * MS); // 879 ms
        let w2 = (w1.1 + MS, w1.1 + 10 * MS); // 9 ms, in the drain
        let mut recs = vec![Record::Header(b::header("node", "6.1.0", 2, t0, None))];
        let mut log = vec![];
        let d = drain_marks.then_some(w1.1);
        // Before the stall: processed at once, in their own runs.
        for seq in 0..10u16 {
            let a = t0 + u64::from(seq) * 10 * MS;
            recs.push(packet(seq, a + 50 * US, a, None));
            log.push(b::probe(u32::from(seq), ID, MS / 2));
        }
        recs.push(wait(w1.0, w1.1, d, 879 * MS));
        // One packet processed in ksoftirqd's first short run right after the wait.
        recs.push(packet(10, w1.1 + 100 * US, w1.1, d));
        log.push(b::probe(10, ID, w1.1 + 100 * US + 2 * MS - (t0 + 100 * MS)));
        recs.push(wait(w2.0, w2.1, d, 9 * MS));
        // The rest of the staircase, 10 to 32 ms after w1's end: right after the short
        // wait, then in a later run (ksoftirqd preempted briefly, below the wait
        // threshold, so no wait record starts that run).
        let later_run = w2.1 + 12 * MS;
        for seq in 11..98u16 {
            let arrived = t0 + u64::from(seq) * 10 * MS;
            let at = w2.1 + u64::from(seq - 11) * 250 * US;
            let run = if seq < 51 { w2.1 } else { later_run };
            recs.push(packet(seq, at.max(run), run, d));
            log.push(b::probe(u32::from(seq), ID, at.max(run) - arrived + MS));
        }
        (recs, log, w1.1)
    }

    #[test]
    fn probes_processed_later_in_the_drain_are_explained_by_the_long_wait() {
        let (recs, log, w1_end) = stream(true);
        let stalled = log.iter().filter(|p| p.rtt_ns.unwrap() >= 50 * MS).count() as u64;
        assert!(stalled > 80, "{stalled}");
        let r = run(&recs, None, Some(log));
        assert_eq!(r.totals.probes_stalled, stalled);
        assert_eq!(r.totals.probes_explained, stalled, "{:#?}", r.unexplained);
        assert_eq!(
            r.episodes.len(),
            1,
            "the two waits of one drain are one stall"
        );
        let e = &r.episodes[0];
        assert_eq!(e.waits.len(), 2);
        assert_eq!(e.culprit.as_ref().map(|c| c.pid), Some(HOG.0));
        // Its time in both waits adds up: they do not overlap.
        assert_eq!(e.culprit.as_ref().map(|c| c.run_ns), Some(888 * MS));
        assert_eq!(e.packets_delayed, 88);
        assert_eq!(e.packets_in_drain, 47, "the packets of the later run");
        assert_eq!(
            e.drain_ns,
            Some(86 * 250 * US),
            "seq 97, after the short wait"
        );
        let after = |seq: u32| {
            e.lines
                .iter()
                .find(|l| l.seq == Some(seq))
                .map(|l| l.after_wait_ns)
        };
        assert_eq!(after(60), Some(Some(49 * 250 * US)));
        for s in [10, 11, 50] {
            assert_eq!(after(s), Some(None), "seq {s}: right after a wait");
        }
        assert_eq!(e.end_ns, w1_end + 10 * MS);
        let line = stalltrace_analysis::report::text::episode_line(e);
        assert!(
            line.contains("47 packets in the same backlog drain"),
            "{line}"
        );
        let rows = stalltrace_analysis::report::text::episode_table(e);
        assert!(
            rows.iter()
                .any(|r| r.contains("after the wait ended, same backlog drain")),
            "{rows:#?}"
        );
    }

    /// Fresh probes processed while the drain is still open (the kernel keeps it open
    /// a grace after RX work runs out) are not its backlog when their own RTT shows
    /// they were sent after the wait ended: 2 ms answers 40 ms after it are not
    /// counted, drawn, or said to be in the drain.
    #[test]
    fn fresh_probes_in_an_open_drain_are_not_its_backlog() {
        let (mut recs, mut log, w1_end) = stream(true);
        let w2_end = w1_end + 10 * MS;
        let fresh_at = |i: u16| w2_end + 40 * MS + u64::from(i) * 10 * MS;
        for i in 0..3u16 {
            let at = fresh_at(i);
            recs.push(packet(98 + i, at, at, Some(w1_end)));
            log.push(b::probe(u32::from(98 + i), ID, 2 * MS));
        }
        let r = run(&recs, None, Some(log));
        assert_eq!(r.episodes.len(), 1);
        let e = &r.episodes[0];
        assert_eq!(
            e.packets_delayed, 88,
            "the stall's 88, not the 3 fresh ones"
        );
        assert_eq!(e.packets_in_drain, 47);
        assert!(
            e.lines.iter().all(|l| l.seq.is_none_or(|s| s < 98)),
            "{:#?}",
            e.lines
        );
    }

    /// Without drain marks (a dump from an older recorder) those probes stay
    /// unexplained: the join is what the kernel marks, not a guess from clocks.
    #[test]
    fn without_drain_marks_only_the_run_after_each_wait_is_joined() {
        let (recs, log, _) = stream(false);
        let r = run(&recs, None, Some(log));
        assert!(
            r.totals.probes_explained < 5,
            "{}",
            r.totals.probes_explained
        );
        assert!(r.unexplained_wait_too_short + r.unexplained_no_wait > 80);
    }

    /// A drain's packets processed before a later stall of the same drain began belong
    /// to the earlier stall, not to both.
    #[test]
    fn a_later_stall_of_one_drain_takes_only_packets_after_its_start() {
        let (mut recs, log, w1_end) = stream(true);
        // A third wait of the drain begins after the staircase was processed (within the
        // kernel's window) and lasts 3 s: a packet on another CPU lets the first stall
        // close before it is reported.
        let w2_end = w1_end + 10 * MS;
        let late = (w2_end + 40 * MS, w2_end + 3_040 * MS);
        let mut other = b::echo_request(
            w2_end + 2_500 * MS,
            w2_end + 2_500 * MS,
            0,
            KSOFTIRQD,
            ID + 1,
            7,
        );
        other.cpu = 0;
        recs.push(Record::Packet(other));
        recs.push(wait(late.0, late.1, Some(w1_end), 3_000 * MS));
        recs.push(packet(200, late.1 + MS, late.1, Some(w1_end)));
        let r = run(&recs, None, Some(log));
        let delayed: u32 = r.episodes.iter().map(|e| e.packets_delayed).sum();
        let per: Vec<(u64, u32)> = r
            .episodes
            .iter()
            .map(|e| (e.id, e.packets_delayed))
            .collect();
        assert_eq!(per.first(), Some(&(1, 88)), "{per:?}");
        assert_eq!(delayed, 88 + per.get(1).map_or(0, |e| e.1), "{per:?}");
        assert!(per.get(1).is_none_or(|e| e.1 == 1), "{per:?}");
    }

    /// Another sender's echoes in the delayed run (a flood) are counted, not listed.
    #[test]
    fn another_senders_echoes_are_counted_not_listed() {
        let (mut recs, log, w1_end) = stream(true);
        for i in 0..20u16 {
            recs.push(packet(
                1000 + i,
                w1_end + 200 * US + u64::from(i),
                w1_end,
                Some(w1_end),
            ));
            if let Some(Record::Packet(p)) = recs.last_mut() {
                p.ident = ID + 7;
            }
        }
        let r = run(&recs, None, Some(log));
        let e = &r.episodes[0];
        assert_eq!(e.packets_delayed, 108);
        assert!(e.lines.iter().all(|l| l.seq.is_some()), "{:#?}", e.lines);
    }

    /// Packet-only mode (`watch`, no prober): a long NET_RX or NAPI-thread wait is a
    /// stall even when no recorded echo was behind it; a ksoftirqd wait alone (it
    /// also runs other softirqs) is not.
    #[test]
    fn packet_mode_counts_long_receive_waits_without_recorded_packets() {
        let t0 = 10_000 * MS;
        let napi: b::Rx<'static> = (31, 31, "napi/eth0-8193", RxContext::Napi);
        let mk = |kind, rx: b::Rx<'static>, start: u64| {
            Record::Wait(b::wait(
                kind,
                CPU1,
                start,
                start + 900 * MS,
                rx,
                b::task(0, 0, "swapper/1"),
                vec![b::holder(HOG.0, HOG.1, HOG.2, 900 * MS, None)],
            ))
        };
        let recs = vec![
            Record::Header(b::header("node", "6.1.0", 2, t0, None)),
            mk(WaitKind::RxThread, napi, t0),
            mk(WaitKind::NetRxSoftirq, KSOFTIRQD, t0 + 5_000 * MS),
            mk(WaitKind::RxThread, KSOFTIRQD, t0 + 10_000 * MS),
        ];
        let r = run(&recs, None, None);
        assert_eq!(r.mode, Mode::Packets);
        let got: Vec<(u64, u32)> = r
            .episodes
            .iter()
            .map(|e| (e.start_ns, e.packets_delayed))
            .collect();
        assert_eq!(got, vec![(t0, 0), (t0 + 5_000 * MS, 0)]);
        assert_eq!(r.culprits[0].tgid, HOG.1);
    }
}
