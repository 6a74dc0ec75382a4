//! `stalltrace watch` as a node agent: a culprit in a kubelet-shaped cgroup (made by the
//! test in the unified hierarchy) with the kubelet's log layout (made by the test):
//! the metrics name its namespace, pod and container, a real Prometheus server scraping
//! the agent finds the episode counter and parses the whole exposition, `promtool`
//! parses it, the flight
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
const POD: &str = "ledger-7f9c8d-x2k4p";
const CONTAINER: &str = "indexer";
const UID: &str = "4b3e6c1a-9d2f-4e8b-a7c5-1f0e2d3c4b5a";
const CID: &str = "5f0e7c3a1b2d4e6f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7";

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
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: stalltrace\n    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n"
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
        "stalltrace_stall_episodes_total{{namespace=\"{NS}\",pod=\"{POD}\",container=\"{CONTAINER}\",comm=\"stall-hog\"}}"
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
    // promtool (the classic text parser) accepts the exposition too.
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
    assert!(!lint.contains("parsing error"), "promtool: {lint}");

    // Prometheus scraped it: its query API has the counter for the pod.
    let query =
        format!("/api/v1/query?query=stalltrace_stall_episodes_total%7Bpod%3D%22{POD}%22%7D");
    let mut answer = Value::Null;
    wait_until(
        "Prometheus to scrape the counter",
        Duration::from_secs(20),
        || {
            answer = http_get(prom_port, &query)
                .and_then(|(_, b)| serde_json::from_str(&b).ok())
                .unwrap_or(Value::Null);
            answer["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| v > 0.0)
        },
    );
    assert_eq!(
        answer["data"]["result"][0]["metric"]["namespace"], NS,
        "{answer}"
    );
    assert_eq!(
        answer["data"]["result"][0]["metric"]["container"], CONTAINER,
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
    // Finished dumps only: one being written has a hidden temporary name.
    let first = std::fs::read_dir(&dumps)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("stalltrace-episode-"))
        })
        .min()
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
/// of them, the rest are counted under `other`, and no episode is lost in the folding.
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
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut watch = ChildGuard::new(watch);
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
    let text = http_get(metrics_port, "/metrics")
        .map(|(_, b)| b)
        .unwrap_or_default();
    let series: Vec<(&str, f64)> = text
        .lines()
        .filter(|l| l.starts_with("stalltrace_stall_episodes_total{"))
        .filter_map(|l| {
            let comm = l.split("comm=\"").nth(1)?.split('"').next()?;
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
    // Every episode the agent saw is counted somewhere; the agent watches the whole
    // node, so it saw at least the lab's.
    let total: f64 = series.iter().map(|(_, v)| v).sum();
    assert!(
        total >= lab_episodes as f64 * 0.8,
        "{total} counted for {lab_episodes} lab episodes"
    );
    let st = watch
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(10))
        .unwrap();
    assert!(st.success(), "{st}");
    integration_tests::assert_machine_clean("after the bounded-series watch");
}
