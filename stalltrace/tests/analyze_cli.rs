#![allow(clippy::unwrap_used, reason = "test helpers fail by panicking")]
//! `stalltrace analyze` through the built binary: the 2019 GitHub incident fixture, the report
//! formats, the Perfetto file, and bad input (exit code 5 with file:line).
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_stalltrace");

fn seed() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/seed.jsonl")
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("analyze_cli");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn analyze(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("analyze")
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn seed_lines() -> Vec<String> {
    std::fs::read_to_string(seed())
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn seed_text_report_blames_cadvisor_in_one_episode() {
    let o = analyze(&[seed().to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    let summary = out.find("Summary").unwrap();
    let episodes = out.find("Episodes").unwrap();
    assert!(summary < episodes, "plain-words summary first");
    assert!(
        out.contains(
            "CPU 11: 1 episode, 5 probes delayed up to 99 ms; culprit cadvisor (pid 10436, tgid 10137) \
             held the CPU for 98 ms inside read() of /sys/fs/cgroup/memory/memory.stat; RX ran in ksoftirqd/11."
        ),
        "{out}"
    );
    let eps: Vec<&str> = out.lines().filter(|l| l.starts_with("episode ")).collect();
    assert_eq!(eps.len(), 1, "{out}");
    assert!(eps[0].contains("RX waited 99 ms"), "{}", eps[0]);
    // The 2019 GitHub incident's table: context before, stalled probes marked, below-threshold in ().
    let row = |seq: u32| {
        out.lines()
            .find(|l| l.contains(&format!(" {seq} ")) || l.trim_end().ends_with(&format!(" {seq}")))
            .map(str::split_whitespace)
            .map(Iterator::collect::<Vec<_>>)
    };
    assert_eq!(
        row(1951).unwrap(),
        vec!["10137", "10436", "cadvisor", "11", "1951"]
    );
    assert_eq!(
        row(1953).unwrap(),
        vec!["76", "76", "ksoftirqd/11", "11", "1953", "**", "99ms"]
    );
    assert_eq!(
        row(1958).unwrap(),
        vec!["76", "76", "ksoftirqd/11", "11", "1958", "**", "(49ms)"]
    );
    assert!(!out.contains("CUT SHORT"));
}

#[test]
fn seed_json_report_has_versioned_schema_and_the_episode() {
    let o = analyze(&[seed().to_str().unwrap(), "--format", "json"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["format"], "stalltrace-report");
    assert_eq!(v["version"], 1);
    assert!(v["summary"][0]
        .as_str()
        .unwrap()
        .starts_with("CPU 11: 1 episode"));
    let eps = v["episodes"].as_array().unwrap();
    assert_eq!(eps.len(), 1);
    let e = &eps[0];
    assert_eq!(e["cpu"], 11);
    assert_eq!(e["probes_delayed"], 5);
    assert_eq!(e["rx"]["comm"], "ksoftirqd/11");
    assert_eq!(e["rx"]["context"], "ksoftirqd");
    assert_eq!(e["culprit"]["comm"], "cadvisor");
    assert_eq!(e["culprit"]["pid"], 10436);
    assert_eq!(e["culprit"]["tgid"], 10137);
    assert_eq!(e["culprit"]["syscall"]["name"], "read");
    assert_eq!(e["culprit"]["syscall"]["nr"], 0);
    assert_eq!(
        e["culprit"]["syscall"]["path"],
        "/sys/fs/cgroup/memory/memory.stat"
    );
    let stalled: Vec<u64> = e["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["over_threshold"] == true)
        .map(|l| l["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(stalled, vec![1953, 1954, 1955, 1956, 1957]);
    assert_eq!(v["culprits"][0]["rank"], 1);
    assert_eq!(v["culprits"][0]["tgid"], 10137);
    assert_eq!(v["input"]["complete"], true);
}

#[test]
fn perfetto_file_holds_per_cpu_tracks() {
    let out = scratch("seed.trace.json");
    // A run before this one left it, and --perfetto never replaces a file unasked.
    let _ = std::fs::remove_file(&out);
    let o = analyze(&[
        seed().to_str().unwrap(),
        "--perfetto",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let evs = v["traceEvents"].as_array().unwrap();
    let meta = |what: &str, pid: u64, tid: Option<u64>| {
        evs.iter()
            .find(|e| {
                e["ph"] == "M"
                    && e["name"] == what
                    && e["pid"] == pid
                    && tid.is_none_or(|t| e["tid"] == t)
            })
            .map(|e| e["args"]["name"].as_str().unwrap().to_string())
    };
    // CPU 11 is process 12, its tracks are named.
    assert_eq!(meta("process_name", 12, None).as_deref(), Some("CPU 11"));
    let on = |ph: &str, tid: u64| -> Vec<&Value> {
        evs.iter()
            .filter(|e| e["ph"] == ph && e["pid"] == 12 && e["tid"] == tid)
            .collect()
    };
    // Waits as slices, one track per kind.
    for tid in [1, 2] {
        let w = on("X", tid);
        assert_eq!(w.len(), 1, "wait track {tid}");
        let d = w[0]["dur"].as_f64().unwrap();
        assert!((98_000.0..100_000.0).contains(&d), "wait {d} µs");
        assert!(meta("thread_name", 12, Some(tid)).unwrap().contains("wait"));
    }
    // The culprit's occupancy on the top-holder track, drawn once for the stall.
    let holders = on("X", 10);
    assert_eq!(holders.len(), 1);
    assert!(holders[0]["name"].as_str().unwrap().starts_with("cadvisor"));
    assert_eq!(holders[0]["dur"].as_f64().unwrap(), 98_000.0);
    assert_eq!(
        meta("thread_name", 12, Some(10)).as_deref(),
        Some("CPU holder #1")
    );
    // Every packet as an instant; probe RTTs as a counter; the episode as a slice.
    assert_eq!(on("i", 3).len(), 61);
    assert!(evs.iter().filter(|e| e["ph"] == "C").count() >= 10);
    assert_eq!(on("X", 4).len(), 1);
    // Times are µs from the first event: none negative, the earliest at 0.
    let ts: Vec<f64> = evs
        .iter()
        .filter(|e| e["ph"] != "M")
        .map(|e| e["ts"].as_f64().unwrap())
        .collect();
    assert!(ts.iter().all(|t| *t >= 0.0));
    assert_eq!(ts.iter().cloned().fold(f64::INFINITY, f64::min), 0.0);
}

#[test]
fn a_higher_threshold_leaves_no_episode() {
    let o = analyze(&[seed().to_str().unwrap(), "--stall-threshold", "200ms"]);
    assert!(o.status.success());
    let out = text(&o.stdout);
    assert!(out.contains("No stall episode"), "{out}");
    assert!(!out.lines().any(|l| l.starts_with("episode ")));
}

#[test]
fn cut_short_dump_is_reported_and_said_so() {
    let lines = seed_lines();
    // Drop the footer and tear the last line in half.
    let keep = &lines[..lines.len() - 1];
    let last = keep.last().unwrap();
    let mut body = keep[..keep.len() - 1].join("\n");
    body.push('\n');
    body.push_str(&last[..last.len() / 2]);
    let p = scratch("torn.jsonl");
    std::fs::write(&p, body).unwrap();
    let o = analyze(&[p.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("cut short"), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.contains("CUT SHORT"), "{out}");
    assert_eq!(out.lines().filter(|l| l.starts_with("episode ")).count(), 1);

    // No footer but whole lines: still cut short, not torn.
    let p2 = scratch("nofooter.jsonl");
    std::fs::write(&p2, keep.join("\n") + "\n").unwrap();
    let o = analyze(&[p2.to_str().unwrap(), "--format", "json"]);
    assert!(o.status.success());
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["input"]["complete"], false);
    assert_eq!(v["input"]["partial_last_line"], false);
    assert!(v["summary"][0].as_str().unwrap().contains("cut short"));
}

fn assert_bad_input(p: &Path, needle: &str) {
    let o = analyze(&[p.to_str().unwrap()]);
    assert_eq!(
        o.status.code(),
        Some(5),
        "stdout {} stderr {}",
        text(&o.stdout),
        text(&o.stderr)
    );
    let err = text(&o.stderr);
    assert!(err.contains(needle), "{needle:?} not in {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn malformed_lines_fail_with_file_and_line() {
    let mut lines = seed_lines();
    lines[6] = r#"{"type":"packet","ts_ns":"soon"}"#.into();
    let p = scratch("malformed.jsonl");
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    assert_bad_input(&p, &format!("{}:7: malformed record", p.display()));

    let mut lines = seed_lines();
    lines.insert(3, "not json at all".into());
    let p = scratch("garbage.jsonl");
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    assert_bad_input(&p, &format!("{}:4:", p.display()));

    let mut lines = seed_lines();
    lines.push(lines[3].clone());
    let p = scratch("after-footer.jsonl");
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    assert_bad_input(&p, "record after the footer");
}

#[test]
fn empty_binary_and_missing_inputs_fail_cleanly() {
    let p = scratch("empty.jsonl");
    std::fs::write(&p, b"").unwrap();
    assert_bad_input(&p, "empty file");

    let p = scratch("binary.jsonl");
    let mut bytes = b"\x7fELF\x02\x01\x01\x00".to_vec();
    bytes.extend((0..=255u8).cycle().take(4096));
    std::fs::write(&p, bytes).unwrap();
    assert_bad_input(&p, &format!("{}:1: binary data", p.display()));

    let p = scratch("not-a-dump.jsonl");
    std::fs::write(&p, "{\"type\":\"probe\"}\n").unwrap();
    assert_bad_input(&p, ":1:");

    assert_bad_input(&scratch("does-not-exist.jsonl"), "cannot read");
}

#[test]
fn bad_flags_are_usage_errors() {
    let o = analyze(&[seed().to_str().unwrap(), "--stall-threshold", "fast"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("examples"), "{}", text(&o.stderr));
    let o = analyze(&[seed().to_str().unwrap(), "--format", "xml"]);
    assert_eq!(o.status.code(), Some(2));
}

/// A probe log with no probe in it, for `analyze --probe-log` and `probe --parse-log`:
/// exit 5, the file and the first line not understood, said once; an unreadable one
/// names the file and the reason once.
#[test]
fn malformed_probe_logs_fail_with_file_and_line() {
    let log = scratch("bad-probe.log");
    std::fs::write(
        &log,
        "PING 10.0.0.2 (10.0.0.2) 56(84) bytes of data.\n\nnot a probe line\nnor this\n",
    )
    .unwrap();
    let want = format!(
        "{}:3: no probe line found (expected hping3 or ping output): line 3 is not one: not a probe line",
        log.display()
    );
    let missing = scratch("missing-probe.log");
    let _ = std::fs::remove_file(&missing);
    for (args, needle) in [
        (
            vec!["analyze", seed().to_str().unwrap(), "--probe-log"],
            want.as_str(),
        ),
        (vec!["probe", "--parse-log"], want.as_str()),
    ] {
        for (file, needle) in [
            (&log, needle.to_string()),
            (
                &missing,
                format!("{}: cannot read: No such file", missing.display()),
            ),
        ] {
            let o = Command::new(BIN).args(&args).arg(file).output().unwrap();
            let err = text(&o.stderr);
            assert_eq!(o.status.code(), Some(5), "{args:?} {file:?}: {err}");
            assert!(err.contains(&needle), "{args:?}: {needle:?} not in {err}");
            assert_eq!(
                err.matches(&needle).count(),
                1,
                "{args:?}: said once: {err}"
            );
            assert!(o.stdout.is_empty(), "{args:?}: no report");
        }
    }
    // A log with some probes and some garbage is read; the garbage is counted.
    let ok = scratch("mixed-probe.log");
    std::fs::write(
        &ok,
        "garbage\n64 bytes from 10.0.0.11: icmp_seq=1940 ttl=64 time=0.405 ms\n",
    )
    .unwrap();
    let o = Command::new(BIN)
        .args(["probe", "--parse-log"])
        .arg(&ok)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("1 probes (1 ok, 0 dup, 0 lost), 1 unknown lines"));
}

/// `--stall-threshold`: a probe at or above it is stalled. Counted here from the
/// fixture's own RTTs at thresholds around and on its values; the recording's
/// threshold is the default.
#[test]
fn stall_threshold_counts_the_probes_at_or_above_it() {
    let rtts: Vec<u64> = seed_lines()
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["type"] == "probe" && r["status"] == "ok")
        .filter_map(|r| r["rtt_ns"].as_u64())
        .collect();
    assert!(rtts.len() > 50);
    let report = |p: &Path, extra: &[&str]| -> Value {
        let mut args = vec![p.to_str().unwrap(), "--format", "json"];
        args.extend_from_slice(extra);
        let o = analyze(&args);
        assert!(o.status.success(), "{}", text(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    // 59416us is one probe's RTT exactly: "at or above" counts it.
    for (flag, ns) in [
        ("5ms", 5_000_000u64),
        ("59416us", 59_416_000),
        ("59417us", 59_417_000),
        ("90ms", 90_000_000),
        ("100ms", 100_000_000),
    ] {
        let r = report(&seed(), &["--stall-threshold", flag]);
        let want = rtts.iter().filter(|&&t| t >= ns).count() as u64;
        assert_eq!(r["stall_threshold_ns"], ns, "{flag}");
        assert_eq!(
            r["totals"]["probes_stalled"], want,
            "{flag}: {}",
            r["totals"]
        );
        assert_eq!(
            r["episodes"].as_array().unwrap().len(),
            usize::from(want > 0),
            "{flag}"
        );
    }
    // Without the flag, the threshold the recording was made with.
    let mut lines = seed_lines();
    lines[0] = lines[0].replace(
        "\"stall_threshold_ns\":50000000",
        "\"stall_threshold_ns\":90000000",
    );
    assert!(lines[0].contains("90000000"));
    let p = scratch("threshold-90.jsonl");
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    let r = report(&p, &[]);
    assert_eq!(r["stall_threshold_ns"], 90_000_000u64);
    let want = rtts.iter().filter(|&&t| t >= 90_000_000).count() as u64;
    assert_eq!(r["totals"]["probes_stalled"], want);
}

/// `--merge` over the fixture and a copy of it from another node (another host name):
/// one culprit row, its episodes and wait time the sum of the two single reports'.
#[test]
fn merge_sums_one_culprit_across_two_nodes_dumps() {
    let other = scratch("other-node.jsonl");
    let copy: Vec<String> = seed_lines()
        .into_iter()
        .map(|l| {
            l.replacen(
                "\"host\":\"kube-node-bad\"",
                "\"host\":\"kube-node-two\"",
                1,
            )
        })
        .collect();
    std::fs::write(&other, copy.join("\n") + "\n").unwrap();
    let single = analyze(&["--format", "json", seed().to_str().unwrap()]);
    assert!(single.status.success(), "{}", text(&single.stderr));
    let single: Value = serde_json::from_slice(&single.stdout).unwrap();
    let one = &single["culprits"][0];
    let out = analyze(&[
        "--merge",
        "--format",
        "json",
        seed().to_str().unwrap(),
        other.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let m: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(m["format"], "stalltrace-merged-report", "{m}");
    assert_eq!(m["dumps"], 2, "{m}");
    let top = &m["culprits"][0];
    assert_eq!(top["comm"], one["comm"], "{m}");
    assert_eq!(
        top["episodes"].as_u64(),
        one["episodes"].as_u64().map(|e| e * 2),
        "{m}"
    );
    assert_eq!(
        top["total_wait_ns"].as_u64(),
        one["total_wait_ns"].as_u64().map(|w| w * 2),
        "{m}"
    );
    let hosts: Vec<&str> = top["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(hosts.len(), 2, "{m}");
    assert!(hosts.contains(&"kube-node-two"), "{m}");
}
