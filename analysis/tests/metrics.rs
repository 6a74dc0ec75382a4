//! The metrics fed with episodes as `watch` feeds them (through the sink): culprit
//! series by identity, episodes by CPU, and episodes without a culprit.
use stalltrace_analysis::analyze::Sink;
use stalltrace_analysis::correlate::{Config, Correlator, Episode};
use stalltrace_analysis::dump::Record;
use stalltrace_analysis::identity::Identity;
use stalltrace_analysis::report::metrics::Metrics;
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

#[test]
fn episodes_count_by_cpu_by_culprit_identity_and_without_culprit() -> std::io::Result<()> {
    let mut m = Metrics::new(5, "0.1.0");
    let mut ep = seed_episode();
    ep.cpu = 3;
    ep.wait_ns = 250_000_000;
    let Some(c) = ep.culprit.as_mut() else {
        panic!("the 2019 GitHub incident's episode has a culprit")
    };
    c.comm = "housekeeping".into();
    c.process = Some("cadvisor".into());
    c.identity = Some(Identity {
        namespace: Some("kube-system".into()),
        pod: Some("cadvisor-x7kqp".into()),
        container: Some("cadvisor".into()),
        ..Identity::default()
    });
    Sink::episode(&mut m, &ep)?;
    Sink::episode(&mut m, &ep)?;
    let mut idle = ep.clone();
    idle.cpu = 5;
    idle.culprit = None;
    Sink::episode(&mut m, &idle)?;
    assert_eq!(m.culprit_series(), 1);
    let text = m.encode().unwrap();
    for want in [
        // Two episodes of the culprit on CPU 3, one without a culprit on CPU 5.
        "stalltrace_cpu_stall_episodes_total{cpu=\"3\"} 2.0",
        "stalltrace_cpu_stall_episodes_total{cpu=\"5\"} 1.0",
        "stalltrace_episodes_without_culprit_total 1.0",
        // Labelled by the process's name, not the thread's.
        // Labels prefixed culprit_, the workload from the pod's name (a DaemonSet's
        // name-suffix shape).
        "stalltrace_stall_episodes_total{culprit_namespace=\"kube-system\",culprit_workload=\"cadvisor\",culprit_workload_kind=\"DaemonSet\",culprit_pod=\"cadvisor-x7kqp\",culprit_container=\"cadvisor\",culprit_comm=\"cadvisor\"} 2.0",
        // 2 × 250 ms
        "stalltrace_stall_delay_seconds_total{culprit_namespace=\"kube-system\",culprit_workload=\"cadvisor\",culprit_workload_kind=\"DaemonSet\",culprit_pod=\"cadvisor-x7kqp\",culprit_container=\"cadvisor\",culprit_comm=\"cadvisor\"} 0.5",
        "stalltrace_workload_stall_episodes_total{culprit_namespace=\"kube-system\",culprit_workload=\"cadvisor\",culprit_workload_kind=\"DaemonSet\"} 2.0",
        "stalltrace_workload_stall_delay_seconds_total{culprit_namespace=\"kube-system\",culprit_workload=\"cadvisor\",culprit_workload_kind=\"DaemonSet\"} 0.5",
    ] {
        assert!(text.lines().any(|l| l == want), "{want} not in:\n{text}");
    }
    Ok(())
}
