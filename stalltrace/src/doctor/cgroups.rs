//! Memory cgroups, live and dying. A removed memory cgroup stays "dying" while pages
//! charged to it (page cache, dentries, inodes) remain; the kernel still walks it. The
//! 2019 GitHub incident's node had enough of them that one read of memory.stat took 150 ms.
//!
//! v1: /proc/cgroups counts every memory cgroup, dying ones included, while the
//! directory tree shows only live ones: the difference is the dying count (the 2019 GitHub incident's own
//! method). v2: `cgroup.stat` says it (`nr_dying_subsys_memory` from 6.11, else
//! `nr_dying_descendants`, which counts dying cgroups of any controller).
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Instant,
};

use serde::{Deserialize, Serialize};
use stalltrace_analysis::dump::CgroupHierarchy;

use super::{count, kernel::KernelFacts, read_text, Budget, Check, Roots, Status};

/// More dying memory cgroups than this: warn. Each one is walked by whoever reads stats
/// or reclaims on its ancestors (see [`why_dying_matter`]).
pub const DYING_WARN: u64 = 1_000;
/// More than this: bad. The 2019 GitHub incident's nodes had tens of thousands; a983b5ebee57 (4.16)
/// quotes 14 s memory.stat reads with "tens of thousands of ghost cgroups".
pub const DYING_BAD: u64 = 10_000;

/// Names of the Kubernetes pod subtree (cgroupfs and systemd drivers).
const KUBEPODS: [&str; 2] = ["kubepods", "kubepods.slice"];
/// Largest top-level subtrees kept.
const LARGEST: usize = 5;

/// A subtree of the memory hierarchy: how many cgroups it holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Subtree {
    /// Path below the hierarchy root (`kubepods`, `system.slice`).
    pub path: String,
    /// Directories in it, itself included (a lower bound when the walk was cut).
    pub cgroups: u64,
    /// Dying cgroups below it (v2 only).
    pub dying: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Census {
    pub hierarchy: CgroupHierarchy,
    /// Where the hierarchy's root was read.
    pub root: Option<PathBuf>,
    /// Live memory cgroups, the root included.
    pub live: Option<u64>,
    pub dying: Option<u64>,
    /// How `dying` was counted.
    pub method: String,
    /// v1: the `memory` line's `num_cgroups` in /proc/cgroups (live + dying).
    pub proc_cgroups_memory: Option<u64>,
    pub dirs_walked: u64,
    pub walk_cut: bool,
    pub walk_ms: u64,
    pub kubepods: Option<Subtree>,
    /// The largest top-level subtrees, largest first.
    pub largest: Vec<Subtree>,
    /// Why something is unknown, or a lower bound.
    pub notes: Vec<String>,
}

/// Every directory the census walked, root first: memory.stat is timed over these.
#[derive(Debug, Clone, Default)]
pub struct Dirs(pub(crate) Vec<PathBuf>);

/// Where the memory controller lives: /proc/mounts first, the usual places second.
fn locate(roots: &Roots) -> Option<(CgroupHierarchy, PathBuf)> {
    let mut v2: Vec<PathBuf> = vec![];
    let mut v1: Vec<PathBuf> = vec![];
    if let Ok(mounts) = read_text(&roots.proc("proc/mounts")) {
        for line in mounts.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(mp), Some(fstype), Some(opts)) = (f.get(1), f.get(2), f.get(3)) else {
                continue;
            };
            match *fstype {
                "cgroup2" => v2.push(roots.sys(mp)),
                "cgroup" if opts.split(',').any(|o| o == "memory") => v1.push(roots.sys(mp)),
                _ => {}
            }
        }
    }
    v2.push(roots.sys("sys/fs/cgroup"));
    v2.push(roots.sys("sys/fs/cgroup/unified"));
    v1.push(roots.sys("sys/fs/cgroup/memory"));
    for p in v2 {
        let controllers = read_text(&p.join("cgroup.controllers")).unwrap_or_default();
        if controllers.split_whitespace().any(|c| c == "memory") {
            return Some((CgroupHierarchy::V2, p));
        }
    }
    v1.into_iter()
        .find(|p| p.join("memory.usage_in_bytes").exists() || p.join("memory.stat").exists())
        .map(|p| (CgroupHierarchy::V1, p))
}

/// `cgroup.stat` as name → value.
fn cgroup_stat(dir: &Path) -> BTreeMap<String, u64> {
    read_text(&dir.join("cgroup.stat"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// Dying memory cgroups at and below `dir` (v2), and how that was counted.
fn v2_dying(stat: &BTreeMap<String, u64>) -> Option<(u64, &'static str)> {
    if let Some(n) = stat.get("nr_dying_subsys_memory") {
        return Some((*n, "cgroup.stat nr_dying_subsys_memory"));
    }
    stat.get("nr_dying_descendants").map(|n| {
        (
            *n,
            "cgroup.stat nr_dying_descendants (dying cgroups of any controller: an upper bound)",
        )
    })
}

/// `num_cgroups` and `enabled` of the memory line of /proc/cgroups.
fn proc_cgroups_memory(roots: &Roots) -> Option<(u64, bool)> {
    let text = read_text(&roots.proc("proc/cgroups")).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.first() != Some(&"memory") {
            return None;
        }
        Some((f.get(2)?.parse().ok()?, f.get(3)? != &"0"))
    })
}

struct Walk {
    dirs: Vec<PathBuf>,
    /// Directories below each top-level child, the child included.
    top: BTreeMap<String, u64>,
    cut: bool,
}

/// Every directory below `root`, bounded by `budget`; the root first.
fn walk(root: &Path, mut budget: Budget) -> Walk {
    let mut w = Walk {
        dirs: vec![],
        top: BTreeMap::new(),
        cut: false,
    };
    // (directory, the top-level child it is under)
    let mut stack: Vec<(PathBuf, Option<String>)> = vec![(root.to_path_buf(), None)];
    while let Some((dir, top)) = stack.pop() {
        if !budget.take() {
            break;
        }
        if let Some(t) = &top {
            *w.top.entry(t.clone()).or_default() += 1;
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                // cgroupfs fills d_type: no extra stat per entry; links are not followed.
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    let child_top = top
                        .clone()
                        .unwrap_or_else(|| e.file_name().to_string_lossy().into_owned());
                    stack.push((e.path(), Some(child_top)));
                }
            }
        }
        w.dirs.push(dir);
    }
    w.cut = budget.cut();
    w
}

/// Counts live and dying memory cgroups, the kubepods subtree and the largest subtrees;
/// also returns the directories walked.
pub fn census(roots: &Roots, budget: Budget) -> (Census, Dirs) {
    let mut c = Census::default();
    let Some((hierarchy, root)) = locate(roots) else {
        c.notes.push(
            "no memory cgroup hierarchy found (no cgroup2 with memory in cgroup.controllers, \
             no cgroup v1 memory mount)"
                .into(),
        );
        return (c, Dirs::default());
    };
    c.hierarchy = hierarchy;
    let before = if hierarchy == CgroupHierarchy::V1 {
        proc_cgroups_memory(roots)
    } else {
        None
    };
    if let Some((_, false)) = before {
        c.hierarchy = CgroupHierarchy::None;
        c.notes
            .push("the memory controller is disabled (/proc/cgroups: enabled 0)".into());
        return (c, Dirs::default());
    }
    let started = Instant::now();
    let w = walk(&root, budget);
    c.walk_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    c.dirs_walked = w.dirs.len() as u64;
    c.walk_cut = w.cut;
    if w.cut {
        c.notes.push(format!(
            "directory walk cut after {} directories and {} ms: counts from it are lower bounds",
            count(c.dirs_walked),
            c.walk_ms
        ));
    }
    let mut largest: Vec<Subtree> = w
        .top
        .iter()
        .map(|(name, n)| Subtree {
            path: name.clone(),
            cgroups: *n,
            dying: None,
        })
        .collect();
    largest.sort_by(|a, b| b.cgroups.cmp(&a.cgroups).then(a.path.cmp(&b.path)));
    largest.truncate(LARGEST);
    let kube_name = KUBEPODS
        .iter()
        .find(|k| root.join(k).is_dir())
        .map(|k| k.to_string());
    let mut kubepods = kube_name.as_ref().map(|k| Subtree {
        path: k.clone(),
        cgroups: w.top.get(k).copied().unwrap_or(0),
        dying: None,
    });

    match hierarchy {
        CgroupHierarchy::V1 => {
            c.live = (!w.cut).then_some(c.dirs_walked);
            // Read again after the walk: cgroups made or freed meanwhile move both counts.
            let after = proc_cgroups_memory(roots);
            let total = match (before, after) {
                (Some((a, _)), Some((b, _))) => Some(a.min(b)),
                (a, b) => a.or(b).map(|(n, _)| n),
            };
            c.proc_cgroups_memory = total;
            c.method =
                "/proc/cgroups memory num_cgroups minus directories under the hierarchy".into();
            match total {
                Some(total) if !w.cut => {
                    c.dying = Some(total.saturating_sub(c.dirs_walked));
                    if total < c.dirs_walked {
                        c.notes.push(format!(
                            "cgroups were created during the walk ({} counted, {} directories): \
                             the dying count is approximate",
                            count(total),
                            count(c.dirs_walked)
                        ));
                    }
                }
                Some(total) => c.notes.push(format!(
                    "dying memory cgroups not counted: the walk was cut (at most {} dying)",
                    count(total.saturating_sub(c.dirs_walked))
                )),
                None => c.notes.push(
                    "dying memory cgroups not counted: /proc/cgroups has no readable memory line"
                        .into(),
                ),
            }
            if kubepods.is_some() {
                c.notes.push(
                    "cgroup v1 counts dying cgroups only for the whole hierarchy, not per subtree"
                        .into(),
                );
            }
        }
        CgroupHierarchy::V2 => {
            let stat = cgroup_stat(&root);
            c.live = match stat.get("nr_subsys_memory") {
                // Counts the root's own memcg too.
                Some(n) => Some(*n),
                None if !w.cut => Some(
                    w.dirs
                        .iter()
                        .enumerate()
                        .filter(|(i, d)| *i == 0 || d.join("memory.stat").exists())
                        .count() as u64,
                ),
                None => None,
            };
            match v2_dying(&stat) {
                Some((n, how)) => {
                    c.dying = Some(n);
                    c.method = how.into();
                }
                None => c.notes.push(format!(
                    "dying memory cgroups not counted: no readable cgroup.stat at {}",
                    root.display()
                )),
            }
            for s in largest.iter_mut().chain(kubepods.iter_mut()) {
                s.dying = v2_dying(&cgroup_stat(&root.join(&s.path))).map(|(n, _)| n);
            }
        }
        CgroupHierarchy::None => {}
    }
    if let Some(k) = &kubepods {
        if !w.top.contains_key(&k.path) && w.cut {
            c.notes.push(format!(
                "the walk was cut before reaching {}: its count is unknown",
                k.path
            ));
        }
    }
    c.kubepods = kubepods;
    c.largest = largest;
    c.root = Some(root);
    (c, Dirs(w.dirs))
}

/// Why dying memory cgroups cost something, with the kernel versions that changed it.
pub fn why_dying_matter() -> &'static str {
    "each dying memory cgroup keeps its per-CPU counters and LRU lists until its last page \
     is freed; before 5.2 every memory.stat read walks all of them (the 2019 GitHub incident's 4.9 node: \
     100+ ms per read), and on newer kernels reclaim still iterates them and stat flushes \
     include those with pending updates"
}

pub fn check(c: &Census, kernel: &KernelFacts) -> Check {
    const ID: &str = "memory_cgroups";
    const TITLE: &str = "memory cgroups";
    if c.hierarchy == CgroupHierarchy::None {
        return Check::new(
            ID,
            TITLE,
            Status::Ok,
            "no memory cgroup hierarchy: nothing to walk",
        )
        .details(c.notes.iter().cloned());
    }
    let live = c
        .live
        .map(|n| format!("{} live", count(n)))
        .unwrap_or_else(|| "live unknown".into());
    let kube = match &c.kubepods {
        Some(k) => match k.dying {
            Some(d) => format!(
                "{} under {}, {} dying there",
                count(k.cgroups),
                k.path,
                count(d)
            ),
            None => format!("{} under {}", count(k.cgroups), k.path),
        },
        None => "no kubepods subtree".into(),
    };
    let root = c
        .root
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let mut details = vec![format!("{} at {root}", c.hierarchy.label())];
    if let (Some(total), Some(dying)) = (c.proc_cgroups_memory, c.dying) {
        details.push(format!(
            "/proc/cgroups counts {} memory cgroups, {} directories exist: {} dying ({})",
            count(total),
            count(c.dirs_walked),
            count(dying),
            c.method
        ));
    } else if c.dying.is_some() {
        details.push(format!("dying counted from {}", c.method));
    }
    if !c.largest.is_empty() {
        let list: Vec<String> = c
            .largest
            .iter()
            .map(|s| match s.dying {
                Some(d) => format!("{} {} ({} dying)", s.path, count(s.cgroups), count(d)),
                None => format!("{} {}", s.path, count(s.cgroups)),
            })
            .collect();
        details.push(format!("largest subtrees (cgroups): {}", list.join(", ")));
    }
    details.push(format!(
        "walked {} directories in {} ms",
        count(c.dirs_walked),
        c.walk_ms
    ));
    details.extend(c.notes.iter().cloned());
    details.push(format!(
        "thresholds: warn above {} dying, bad above {}: {}",
        count(DYING_WARN),
        count(DYING_BAD),
        why_dying_matter()
    ));
    if let Some(v) = kernel.version {
        if v < (5, 2, 0).into() {
            details.push(format!(
                "this kernel ({v}) is older than 5.2: memory.stat readers walk every dying one"
            ));
        }
    }
    let Some(dying) = c.dying else {
        return Check::new(
            ID,
            TITLE,
            Status::Unknown,
            format!("dying unknown, {live} ({kube})"),
        )
        .details(details);
    };
    let status = if dying > DYING_BAD {
        Status::Bad
    } else if dying > DYING_WARN {
        Status::Warn
    } else {
        Status::Ok
    };
    let check = Check::new(
        ID,
        TITLE,
        status,
        format!("{} dying, {live} ({kube})", count(dying)),
    )
    .details(details);
    if status == Status::Ok {
        return check;
    }
    check.todo(
        "find what creates and removes short-lived cgroups that leave page cache behind \
         (pods, jobs, transient units); for relief now `sync; echo 3 > /proc/sys/vm/drop_caches` \
         frees the pages that pin them (the 2019 GitHub incident's workaround; cached files are re-read), and \
         then watch this count; kernels from 5.2 stop walking them on every memory.stat \
         read",
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::doctor::testfs::Tree;

    fn budget() -> Budget {
        Budget::new(Duration::from_secs(10), 1_000_000)
    }

    const V1_MOUNTS: &str = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
        cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n\
        cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\n\
        cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n";

    /// v1, hybrid like this machine: 3 120 + 1 904 in /proc/cgroups, 1 904 directories of
    /// which 1 500 under kubepods.
    fn v1_tree(dirs_under_kubepods: u64, other: u64, proc_total: u64) -> Tree {
        let t = Tree::new("v1");
        t.file("proc/mounts", V1_MOUNTS)
            .file(
                "proc/cgroups",
                &format!(
                    "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpu\t1\t1\t1\nmemory\t4\t{proc_total}\t1\n"
                ),
            )
            .file("sys/fs/cgroup/memory/memory.stat", "cache 0\n")
            .file("sys/fs/cgroup/memory/memory.usage_in_bytes", "0\n")
            .dir("sys/fs/cgroup/unified");
        // kubepods, burstable, and pods below it.
        let mut made = 0;
        t.dir("sys/fs/cgroup/memory/kubepods/burstable");
        made += 2;
        let mut i = 0;
        while made < dirs_under_kubepods {
            t.file(
                &format!("sys/fs/cgroup/memory/kubepods/burstable/pod{i}/memory.stat"),
                "cache 0\n",
            );
            made += 1;
            i += 1;
        }
        for j in 0..other {
            t.dir(&format!(
                "sys/fs/cgroup/memory/system.slice/unit{j}.service"
            ));
        }
        t
    }

    #[test]
    fn v1_dying_is_proc_cgroups_minus_directories() {
        // 1 root + 150 kubepods + (1 system.slice + 20 units) = 172 directories.
        let t = v1_tree(150, 20, 172 + 3_120);
        let (c, _) = census(&t.roots(), budget());
        assert_eq!(c.hierarchy, CgroupHierarchy::V1);
        assert_eq!(c.dirs_walked, 172);
        assert_eq!(c.live, Some(172));
        assert_eq!(c.dying, Some(3_120));
        let k = c.kubepods.as_ref().unwrap();
        assert_eq!(
            (k.path.as_str(), k.cgroups, k.dying),
            ("kubepods", 150, None)
        );
        assert_eq!(c.largest[0].path, "kubepods");
        assert_eq!(c.largest[1].path, "system.slice");
        assert_eq!(c.largest[1].cgroups, 21);
        let chk = check(&c, &KernelFacts::default());
        assert_eq!(chk.status, Status::Warn, "{chk:#?}");
        assert_eq!(
            chk.summary, "3 120 dying, 172 live (150 under kubepods)",
            "{chk:#?}"
        );
        assert!(chk.what_to_do.as_deref().unwrap().contains("drop_caches"));
        assert!(chk
            .details
            .iter()
            .any(|d| d.contains("thresholds: warn above 1 000")));
    }

    #[test]
    fn v1_thresholds_and_a_cut_walk() {
        let t = v1_tree(3, 0, 4 + 20_000);
        let (c, _) = census(&t.roots(), budget());
        assert_eq!(c.dying, Some(20_000));
        assert_eq!(check(&c, &KernelFacts::default()).status, Status::Bad);
        let t = v1_tree(3, 0, 4 + 5);
        let (c, _) = census(&t.roots(), budget());
        assert_eq!(check(&c, &KernelFacts::default()).status, Status::Ok);
        // A walk cut short cannot subtract: unknown, and says why.
        let (c, _) = census(&t.roots(), Budget::new(Duration::from_secs(10), 2));
        assert!(c.walk_cut);
        assert_eq!(c.dying, None);
        let chk = check(&c, &KernelFacts::default());
        assert_eq!(chk.status, Status::Unknown);
        assert!(
            chk.details.iter().any(|d| d.contains("walk was cut")),
            "{chk:#?}"
        );
    }

    #[test]
    fn v1_without_proc_cgroups_or_with_memory_disabled() {
        let t = v1_tree(3, 0, 4);
        std::fs::remove_file(t.path("proc/cgroups")).unwrap();
        let (c, _) = census(&t.roots(), budget());
        assert_eq!(c.dying, None);
        assert_eq!(check(&c, &KernelFacts::default()).status, Status::Unknown);
        t.file("proc/cgroups", "memory\t0\t1\t0\n");
        let (c, _) = census(&t.roots(), budget());
        assert_eq!(c.hierarchy, CgroupHierarchy::None);
        assert_eq!(check(&c, &KernelFacts::default()).status, Status::Ok);
    }

    fn v2_tree() -> Tree {
        let t = Tree::new("v2");
        t.file(
            "proc/mounts",
            "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\n",
        )
        .file(
            "sys/fs/cgroup/cgroup.controllers",
            "cpuset cpu io memory pids\n",
        )
        .file(
            "sys/fs/cgroup/cgroup.stat",
            "nr_descendants 12\nnr_dying_descendants 15000\n",
        )
        .file(
            "sys/fs/cgroup/kubepods.slice/cgroup.stat",
            "nr_descendants 8\nnr_dying_descendants 14000\n",
        )
        .file("sys/fs/cgroup/kubepods.slice/memory.stat", "anon 0\n")
        .file("sys/fs/cgroup/system.slice/memory.stat", "anon 0\n")
        .file(
            "sys/fs/cgroup/system.slice/cgroup.stat",
            "nr_descendants 2\nnr_dying_descendants 1000\n",
        );
        for i in 0..8 {
            t.file(
                &format!("sys/fs/cgroup/kubepods.slice/kubepods-pod{i}.slice/memory.stat"),
                "anon 0\n",
            );
        }
        t.file(
            "sys/fs/cgroup/system.slice/a.service/memory.stat",
            "anon 0\n",
        )
        .dir("sys/fs/cgroup/system.slice/b.service");
        t
    }

    #[test]
    fn v2_counts_from_cgroup_stat_with_kubepods() {
        let t = v2_tree();
        let (c, _) = census(&t.roots(), budget());
        assert_eq!(c.hierarchy, CgroupHierarchy::V2);
        assert_eq!(c.dying, Some(15_000));
        assert!(c.method.contains("nr_dying_descendants"));
        // root + kubepods.slice + 8 pods + system.slice + a.service; b.service has no
        // memory controller.
        assert_eq!(c.live, Some(12));
        let k = c.kubepods.as_ref().unwrap();
        assert_eq!(
            (k.path.as_str(), k.cgroups, k.dying),
            ("kubepods.slice", 9, Some(14_000))
        );
        let chk = check(&c, &KernelFacts::default());
        assert_eq!(chk.status, Status::Bad);
        assert_eq!(
            chk.summary,
            "15 000 dying, 12 live (9 under kubepods.slice, 14 000 dying there)"
        );
        // 6.11+: the exact per-controller counts win.
        t.file(
            "sys/fs/cgroup/cgroup.stat",
            "nr_descendants 12\nnr_dying_descendants 15000\nnr_subsys_memory 11\nnr_dying_subsys_memory 40\n",
        );
        let (c, _) = census(&t.roots(), budget());
        assert_eq!((c.live, c.dying), (Some(11), Some(40)));
        assert_eq!(check(&c, &KernelFacts::default()).status, Status::Ok);
        let f = crate::doctor::memstat::facts(
            &c,
            &crate::doctor::memstat::StatCost::default(),
            "now".into(),
        );
        assert_eq!(f.memcg_dying, Some(40));
        assert_eq!(f.kubepods_live, Some(9));
        assert_eq!(f.kubepods_dying, Some(14_000));
        assert!(f.notes.iter().any(|n| n.contains("not timed")));
    }

    #[test]
    fn v2_without_mounts_file_is_found_at_the_usual_place() {
        let t = v2_tree();
        std::fs::remove_file(t.path("proc/mounts")).unwrap();
        let (c, _) = census(&t.roots(), budget());
        assert_eq!(c.hierarchy, CgroupHierarchy::V2);
        assert_eq!(c.root.as_deref(), Some(t.path("sys/fs/cgroup").as_path()));
    }

    #[test]
    fn nothing_mounted_is_ok_and_says_so() {
        let t = Tree::new("empty");
        let (c, _) = census(&t.roots(), budget());
        assert_eq!(c.hierarchy, CgroupHierarchy::None);
        let chk = check(&c, &KernelFacts::default());
        assert_eq!(chk.status, Status::Ok);
        assert!(chk
            .details
            .iter()
            .any(|d| d.contains("no memory cgroup hierarchy")));
    }
}
