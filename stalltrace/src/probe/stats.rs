//! Run statistics: counts, RTT summary and percentiles, schedule drift.
use std::fmt::Write as _;

use super::schedule::Drift;

#[derive(Debug, Clone, Default)]
pub struct ProbeStats {
    pub transmitted: u64,
    /// Distinct sequences answered in time (duplicates and late answers excluded).
    pub received: u64,
    /// Declared lost after the timeout.
    pub lost: u64,
    pub duplicates: u64,
    /// Answers that arrived after an answer to a later sequence.
    pub reordered: u64,
    /// Answers that arrived after their probe had been declared lost.
    pub late: u64,
    /// Sends the kernel refused (the probe is then lost).
    pub send_errors: u64,
    /// RTT of every in-time answer, ns, in arrival order (8 bytes per answer).
    pub rtts_ns: Vec<u64>,
    pub drift: Drift,
    /// Why the prober thread ended early, when it failed.
    pub error: Option<String>,
}

impl ProbeStats {
    pub fn loss_pct(&self) -> f64 {
        if self.transmitted == 0 {
            0.0
        } else {
            100.0 * (self.transmitted.saturating_sub(self.received)) as f64
                / self.transmitted as f64
        }
    }

    pub fn min_ns(&self) -> Option<u64> {
        self.rtts_ns.iter().copied().min()
    }

    pub fn max_ns(&self) -> Option<u64> {
        self.rtts_ns.iter().copied().max()
    }

    pub fn avg_ns(&self) -> Option<u64> {
        if self.rtts_ns.is_empty() {
            return None;
        }
        let sum: u128 = self.rtts_ns.iter().map(|&r| u128::from(r)).sum();
        u64::try_from(sum / self.rtts_ns.len() as u128).ok()
    }

    /// Nearest-rank percentiles (`ps` in percent, e.g. 99.9) over the answered probes.
    pub fn percentiles(&self, ps: &[f64]) -> Option<Vec<u64>> {
        if self.rtts_ns.is_empty() {
            return None;
        }
        let mut v = self.rtts_ns.clone();
        v.sort_unstable();
        Some(ps.iter().map(|&p| v[nearest_rank(p, v.len())]).collect())
    }

    /// The closing block, in the style of hping3/ping.
    pub fn render(&self, target: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "\n--- {target} stalltrace probe statistic ---");
        let _ = writeln!(
            s,
            "{} packets transmitted, {} packets received, {} lost, {}% packet loss, {} duplicates, {} reordered, {} late",
            self.transmitted,
            self.received,
            self.lost,
            fmt_pct(self.loss_pct()),
            self.duplicates,
            self.reordered,
            self.late
        );
        if self.send_errors > 0 {
            let _ = writeln!(s, "{} sends failed", self.send_errors);
        }
        if let (Some(min), Some(avg), Some(max)) = (self.min_ns(), self.avg_ns(), self.max_ns()) {
            let _ = writeln!(
                s,
                "round-trip min/avg/max = {}/{}/{} ms",
                ms(min),
                ms(avg),
                ms(max)
            );
        }
        if let Some(p) = self.percentiles(&[50.0, 99.0, 99.9]) {
            let _ = writeln!(
                s,
                "round-trip p50/p99/p99.9 = {}/{}/{} ms",
                ms(p[0]),
                ms(p[1]),
                ms(p[2])
            );
        }
        let _ = writeln!(s, "{}", self.drift.line());
        s
    }
}

/// Index (0-based) of the nearest-rank percentile `p` among `n` sorted values.
fn nearest_rank(p: f64, n: usize) -> usize {
    // The epsilon keeps 99.9% of 1000 at rank 999 despite float rounding.
    let rank = (p / 100.0 * n as f64 - 1e-9).ceil() as usize;
    rank.clamp(1, n) - 1
}

/// Milliseconds with three decimals (µs resolution), as ping prints them.
fn ms(ns: u64) -> String {
    stalltrace_analysis::units::ms(ns, 3)
}

fn fmt_pct(p: f64) -> String {
    if p == p.trunc() {
        format!("{p:.0}")
    } else {
        format!("{p:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let st = ProbeStats {
            rtts_ns: (1..=1000).rev().collect(),
            ..Default::default()
        };
        assert_eq!(
            st.percentiles(&[50.0, 99.0, 99.9, 100.0]).unwrap(),
            vec![500, 990, 999, 1000]
        );
        let one = ProbeStats {
            rtts_ns: vec![7],
            ..Default::default()
        };
        assert_eq!(one.percentiles(&[0.0, 50.0, 99.9]).unwrap(), vec![7, 7, 7]);
        assert!(ProbeStats::default().percentiles(&[50.0]).is_none());
    }

    #[test]
    fn render_counts_and_summary() {
        let st = ProbeStats {
            transmitted: 4,
            received: 3,
            lost: 1,
            duplicates: 1,
            rtts_ns: vec![400_000, 1_200_000, 100_000],
            ..Default::default()
        };
        assert_eq!(st.avg_ns(), Some(566_666));
        let r = st.render("10.0.0.2");
        assert!(
            r.contains("--- 10.0.0.2 stalltrace probe statistic ---"),
            "{r}"
        );
        assert!(
            r.contains(
                "4 packets transmitted, 3 packets received, 1 lost, 25% packet loss, 1 duplicates"
            ),
            "{r}"
        );
        assert!(
            r.contains("round-trip min/avg/max = 0.100/0.567/1.200 ms"),
            "{r}"
        );
        assert!(
            r.contains("round-trip p50/p99/p99.9 = 0.400/1.200/1.200 ms"),
            "{r}"
        );
        assert!(r.contains("schedule drift: max 0 µs"), "{r}");
    }
}
