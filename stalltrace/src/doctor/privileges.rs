//! The tool's own prerequisites: what `record` (and `lab`, and the verifier check of
//! `features`) need from this process. `doctor` itself needs none of it.
use serde::{Deserialize, Serialize};

use super::{
    kernel::{KernelFacts, KernelVersion},
    read_text, Check, Roots, Status,
};
use crate::{
    host::{cap_eff, effective_caps, CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN, CAP_SYS_RESOURCE},
    kernel::preflight,
};
/// CAP_BPF and CAP_PERFMON exist from 5.8; before, tracing needs CAP_SYS_ADMIN.
const SPLIT_CAPS: KernelVersion = KernelVersion {
    major: 5,
    minor: 8,
    patch: 0,
};
/// From 5.11 BPF memory is charged to the memory cgroup, not to RLIMIT_MEMLOCK.
const MEMCG_ACCOUNTING: KernelVersion = KernelVersion {
    major: 5,
    minor: 11,
    patch: 0,
};
/// What `record` locks with its defaults: the 4 MiB ring buffer plus maps, rounded up.
const RECORD_LOCKS: u64 = 16 << 20;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ToolFacts {
    pub euid: Option<u32>,
    /// CapEff of this process.
    pub cap_eff: Option<u64>,
    pub cap_bpf: bool,
    pub cap_perfmon: bool,
    pub cap_sys_admin: bool,
    pub cap_sys_resource: bool,
    /// RLIMIT_MEMLOCK soft and hard limits in bytes (`None` in a field: unlimited).
    pub memlock: Option<(Option<u64>, Option<u64>)>,
    /// What `record`'s own privilege check says here (the live machine only).
    pub record_says: Option<String>,
}

fn euid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `Max locked memory  8388608  8388608  bytes` (or `unlimited`).
fn memlock(limits: &str) -> Option<(Option<u64>, Option<u64>)> {
    let rest = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max locked memory"))?;
    let mut f = rest.split_whitespace();
    let parse = |v: Option<&str>| -> Option<Option<u64>> {
        match v? {
            "unlimited" => Some(None),
            n => n.parse().ok().map(Some),
        }
    };
    Some((parse(f.next())?, parse(f.next())?))
}

pub fn read(roots: &Roots) -> ToolFacts {
    let status = read_text(&roots.proc("proc/self/status")).unwrap_or_default();
    // On the live machine the capability bits come from preflight, as `record`'s do.
    let caps = if roots.is_live() {
        Some(effective_caps())
    } else {
        cap_eff(&status)
    };
    let has = |c: u32| caps.is_some_and(|v| v & (1u64 << c) != 0);
    ToolFacts {
        euid: euid(&status),
        cap_eff: caps,
        cap_bpf: has(CAP_BPF),
        cap_perfmon: has(CAP_PERFMON),
        cap_sys_admin: has(CAP_SYS_ADMIN),
        cap_sys_resource: has(CAP_SYS_RESOURCE),
        memlock: memlock(&read_text(&roots.proc("proc/self/limits")).unwrap_or_default()),
        record_says: roots.is_live().then(|| {
            match preflight::check_privileges("stalltrace record") {
                Ok(()) => "ready".to_string(),
                Err(e) => e.to_string(),
            }
        }),
    }
}

fn limit(v: Option<u64>) -> String {
    v.map(stalltrace_analysis::units::human_bytes)
        .unwrap_or_else(|| "unlimited".into())
}

pub fn check(t: &ToolFacts, kernel: &KernelFacts) -> Check {
    const ID: &str = "privileges";
    const TITLE: &str = "stalltrace's prerequisites";
    let mut details = vec![];
    let caps_known = t.cap_eff.is_some();
    let split = kernel.version.is_none_or(|v| v >= SPLIT_CAPS);
    let can_trace = t.cap_sys_admin || (split && t.cap_bpf && t.cap_perfmon);
    if let Some(c) = t.cap_eff {
        details.push(format!(
            "CapEff {c:016x}: CAP_BPF {}, CAP_PERFMON {}, CAP_SYS_ADMIN {}",
            yes(t.cap_bpf),
            yes(t.cap_perfmon),
            yes(t.cap_sys_admin)
        ));
    }
    if let Some(says) = &t.record_says {
        details.push(format!("record's own check: {says}"));
    }
    let accounting = kernel.version.map(|v| v >= MEMCG_ACCOUNTING);
    let mut memlock_short = false;
    match t.memlock {
        Some((soft, hard)) => {
            let note = match accounting {
                Some(true) => "this kernel charges BPF memory to the memory cgroup (5.11+): the limit does not apply; record notes a failed raise and goes on".to_string(),
                Some(false) => {
                    let raisable = hard.is_none() || t.cap_sys_resource;
                    memlock_short = soft.is_some_and(|s| s < RECORD_LOCKS) && !raisable;
                    format!(
                        "before 5.11 BPF maps count against this limit; record raises it to \
                         unlimited, which {}",
                        if raisable {
                            "is allowed here"
                        } else {
                            "needs CAP_SYS_RESOURCE or an unlimited hard limit"
                        }
                    )
                }
                None => "kernels from 5.11 charge BPF memory to the memory cgroup instead".into(),
            };
            details.push(format!(
                "RLIMIT_MEMLOCK {} (hard {}): {note}",
                limit(soft),
                limit(hard)
            ));
        }
        None => details.push("RLIMIT_MEMLOCK: /proc/self/limits not readable".into()),
    }
    details
        .push("tracefs: not needed; doctor itself needs no privilege (it only reads files)".into());
    if !caps_known {
        return Check::new(
            ID,
            TITLE,
            Status::Unknown,
            "capabilities unknown (no readable CapEff in /proc/self/status)",
        )
        .details(details);
    }
    let who = match t.euid {
        Some(0) => "root".to_string(),
        Some(uid) => format!("uid {uid}"),
        None => "this user".into(),
    };
    if !can_trace {
        let need = if split {
            "CAP_BPF+CAP_PERFMON or CAP_SYS_ADMIN"
        } else {
            "CAP_SYS_ADMIN (this kernel predates CAP_BPF, 5.8)"
        };
        return Check::new(
            ID,
            TITLE,
            Status::Warn,
            format!("running as {who} without {need}: record and lab would refuse to start"),
        )
        .todo("run record and lab with sudo (or grant the capabilities); doctor's answers do not depend on it")
        .details(details);
    }
    if memlock_short {
        return Check::new(
            ID,
            TITLE,
            Status::Warn,
            format!("running as {who} with tracing capabilities, but RLIMIT_MEMLOCK is low and cannot be raised"),
        )
        .todo("raise the memlock limit (ulimit -l unlimited, LimitMEMLOCK=infinity) before record")
        .details(details);
    }
    Check::new(
        ID,
        TITLE,
        Status::Ok,
        format!("running as {who} with the capabilities record needs"),
    )
    .details(details)
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::testfs::Tree;

    const LIMITS: &str =
        "Limit                     Soft Limit           Hard Limit           Units     \n\
        Max cpu time              unlimited            unlimited            seconds   \n\
        Max locked memory         8388608              8388608              bytes     \n";

    fn kernel(v: (u32, u32, u32)) -> KernelFacts {
        KernelFacts {
            version: Some(v.into()),
            ..KernelFacts::default()
        }
    }

    #[test]
    fn root_with_all_capabilities_is_ok() {
        let t = Tree::new("privs-root");
        t.file(
            "proc/self/status",
            "Uid:\t0\t0\t0\t0\nCapEff:\t000001fffeffffff\n",
        )
        .file("proc/self/limits", LIMITS);
        let f = read(&t.roots());
        assert!(f.cap_bpf && f.cap_perfmon && f.cap_sys_admin);
        assert_eq!(f.memlock, Some((Some(8 << 20), Some(8 << 20))));
        assert_eq!(f.record_says, None);
        let c = check(&f, &kernel((6, 18, 44)));
        assert_eq!(c.status, Status::Ok);
        assert_eq!(
            c.summary,
            "running as root with the capabilities record needs"
        );
        assert!(c
            .details
            .iter()
            .any(|d| d.contains("RLIMIT_MEMLOCK 8 MiB (hard 8 MiB): this kernel charges")));
    }

    #[test]
    fn not_root_warns_clearly_and_nothing_is_unknown_by_accident() {
        let t = Tree::new("privs-user");
        t.file(
            "proc/self/status",
            "Uid:\t1000\t1000\t1000\t1000\nCapEff:\t0000000000000000\n",
        )
        .file("proc/self/limits", LIMITS);
        let c = check(&read(&t.roots()), &kernel((6, 18, 44)));
        assert_eq!(c.status, Status::Warn);
        assert_eq!(
            c.summary,
            "running as uid 1000 without CAP_BPF+CAP_PERFMON or CAP_SYS_ADMIN: record and lab would refuse to start"
        );
        assert!(c.what_to_do.as_deref().unwrap().contains("sudo"));
        // An old kernel needs CAP_SYS_ADMIN even with the new bits set.
        t.file(
            "proc/self/status",
            "Uid:\t0\t0\t0\t0\nCapEff:\t000000c000000000\n",
        );
        let c = check(&read(&t.roots()), &kernel((4, 19, 0)));
        assert_eq!(c.status, Status::Warn);
        assert!(c.summary.contains("predates CAP_BPF"), "{}", c.summary);
        // CAP_BPF+CAP_PERFMON alone suffice from 5.8; an old kernel with a low, fixed
        // memlock limit warns about it.
        let c = check(&read(&t.roots()), &kernel((5, 15, 0)));
        assert_eq!(c.status, Status::Ok);
        t.file(
            "proc/self/status",
            "Uid:\t0\t0\t0\t0\nCapEff:\t0000000000200000\n",
        );
        let c = check(&read(&t.roots()), &kernel((5, 4, 0)));
        assert_eq!(c.status, Status::Warn);
        assert!(c.summary.contains("RLIMIT_MEMLOCK is low"), "{}", c.summary);
    }

    #[test]
    fn nothing_readable_is_unknown() {
        let t = Tree::new("privs-none");
        let c = check(&read(&t.roots()), &KernelFacts::default());
        assert_eq!(c.status, Status::Unknown);
        assert!(c.details.iter().any(|d| d.contains("not readable")));
    }
}
