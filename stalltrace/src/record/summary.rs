//! What `record` says about the run as a whole: the periodic summary (`--summary-every`)
//! and the closing lines on stderr (counts, losses, per-CPU delay quantiles).
use std::{path::Path, time::Duration};

use stalltrace_analysis::{
    correlate::rank::CulpritRank,
    dump::{Counts, Lost, StackStats},
    units::human_ns,
};

use super::terminal::Terminal;
use crate::kernel::loader::Hists;

/// `1234 waits, p50 < 4 µs, p99 < 64 µs, longest < 131 ms` from log2 µs buckets.
pub fn hist_words(b: &[u64]) -> String {
    let total: u64 = b.iter().fold(0u64, |a, &n| a.saturating_add(n));
    let upper = |i: usize| human_ns((2u64 << i.min(40)) * 1000);
    let quant = |q: f64| {
        let want = (total as f64 * q).ceil() as u64;
        let mut acc = 0u64;
        for (i, n) in b.iter().enumerate() {
            acc = acc.saturating_add(*n);
            if acc >= want {
                return upper(i);
            }
        }
        upper(b.len().saturating_sub(1))
    };
    let longest = b
        .iter()
        .rposition(|&n| n != 0)
        .map(upper)
        .unwrap_or_else(|| "-".into());
    format!(
        "{total} waits, p50 < {}, p99 < {}, longest < {longest}",
        quant(0.5),
        quant(0.99)
    )
}

/// One line per CPU and histogram, then the top culprits so far.
pub fn periodic(out: &Terminal, elapsed: Duration, hists: &Hists, culprits: &[CulpritRank]) {
    out.line(&format!(
        "-- summary after {} --",
        human_ns(elapsed.as_nanos() as u64)
    ));
    for (name, hs) in hists.named() {
        for h in hs {
            out.line(&format!(
                "  CPU {:>3} {name}: {}",
                h.cpu,
                hist_words(&h.buckets)
            ));
        }
    }
    if culprits.is_empty() {
        out.line("  no stall episode yet");
    }
    for c in culprits.iter().take(3) {
        out.line(&format!(
            "  #{} {} (tgid {}): {} episodes, {} in total, worst {}",
            c.rank,
            c.comm,
            c.tgid,
            c.episodes,
            human_ns(c.total_wait_ns),
            human_ns(c.worst_wait_ns)
        ));
    }
}

pub fn stacks(s: &StackStats, lost: u64) {
    crate::errln!(
        "\nstacks: {} samples at {} Hz while waits were pending, {} attached to holders of reported waits; {} distinct stacks",
        s.samples, s.hz, s.attributed, s.distinct_stacks
    );
    if s.kernel_misses + s.user_misses > 0 {
        crate::errln!(
            "  {} kernel and {} user stacks lost (stack map full or colliding ids)",
            s.kernel_misses,
            s.user_misses
        );
    }
    if lost > 0 {
        crate::errln!("  {lost} samples lost (ring buffer full); raise --ring-buffer");
    }
}

/// The closing lines: what was recorded and lost, the delay histograms, the dump.
pub fn end(c: &Counts, lost: &Lost, hists: &Hists, path: &Path, reason: &str, dropped_lines: u64) {
    crate::errln!(
        "\nstopped ({reason}): {} packets, {} waits, {} long syscalls recorded; lost {} (packets {}, waits {}, samples {}, syscalls {}, full tables {})",
        c.packets, c.waits, c.syscalls, lost.total(), lost.packets, lost.waits, lost.samples, lost.syscalls, lost.table_full
    );
    if lost.unread_at_exit > 0 {
        crate::errln!(
            "  {} records were still queued when the stop's time was up: counted as lost, not decoded",
            lost.unread_at_exit
        );
    }
    for (name, hs) in hists.named() {
        for h in hs {
            crate::errln!("  CPU {:>3} {name}: {}", h.cpu, hist_words(&h.buckets));
        }
    }
    if dropped_lines > 0 {
        crate::errln!("  {dropped_lines} live lines were not printed (the terminal did not keep up); the dump has every record");
    }
    crate::errln!("dump: {}", path.display());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_words_give_quantiles_from_log2_buckets() {
        // 90 waits under 2 µs, 9 in [4, 8) µs, 1 in [64, 128) ms.
        let mut b = vec![0u64; 32];
        b[0] = 90;
        b[2] = 9;
        b[16] = 1;
        assert_eq!(
            hist_words(&b),
            "100 waits, p50 < 2 µs, p99 < 8 µs, longest < 131 ms"
        );
        assert_eq!(
            hist_words(&[0; 32]),
            "0 waits, p50 < 2 µs, p99 < 2 µs, longest < -"
        );
        // A forged histogram cannot overflow the sum.
        assert!(hist_words(&[u64::MAX, u64::MAX]).starts_with(&format!("{} waits", u64::MAX)));
    }
}
