//! Did the tool blame the planted culprit? Runs the same correlator as `analyze` over
//! the lab's dump and compares its top-ranked culprit with the task the lab planted.
use std::path::Path;

use stalltrace_analysis::{
    analyze::{analyze, AnalyzeOptions},
    correlate::Report,
    units::human_ns,
};

pub struct Verdict {
    pub blamed_planted: bool,
    pub summary: String,
}

/// Blamed when the top culprit is the planted task and `check` (the scenario's own
/// requirement, e.g. the file it read) passes on the report.
pub fn judge(
    dump: &Path,
    planted_pid: u32,
    planted_comm: &str,
    check: impl Fn(&Report) -> Result<(), String>,
) -> anyhow::Result<Verdict> {
    let report = analyze(&AnalyzeOptions::dump(dump), &mut [])?;
    let (blamed_planted, summary) = match report.culprits.first() {
        None => (
            false,
            format!(
                "lab: no culprit blamed: {} episodes, {} stalled probes",
                report.episodes.len(),
                report.totals.probes_stalled
            ),
        ),
        Some(c) => {
            // The hog is single-threaded: its tgid is its pid.
            let mut ok = c.tgid == planted_pid && c.comm == planted_comm;
            let mut s = format!(
                "lab: top culprit {} (tgid {}): {} episodes, {} probes delayed, {} of RX wait in total, worst {}",
                c.comm,
                c.tgid,
                c.episodes,
                c.probes_delayed,
                human_ns(c.total_wait_ns),
                human_ns(c.worst_wait_ns)
            );
            if let Err(why) = check(&report) {
                ok = false;
                s.push_str(&format!("; but {why}"));
            }
            (ok, s)
        }
    };
    Ok(Verdict {
        blamed_planted,
        summary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use stalltrace_testkit::{
        records::jsonl,
        scratch::Scratch,
        seed::{self, Seed, CADVISOR_TGID},
    };

    fn dump(s: Seed) -> (Scratch, std::path::PathBuf) {
        let dir = Scratch::new("verdict").unwrap();
        let p = dir.join("seed.jsonl");
        std::fs::write(&p, jsonl(&seed::records(s))).unwrap();
        (dir, p)
    }

    /// The 2019 GitHub incident blames cadvisor: planted cadvisor passes; any other pid or name, a
    /// failed scenario check, or a dump without a stall does not.
    #[test]
    fn only_the_planted_task_passes() {
        let (_d, p) = dump(Seed::default());
        let ok = |_: &Report| Ok(());
        let v = judge(&p, CADVISOR_TGID, "cadvisor", ok).unwrap();
        assert!(v.blamed_planted, "{}", v.summary);
        assert!(
            v.summary.contains("top culprit cadvisor (tgid 10137)"),
            "{}",
            v.summary
        );
        for (pid, comm) in [
            (CADVISOR_TGID + 1, "cadvisor"),
            (CADVISOR_TGID, "stall-hog"),
        ] {
            let v = judge(&p, pid, comm, ok).unwrap();
            assert!(!v.blamed_planted, "planted {comm} ({pid}): {}", v.summary);
        }
        let v = judge(&p, CADVISOR_TGID, "cadvisor", |_| {
            Err("it read no memory.stat".into())
        })
        .unwrap();
        assert!(!v.blamed_planted);
        assert!(
            v.summary.ends_with("; but it read no memory.stat"),
            "{}",
            v.summary
        );
        let (_d, quiet) = dump(Seed {
            stall: false,
            ..Seed::default()
        });
        let v = judge(&quiet, CADVISOR_TGID, "cadvisor", ok).unwrap();
        assert!(!v.blamed_planted);
        assert!(
            v.summary.starts_with("lab: no culprit blamed: 0 episodes"),
            "{}",
            v.summary
        );
    }
}
