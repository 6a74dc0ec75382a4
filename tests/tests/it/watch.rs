//! `stalltrace watch` as a node agent: a culprit in a kubelet-shaped cgroup (made by the
//! test in the unified hierarchy) with the kubelet's log layout (made by the test):
//! the metrics name its namespace, workload, pod and container; a real Prometheus
//! server scrapes the agent with the target labels a Prometheus Operator PodMonitor
//! attaches (the agent's own namespace, pod and container), and every PromQL query the
//! README and docs/deploy.md quote, read from those files, finds the planted culprit
//! with no label renamed `exported_*`; `promtool` parses the exposition, the flight
//! recorder's dumps read back with the same identity, and SIGTERM ends it within 2 s
//! with nothing left loaded.
use std::{
    io::Write as _,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use integration_tests::{
    free_port, http_get, our_bpf_programs, require_root, stalltrace_bin, wait_until, PodCgroup,
};
use serde_json::Value;
use stalltrace::lab::child::ChildGuard;
use stalltrace_testkit::scratch::Scratch;

const NS: &str = "payments";
/// A pod of the Deployment `WORKLOAD`: `<name>-<pod-template-hash>-<suffix>`.
const POD: &str = "ledger-7f9c8d5b6-x2k4p";
const WORKLOAD: &str = "ledger";
const WORKLOAD_KIND: &str = "Deployment";
const CONTAINER: &str = "indexer";
const UID: &str = "4b3e6c1a-9d2f-4e8b-a7c5-1f0e2d3c4b5a";
const CID: &str = "5f0e7c3a1b2d4e6f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7";

/// The target labels the scrape attaches, as a PodMonitor does for the agent's pod
/// (and the relabeling docs/deploy.md shows for `node`).
const SCRAPE_LABELS: [(&str, &str); 4] = [
    ("namespace", "stalltrace"),
    ("pod", "stalltrace-q8w2n"),
    ("container", "stalltrace"),
    ("node", "node-a"),
];

/// The PromQL queries quoted in the README and docs/deploy.md (```promql blocks, one
/// query a line, comments skipped), read from the files so that they cannot drift.
fn documented_queries() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut out = Vec::new();
    for doc in ["README.md", "docs/deploy.md"] {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        let mut inside = false;
        let mut n = 0;
        for line in text.lines() {
            let t = line.trim();
            if t.starts_with("```") {
                inside = t == "```promql";
                continue;
            }
            if inside && !t.is_empty() && !t.starts_with('#') {
                out.push((doc.to_string(), t.to_string()));
                n += 1;
            }
        }
        assert!(n >= 2, "PromQL queries in {doc}: {n}");
    }
    out
}

/// Percent-encodes a query parameter (everything but RFC 3986's unreserved bytes).
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Whether a result series of a query is the planted culprit: every culprit label it
/// has (a query keeps those it groups by) is the test's own, it has the pod or the
/// workload, and a `node` label is the one the scrape attached.
fn is_planted(series: &Value) -> bool {
    let m = &series["metric"];
    let planted = [
        ("culprit_namespace", NS),
        ("culprit_workload", WORKLOAD),
        ("culprit_workload_kind", WORKLOAD_KIND),
        ("culprit_pod", POD),
        ("culprit_container", CONTAINER),
        ("culprit_comm", "stall-hog"),
        ("node", SCRAPE_LABELS[3].1),
    ];
    planted
        .iter()
        .all(|(k, v)| m.get(k).is_none_or(|have| have == v))
        && (m.get("culprit_pod").is_some() || m.get("culprit_workload").is_some())
}

#[test]
fn watch_names_the_pod_and_prometheus_scrapes_it() {
    if !require_root("watch_names_the_pod_and_prometheus_scrapes_it") {
        return;
    }
    assert!(
        Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists()
            || Path::new("/sys/fs/cgroup/cgroup.procs").exists(),
        "a unified cgroup hierarchy"
    );
    let dir = Scratch::new("watch").unwrap();
    // The kubelet's log layout, for names.
    let pods = dir.join("pods");
    std::fs::create_dir_all(pods.join(format!("{NS}_{POD}_{UID}")).join(CONTAINER)).unwrap();
    let containers = dir.join("containers");
    std::fs::create_dir_all(&containers).unwrap();
    std::fs::write(
        containers.join(format!("{POD}_{NS}_{CONTAINER}-{CID}.log")),
        b"",
    )
    .unwrap();
    let cg = PodCgroup::make("burstable", UID, CID);
    let dumps = dir.join("dumps");
    let metrics_port = free_port();
    let watch = Command::new(stalltrace_bin())
        .args(["watch", "--listen", &format!("127.0.0.1:{metrics_port}")])
        .arg("--pods-dir")
        .arg(&pods)
        .arg("--containers-dir")
        .arg(&containers)
        .arg("--dump-dir")
        .arg(&dumps)
        .args(["--dump-context", "1s", "--top-k", "5"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut watch = ChildGuard::new(watch);
    wait_until("watch healthy", Duration::from_secs(30), || {
        http_get(metrics_port, "/healthz").is_some_and(|(c, _)| c == 200)
    });

    // A real Prometheus scraping the agent every second.
    let prom_port = free_port();
    let prom_dir = dir.join("prom");
    std::fs::create_dir_all(&prom_dir).unwrap();
    let cfg = prom_dir.join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: stalltrace\n    honor_labels: false\n    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n        labels: {{{}}}\n",
            SCRAPE_LABELS
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )
    .unwrap();
    let prom = Command::new("prometheus")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            prom_dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (Debian's package; scripts/setup.sh installs it)");
    let mut prom = ChildGuard::new(prom);

    // The stall: the lab's rt-hog, moved into the pod's cgroup.
    let lab = Command::new(stalltrace_bin())
        .args([
            "lab",
            "--scenario",
            "rt-hog",
            "--duration",
            "3s",
            "--cgroup",
        ])
        .arg(&cg.0)
        .arg("-o")
        .arg(dir.join("lab.jsonl"))
        .output()
        .unwrap();
    let lab_out = String::from_utf8_lossy(&lab.stdout);
    assert_eq!(
        lab.status.code(),
        Some(0),
        "{lab_out}\n{}",
        String::from_utf8_lossy(&lab.stderr)
    );

    // The agent's own exposition names the pod.
    let series = format!(
        "stalltrace_stall_episodes_total{{culprit_namespace=\"{NS}\",culprit_workload=\"{WORKLOAD}\",culprit_workload_kind=\"{WORKLOAD_KIND}\",culprit_pod=\"{POD}\",culprit_container=\"{CONTAINER}\",culprit_comm=\"stall-hog\"}}"
    );
    let mut text = String::new();
    wait_until("the episode counter", Duration::from_secs(10), || {
        text = http_get(metrics_port, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default();
        text.lines().any(|l| l.starts_with(&series))
    });
    let n: f64 = text
        .lines()
        .find(|l| l.starts_with(&series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(n >= 3.0, "several episodes: {n}");
    // A client that does not ask for OpenMetrics (curl, as here) gets the text format
    // 0.0.4, and promtool's parser and linter find nothing to say about it; a client
    // that asks for OpenMetrics gets it.
    let head = |accept: &str| {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n{accept}\r\n").unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        let head = r
            .split("\r\n\r\n")
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        head.lines()
            .find_map(|l| l.strip_prefix("content-type: ").map(String::from))
            .unwrap_or_default()
    };
    assert_eq!(head(""), "text/plain; version=0.0.4; charset=utf-8");
    assert_eq!(
        head("Accept: application/openmetrics-text; version=1.0.0\r\n"),
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(!text.contains("# EOF"), "{text}");
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package)");
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let check = check.wait_with_output().unwrap();
    let lint = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        check.status.success() && lint.trim().is_empty(),
        "promtool check metrics ({}): {lint}",
        check.status
    );

    // Every documented query, against what Prometheus stored under the scrape's
    // target labels: queries of the culprit families find the planted culprit (its
    // workload and pod from the test's constants), the others answer (a `> 0` filter may leave none),
    // no label was renamed exported_*, and the scrape's labels are the agent's.
    let queries = documented_queries();
    assert!(
        queries
            .iter()
            .any(|(_, q)| q.contains("by (") && q.contains("culprit_workload")),
        "a documented query by workload: {queries:?}"
    );
    for (doc, q) in &queries {
        let path = format!("/api/v1/query?query={}", url_encode(q));
        // A query of the culprit families must find the planted culprit, whichever
        // labels it groups by.
        let culprit = q.contains("stalltrace_stall_") || q.contains("stalltrace_workload_stall_");
        let mut answer = Value::Null;
        wait_until(
            &format!("{doc}'s query {q} to answer"),
            Duration::from_secs(30),
            || {
                answer = http_get(prom_port, &path)
                    .and_then(|(_, b)| serde_json::from_str(&b).ok())
                    .unwrap_or(Value::Null);
                let Some(result) = answer["data"]["result"].as_array() else {
                    return false;
                };
                if culprit {
                    result.iter().any(is_planted)
                } else {
                    q.contains(" > ") || !result.is_empty()
                }
            },
        );
        assert_eq!(answer["status"], "success", "{q}: {answer}");
        for series in answer["data"]["result"].as_array().unwrap() {
            let Some(labels) = series["metric"].as_object() else {
                panic!("{q}: {answer}")
            };
            assert!(
                labels.keys().all(|k| !k.starts_with("exported_")),
                "{q}: {series}"
            );
            for (k, v) in SCRAPE_LABELS {
                assert!(labels.get(k).is_none_or(|have| have == v), "{q}: {series}");
            }
        }
    }
    // The target labels reached the stored series (so the queries above ran where they
    // would clash): the raw counter has the agent's namespace and pod beside the
    // culprit's.
    let raw = format!(
        "/api/v1/query?query={}",
        url_encode(&format!(
            "stalltrace_stall_episodes_total{{culprit_pod=\"{POD}\"}}"
        ))
    );
    let answer = http_get(prom_port, &raw)
        .and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok())
        .unwrap_or(Value::Null);
    let m = &answer["data"]["result"][0]["metric"];
    for (k, v) in SCRAPE_LABELS {
        assert_eq!(m[k], v, "{answer}");
    }
    assert_eq!(
        (&m["culprit_namespace"], &m["culprit_workload"]),
        (&Value::from(NS), &Value::from(WORKLOAD)),
        "{answer}"
    );
    // Prometheus's own OpenMetrics parser took the whole exposition: the target is up
    // with no scrape error (a malformed line fails the whole scrape).
    let targets = http_get(prom_port, "/api/v1/targets")
        .and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok())
        .unwrap_or(Value::Null);
    let target = &targets["data"]["activeTargets"][0];
    assert_eq!(target["health"], "up", "{targets}");
    assert_eq!(target["lastError"], "", "{targets}");
    let _ = prom.stop();

    // The flight recorder: one readable dump per episode, the pod named in it.
    wait_until("episode dumps", Duration::from_secs(5), || {
        std::fs::read_dir(&dumps).is_ok_and(|d| {
            d.flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .count()
                >= 3
        })
    });
    // Finished dumps only: one being written has a hidden temporary name. The latest:
    // the lab's first burst can run before its hog is moved into the pod's cgroup.
    let first = std::fs::read_dir(&dumps)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("stalltrace-episode-"))
        })
        .max()
        .unwrap();
    let rep = Command::new(stalltrace_bin())
        .args(["analyze", "--format", "json"])
        .arg(&first)
        .output()
        .unwrap();
    assert!(
        rep.status.success(),
        "{}",
        String::from_utf8_lossy(&rep.stderr)
    );
    let rep: Value = serde_json::from_slice(&rep.stdout).unwrap();
    assert!(rep["totals"]["episodes"].as_u64().unwrap() >= 1, "{rep}");
    let id = &rep["culprits"][0]["identity"];
    assert_eq!(
        (id["namespace"].as_str(), id["pod"].as_str()),
        (Some(NS), Some(POD)),
        "{rep}"
    );
    assert_eq!(id["container"], CONTAINER);
    let mode = std::fs::metadata(&first).map(|m| {
        use std::os::unix::fs::PermissionsExt as _;
        m.permissions().mode() & 0o777
    });
    assert_eq!(mode.unwrap(), 0o600, "dumps are private");

    // SIGTERM: exit 0 within 2 s, nothing left loaded.
    let t0 = Instant::now();
    let st = watch
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(10))
        .unwrap();
    assert!(st.success(), "{st}");
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "stopped in {:?}",
        t0.elapsed()
    );
    let left = our_bpf_programs();
    assert!(left.is_empty(), "{left:?}");
    drop(cg);
    integration_tests::assert_machine_clean("after watch");
}

/// A port already taken: a clear error before anything is loaded.
#[test]
fn watch_refuses_a_taken_port_clearly() {
    if !require_root("watch_refuses_a_taken_port_clearly") {
        return;
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let p = l.local_addr().unwrap().port();
    let out = Command::new(stalltrace_bin())
        .args(["watch", "--listen", &format!("127.0.0.1:{p}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{p}")),
        "{err}"
    );
    assert!(
        our_bpf_programs().is_empty(),
        "nothing loaded before the port is ours"
    );
}

/// A culprit that takes a new name before each of its ~30 bursts: ~30 distinct
/// culprits through a real agent with `--top-k 3`. The episode series name at most 3
/// of them, the rest are counted under `other`, and no episode is lost in the folding:
/// the series add up to the episodes the agent announced, one line each, on stderr.
#[test]
fn watch_keeps_culprit_series_bounded() {
    if !require_root("watch_keeps_culprit_series_bounded") {
        return;
    }
    let dir = Scratch::new("bounded").unwrap();
    let metrics_port = free_port();
    let watch = Command::new(stalltrace_bin())
        .args([
            "watch",
            "--listen",
            &format!("127.0.0.1:{metrics_port}"),
            "--top-k",
            "3",
        ])
        .stderr(std::fs::File::create(dir.join("watch.err")).unwrap())
        .spawn()
        .unwrap();
    let mut watch = ChildGuard::new(watch);
    let announced = || {
        std::fs::read_to_string(dir.join("watch.err"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("episode "))
            .count() as f64
    };
    wait_until("watch healthy", Duration::from_secs(30), || {
        http_get(metrics_port, "/healthz").is_some_and(|(c, _)| c == 200)
    });
    let lab = Command::new(stalltrace_bin())
        .args([
            "lab",
            "--scenario",
            "rt-hog",
            "--duration",
            "4s",
            "--name",
            "churn",
        ])
        .arg("--rename-each-burst")
        .arg("-o")
        .arg(dir.join("lab.jsonl"))
        .output()
        .unwrap();
    let lab_out = String::from_utf8_lossy(&lab.stdout);
    // The lab's own verdict compares one name: renamed culprits do not match it.
    assert!(matches!(lab.status.code(), Some(0 | 6)), "{lab_out}");
    // Each episode is printed live and again in the final report: count numbers.
    let lab_episodes = lab_out
        .lines()
        .filter_map(|l| l.strip_prefix("episode ")?.split(':').next())
        .collect::<std::collections::HashSet<_>>()
        .len();
    let distinct: std::collections::HashSet<&str> = lab_out
        .lines()
        .filter(|l| l.starts_with("episode "))
        .filter_map(|l| l.split("culprit ").nth(1)?.split(' ').next())
        .collect();
    assert!(distinct.len() >= 10, "many distinct culprits: {distinct:?}");
    std::thread::sleep(Duration::from_secs(2));
    // An episode closing while the agent is read is announced and counted in either
    // order: the scrape falls between the two readings of its log.
    let announced_before = announced();
    let text = http_get(metrics_port, "/metrics")
        .map(|(_, b)| b)
        .unwrap_or_default();
    let announced_after = announced();
    let series: Vec<(&str, f64)> = text
        .lines()
        .filter(|l| l.starts_with("stalltrace_stall_episodes_total{"))
        .filter_map(|l| {
            let comm = l.split("culprit_comm=\"").nth(1)?.split('"').next()?;
            Some((comm, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    let named: Vec<&str> = series
        .iter()
        .map(|(c, _)| *c)
        .filter(|c| *c != "other")
        .collect();
    assert!(named.len() <= 3, "at most K=3 named culprits: {series:?}");
    let other = series.iter().find(|(c, _)| *c == "other").map(|(_, v)| *v);
    assert!(
        other.is_some_and(|v| v > 0.0),
        "the rest under other: {series:?}"
    );
    // Every episode the agent announced is counted: named, under other, or without a
    // culprit.
    let without: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("stalltrace_episodes_without_culprit_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    let total: f64 = series.iter().map(|(_, v)| v).sum::<f64>() + without;
    assert!(
        (announced_before..=announced_after).contains(&total),
        "{total} counted for {announced_before}–{announced_after} episodes announced: {series:?}"
    );
    // The agent saw the lab's stalls too. It decides an episode from packets alone,
    // the lab from its probes (a burst whose wait no probe crossed is an episode to
    // one and not the other), so their counts are compared loosely: this is not the
    // promise above, only that the agent was watching the same stalls.
    assert!(
        total >= lab_episodes as f64 * 0.5,
        "{total} episodes counted by the agent, {lab_episodes} by the lab"
    );
    let st = watch
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(10))
        .unwrap();
    assert!(st.success(), "{st}");
    integration_tests::assert_machine_clean("after the bounded-series watch");
}
