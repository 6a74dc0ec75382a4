//! Durations and sizes: parsed from the command line (`10ms`, `1s`, `4MiB`), always
//! within a stated range, and written in reports (`712 ms`, `1.3 s`).
use std::time::Duration;

/// clap value parser for durations, via humantime.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{e} (examples: 10ms, 1s, 2m)"))
}

/// clap value parser for a duration in `[MIN_NS, MAX_NS]`; the error states the range.
pub fn duration_in<const MIN_NS: u64, const MAX_NS: u64>(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    if !(MIN_NS..=MAX_NS).contains(&ns) {
        return Err(format!(
            "{s:?} is out of range: between {} and {}",
            human_ns(MIN_NS),
            human_ns(MAX_NS)
        ));
    }
    Ok(d)
}

pub const US: u64 = 1_000;
pub const MS: u64 = 1_000_000;
pub const SEC: u64 = 1_000_000_000;
pub const DAY: u64 = 86_400 * SEC;

/// `4MiB`, `256KiB`, `65536`, `1GiB` in bytes, in `[min, max]`; no wrap on any input.
pub fn parse_size(s: &str, min: u64, max: u64) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = if let Some(n) = t.strip_suffix("GiB").or_else(|| t.strip_suffix('G')) {
        (n, 1u64 << 30)
    } else if let Some(n) = t.strip_suffix("MiB").or_else(|| t.strip_suffix('M')) {
        (n, 1u64 << 20)
    } else if let Some(n) = t.strip_suffix("KiB").or_else(|| t.strip_suffix('K')) {
        (n, 1u64 << 10)
    } else {
        (t, 1)
    };
    let range = || format!("between {} and {}", human_bytes(min), human_bytes(max));
    let v = num
        .trim()
        .parse::<u64>()
        .map_err(|e| format!("{s:?}: {e} (examples: 256KiB, 4MiB)"))?
        .checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is out of range: {}", range()))?;
    if !(min..=max).contains(&v) {
        return Err(format!("{s:?} is out of range: {}", range()));
    }
    Ok(v)
}

/// `4 MiB`, `512 KiB`, `100 B`.
pub fn human_bytes(b: u64) -> String {
    if b >= 1 << 30 && b.is_multiple_of(1 << 30) {
        format!("{} GiB", b >> 30)
    } else if b >= 1 << 20 {
        format!("{} MiB", b >> 20)
    } else if b >= 1 << 10 {
        format!("{} KiB", b >> 10)
    } else {
        format!("{b} B")
    }
}

/// Milliseconds with `decimals` places (`99.3`, `0.412`), as probers print RTTs.
pub fn ms(ns: u64, decimals: usize) -> String {
    format!("{:.decimals$}", ns as f64 / 1e6)
}

/// `712 ms`, `1.3 s`, `850 µs`: short, for sentences.
pub fn human_ns(ns: u64) -> String {
    if ns >= 10_000_000_000 {
        format!("{:.0} s", ns as f64 / 1e9)
    } else if ns >= 1_000_000_000 {
        format!("{:.1} s", ns as f64 / 1e9)
    } else if ns >= 1_000_000 {
        format!("{} ms", ns.saturating_add(500_000) / 1_000_000)
    } else if ns >= 1_000 {
        format!("{} µs", ns.saturating_add(500) / 1_000)
    } else {
        format!("{ns} ns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_parsers_state_the_range() {
        assert_eq!(
            duration_in::<MS, SEC>("10ms"),
            Ok(Duration::from_millis(10))
        );
        let e = duration_in::<MS, SEC>("2s").unwrap_err();
        assert!(e.contains("between 1 ms and 1.0 s"), "{e}");
        assert!(duration_in::<MS, { 3650 * DAY }>("300000000000y").is_err());
        assert_eq!(parse_size("4MiB", 4096, 1 << 30), Ok(4 << 20));
        assert_eq!(parse_size("1G", 4096, 1 << 30), Ok(1 << 30));
        let e = parse_size("17592186044420MiB", 4096, 1 << 30).unwrap_err();
        assert!(e.contains("out of range"), "{e}");
        assert!(parse_size("lots", 1, 2).is_err());
        assert_eq!(human_bytes(4 << 20), "4 MiB");
        assert_eq!(ms(99_340_000, 1), "99.3");
        assert_eq!(ms(412_345, 3), "0.412");
    }

    #[test]
    fn parses_and_formats() {
        assert_eq!(parse_duration("10ms").unwrap(), Duration::from_millis(10));
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert!(parse_duration("ten").unwrap_err().contains("examples"));
        assert_eq!(human_ns(712_400_000), "712 ms");
        assert_eq!(human_ns(1_340_000_000), "1.3 s");
        assert_eq!(human_ns(850_000), "850 µs");
        assert_eq!(human_ns(12), "12 ns");
        assert_eq!(
            human_ns(u64::MAX),
            "18446744074 s",
            "no overflow at the top"
        );
    }
}
