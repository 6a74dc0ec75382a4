//! Judging a field case from outside stalltrace: the prober's log is parsed here (a few
//! lines of string matching, not stalltrace's probe-log parser), the planted task's pid
//! comes from the node's `/proc` (written by the guest script), the dump's records are
//! counted here from the raw JSON lines, and the node's kernel counters
//! (`/proc/net/snmp`) are compared with what was recorded. stalltrace's report (`analyze
//! --format json`) is what is judged, never the judge.
use std::{
    collections::{BTreeMap, HashSet},
    fs,
    path::Path,
    process::Command,
};

use serde_json::Value;

use super::Case;

/// An RTT at or above this is a stalled probe (stalltrace's default stall threshold).
const STALL_MS: f64 = 50.0;
/// Shares the issue asks for: stalled probes explained, answered probes matched.
const MIN_SHARE: f64 = 0.95;

#[derive(Debug)]
pub struct Verdict {
    pub id: String,
    /// `None`: not applicable on this kernel (said why in `notes`).
    pub pass: Option<bool>,
    /// What was measured, in words and numbers.
    pub figures: Vec<String>,
    /// Why it failed (or does not apply).
    pub notes: Vec<String>,
}

impl Verdict {
    pub fn failed(&self) -> bool {
        self.pass == Some(false)
    }

    fn check(&mut self, ok: bool, why: impl Into<String>) {
        if !ok {
            self.pass = Some(false);
            self.notes.push(why.into());
        }
    }
}

/// One answered probe as its prober printed it.
#[derive(Debug, Clone, Copy)]
struct Answer {
    seq: u32,
    rtt_ms: f64,
}

/// The number after `key` in `line` (digits and one dot).
fn number_after(line: &str, key: &str) -> Option<f64> {
    let at = line.find(key)? + key.len();
    let rest = &line[at..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Answered probes of a ping (`icmp_seq=N … time=X ms`), hping3 --icmp (`icmp_seq=N
/// rtt=X ms`) or hping3 -S (`flags=SA seq=N … rtt=X ms`) log.
fn answers(log: &str) -> Vec<Answer> {
    log.lines()
        .filter_map(|l| {
            let seq = number_after(l, "icmp_seq=").or_else(|| {
                l.contains("flags=")
                    .then(|| number_after(l, " seq="))
                    .flatten()
            })?;
            let rtt = number_after(l, "time=").or_else(|| number_after(l, "rtt="))?;
            Some(Answer {
                seq: seq as u32,
                rtt_ms: rtt,
            })
        })
        .collect()
}

/// The dump's lines as JSON values (a torn last line is skipped).
fn dump_records(path: &Path) -> Vec<Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

fn u(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

/// `/proc/net/snmp` counters in the node's facts file ("## before"/"## after"
/// sections): `(group, name) → value`.
fn snmp(facts: &str, section: &str) -> BTreeMap<(String, String), i64> {
    let mut out = BTreeMap::new();
    let mut in_section = false;
    let mut header: Option<Vec<String>> = None;
    for l in facts.lines() {
        if let Some(name) = l.strip_prefix("## ") {
            in_section = name == section;
            header = None;
            continue;
        }
        if !in_section {
            continue;
        }
        let Some((group, rest)) = l.split_once(": ") else {
            // Icmp6 lines of snmp6: "Icmp6InEchos 12".
            let mut w = l.split_whitespace();
            if let (Some(k), Some(v)) = (w.next(), w.next()) {
                if let (Some(name), Ok(v)) = (k.strip_prefix("Icmp6"), v.parse()) {
                    out.insert(("Icmp6".to_string(), name.to_string()), v);
                }
            }
            continue;
        };
        let fields: Vec<String> = rest.split_whitespace().map(str::to_string).collect();
        match header.take() {
            Some(h) if fields.first().is_some_and(|f| f.parse::<i64>().is_ok()) => {
                for (k, v) in h.iter().zip(&fields) {
                    if let Ok(v) = v.parse() {
                        out.insert((group.to_string(), k.clone()), v);
                    }
                }
            }
            _ => header = Some(fields),
        }
    }
    out
}

fn snmp_delta(dir: &Path, group: &str, name: &str) -> Option<i64> {
    let facts = fs::read_to_string(dir.join("facts-after.txt")).ok()?
        + &fs::read_to_string(dir.join("facts-before.txt")).ok()?;
    let key = (group.to_string(), name.to_string());
    Some(snmp(&facts, "after").get(&key)? - snmp(&facts, "before").get(&key)?)
}

/// Pids of the node's tasks named like `prefix` (from the guest's /proc).
fn node_tasks(dir: &Path, prefix: &str) -> Vec<u64> {
    let facts = fs::read_to_string(dir.join("facts-before.txt")).unwrap_or_default();
    facts
        .lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("task ")?.split_whitespace();
            let pid = w.next()?.parse().ok()?;
            w.next()?.starts_with(prefix).then_some(pid)
        })
        .collect()
}

/// `stalltrace analyze DUMP [--probe-log LOG] --format json`.
fn analyze(bin: &Path, dump: &Path, log: Option<&Path>) -> Result<Value, String> {
    let mut c = Command::new(bin);
    c.arg("analyze").arg(dump).args(["--format", "json"]);
    if let Some(l) = log {
        c.arg("--probe-log").arg(l);
    }
    let out = c.output().map_err(|e| format!("running analyze: {e}"))?;
    serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "analyze gave no JSON ({e}; exit {}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}

/// The planted task: (pid, name) from the node's /proc.
fn hog(dir: &Path) -> Option<(u64, String)> {
    let t = fs::read_to_string(dir.join("hog")).ok()?;
    let (pid, name) = t.trim().split_once('\t')?;
    Some((pid.parse().ok()?, name.to_string()))
}

/// Every prober in the harness sends a probe every 10 ms.
const INTERVAL_MS: f64 = 10.0;

/// The stalled probes shaped like a stall on the node's receive path: a staircase. A
/// probe held at the node until the backlog runs is answered later the earlier it
/// came, so consecutive probes' RTTs fall by about one interval each. A delay on the
/// prober's own side (its sender or receiver descheduled on a loaded host) shows as
/// equal RTTs instead, and no tool on the node can explain it.
fn staircase(answers: &[Answer]) -> HashSet<u32> {
    let mut by_seq: Vec<&Answer> = answers.iter().collect();
    by_seq.sort_by_key(|a| a.seq);
    let step = |hi: &Answer, lo: &Answer| {
        lo.seq == hi.seq + 1
            && (0.4 * INTERVAL_MS..=1.6 * INTERVAL_MS).contains(&(hi.rtt_ms - lo.rtt_ms))
    };
    // Runs of stalled probes, each one interval below the one before.
    let mut out = HashSet::new();
    let mut run: Vec<u32> = vec![];
    for (i, a) in by_seq.iter().enumerate() {
        let continues = i > 0 && a.rtt_ms >= STALL_MS && step(by_seq[i - 1], a);
        if !continues {
            if run.len() >= MIN_STAIRS {
                out.extend(run.drain(..));
            }
            run.clear();
        }
        if a.rtt_ms >= STALL_MS {
            run.push(a.seq);
        }
    }
    if run.len() >= MIN_STAIRS {
        out.extend(run);
    }
    out
}

/// Stalled probes in a row that make a staircase: the planted stall (about a second)
/// makes dozens; a host hiccup of 60–70 ms on the prober's side one or two.
const MIN_STAIRS: usize = 3;

/// The blame: rank 1 is the planted task (by pid from /proc), and the stalled probes
/// of the prober's own log that stalled on the node are explained.
fn judge_blame(
    v: &mut Verdict,
    report: &Value,
    answers: &[Answer],
    hog: &(u64, String),
    what: &str,
) {
    let all_stalled = answers.iter().filter(|a| a.rtt_ms >= STALL_MS).count();
    let stalled = staircase(answers).len();
    let t = &report["totals"];
    let explained = u(t, "probes_explained");
    let first = &report["culprits"][0];
    let rank1_pids: Vec<u64> = first["pids"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let named = u(first, "tgid") == hog.0 || rank1_pids.contains(&hog.0);
    let seqs: Vec<u32> = answers
        .iter()
        .filter(|a| a.rtt_ms >= STALL_MS)
        .map(|a| a.seq)
        .collect();
    let span = match (seqs.iter().min(), seqs.iter().max()) {
        (Some(a), Some(b)) => format!(" (seq {a}–{b})"),
        _ => String::new(),
    };
    let elsewhere = all_stalled - stalled;
    let elsewhere = if elsewhere > 0 {
        format!(" (+{elsewhere} not staircase-shaped: delayed off the node)")
    } else {
        String::new()
    };
    v.figures.push(format!(
        "{what}: {} answered, {stalled} ≥ {STALL_MS} ms{span}{elsewhere}, max {:.0} ms; stalltrace: {explained} explained, {} matched, rank 1 {} (pid {})",
        answers.len(),
        answers.iter().map(|a| a.rtt_ms).fold(0.0, f64::max),
        u(t, "probes_matched"),
        s(first, "comm"),
        u(first, "tgid"),
    ));
    v.check(
        stalled > 0,
        format!("{what}: no probe of the prober's log reached {STALL_MS} ms: nothing stalled"),
    );
    v.check(
        named,
        format!(
            "{what}: rank 1 is {} (tgid {}), not the planted {} (pid {})",
            s(first, "comm"),
            u(first, "tgid"),
            hog.1,
            hog.0
        ),
    );
    v.check(
        explained <= all_stalled as u64,
        format!("{what}: {explained} explained, more than the log's {all_stalled} stalled probes"),
    );
    v.check(
        stalled == 0 || explained as f64 >= MIN_SHARE * stalled as f64,
        format!("{what}: {explained} of {stalled} stalled probes explained (< 95 %)"),
    );
}

/// The RX context of the planted task's episodes, checked against the node's /proc.
fn judge_rx(v: &mut Verdict, report: &Value, hog: &(u64, String), rx_pids: &[u64], want: &str) {
    let eps: Vec<&Value> = report["episodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| u(&e["culprit"], "pid") == hog.0 || u(&e["culprit"], "tgid") == hog.0)
                .collect()
        })
        .unwrap_or_default();
    let rx: HashSet<String> = eps
        .iter()
        .map(|e| format!("{} (pid {})", s(&e["rx"], "comm"), u(&e["rx"], "pid")))
        .collect();
    let ok = eps
        .iter()
        .any(|e| s(&e["rx"], "comm").starts_with(want) && rx_pids.contains(&u(&e["rx"], "pid")));
    v.figures.push(format!(
        "{} episodes of the planted task, RX in {}",
        eps.len(),
        rx.into_iter().collect::<Vec<_>>().join(", ")
    ));
    v.check(
        ok,
        format!("no episode of the planted task names the RX thread {want}* (pids from /proc: {rx_pids:?})"),
    );
}

fn judge_seed(v: &mut Verdict, bin: &Path, dir: &Path, rx_want: &str, logs: &[&str], icmp: bool) {
    let Some(hog) = hog(dir) else {
        v.check(false, "the node planted no task (no hog file)");
        return;
    };
    let dump = dir.join("node.jsonl");
    let rx_pids = node_tasks(dir, rx_want);
    for log in logs {
        let text = fs::read_to_string(dir.join(log)).unwrap_or_default();
        let ans = answers(&text);
        match analyze(bin, &dump, Some(&dir.join(log))) {
            Ok(r) => {
                judge_blame(v, &r, &ans, &hog, log);
                if *log == logs[0] {
                    judge_rx(v, &r, &hog, &rx_pids, rx_want);
                }
            }
            Err(e) => v.check(false, format!("{log}: {e}")),
        }
    }
    // The kernel's own count of echo requests against the records + counted losses.
    let recs = dump_records(&dump);
    let requests = recs
        .iter()
        .filter(|r| s(r, "type") == "packet" && s(r, "kind") == "echo_request")
        .count() as i64;
    let lost = recs
        .iter()
        .find(|r| s(r, "type") == "footer")
        .map(|f| u(&f["lost"], "packets") as i64)
        .unwrap_or(0);
    if let (true, Some(in_echos)) = (icmp, snmp_delta(dir, "Icmp", "InEchos")) {
        v.figures.push(format!(
            "node kernel: {in_echos} echo requests received (Icmp InEchos); dump: {requests} recorded + {lost} lost"
        ));
        v.check(
            requests <= in_echos && requests + lost >= in_echos,
            format!("recorded {requests} + lost {lost} echo requests != the kernel's {in_echos}"),
        );
    }
}

/// The node's own prober: every answered probe has its answer among the recorded
/// packets (joined here by wire identity), and the planted task is blamed.
fn judge_probe(v: &mut Verdict, bin: &Path, dir: &Path, tcp: bool, v6: bool) {
    let dump = dir.join("node.jsonl");
    let recs = dump_records(&dump);
    let probes: Vec<&Value> = recs.iter().filter(|r| s(r, "type") == "probe").collect();
    let answered: Vec<&Value> = probes
        .iter()
        .copied()
        .filter(|p| s(p, "status") == "ok")
        .collect();
    let replies: HashSet<(u64, u64)> = recs
        .iter()
        .filter(|r| s(r, "type") == "packet")
        .filter_map(|r| match (tcp, s(r, "kind")) {
            // An answer to a TCP probe comes back to the probe's source port.
            (true, "syn_ack" | "rst") => Some((u(r, "seq"), u(r, "ident"))),
            (false, "echo_reply") => Some((u(r, "ident"), u(r, "seq"))),
            _ => None,
        })
        .collect();
    let joined = answered
        .iter()
        .filter(|p| replies.contains(&(u(p, "wire_ident"), u(p, "wire_seq"))))
        .count();
    v.figures.push(format!(
        "{} probes, {} answered, {joined} with their answer recorded ({} answer packets in the dump)",
        probes.len(),
        answered.len(),
        replies.len()
    ));
    v.check(!answered.is_empty(), "no probe was answered");
    v.check(
        joined as f64 >= MIN_SHARE * answered.len() as f64,
        format!(
            "only {joined} of {} answered probes have their answer recorded",
            answered.len()
        ),
    );
    if !tcp {
        let (group, name) = if v6 {
            ("Icmp6", "InEchoReplies")
        } else {
            ("Icmp", "InEchoReps")
        };
        if let Some(k) = snmp_delta(dir, group, name) {
            v.figures.push(format!(
                "node kernel: {k} echo replies received ({group} {name})"
            ));
            v.check(
                (replies.len() as i64) <= k,
                format!(
                    "{} replies recorded, more than the kernel's {k}",
                    replies.len()
                ),
            );
        }
    }
    let Some(hog) = hog(dir) else {
        return;
    };
    let ans: Vec<Answer> = answered
        .iter()
        .map(|p| Answer {
            seq: u(p, "seq") as u32,
            rtt_ms: u(p, "rtt_ns") as f64 / 1e6,
        })
        .collect();
    match analyze(bin, &dump, None) {
        Ok(r) => judge_blame(v, &r, &ans, &hog, "built-in prober"),
        Err(e) => v.check(false, e),
    }
}

fn judge_peer6(v: &mut Verdict, dir: &Path) {
    let recs = dump_records(&dir.join("node.jsonl"));
    let from_prober = |kind: &str| -> (usize, usize) {
        let seqs: Vec<u64> = recs
            .iter()
            .filter(|r| {
                s(r, "type") == "packet" && s(r, "proto") == "icmpv6" && s(r, "kind") == kind
            })
            .map(|r| u(r, "seq"))
            .collect();
        let distinct: HashSet<u64> = seqs.iter().copied().collect();
        (seqs.len(), distinct.len())
    };
    let sent_to_node =
        answers(&fs::read_to_string(dir.join("ping6.log")).unwrap_or_default()).len();
    let node_pinged =
        answers(&fs::read_to_string(dir.join("node-ping6.log")).unwrap_or_default()).len();
    let (req, req_distinct) = from_prober("echo_request");
    let (rep, rep_distinct) = from_prober("echo_reply");
    v.figures.push(format!(
        "prober's ping -6: {sent_to_node} answered, node recorded {req} requests ({req_distinct} distinct); node's ping -6: {node_pinged} answered, {rep} replies recorded ({rep_distinct} distinct)"
    ));
    v.check(
        sent_to_node > 0 && node_pinged > 0,
        "a ping -6 got no answer",
    );
    v.check(
        req == req_distinct && req >= sent_to_node,
        format!(
            "{req} echo requests recorded for {sent_to_node} answered pings (each once expected)"
        ),
    );
    v.check(
        rep == rep_distinct && rep >= node_pinged,
        format!(
            "{rep} echo replies recorded for {node_pinged} answered pings (each once expected)"
        ),
    );
}

fn judge_watch(v: &mut Verdict, dir: &Path) {
    let targets: Value = fs::read_to_string(dir.join("targets.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let health: Vec<String> = targets["data"]["activeTargets"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|t| format!("{} {}", s(t, "scrapeUrl"), s(t, "health")))
                .collect()
        })
        .unwrap_or_default();
    let query: Value = fs::read_to_string(dir.join("query.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let series = query["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let hog = hog(dir);
    let found = hog.as_ref().is_some_and(|(_, name)| {
        series.iter().any(|r| {
            let m = &r["metric"];
            s(m, "culprit_comm") == name
        })
    });
    v.figures.push(format!(
        "Prometheus on the prober: targets [{}], {} episode series",
        health.join(", "),
        series.len()
    ));
    v.check(
        health.iter().any(|h| h.ends_with(" up")),
        "the node's target is not up",
    );
    v.check(
        found,
        format!(
            "no stalltrace_stall_episodes_total series names the planted {}",
            hog.map(|h| h.1).unwrap_or_default()
        ),
    );
    let rc = fs::read_to_string(dir.join("watch.rc")).unwrap_or_default();
    v.check(
        rc.trim() == "0",
        format!("watch exited with {:?} on SIGTERM", rc.trim()),
    );
}

pub fn all(bin: &Path, release: &str, shared: &Path, plan: &[(String, Case)]) -> Vec<Verdict> {
    plan.iter()
        .map(|(id, case)| {
            let dir = shared.join(id);
            let mut v = Verdict {
                id: id.clone(),
                pass: Some(true),
                figures: vec![],
                notes: vec![],
            };
            if let Ok(why) = fs::read_to_string(dir.join("skip")) {
                v.pass = None;
                v.notes.push(why.trim().to_string());
                return v;
            }
            if !dir.join("done").exists() {
                v.check(false, format!("the case did not finish on {release}"));
                return v;
            }
            let rc = fs::read_to_string(dir.join("record.rc")).unwrap_or_default();
            if dir.join("record.rc").exists() && rc.trim() != "0" {
                let err = fs::read_to_string(dir.join("record.err")).unwrap_or_default();
                v.check(
                    false,
                    format!(
                        "record exited {}: {}",
                        rc.trim(),
                        err.lines().rev().take(3).collect::<Vec<_>>().join(" | ")
                    ),
                );
            }
            match case {
                Case::SeedKsoftirqd => judge_seed(
                    &mut v,
                    bin,
                    &dir,
                    "ksoftirqd/1",
                    &["ping.log", "hping3.log"],
                    true,
                ),
                Case::SeedNapi => judge_seed(
                    &mut v,
                    bin,
                    &dir,
                    "napi/eth0-",
                    &["ping.log", "hping3.log"],
                    true,
                ),
                Case::Hping3Syn | Case::ProbeCmd => {
                    // Threaded NAPI where the kernel has it, else ksoftirqd (guest.sh).
                    let mode = fs::read_to_string(dir.join("mode")).unwrap_or_default();
                    let rx = if mode.trim() == "napi" {
                        "napi/eth0-"
                    } else {
                        "ksoftirqd/1"
                    };
                    let (log, icmp) = if *case == Case::ProbeCmd {
                        ("probe.log", true)
                    } else {
                        ("hping3.log", false)
                    };
                    judge_seed(&mut v, bin, &dir, rx, &[log], icmp)
                }
                Case::ProbeIcmp => judge_probe(&mut v, bin, &dir, false, false),
                Case::ProbeIcmp6 => judge_probe(&mut v, bin, &dir, false, true),
                Case::ProbeTcpOpen | Case::ProbeTcpClosed => {
                    judge_probe(&mut v, bin, &dir, true, false)
                }
                Case::PeerIcmp6 => judge_peer6(&mut v, &dir),
                Case::Watch => judge_watch(&mut v, &dir),
            }
            v
        })
        .collect()
}

pub fn table(release: &str, verdicts: &[Verdict]) -> String {
    let mut out =
        format!("## field: {release}\n\n| case | verdict | measured |\n| --- | --- | --- |\n");
    for v in verdicts {
        let verdict = match v.pass {
            Some(true) => "PASS".to_string(),
            Some(false) => format!("FAIL: {}", v.notes.join("; ")),
            None => format!("n/a: {}", v.notes.join("; ")),
        };
        out.push_str(&format!(
            "| {} | {verdict} | {} |\n",
            v.id,
            v.figures.join("; ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_of_each_prober() {
        let ping = "[1733.1] 64 bytes from 10.199.0.2: icmp_seq=7 ttl=64 time=103 ms\n\
                    PING 10.199.0.2 (10.199.0.2) 56(84) bytes of data.\n";
        let h = "len=28 ip=10.199.0.2 ttl=64 id=4 icmp_seq=12 rtt=88.5 ms\n";
        let syn =
            "len=40 ip=10.199.0.2 ttl=64 DF id=0 sport=9876 flags=RA seq=3 win=0 rtt=51.2 ms\n";
        let a = answers(ping);
        assert_eq!((a.len(), a[0].seq, a[0].rtt_ms), (1, 7, 103.0));
        let a = answers(h);
        assert_eq!((a[0].seq, a[0].rtt_ms), (12, 88.5));
        let a = answers(syn);
        assert_eq!((a[0].seq, a[0].rtt_ms), (3, 51.2));
    }

    #[test]
    fn staircases_are_told_from_plateaus() {
        let a = |seq, rtt_ms| Answer { seq, rtt_ms };
        // A node-side stall: 90, 80, … 40 ms; a prober-side plateau of 61 ms; a
        // two-step hiccup of 58, 52 ms.
        let mut log: Vec<Answer> = (0..6).map(|i| a(i, 90.0 - 10.0 * f64::from(i))).collect();
        log.extend((10..15).map(|i| a(i, 61.0)));
        log.push(a(20, 70.0));
        log.extend([a(30, 58.0), a(31, 52.0), a(32, 3.0)]);
        let mut got: Vec<u32> = staircase(&log).into_iter().collect();
        got.sort_unstable();
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn snmp_sections() {
        let f = "## before\nIcmp: InMsgs InEchos\nIcmp: 5 2\nIcmp6InEchos 4\n## after\nIcmp: InMsgs InEchos\nIcmp: 9 6\nIcmp6InEchos 10\n";
        assert_eq!(snmp(f, "after")[&("Icmp".into(), "InEchos".into())], 6);
        assert_eq!(snmp(f, "before")[&("Icmp6".into(), "InEchos".into())], 4);
    }
}
