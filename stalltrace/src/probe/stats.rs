//! Run statistics: counts, RTT summary and percentiles, schedule drift. RTTs go into a
//! histogram, not a list: a prober that runs for months (`watch --probe`) keeps the
//! same few hundred KiB, with exact count, sum, minimum and maximum and percentiles to
//! three significant digits (1 µs resolution below 2 ms).
use std::fmt::Write as _;

use hdrhistogram::Histogram;

use super::schedule::Drift;

/// The RTTs of answered probes.
#[derive(Debug, Clone)]
pub struct Rtts {
    /// Microseconds up to an hour, three significant digits (`None` only if it could
    /// not be made).
    hist: Option<Histogram<u64>>,
    count: u64,
    sum: u128,
    min: u64,
    max: u64,
}

/// The histogram counts microseconds (exact below 2 048 µs), up to an hour.
const UNIT_NS: u64 = 1_000;
const HIGHEST_US: u64 = 3_600_000_000;

impl Default for Rtts {
    fn default() -> Self {
        Self {
            hist: Histogram::new_with_bounds(1, HIGHEST_US, 3).ok(),
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }
}

impl Rtts {
    pub fn record(&mut self, ns: u64) {
        if let Some(h) = self.hist.as_mut() {
            h.saturating_record(ns / UNIT_NS);
        }
        self.count += 1;
        self.sum += u128::from(ns);
        self.min = self.min.min(ns);
        self.max = self.max.max(ns);
    }

    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Counters the histogram holds: its memory, fixed whatever was recorded.
    pub fn slots(&self) -> usize {
        self.hist.as_ref().map_or(0, Histogram::distinct_values)
    }
}

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
    /// Answers ignored because they could not be ours (TCP: a wrong acknowledgment).
    pub forged: u64,
    /// RTTs of the in-time answers.
    pub rtts: Rtts,
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
        (!self.rtts.is_empty()).then_some(self.rtts.min)
    }

    pub fn max_ns(&self) -> Option<u64> {
        (!self.rtts.is_empty()).then_some(self.rtts.max)
    }

    pub fn avg_ns(&self) -> Option<u64> {
        if self.rtts.is_empty() {
            return None;
        }
        u64::try_from(self.rtts.sum / u128::from(self.rtts.count)).ok()
    }

    /// Nearest-rank percentiles (`ps` in percent, e.g. 99.9) over the answered probes,
    /// each the low end of its histogram bucket (within 0.1 %), kept within the exact
    /// minimum and maximum.
    pub fn percentiles(&self, ps: &[f64]) -> Option<Vec<u64>> {
        let r = &self.rtts;
        let h = r.hist.as_ref()?;
        if r.is_empty() {
            return None;
        }
        let n = usize::try_from(h.len()).ok()?;
        Some(
            ps.iter()
                .map(|&p| {
                    let rank = nearest_rank(p, n) as u64 + 1;
                    let mut seen = 0u64;
                    let v = h
                        .iter_recorded()
                        .find(|v| {
                            seen += v.count_at_value();
                            seen >= rank
                        })
                        .map_or(r.max / UNIT_NS, |v| {
                            h.lowest_equivalent(v.value_iterated_to())
                        });
                    // The extremes are known exactly: their buckets say them so.
                    if v == h.lowest_equivalent(r.max / UNIT_NS) {
                        r.max
                    } else if v == h.lowest_equivalent(r.min / UNIT_NS) {
                        r.min
                    } else {
                        (v * UNIT_NS).clamp(r.min, r.max)
                    }
                })
                .collect(),
        )
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
        if self.forged > 0 {
            let _ = writeln!(
                s,
                "{} answers ignored: they did not acknowledge a probe's sequence number (forged, or for an older probe)",
                self.forged
            );
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

    fn with(rtts: impl IntoIterator<Item = u64>) -> ProbeStats {
        let mut st = ProbeStats::default();
        for r in rtts {
            st.rtts.record(r);
        }
        st
    }

    #[test]
    fn percentiles_nearest_rank() {
        // 1 to 1000 µs: exact at the microsecond.
        let st = with((1..=1000).rev().map(|us| us * 1_000));
        assert_eq!(
            st.percentiles(&[50.0, 99.0, 99.9, 100.0]).unwrap(),
            vec![500_000, 990_000, 999_000, 1_000_000]
        );
        let one = with([7]);
        assert_eq!(one.percentiles(&[0.0, 50.0, 99.9]).unwrap(), vec![7, 7, 7]);
        assert!(ProbeStats::default().percentiles(&[50.0]).is_none());
        // Above 2 ms, within 0.1 %: the low end of the value's bucket.
        let slow = with([100_000_000, 123_456_789, 200_000_000]);
        let p = slow.percentiles(&[50.0]).unwrap()[0];
        assert!((123_456_789 - 123_457..123_456_789).contains(&p), "{p}");
    }

    /// An hour of 10 ms probes (360 000 answers) and a day's worth later: the same
    /// memory, exact count, minimum, maximum and mean.
    #[test]
    fn a_long_run_keeps_its_rtts_in_fixed_memory() {
        let mut st = ProbeStats::default();
        let slots = st.rtts.slots();
        assert!(slots > 0 && slots < 64 << 10, "{slots} counters");
        for i in 0..360_000u64 {
            st.rtts.record(200_000 + (i % 1000) * 1_000);
        }
        assert_eq!(st.rtts.slots(), slots);
        for _ in 0..(24 * 360_000u64 / 1000) {
            st.rtts.record(2_000_000_000);
        }
        assert_eq!(st.rtts.slots(), slots, "no growth with the answers");
        assert_eq!(st.rtts.len(), 360_000 + 8_640);
        assert_eq!(st.min_ns(), Some(200_000));
        assert_eq!(st.max_ns(), Some(2_000_000_000));
        let want = (360_000u128 * 200_000 + 360 * 999_000 * 1000 / 2 + 8_640 * 2_000_000_000)
            / (360_000 + 8_640);
        assert_eq!(u128::from(st.avg_ns().unwrap()), want);
    }

    #[test]
    fn render_counts_and_summary() {
        let st = ProbeStats {
            transmitted: 4,
            received: 3,
            lost: 1,
            duplicates: 1,
            ..with([400_000, 1_200_000, 100_000])
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
