//! The report for people: a heading, one line per check (`[warn] memory cgroups: 3 120
//! dying, …; what to do: …`), its details indented below, and a tally. Names from the
//! machine (task names, paths) are escaped like every other report's.
use stalltrace_analysis::report::escape;

use super::{DoctorReport, Status};

const INDENT: &str = "    ";

/// `s` cut to about `max` characters, keeping both ends (`kubepods/…/memory.stat`).
pub fn clip(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max || max < 5 {
        return s.to_string();
    }
    let keep = max - 1;
    let head: String = s.chars().take(keep / 2).collect();
    let tail: String = s.chars().skip(n - (keep - keep / 2)).collect();
    format!("{head}…{tail}")
}

pub fn render(r: &DoctorReport) -> Vec<String> {
    let mut out = vec![format!(
        "stalltrace doctor on {} (Linux {}), {}, took {} ms",
        if r.host.is_empty() { "?" } else { &r.host },
        if r.kernel.is_empty() { "?" } else { &r.kernel },
        r.measured_at,
        r.took_ms
    )];
    for c in &r.checks {
        let mut line = format!("[{}] {}: {}", c.status.label(), c.title, c.summary);
        if let Some(todo) = &c.what_to_do {
            line.push_str("; what to do: ");
            line.push_str(todo);
        }
        out.push(line);
        out.extend(c.details.iter().map(|d| format!("{INDENT}{d}")));
    }
    let tally = |s: Status| r.checks.iter().filter(|c| c.status == s).count();
    out.push(format!(
        "{} bad, {} warn, {} unknown, {} ok{}",
        tally(Status::Bad),
        tally(Status::Warn),
        tally(Status::Unknown),
        tally(Status::Ok),
        if r.worst() == Status::Bad {
            " (exit code 7)"
        } else {
            ""
        }
    ));
    out.into_iter()
        .map(|l| escape::line(&l).into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::{Check, Facts, REPORT_FORMAT, REPORT_VERSION};

    #[test]
    fn one_line_per_check_details_indented_names_escaped() {
        let r = DoctorReport {
            format: REPORT_FORMAT.into(),
            version: REPORT_VERSION,
            host: "node-7".into(),
            kernel: "4.9.0".into(),
            measured_at: "2026-01-01T00:00:00.000Z".into(),
            took_ms: 812,
            checks: vec![
                Check::new(
                    "memory_cgroups",
                    "memory cgroups",
                    Status::Warn,
                    "3 120 dying, 1 904 live (1 500 under kubepods)",
                )
                .todo("drop caches")
                .detail("cgroup v1 at /sys/fs/cgroup/memory"),
                Check::new(
                    "rx_cpus",
                    "RX CPUs",
                    Status::Bad,
                    "hog\x1b[2J (pid 7) shares CPU 1",
                ),
            ],
            facts: Facts::default(),
        };
        let lines = render(&r);
        assert_eq!(
            lines[1],
            "[warn] memory cgroups: 3 120 dying, 1 904 live (1 500 under kubepods); what to do: drop caches"
        );
        assert_eq!(lines[2], "    cgroup v1 at /sys/fs/cgroup/memory");
        assert_eq!(lines[3], "[bad] RX CPUs: hog\\x1b[2J (pid 7) shares CPU 1");
        assert_eq!(lines[4], "1 bad, 1 warn, 0 unknown, 0 ok (exit code 7)");
        assert_eq!(
            clip("kubepods/burstable/pod1234/container/memory.stat", 20),
            "kubepods/…emory.stat"
        );
        assert_eq!(clip("short", 20), "short");
    }
}
