//! Did the tool blame the planted culprit? Reads the lab's dump and ranks the tasks
//! that held the RX CPU during waits long enough to stall a probe.
use std::{collections::HashMap, path::Path};

use crate::{
    dump::{DumpReader, Record},
    live,
    timefmt::human_ns,
};

pub struct Verdict {
    pub blamed_planted: bool,
    pub report: String,
}

/// Waits at least this long count as stalls here (the seed's 50 ms cut).
const STALL_NS: u64 = 50_000_000;

pub fn judge(dump: &Path, _probe_log: Option<&Path>, planted_pid: u32, planted_comm: &str) -> anyhow::Result<Verdict> {
    let mut r = DumpReader::open(dump)?;
    // (pid, comm) -> (stalls, total wait, worst wait)
    let mut by: HashMap<(u32, String), (u64, u64, u64)> = HashMap::new();
    let mut lines = vec![];
    while let Some(rec) = r.next_record()? {
        if let Record::Wait(w) = rec {
            if w.wait_ns < STALL_NS {
                continue;
            }
            if lines.len() < 5 {
                lines.push(live::wait_sentence(&w));
            }
            if let Some(h) = w.holders.first() {
                let e = by.entry((h.pid, h.comm.clone())).or_default();
                e.0 += 1;
                e.1 += w.wait_ns;
                e.2 = e.2.max(w.wait_ns);
            }
        }
    }
    let mut rank: Vec<_> = by.into_iter().collect();
    rank.sort_by(|a, b| b.1 .1.cmp(&a.1 .1));
    let mut report = String::from("culprits by total RX wait caused (waits >= 50 ms):\n");
    for ((pid, comm), (n, total, worst)) in rank.iter().take(5) {
        report.push_str(&format!(
            "  {comm:<16} pid {pid:<7} {n:>3} stalls, {} in total, worst {}\n",
            human_ns(*total),
            human_ns(*worst)
        ));
    }
    if rank.is_empty() {
        report.push_str("  none: no RX wait of 50 ms or more was recorded\n");
    }
    for l in &lines {
        report.push_str(&format!("  e.g. {l}\n"));
    }
    let blamed_planted = rank.first().is_some_and(|((pid, comm), _)| *pid == planted_pid && comm == planted_comm);
    Ok(Verdict { blamed_planted, report })
}
