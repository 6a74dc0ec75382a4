//! Durations on the command line (`10ms`, `1s`, `500us`) and in reports.
use std::time::Duration;

/// clap value parser for durations, via humantime.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{e} (examples: 10ms, 1s, 2m)"))
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
