//! Several dumps as one culprit table: the 2019 GitHub incident's recording (cadvisor
//! holding CPU 11 for ~99 ms) on two nodes, with other pids and another pod of the same
//! DaemonSet on the second, and on a third node with a host process `backup` in
//! cadvisor's place. Each dump alone ranks one culprit; merged, cadvisor's rows from
//! both nodes are one row with their episodes and delay summed, ranked over `backup`.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers too: a panic is how a test fails"
)]
use stalltrace_analysis::analyze::{analyze, AnalyzeOptions};
use stalltrace_analysis::correlate::Report;
use stalltrace_analysis::dump::Record;
use stalltrace_analysis::identity::Identity;
use stalltrace_analysis::merge::{render_text, Merged};
use stalltrace_testkit::{scratch::Scratch, seed};

/// The seed recording as `host` saw it: cadvisor's pids replaced by `tgid`/`pid`, its
/// name by `comm`, in `pod` of kube-system when given.
fn dump(dir: &Scratch, host: &str, tgid: u32, pid: u32, comm: &str, pod: Option<&str>) -> Report {
    let mut recs = seed::records(seed::Seed::default());
    for r in &mut recs {
        if let Record::Wait(w) = r {
            for h in &mut w.holders {
                if h.tgid == seed::CADVISOR_TGID {
                    h.identity = pod.map(|p| Identity {
                        namespace: Some("kube-system".into()),
                        pod: Some(p.into()),
                        container: Some("cadvisor".into()),
                        ..Identity::default()
                    });
                }
            }
        }
    }
    // Every record naming cadvisor (holders, waker, the packets it processed, its
    // read) is renamed alike.
    let text = seed::jsonl(&recs)
        .replace("kube-node-bad", host)
        .replace(&seed::CADVISOR_TGID.to_string(), &tgid.to_string())
        .replace(&seed::CADVISOR_PID.to_string(), &pid.to_string())
        .replace("\"cadvisor\"", &format!("\"{comm}\""));
    let path = dir.join(&format!("{host}.jsonl"));
    std::fs::write(&path, text).unwrap();
    analyze(&AnalyzeOptions::dump(&path), &mut []).unwrap()
}

#[test]
fn merged_dumps_rank_the_culprit_of_both_nodes_first_with_summed_episodes() {
    let dir = Scratch::new("merge").unwrap();
    let a = dump(
        &dir,
        "node-a",
        10137,
        10436,
        "cadvisor",
        Some("cadvisor-x7kqp"),
    );
    let b = dump(
        &dir,
        "node-b",
        20137,
        20436,
        "cadvisor",
        Some("cadvisor-q2w8z"),
    );
    let c = dump(&dir, "node-c", 30137, 30436, "backup", None);
    // Each dump alone: one culprit, the one planted, with one episode of ~99 ms.
    for (r, tgid, comm) in [
        (&a, 10137, "cadvisor"),
        (&b, 20137, "cadvisor"),
        (&c, 30137, "backup"),
    ] {
        assert_eq!(r.culprits.len(), 1, "{:?}", r.culprits);
        assert_eq!(
            (r.culprits[0].tgid, r.culprits[0].comm.as_str()),
            (tgid, comm)
        );
        assert_eq!(r.culprits[0].episodes, 1);
        assert!(r.culprits[0].total_wait_ns >= 99 * seed::MS);
    }
    let mut m = Merged::default();
    for r in [&c, &a, &b] {
        m.add(r);
    }
    assert_eq!((m.dumps, m.episodes), (3, 3));
    let ranked = m.ranked();
    assert_eq!(ranked.len(), 2, "{ranked:#?}");
    let top = &ranked[0];
    assert_eq!(top.rank, 1);
    assert_eq!(
        (
            top.namespace.as_str(),
            top.workload.as_str(),
            top.workload_kind.as_str(),
            top.container.as_str(),
            top.comm.as_str()
        ),
        (
            "kube-system",
            "cadvisor",
            "DaemonSet",
            "cadvisor",
            "cadvisor"
        )
    );
    assert_eq!(top.episodes, 2);
    assert_eq!(
        top.total_wait_ns,
        a.culprits[0].total_wait_ns + b.culprits[0].total_wait_ns
    );
    assert_eq!(top.dumps, 2);
    assert_eq!(top.hosts, ["node-a", "node-b"]);
    assert_eq!(top.pods, ["cadvisor-q2w8z", "cadvisor-x7kqp"]);
    let second = &ranked[1];
    assert_eq!(
        (second.rank, second.workload.as_str(), second.comm.as_str()),
        (2, "backup", "backup")
    );
    assert_eq!((second.episodes, second.dumps), (1, 1));
    assert_eq!(second.hosts, ["node-c"]);
    assert!(second.pods.is_empty() && second.namespace.is_empty());

    // The text names the same table in the same order.
    let text = render_text(&m.report());
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].ends_with(": 3 dumps, 3 episodes (0 without a culprit)"),
        "{text}"
    );
    let rows: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("  1 ") || l.starts_with("  2 "))
        .collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert!(
        rows[0].split_whitespace().nth(1) == Some("2")
            && rows[0].ends_with("kube-system/cadvisor (DaemonSet) / cadvisor / cadvisor"),
        "{text}"
    );
    assert!(rows[1].ends_with("host process backup"), "{text}");
    assert!(
        text.contains("hosts node-a, node-b; pods cadvisor-q2w8z, cadvisor-x7kqp"),
        "{text}"
    );
}
