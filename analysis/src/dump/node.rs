//! Facts about the recording node that explain stalls without being events: how many
//! memory cgroups are alive and dying, and what one read of `memory.stat` cost, measured
//! once when `record` starts (`stalltrace doctor` measures the same, and more). A report
//! can then say "N dying memory cgroups at record time" next to an episode whose culprit
//! sat in a slow `read` of `memory.stat`.
//!
//! Every count is an `Option`: `None` means "not measured", with the reason in `notes`,
//! never a guessed zero. Fields are only ever added; a reader ignores fields it does not
//! know and defaults the ones it misses.
use serde::{Deserialize, Serialize};

/// Which cgroup hierarchy holds the memory controller.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CgroupHierarchy {
    /// cgroup v1: a `memory` hierarchy of its own (possibly next to an empty cgroup2).
    V1,
    /// cgroup v2: the unified hierarchy with `memory` in `cgroup.controllers`.
    V2,
    /// No memory controller was found (not mounted, or disabled).
    #[default]
    None,
}

impl CgroupHierarchy {
    pub fn label(self) -> &'static str {
        match self {
            CgroupHierarchy::V1 => "cgroup v1",
            CgroupHierarchy::V2 => "cgroup v2",
            CgroupHierarchy::None => "no memory cgroup hierarchy",
        }
    }
}

/// Memory-cgroup facts of the node at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CgroupFacts {
    pub hierarchy: CgroupHierarchy,
    /// Memory cgroups that still have a directory (the root included).
    pub memcg_live: Option<u64>,
    /// Memory cgroups removed but not yet freed (pinned by charged pages). v1: the
    /// `memory` line of /proc/cgroups minus the directories; v2: `cgroup.stat` of the root.
    pub memcg_dying: Option<u64>,
    /// Directories under the kubepods subtree (`kubepods` or `kubepods.slice`), the
    /// subtree's root included; `None` when there is no such subtree.
    pub kubepods_live: Option<u64>,
    /// Dying cgroups under kubepods (v2 only: v1 counts dying ones per hierarchy).
    pub kubepods_dying: Option<u64>,
    /// Median and slowest of a few timed reads of the hierarchy root's `memory.stat`.
    pub root_stat_read_median_ns: Option<u64>,
    pub root_stat_read_max_ns: Option<u64>,
    /// How many reads the median and maximum are over.
    pub root_stat_reads: u32,
    /// RFC 3339 wall-clock time of the measurement.
    pub measured_at: String,
    /// Why a field is `None`, or why a number is a lower bound (a walk cut short).
    pub notes: Vec<String>,
}

impl CgroupFacts {
    /// `"3120 dying memory cgroups (1904 live) at record time"`, when counted.
    pub fn dying_phrase(&self, when: &str) -> Option<String> {
        let dying = self.memcg_dying?;
        Some(match self.memcg_live {
            Some(live) => format!("{dying} dying memory cgroups ({live} live) {when}"),
            None => format!("{dying} dying memory cgroups {when}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reads_older_headers() {
        let f = CgroupFacts {
            hierarchy: CgroupHierarchy::V1,
            memcg_live: Some(1904),
            memcg_dying: Some(3120),
            kubepods_live: Some(1500),
            kubepods_dying: None,
            root_stat_read_median_ns: Some(1_200_000),
            root_stat_read_max_ns: Some(4_000_000),
            root_stat_reads: 5,
            measured_at: "2026-01-01T00:00:00.000Z".into(),
            notes: vec!["v1 counts dying cgroups only for the whole hierarchy".into()],
        };
        let s = serde_json::to_string(&f).unwrap();
        assert!(s.contains("\"hierarchy\":\"v1\""), "{s}");
        assert_eq!(serde_json::from_str::<CgroupFacts>(&s).unwrap(), f);
        // A header written before a field existed still reads.
        let old: CgroupFacts =
            serde_json::from_str(r#"{"hierarchy":"v2","memcg_dying":7}"#).unwrap();
        assert_eq!(old.hierarchy, CgroupHierarchy::V2);
        assert_eq!(old.memcg_dying, Some(7));
        assert_eq!(old.memcg_live, None);
        assert_eq!(
            f.dying_phrase("at record time").as_deref(),
            Some("3120 dying memory cgroups (1904 live) at record time")
        );
        assert_eq!(CgroupFacts::default().dying_phrase("now"), None);
    }
}
