//! CPU sets as the kernel writes them: lists (`0-3,8`, smp_affinity_list,
//! Cpus_allowed_list, nohz_full) and hex masks (`00000000,00000003`, rps_cpus), and
//! back to a short list for people.
use std::collections::BTreeSet;

/// Highest CPU number accepted: bounds what a corrupt or hostile file can make us
/// allocate (Linux's NR_CPUS tops out at 8192).
const MAX_CPU: u32 = 8191;

pub type CpuSet = BTreeSet<u32>;

/// `0-3,8,10-11` → {0,1,2,3,8,10,11}; empty or unparsable text → empty set.
pub fn parse_list(s: &str) -> CpuSet {
    let mut set = CpuSet::new();
    for part in s.trim().split(',').map(str::trim).filter(|p| !p.is_empty()) {
        // `0-7:2/4` (stride groups) exist in kernel syntax for boot options; ranges with
        // a stride never appear in the files read here, so such a part is skipped.
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse::<u32>(), b.trim().parse::<u32>()),
            None => (part.parse::<u32>(), part.parse::<u32>()),
        };
        if let (Ok(lo), Ok(hi)) = (lo, hi) {
            for c in lo..=hi.min(MAX_CPU) {
                set.insert(c);
            }
        }
    }
    set
}

/// `00000000,00000003` (32-bit groups, most significant first) → {0,1}.
pub fn parse_mask(s: &str) -> CpuSet {
    let mut set = CpuSet::new();
    let digits: Vec<u32> = s
        .trim()
        .chars()
        .filter(|c| *c != ',')
        .map(|c| c.to_digit(16))
        .collect::<Option<Vec<u32>>>()
        .unwrap_or_default();
    // The last hex digit holds CPUs 0-3.
    for (i, d) in digits.iter().rev().enumerate() {
        for bit in 0..4u32 {
            let cpu = u32::try_from(i)
                .unwrap_or(u32::MAX)
                .saturating_mul(4)
                .saturating_add(bit);
            if d & (1 << bit) != 0 && cpu <= MAX_CPU {
                set.insert(cpu);
            }
        }
    }
    set
}

/// {0,1,2,3,8} → `0-3,8`; empty → `none`.
pub fn format(set: &CpuSet) -> String {
    let mut parts: Vec<String> = vec![];
    let mut run: Option<(u32, u32)> = None;
    for &c in set {
        run = match run {
            Some((lo, hi)) if c == hi.saturating_add(1) => Some((lo, c)),
            Some((lo, hi)) => {
                parts.push(span(lo, hi));
                Some((c, c))
            }
            None => Some((c, c)),
        };
    }
    if let Some((lo, hi)) = run {
        parts.push(span(lo, hi));
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(",")
    }
}

/// {1} → `CPU 1`, {0,1} → `CPUs 0-1`, {} → `no CPU`.
pub fn words(set: &CpuSet) -> String {
    match set.len() {
        0 => "no CPU".into(),
        1 => format!("CPU {}", format(set)),
        _ => format!("CPUs {}", format(set)),
    }
}

fn span(lo: u32, hi: u32) -> String {
    if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}-{hi}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_masks_and_back() {
        assert_eq!(format(&parse_list("0-3,8,10-11\n")), "0-3,8,10-11");
        assert_eq!(format(&parse_list("")), "none");
        assert_eq!(format(&parse_list("1")), "1");
        assert_eq!(words(&parse_list("1")), "CPU 1");
        assert_eq!(words(&parse_list("0-1")), "CPUs 0-1");
        assert_eq!(words(&parse_list("")), "no CPU");
        assert_eq!(format(&parse_list("garbage,2")), "2");
        assert_eq!(format(&parse_mask("00000000,00000003\n")), "0-1");
        assert_eq!(format(&parse_mask("0")), "none");
        assert_eq!(format(&parse_mask("80000000,00000000")), "63");
        assert_eq!(format(&parse_mask("f0")), "4-7");
        assert_eq!(format(&parse_mask("zz")), "none");
        // A hostile range is clamped, not allocated.
        assert_eq!(parse_list("0-4294967295").len(), (MAX_CPU + 1) as usize);
    }
}
