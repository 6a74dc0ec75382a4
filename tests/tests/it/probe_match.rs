//! Every answered probe is matched to the packet the kernel saw: for the built-in prober
//! (`record --probe`), and for hping3 and `ping -D` run as external probers whose logs
//! go to `analyze --probe-log` (matched by wire id/sequence, never by clocks).
use std::process::Command;

use integration_tests::{require_root, stalltrace_bin, tempdir, Netns, Recorder};
use serde_json::Value;

/// `analyze --format json` of a dump (with a probe log), as JSON.
fn analyze(dump: &std::path::Path, log: Option<&std::path::Path>) -> Value {
    let mut c = Command::new(stalltrace_bin());
    c.args(["analyze", "--format", "json"]).arg(dump);
    if let Some(l) = log {
        c.arg("--probe-log").arg(l);
    }
    let out = c.output().expect("running analyze");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the JSON report")
}

fn assert_all_matched(report: &Value, at_least: u64, who: &str) {
    let t = &report["totals"];
    let answered = t["probes_answered"].as_u64().unwrap();
    let matched = t["probes_matched"].as_u64().unwrap();
    assert!(
        answered >= at_least,
        "{who}: only {answered} answered probes: {t}"
    );
    assert_eq!(
        matched, answered,
        "{who}: every answered probe matched to its kernel packet: {t}"
    );
}

#[test]
fn record_probe_matches_every_answered_probe() {
    if !require_root("record_probe_matches_every_answered_probe") {
        return;
    }
    let ns = Netns::create_unique("pm").unwrap();
    let dump = tempdir("pm").join("probe.jsonl");
    let rec = Recorder::start(
        &[
            "--quiet",
            "--probe",
            &ns.ns_addr,
            "--interval",
            "10ms",
            "--duration",
            "3s",
        ],
        &dump,
    );
    let (code, _, err) = rec.finish(None);
    assert_eq!(code, 0, "{err}");
    let r = analyze(&dump, None);
    assert_eq!(r["input"]["probe_source"], "dump");
    assert_all_matched(&r, 200, "record --probe");
}

#[test]
fn external_hping3_and_ping_logs_match_every_answered_probe() {
    if !require_root("external_hping3_and_ping_logs_match_every_answered_probe") {
        return;
    }
    let ns = Netns::create_unique("px").unwrap();
    let dir = tempdir("px");
    let probers: [(&str, Vec<&str>); 2] = [
        (
            "hping3",
            vec!["hping3", "--icmp", "-i", "u10000", "-c", "200"],
        ),
        ("ping", vec!["ping", "-D", "-n", "-i", "0.01", "-c", "200"]),
    ];
    for (name, argv) in probers {
        let dump = dir.join(format!("{name}.jsonl"));
        let log = dir.join(format!("{name}.log"));
        let rec = Recorder::start(
            &["--quiet", "--peer", &ns.ns_addr, "--duration", "60s"],
            &dump,
        );
        let out = Command::new(argv[0])
            .args(&argv[1..])
            .arg(&ns.ns_addr)
            .output()
            .expect("running the prober");
        std::fs::write(&log, &out.stdout).unwrap();
        let (code, _, err) = rec.finish(Some(libc::SIGINT));
        assert_eq!(code, 0, "{err}");
        let r = analyze(&dump, Some(&log));
        assert_eq!(r["input"]["probe_source"], "log", "{name}");
        assert_all_matched(&r, 190, name);
    }
}
