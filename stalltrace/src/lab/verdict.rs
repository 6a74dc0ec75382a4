//! Did the tool blame the planted culprit? Runs the same correlator as `analyze` over
//! the lab's dump and compares its top-ranked culprit with the task the lab planted.
use std::path::Path;

use stalltrace_analysis::{
    analyze::{analyze, AnalyzeOptions},
    units::human_ns,
};

pub struct Verdict {
    pub blamed_planted: bool,
    pub summary: String,
}

pub fn judge(dump: &Path, planted_pid: u32, planted_comm: &str) -> anyhow::Result<Verdict> {
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
            let ok = c.tgid == planted_pid && c.comm == planted_comm;
            (
                ok,
                format!(
                    "lab: top culprit {} (tgid {}): {} episodes, {} probes delayed, {} of RX wait in total, worst {}",
                    c.comm,
                    c.tgid,
                    c.episodes,
                    c.probes_delayed,
                    human_ns(c.total_wait_ns),
                    human_ns(c.worst_wait_ns)
                ),
            )
        }
    };
    Ok(Verdict {
        blamed_planted,
        summary,
    })
}
