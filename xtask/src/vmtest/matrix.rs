//! The matrix's results as files: `target/vmtest/matrix.json` (every kernel's facts,
//! tests and times) and `target/vmtest/kernels.md` (the kernels × features table that
//! docs/kernels.md quotes). Facts come from the guest: `results/info` (the suite's
//! look at the kernel: kprobes, BTF, PREEMPT_RT, program types) and
//! `results/matrix.tsv`, which the vm_guest tests append to as they measure (packet
//! path, sampler variant, ksoftirqd case, each lab scenario). A test that did not get
//! as far as its fact leaves the cell empty ("—"), never a guess.
use std::{fs, path::Path, process::Command};

use anyhow::Context as _;

use super::KernelRun;

/// Key-value pairs in the order they were written.
pub type Facts = Vec<(String, String)>;

/// `key: value` lines of `info`, and `key<TAB>value` lines of `matrix.tsv`.
pub fn read_facts(results: &Path) -> (Facts, Facts) {
    let info = fs::read_to_string(results.join("info"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let facts = fs::read_to_string(results.join("matrix.tsv"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (info, facts)
}

fn get<'a>(kv: &'a [(String, String)], key: &str) -> Option<&'a str> {
    // The last word on a key wins (a test may run twice after a hang).
    kv.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn git(args: &[&str]) -> String {
    Command::new("git")
        .args(args)
        .current_dir(crate::root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".into())
}

fn now_utc() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Which commit the matrix ran, with `+dirty` when the work tree had changes.
fn commit() -> String {
    let head = git(&["rev-parse", "--short=12", "HEAD"]);
    let dirty = !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty();
    if dirty {
        format!("{head}+dirty")
    } else {
        head
    }
}

/// The table's cells for one kernel.
fn row(r: &KernelRun) -> Vec<String> {
    let (info, facts) = (&r.info_kv, &r.facts);
    let dash = || "—".to_string();
    let yes_no = |k: &str| get(info, k).map(str::to_string).unwrap_or_else(dash);
    let kprobe = match (get(info, "kprobes"), get(facts, "packet_hook")) {
        (Some("yes"), Some(_)) => "attaches".to_string(),
        (Some("yes"), None) => "present (attach not shown)".to_string(),
        (Some(v), _) => v.to_string(),
        (None, _) => dash(),
    };
    let packets = match get(facts, "packet_hook") {
        // The vm_guest kprobe test's run: an IPv4 --peer alone. Everything else takes
        // the tracepoint on every kernel (the default_flags tests).
        Some(_) => "kprobe:icmp_echo (IPv4 --peer alone)".to_string(),
        None if get(info, "kprobes") == Some("no") => "tracepoint".to_string(),
        None => dash(),
    };
    let tracing = get(info, "bpftool")
        .map(|_| {
            let prog = info
                .iter()
                .any(|(k, v)| k == "bpftool" && v.contains("program_type tracing is available"));
            let kfunc = get(info, "fentry").is_some_and(|v| v.contains("attached"));
            format!(
                "{}; bpftrace kfunc {}",
                if prog { "loads" } else { "no" },
                if kfunc { "attaches" } else { "fails" }
            )
        })
        .unwrap_or_else(dash);
    let cell = |k: &str| get(facts, k).map(str::to_string).unwrap_or_else(dash);
    let passed = r.tests.iter().filter(|t| t.status == "PASS").count();
    vec![
        format!("{} (`{}`)", r.release.as_deref().unwrap_or("?"), r.label),
        yes_no("preempt_rt"),
        yes_no("btf"),
        kprobe,
        packets,
        tracing,
        yes_no("threaded_napi"),
        cell("sampler"),
        cell("ksoftirqd"),
        cell("lab rt-hog"),
        cell("lab slow-syscall"),
        cell("lab short-syscalls"),
        cell("lab memcg-stat"),
        format!("{passed}/{}", r.tests.len()),
        format!("{:.1}", r.wall_s / 60.0),
    ]
}

const COLUMNS: &[&str] = &[
    "kernel (package)",
    "PREEMPT_RT",
    "BTF",
    "kprobe",
    "packets (`--attach auto`)",
    "tracing prog type (fentry/tp_btf)",
    "threaded NAPI",
    "sampler",
    "ksoftirqd case",
    "lab rt-hog",
    "lab slow-syscall",
    "lab short-syscalls",
    "lab memcg-stat",
    "tests passed",
    "guest min",
];

/// The markdown table with the run's date, commit and command.
pub fn markdown(runs: &[&KernelRun], command: &str, total_s: f64) -> String {
    let mut s = format!(
        "Measured by `{command}` on {}, commit {}; the whole run took {:.1} min.\n\n",
        now_utc(),
        commit(),
        total_s / 60.0
    );
    s.push_str(&format!("| {} |\n", COLUMNS.join(" | ")));
    s.push_str(&format!("|{}\n", " --- |".repeat(COLUMNS.len())));
    for r in runs {
        s.push_str(&format!("| {} |\n", row(r).join(" | ")));
    }
    let degraded: Vec<String> = runs
        .iter()
        .filter_map(|r| {
            get(&r.facts, "degraded")
                .filter(|d| !d.is_empty())
                .map(|d| format!("- {}: degraded: {d}", r.release.as_deref().unwrap_or("?")))
        })
        .collect();
    if !degraded.is_empty() {
        s.push_str("\nWhat `stalltrace features` and the dump header said was degraded:\n\n");
        s.push_str(&(degraded.join("\n") + "\n"));
    }
    s
}

/// Writes matrix.json and kernels.md under `dir` (target/vmtest).
pub fn write(dir: &Path, runs: &[&KernelRun], command: &str, total_s: f64) -> anyhow::Result<()> {
    fs::create_dir_all(dir)?;
    let kv = |v: &[(String, String)]| {
        serde_json::Value::Array(
            v.iter()
                .map(|(k, v)| serde_json::json!({ "key": k, "value": v }))
                .collect(),
        )
    };
    let json = serde_json::json!({
        "command": command,
        "date": now_utc(),
        "commit": commit(),
        "total_s": total_s,
        "kernels": runs.iter().map(|r| serde_json::json!({
            "package": r.label,
            "release": r.release,
            "ok": !r.failed(),
            "problem": r.problem,
            "boot_s": r.boot_s,
            "guest_s": r.wall_s,
            "info": kv(&r.info_kv),
            "facts": kv(&r.facts),
            "tests": r.tests.iter().map(|t| serde_json::json!({
                "id": t.id, "status": t.status, "secs": t.secs,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    let text = serde_json::to_string_pretty(&json).context("encoding matrix.json")?;
    fs::write(dir.join("matrix.json"), text + "\n")
        .with_context(|| format!("writing {}", dir.join("matrix.json").display()))?;
    fs::write(dir.join("kernels.md"), markdown(runs, command, total_s))
        .with_context(|| format!("writing {}", dir.join("kernels.md").display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmtest::TestResult;

    fn kv(pairs: &[(&str, &str)]) -> Facts {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_row_says_only_what_the_guest_measured() {
        let run = KernelRun {
            label: "linux-image-5.10.0-32-amd64-unsigned".into(),
            release: Some("5.10.0-32-amd64".into()),
            info_kv: kv(&[
                ("kprobes", "yes"),
                ("btf", "yes"),
                ("preempt_rt", "no"),
                ("threaded_napi", "no"),
                ("bpftool", "program_type kprobe is available"),
                ("bpftool", "program_type tracing is available"),
                ("fentry", "bpftrace kfunc:icmp_echo failed: ERROR"),
            ]),
            facts: kv(&[
                ("packet_hook", "kprobe:icmp_echo (auto, IPv4 --peer alone)"),
                ("sampler", "sample_stack_regs"),
                ("lab rt-hog", "FAIL (exit Some(6))"),
                ("lab rt-hog", "PASS (ksoftirqd)"),
                ("degraded", "no bpf_task_pt_regs (before 5.15): …"),
            ]),
            boot_s: Some(5.0),
            wall_s: 540.0,
            problem: None,
            info: vec![],
            tests: vec![TestResult {
                id: "vm_guest.x".into(),
                status: "PASS",
                secs: 1.0,
            }],
            hung: false,
        };
        let cells = row(&run);
        assert_eq!(cells.len(), COLUMNS.len());
        assert_eq!(
            cells[..8],
            [
                "5.10.0-32-amd64 (`linux-image-5.10.0-32-amd64-unsigned`)",
                "no",
                "yes",
                "attaches",
                "kprobe:icmp_echo (IPv4 --peer alone)",
                "loads; bpftrace kfunc fails",
                "no",
                "sample_stack_regs"
            ]
        );
        assert_eq!(cells[8], "—", "no ksoftirqd fact: no guess");
        assert_eq!(cells[9], "PASS (ksoftirqd)", "the last word on a key");
        assert_eq!(cells[13], "1/1");
        assert_eq!(cells[14], "9.0");
        let md = markdown(&[&run], "cargo xtask vmtest --all", 600.0);
        assert!(
            md.contains("| --- |") && md.contains("took 10.0 min"),
            "{md}"
        );
        assert!(
            md.contains("- 5.10.0-32-amd64: degraded: no bpf_task_pt_regs"),
            "{md}"
        );
    }
}
