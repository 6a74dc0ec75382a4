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

/// The dump's echo replies as (ident, seq) read off the wire (big-endian).
fn replies_in(dump: &std::path::Path) -> std::collections::HashSet<(u64, u64)> {
    std::fs::read_to_string(dump)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["type"] == "packet" && r["kind"] == "echo_reply")
        .filter_map(|r| Some((r["ident"].as_u64()?, r["seq"].as_u64()?)))
        .collect()
}

/// `icmp_seq=N` of every answer line in a prober's log.
fn answered_seqs(log: &str) -> Vec<u16> {
    log.lines()
        .filter_map(|l| l.split("icmp_seq=").nth(1))
        .filter_map(|r| r.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .collect()
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
    // The same join done here, independently: every answered probe's wire id and
    // sequence is an echo reply the kernel saw.
    let replies = replies_in(&dump);
    let probes: Vec<Value> = std::fs::read_to_string(&dump)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["type"] == "probe" && r["status"] == "ok")
        .collect();
    assert!(probes.len() >= 200, "{} answered probes", probes.len());
    for p in &probes {
        let key = (
            p["wire_ident"].as_u64().unwrap(),
            p["wire_seq"].as_u64().unwrap(),
        );
        assert!(replies.contains(&key), "probe {p} has no reply packet");
    }
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
        // Independently: each answer in the log is a reply packet in the dump. ping
        // prints the wire sequence; hping3 its counter, which it writes in host order
        // (little-endian here), so the wire holds it byte-swapped.
        let seqs: std::collections::HashSet<u64> =
            replies_in(&dump).into_iter().map(|(_, s)| s).collect();
        let answered = answered_seqs(&String::from_utf8_lossy(&out.stdout));
        assert!(answered.len() >= 190, "{name}: {} answers", answered.len());
        for s in answered {
            let wire = if name == "hping3" { s.swap_bytes() } else { s };
            assert!(
                seqs.contains(&u64::from(wire)),
                "{name}: icmp_seq={s} (wire {wire}) not in the dump"
            );
        }
    }
}
