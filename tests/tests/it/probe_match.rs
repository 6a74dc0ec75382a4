//! Every answered probe is matched to the packet the kernel saw: for the built-in prober
//! (`record --probe`), and for hping3 and `ping -D` run as external probers whose logs
//! go to `analyze --probe-log` (matched by wire id/sequence, never by clocks), also
//! beside other echo traffic from the same host and for hping3's TCP SYN probes; and a
//! recording that sees none of its prober's packets says so while it runs.
use std::{
    collections::HashMap,
    io::BufRead as _,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use integration_tests::{require_root, stalltrace_bin, Netns, Recorder};
use serde_json::Value;
use stalltrace::lab::child::ChildGuard;
use stalltrace_testkit::scratch::Scratch;

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
    let dir = Scratch::new("pm").unwrap();
    let dump = dir.join("probe.jsonl");
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
    let dir = Scratch::new("px").unwrap();
    let probers: [(&str, Vec<&str>); 2] = [
        (
            "hping3",
            vec!["hping3", "--icmp", "-i", "u10000", "-c", "200"],
        ),
        ("ping", vec!["ping", "-D", "-n", "-i", "0.01", "-c", "200"]),
    ];
    for (name, argv) in probers {
        let dump = dir.join(&format!("{name}.jsonl"));
        let log = dir.join(&format!("{name}.log"));
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

/// The dump's records, as JSON.
fn records(dump: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(dump)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

/// Runs `stalltrace record ARGS -o DUMP` to its end (it must have `--duration`),
/// returning its stderr lines, each with when it came, from the start.
fn record_reading_stderr(args: &[&str], dump: &std::path::Path) -> (i32, Vec<(Duration, String)>) {
    let mut child = Command::new(stalltrace_bin())
        .arg("record")
        .args(args)
        .arg("-o")
        .arg(dump)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning stalltrace record");
    let t0 = Instant::now();
    let err = child.stderr.take().expect("stderr pipe");
    let mut guard = ChildGuard::new(child);
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send((t0.elapsed(), l));
        }
    });
    let st = guard
        .wait_for(Duration::from_secs(90))
        .expect("the recorder ends by its --duration");
    reader.join().expect("stderr reader");
    (st.code().unwrap_or(-1), rx.try_iter().collect())
}

/// A recording whose filter keeps the built-in prober's packets out (`--peer` of
/// another address) with default flags otherwise: its answered probes are never seen
/// by the packet hook, and the recorder says so on stderr within seconds of starting,
/// naming the hook and the filter; the footer keeps it and `analyze` repeats it. The
/// same run without that filter says nothing of the kind. Oracle: the dump itself,
/// read here: answered probe records, and packet records with their wire identity.
#[test]
fn a_prober_whose_packets_the_hook_never_sees_is_said_live() {
    if !require_root("a_prober_whose_packets_the_hook_never_sees_is_said_live") {
        return;
    }
    let ns = Netns::create_unique("pw").unwrap();
    let dir = Scratch::new("pw").unwrap();
    for excluded in [true, false] {
        let dump = dir.join(&format!("sight-{excluded}.jsonl"));
        let mut args = vec!["--quiet", "--probe", &ns.ns_addr, "--duration", "7s"];
        if excluded {
            // An address of the namespace's subnet that nobody has: nothing matches it.
            args.extend(["--peer", "10.213.250.250"]);
        }
        let (code, lines) = record_reading_stderr(&args, &dump);
        let text: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(code, 0, "{text:#?}");
        let recs = records(&dump);
        let answered: Vec<(u64, u64)> = recs
            .iter()
            .filter(|r| r["type"] == "probe" && r["status"] == "ok")
            .map(|r| {
                (
                    r["wire_ident"].as_u64().unwrap(),
                    r["wire_seq"].as_u64().unwrap(),
                )
            })
            .collect();
        assert!(answered.len() >= 300, "{} answered probes", answered.len());
        let ids: std::collections::HashSet<u64> = answered.iter().map(|a| a.0).collect();
        let seen = recs
            .iter()
            .filter(|r| r["type"] == "packet")
            .filter(|r| r["ident"].as_u64().is_some_and(|i| ids.contains(&i)))
            .count();
        let started = lines
            .iter()
            .find(|(_, l)| l.starts_with("recording to "))
            .map(|(t, _)| *t)
            .unwrap_or_else(|| panic!("no start line: {text:#?}"));
        let warning = lines
            .iter()
            .find(|(_, l)| l.starts_with("warning: ") && l.contains("saw none of their packets"));
        let footer = recs.last().unwrap();
        assert_eq!(footer["type"], "footer");
        let report = Command::new(stalltrace_bin())
            .arg("analyze")
            .arg(&dump)
            .output()
            .expect("analyze");
        let report = String::from_utf8_lossy(&report.stdout).into_owned();
        if excluded {
            assert_eq!(seen, 0, "the filter kept the prober's packets out");
            let (at, w) = warning.unwrap_or_else(|| panic!("no warning: {text:#?}"));
            let after = at.saturating_sub(started);
            println!("warned {after:?} after the recording started: {w}");
            assert!(
                after <= Duration::from_secs(5),
                "warned only {after:?} after the start"
            );
            assert!(w.contains("tracepoint:net:netif_receive_skb"), "{w}");
            assert!(w.contains("--peer 10.213.250.250"), "{w}");
            let kept = footer["warnings"].as_array().cloned().unwrap_or_default();
            assert!(
                kept.iter()
                    .any(|k| k.as_str() == w.strip_prefix("warning: ")),
                "footer: {footer}"
            );
            assert!(report.contains("the recorder warned: "), "{report}");
            assert!(
                report.contains(&format!("0 of {} answered probes matched", answered.len())),
                "{report}"
            );
        } else {
            assert!(
                seen >= answered.len(),
                "{seen} packets of {} answers",
                answered.len()
            );
            assert!(warning.is_none(), "{text:#?}");
            assert!(footer.get("warnings").is_none(), "{footer}");
            assert!(!report.contains("the recorder warned"), "{report}");
        }
    }
}

/// Lines of a prober's own output that report an answer (ping: `bytes from`;
/// hping3: `rtt=`), excluding duplicates.
fn answer_lines(out: &str) -> Vec<&str> {
    out.lines()
        .filter(|l| (l.contains(" bytes from ") || l.contains(" rtt=")) && !l.contains("DUP!"))
        .collect()
}

/// `ping -i 0.01` from the root namespace into a namespace while, from the same host,
/// a bounded hping3 ICMP burst (its own echo id, its sequence in host order, so its
/// wire numbers fall among ping's) goes to the same address. `analyze --probe-log` of
/// ping's log (no echo ids in it) must match every probe ping saw answered. Oracles:
/// ping's own output for the count; the dump read here for the burst's echoes.
#[test]
fn a_ping_log_matches_every_probe_beside_an_hping3_burst() {
    if !require_root("a_ping_log_matches_every_probe_beside_an_hping3_burst") {
        return;
    }
    let ns = Netns::create_unique("pf").unwrap();
    let dir = Scratch::new("pf").unwrap();
    let dump = dir.join("mixed.jsonl");
    let log = dir.join("ping.log");
    let rec = Recorder::start(
        &[
            "--quiet",
            "--peer",
            &ns.ns_addr,
            "--attach",
            "tracepoint",
            "--duration",
            "60s",
        ],
        &dump,
    );
    let ping = Command::new("ping")
        .args(["-n", "-i", "0.01", "-c", "500", "-W", "2", &ns.ns_addr])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("running ping");
    let ping = ChildGuard::new(ping);
    std::thread::sleep(Duration::from_millis(1500));
    let burst = Command::new("hping3")
        .args(["--icmp", "-c", "300", "-i", "u1000", &ns.ns_addr])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("running hping3");
    assert!(burst.success(), "hping3: {burst}");
    let out = ping
        .into_inner()
        .expect("ping running")
        .wait_with_output()
        .expect("ping's output");
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    std::fs::write(&log, &out).unwrap();
    let (code, _, err) = rec.finish(Some(libc::SIGINT));
    assert_eq!(code, 0, "{err}");
    let answered = answer_lines(&out).len() as u64;
    assert!(answered >= 475, "ping saw only {answered} answers:\n{out}");
    // Both senders reached the recording: echoes by identifier, read from the dump.
    let mut by_ident: HashMap<u64, u64> = HashMap::new();
    for r in records(&dump).iter().filter(|r| r["type"] == "packet") {
        *by_ident.entry(r["ident"].as_u64().unwrap()).or_default() += 1;
    }
    let mut counts: Vec<u64> = by_ident.values().copied().collect();
    counts.sort_unstable();
    assert!(
        counts.len() >= 2 && counts[counts.len() - 2] >= 300,
        "ping's echoes and the burst's: {by_ident:?}"
    );
    let r = analyze(&dump, Some(&log));
    let t = &r["totals"];
    println!(
        "ping log beside an hping3 burst: {} of {answered} probes matched ({by_ident:?} packets by echo id)",
        t["probes_matched"]
    );
    assert_eq!(t["probes_answered"].as_u64(), Some(answered), "{t}");
    assert_eq!(t["probes_matched"].as_u64(), Some(answered), "{t}");
}

/// hping3's SYN probes (`-S -p PORT -i u10000`), answered by RST-ACK from a closed port
/// and by SYN-ACK from a listener in the namespace, recorded with `--tcp-port PORT` and
/// default flags otherwise. hping3's log has `seq=i` but not the source port (base + i,
/// base random): `analyze --probe-log` must learn the base from the dump's SYNs and
/// match at least 95 % of the probes whose SYNs the dump holds. Oracles: hping3's own
/// answer lines; the SYNs to PORT counted here in the dump.
#[test]
fn hping3_syn_logs_match_through_the_learnt_port_base() {
    if !require_root("hping3_syn_logs_match_through_the_learnt_port_base") {
        return;
    }
    let ns = Netns::create_unique("ph").unwrap();
    let dir = Scratch::new("ph").unwrap();
    let listener = super::probe_netns::listen_in_netns(&ns);
    let open = listener.local_addr().unwrap().port();
    let closed = if open == 65535 { open - 1 } else { open + 1 };
    for (port, flags) in [(closed, "flags=RA"), (open, "flags=SA")] {
        let port_s = port.to_string();
        let dump = dir.join(&format!("syn-{port}.jsonl"));
        let log = dir.join(&format!("hping3-{port}.log"));
        let rec = Recorder::start(
            &["--quiet", "--tcp-port", &port_s, "--duration", "60s"],
            &dump,
        );
        let out = Command::new("hping3")
            .args([
                "-S",
                "-p",
                &port_s,
                "-i",
                "u10000",
                "-c",
                "300",
                &ns.ns_addr,
            ])
            .stderr(Stdio::null())
            .output()
            .expect("running hping3");
        let out = String::from_utf8_lossy(&out.stdout).into_owned();
        std::fs::write(&log, &out).unwrap();
        let (code, _, err) = rec.finish(Some(libc::SIGINT));
        assert_eq!(code, 0, "{err}");
        let lines = answer_lines(&out);
        assert!(
            lines.len() >= 285,
            "hping3 saw {} answers:\n{out}",
            lines.len()
        );
        assert!(lines.iter().all(|l| l.contains(flags)), "{out}");
        let header = &records(&dump)[0];
        assert_eq!(header["packet_hook"], "tracepoint", "{header}");
        let syns = records(&dump)
            .iter()
            .filter(|r| r["type"] == "packet" && r["kind"] == "syn")
            .filter(|r| r["seq"].as_u64() == Some(u64::from(port)))
            .count() as u64;
        let r = analyze(&dump, Some(&log));
        let t = &r["totals"];
        let matched = t["probes_matched"].as_u64().unwrap();
        let held = syns.min(lines.len() as u64);
        println!(
            "hping3 -S to port {port} ({flags}): {matched} of {} probes matched; the dump holds {syns} SYNs",
            lines.len()
        );
        assert_eq!(
            t["probes_answered"].as_u64(),
            Some(lines.len() as u64),
            "{t}"
        );
        assert!(held >= 285, "the dump holds {syns} SYNs to {port}");
        assert!(
            matched * 100 >= held * 95,
            "{matched} of {held} probes whose SYNs the dump holds: {t}"
        );
    }
    drop(listener);
}
