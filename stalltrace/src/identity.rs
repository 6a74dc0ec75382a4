//! Kubernetes identity of a task without API access: its cgroup from /proc, and the
//! names of its pod and container from the kubelet's log layout (`/var/log/pods`,
//! `/var/log/containers`), rescanned when a new pod shows up. The parsing is pure and
//! lives in [`stalltrace_analysis::identity`].
use std::{
    collections::{HashMap, VecDeque},
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use stalltrace_analysis::identity::{
    parse_cgroup_path, parse_pods_dir_entry, parse_proc_cgroup, Identity, Names,
};

pub const DEFAULT_PODS_DIR: &str = "/var/log/pods";
pub const DEFAULT_CONTAINERS_DIR: &str = "/var/log/containers";

/// Cgroup paths remembered; the oldest is forgotten first.
const CACHE_CAP: usize = 4096;
/// Directory entries read per scan of each of the two trees: a node with more is cut
/// rather than stalling the recorder.
const SCAN_CAP: usize = 20_000;
/// Rescans of the log directories are at most this frequent.
const MIN_RESCAN: Duration = Duration::from_secs(1);
/// An id a scan did not name asks again only after this long: the kubelet writes a
/// pod's log directory and a container's log link before anything runs in them, so
/// one scan after the first sighting normally settles it; what stays unnamed (a pod
/// sandbox, Docker without Kubernetes) must not cost a scan every second.
const RETRY_UNNAMED: Duration = Duration::from_secs(60);

struct Cached {
    identity: Identity,
    /// `Resolver::scans` when names were last filled in.
    filled_at_scan: u64,
    /// Set when a scan after the first sighting left an id unnamed: when to ask again.
    retry_at: Option<Instant>,
}

/// Identities of tasks and cgroup paths, cached by path.
pub struct Resolver {
    pods_dir: PathBuf,
    containers_dir: PathBuf,
    proc_root: PathBuf,
    names: Names,
    /// Scans done so far: a cached identity filled before the last one is refilled.
    scans: u64,
    last_scan: Option<Instant>,
    cache: HashMap<String, Cached>,
    /// Paths in the order they were cached, for eviction.
    cache_order: VecDeque<String>,
    // Limits as fields so tests can shrink them.
    cache_cap: usize,
    scan_cap: usize,
    min_rescan: Duration,
    retry_unnamed: Duration,
}

impl Default for Resolver {
    fn default() -> Self {
        Self::new(DEFAULT_PODS_DIR.into(), DEFAULT_CONTAINERS_DIR.into())
    }
}

impl Resolver {
    /// Reads nothing until the first identity that needs names.
    pub fn new(pods_dir: PathBuf, containers_dir: PathBuf) -> Self {
        Self {
            pods_dir,
            containers_dir,
            proc_root: PathBuf::from("/proc"),
            names: Names::default(),
            scans: 0,
            last_scan: None,
            cache: HashMap::new(),
            cache_order: VecDeque::new(),
            cache_cap: CACHE_CAP,
            scan_cap: SCAN_CAP,
            min_rescan: MIN_RESCAN,
            retry_unnamed: RETRY_UNNAMED,
        }
    }

    /// The identity of a live task, from `/proc/PID/cgroup`; `None` when it is gone
    /// or the file says nothing.
    pub fn identity_of_pid(&mut self, pid: u32) -> Option<Identity> {
        let raw = fs::read(self.proc_root.join(pid.to_string()).join("cgroup")).ok()?;
        // cgroup directory names are bytes; what is not UTF-8 cannot be a pod's.
        let path = parse_proc_cgroup(&String::from_utf8_lossy(&raw))?;
        Some(self.identity_of_path(&path))
    }

    /// The identity a cgroup path names, with names when the log layout has them.
    pub fn identity_of_path(&mut self, cgroup_path: &str) -> Identity {
        if !self.cache.contains_key(cgroup_path) {
            self.remember(cgroup_path);
        }
        let now = Instant::now();
        let wants_scan = self.refresh(cgroup_path, now);
        if wants_scan && self.may_scan(now) {
            self.scan();
            self.refresh(cgroup_path, now);
        }
        match self.cache.get(cgroup_path) {
            Some(c) => c.identity.clone(),
            // Just inserted and nothing evicts between: unreachable, but cheap to
            // answer right.
            None => {
                let mut id = parse_cgroup_path(cgroup_path);
                self.names.fill(&mut id);
                id
            }
        }
    }

    fn remember(&mut self, cgroup_path: &str) {
        while self.cache.len() >= self.cache_cap.max(1) {
            let Some(old) = self.cache_order.pop_front() else {
                break;
            };
            self.cache.remove(&old);
        }
        let mut identity = parse_cgroup_path(cgroup_path);
        self.names.fill(&mut identity);
        self.cache.insert(
            cgroup_path.to_string(),
            Cached {
                identity,
                filled_at_scan: self.scans,
                retry_at: None,
            },
        );
        self.cache_order.push_back(cgroup_path.to_string());
    }

    /// Fills in names from scans done since the entry was last filled; whether the
    /// entry still wants a scan.
    fn refresh(&mut self, cgroup_path: &str, now: Instant) -> bool {
        let Some(c) = self.cache.get_mut(cgroup_path) else {
            return false;
        };
        if c.filled_at_scan != self.scans {
            self.names.fill(&mut c.identity);
            c.filled_at_scan = self.scans;
            if unnamed(&c.identity) {
                c.retry_at = now.checked_add(self.retry_unnamed);
            }
        }
        // `retry_at` None on an unnamed entry: no scan since it was first seen.
        unnamed(&c.identity) && c.retry_at.is_none_or(|t| now >= t)
    }

    fn may_scan(&self, now: Instant) -> bool {
        self.last_scan
            .is_none_or(|t| now.saturating_duration_since(t) >= self.min_rescan)
    }

    /// Rereads both log directories into a new index.
    fn scan(&mut self) {
        let pods = list_pods(&self.pods_dir, self.scan_cap);
        let containers = list_names(&self.containers_dir, self.scan_cap);
        self.names = Names::from_entries(&pods, &containers);
        self.scans += 1;
        self.last_scan = Some(Instant::now());
    }
}

/// An id the cgroup path gave that the log layout has not named (yet).
fn unnamed(id: &Identity) -> bool {
    (id.pod_uid.is_some() && id.pod.is_none())
        || (id.container_id.is_some() && id.container.is_none())
}

/// UTF-8 names among the first `cap` entries of `dir` (directories only, or any
/// kind), and how many entries were read.
fn read_names(dir: &Path, cap: usize, dirs_only: bool) -> (Vec<String>, usize) {
    let Ok(rd) = fs::read_dir(dir) else {
        // No Kubernetes here, or not readable: nothing to name.
        return (Vec::new(), 0);
    };
    let mut read = 0;
    let mut names = Vec::new();
    for entry in rd.take(cap) {
        read += 1;
        let Ok(e) = entry else { continue };
        // DirEntry::file_type does not follow links: a planted link is not a pod.
        if dirs_only && !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if let Ok(name) = e.file_name().into_string() {
            names.push(name);
        }
    }
    (names, read)
}

/// `/var/log/containers` file names (the links; their targets are not read).
fn list_names(dir: &Path, cap: usize) -> Vec<String> {
    read_names(dir, cap, false).0
}

/// `/var/log/pods` directories with their container subdirectories, `cap` entries
/// read in all.
fn list_pods(dir: &Path, cap: usize) -> Vec<(String, Vec<String>)> {
    let (pods, read) = read_names(dir, cap, true);
    let mut budget = cap.saturating_sub(read);
    let mut out = Vec::new();
    for pod in pods {
        // Only a pod's directory is worth a read_dir.
        if parse_pods_dir_entry(&pod).is_none() {
            continue;
        }
        let (containers, read) = read_names(&dir.join(&pod), budget, true);
        budget = budget.saturating_sub(read);
        out.push((pod, containers));
    }
    out
}

/// The name of the process `pid` belongs to: the comm of its thread-group leader, so
/// a worker thread is named by its program (`/proc/<tgid>/comm`).
pub fn process_name(pid: u32) -> Option<String> {
    process_name_in(Path::new("/proc"), pid)
}

fn process_name_in(proc_root: &Path, pid: u32) -> Option<String> {
    let status = fs::read(proc_root.join(pid.to_string()).join("status")).ok()?;
    let tgid: u32 = String::from_utf8_lossy(&status)
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))?
        .trim()
        .parse()
        .ok()?;
    let comm = fs::read(proc_root.join(tgid.to_string()).join("comm")).ok()?;
    Some(
        String::from_utf8_lossy(&comm)
            .trim_end_matches('\n')
            .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use stalltrace_testkit::scratch::Scratch;

    const UID: &str = "8712f785-1a3e-41ec-a00b-e2dcc77431cb";
    const UID2: &str = "2942c55e-c9cb-428a-93f4-eaf89c1f3ce0";
    const CTR: &str = "73051af271105c07e1f493b34856a77e665e3b0b4fc72f76c807dfbffeb881bd";
    const CTR2: &str = "49f9e8e5395d57c1083996c09e2e6f042d5fe1ec0310facab32f94912b35ce59";

    /// A node's log layout in a private directory.
    struct Node {
        dir: Scratch,
    }

    impl Node {
        fn new() -> Self {
            let dir = Scratch::new("identity").unwrap();
            fs::create_dir(dir.join("pods")).unwrap();
            fs::create_dir(dir.join("containers")).unwrap();
            Self { dir }
        }

        fn resolver(&self) -> Resolver {
            Resolver::new(self.dir.join("pods"), self.dir.join("containers"))
        }

        /// What the kubelet writes for a pod's container: the pod's directory, the
        /// container's subdirectory with its log, the link in /var/log/containers.
        fn add(&self, ns: &str, pod: &str, uid: &str, container: &str, id: &str) {
            let c = self
                .dir
                .join("pods")
                .join(format!("{ns}_{pod}_{uid}"))
                .join(container);
            fs::create_dir_all(&c).unwrap();
            fs::write(c.join("0.log"), "").unwrap();
            std::os::unix::fs::symlink(
                c.join("0.log"),
                self.dir
                    .join("containers")
                    .join(format!("{pod}_{ns}_{container}-{id}.log")),
            )
            .unwrap();
        }
    }

    fn systemd_path(uid: &str, id: &str) -> String {
        format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{id}.scope",
            uid.replace('-', "_")
        )
    }

    fn a_while_ago() -> Option<Instant> {
        Instant::now().checked_sub(Duration::from_secs(2))
    }

    #[test]
    fn names_come_from_the_log_layout() {
        let node = Node::new();
        node.add("shop", "web-7c9f.x", UID, "app", CTR);
        node.add("shop", "web-7c9f.x", UID, "sidecar-proxy", CTR2);
        let mut r = node.resolver();

        let id = r.identity_of_path(&systemd_path(UID, CTR));
        assert_eq!(id.short().as_deref(), Some("shop/web-7c9f.x/app"));
        assert_eq!(id.runtime.as_deref(), Some("containerd"));
        assert_eq!(id.qos.as_deref(), Some("burstable"));
        let id = r.identity_of_path(&format!("/kubepods/burstable/pod{UID}/{CTR2}"));
        assert_eq!(id.short().as_deref(), Some("shop/web-7c9f.x/sidecar-proxy"));
        assert_eq!(r.scans, 1, "the second lookup used the first scan");

        // Host processes need no names: no scan for them.
        let mut r = node.resolver();
        let id = r.identity_of_path("/system.slice/kubelet.service");
        assert_eq!(id.short().as_deref(), Some("unit kubelet.service"));
        assert_eq!(r.scans, 0);
    }

    #[test]
    fn pods_created_after_start_resolve_at_most_once_a_second() {
        let node = Node::new();
        node.add("shop", "web", UID, "app", CTR);
        let mut r = node.resolver();
        assert!(r.identity_of_path(&systemd_path(UID, CTR)).pod.is_some());
        assert_eq!(r.scans, 1);

        // A pod created after the scan, met within the second: not yet.
        node.add("batch", "job-1", UID2, "worker", CTR2);
        let late = systemd_path(UID2, CTR2);
        let id = r.identity_of_path(&late);
        assert_eq!(id.short(), Some(format!("pod {UID2}")));
        assert_eq!(r.scans, 1, "rate-limited");

        // A second later it is named, and stays so without scanning.
        r.last_scan = a_while_ago();
        let id = r.identity_of_path(&late);
        assert_eq!(id.short().as_deref(), Some("batch/job-1/worker"));
        assert_eq!(r.scans, 2);
        r.last_scan = a_while_ago();
        r.identity_of_path(&late);
        assert_eq!(r.scans, 2, "named: no rescan");
    }

    #[test]
    fn an_id_a_scan_missed_asks_again_only_after_a_minute() {
        let node = Node::new();
        node.add("shop", "web", UID, "app", CTR);
        let mut r = node.resolver();
        // The pod's sandbox: its id has no log link.
        let sandbox = format!("/kubepods/burstable/pod{UID}/{}", "f".repeat(64));
        let id = r.identity_of_path(&sandbox);
        assert_eq!(id.short().as_deref(), Some("shop/web"));
        assert_eq!(id.container, None);
        assert_eq!(r.scans, 1);

        r.last_scan = a_while_ago();
        r.identity_of_path(&sandbox);
        assert_eq!(r.scans, 1, "missed by a scan after it was seen: wait");

        // Docker without Kubernetes: one scan, then quiet.
        let docker = format!("/system.slice/docker-{CTR2}.scope");
        r.identity_of_path(&docker);
        assert_eq!(r.scans, 2);
        r.last_scan = a_while_ago();
        r.identity_of_path(&docker);
        r.identity_of_path(&sandbox);
        assert_eq!(r.scans, 2);

        // A minute on, it asks again.
        for c in r.cache.values_mut() {
            c.retry_at = a_while_ago();
        }
        r.identity_of_path(&docker);
        assert_eq!(r.scans, 3);
    }

    #[test]
    fn an_id_seen_before_a_scan_is_retried_by_the_next() {
        // Another path's scan names this one too, without a scan of its own.
        let node = Node::new();
        let mut r = node.resolver();
        r.min_rescan = Duration::from_secs(3600);
        r.identity_of_path("/system.slice/kubelet.service");
        r.scan();
        node.add("shop", "web", UID, "app", CTR);
        node.add("shop", "db", UID2, "pg", CTR2);
        let first = systemd_path(UID, CTR);
        assert_eq!(r.identity_of_path(&first).pod, None, "rate-limited");
        r.last_scan = None;
        assert!(r.identity_of_path(&systemd_path(UID2, CTR2)).pod.is_some());
        assert_eq!(
            r.identity_of_path(&first).short().as_deref(),
            Some("shop/web/app")
        );
        assert_eq!(r.scans, 2);
    }

    #[test]
    fn the_cache_is_bounded() {
        let node = Node::new();
        let mut r = node.resolver();
        r.cache_cap = 3;
        for i in 0..10 {
            r.identity_of_path(&format!("/system.slice/s{i}.service"));
        }
        assert_eq!(r.cache.len(), 3);
        assert_eq!(r.cache_order.len(), 3);
        assert!(r.cache.contains_key("/system.slice/s9.service"));
        assert!(!r.cache.contains_key("/system.slice/s0.service"));
        // An evicted path is parsed again, the same.
        let id = r.identity_of_path("/system.slice/s0.service");
        assert_eq!(id.unit.as_deref(), Some("s0.service"));
    }

    #[test]
    fn scans_are_bounded_and_skip_junk() {
        use std::os::unix::ffi::OsStrExt as _;
        let node = Node::new();
        for i in 0..10 {
            node.add(
                "ns",
                &format!("p{i}"),
                &format!("{i:08}-1a3e-41ec-a00b-e2dcc77431cb"),
                "c",
                &format!("{i:064}"),
            );
        }
        let junk = std::ffi::OsStr::from_bytes(b"\xff\xfe_x_y");
        fs::create_dir(node.dir.join("pods").join(junk)).unwrap();
        fs::write(node.dir.join("containers").join(junk), "").unwrap();
        fs::write(node.dir.join("pods").join("not-a-dir"), "").unwrap();
        // A link to a directory is not a pod's directory.
        std::os::unix::fs::symlink(
            node.dir.path(),
            node.dir.join("pods").join(format!("ns_link_{UID}")),
        )
        .unwrap();

        let mut r = node.resolver();
        r.scan();
        assert_eq!(r.names.pod_count(), 10);
        assert_eq!(r.names.container_count(), 10);

        r.scan_cap = 4;
        r.scan();
        assert!(r.names.pod_count() <= 4, "{}", r.names.pod_count());
        assert!(r.names.container_count() <= 4);
        // Pod directories and their subdirectories share one budget: 13 pod
        // entries (10 pods, junk, a file, a link) leave 3 of 16 for container dirs.
        let (_, read) = read_names(&node.dir.join("pods"), usize::MAX, true);
        assert_eq!(read, 13);
        let listed: usize = list_pods(&node.dir.join("pods"), 16)
            .iter()
            .map(|(_, c)| c.len())
            .sum();
        assert_eq!(listed, 3, "16 entries: 13 pod entries, 3 container dirs");

        // Missing directories: an empty index, no error.
        let mut r = Resolver::new(node.dir.join("none"), node.dir.join("none2"));
        let id = r.identity_of_path(&systemd_path(UID, CTR));
        assert_eq!(id.short(), Some(format!("pod {UID}")));
    }

    #[test]
    fn identity_of_a_pid_reads_its_cgroup_file() {
        let node = Node::new();
        node.add("shop", "web", UID, "app", CTR);
        let proc_dir = node.dir.join("proc");
        fs::create_dir_all(proc_dir.join("42")).unwrap();
        fs::create_dir_all(proc_dir.join("43")).unwrap();
        let v1 = format!("/kubepods/burstable/pod{UID}/{CTR}");
        fs::write(
            proc_dir.join("42/cgroup"),
            format!("12:memory:{v1}\n2:cpu,cpuacct:{v1}\n1:name=systemd:{v1}\n0::/\n"),
        )
        .unwrap();
        fs::write(
            proc_dir.join("43/cgroup"),
            b"0::/system.slice/\xff.service\n",
        )
        .unwrap();
        let mut r = node.resolver();
        r.proc_root = proc_dir;
        let id = r.identity_of_pid(42).unwrap();
        assert_eq!(id.short().as_deref(), Some("shop/web/app"));
        assert_eq!(id.cgroup.as_deref(), Some(v1.as_str()));
        assert_eq!(
            r.identity_of_pid(43).unwrap().unit.as_deref(),
            Some("\u{fffd}.service")
        );
        assert_eq!(r.identity_of_pid(44), None, "gone");
    }

    #[test]
    fn identity_of_this_process() {
        let mut r = Resolver::new("/nonexistent-a".into(), "/nonexistent-b".into());
        let text = fs::read_to_string("/proc/self/cgroup").unwrap();
        let id = r.identity_of_pid(std::process::id()).unwrap();
        assert_eq!(id.cgroup, parse_proc_cgroup(&text));
    }

    #[test]
    fn process_name_is_the_leaders() {
        let leader = fs::read_to_string("/proc/self/comm").unwrap();
        let leader = leader.trim_end();
        assert_eq!(process_name(std::process::id()).as_deref(), Some(leader));

        let (tid, own) = std::thread::Builder::new()
            .name("st-worker".into())
            .spawn(|| {
                // /proc/thread-self is `<tgid>/task/<tid>`.
                let link = fs::read_link("/proc/thread-self").unwrap();
                let tid: u32 = link.file_name().unwrap().to_str().unwrap().parse().unwrap();
                let own = fs::read_to_string(format!("/proc/{tid}/comm")).unwrap();
                (tid, own.trim_end().to_string(), process_name(tid))
            })
            .unwrap()
            .join()
            .map(|(tid, own, name)| {
                assert_eq!(name.as_deref(), Some(leader));
                (tid, own)
            })
            .unwrap();
        assert_ne!(tid, std::process::id());
        assert_eq!(own, "st-worker");

        // From a fake /proc: the leader's comm, not the thread's.
        let s = Scratch::new("identity-proc").unwrap();
        fs::create_dir_all(s.join("100")).unwrap();
        fs::create_dir_all(s.join("7")).unwrap();
        fs::write(s.join("100/status"), "Name:\tworker\nTgid:\t7\nPid:\t100\n").unwrap();
        fs::write(s.join("100/comm"), "worker\n").unwrap();
        fs::write(s.join("7/comm"), "leader\n").unwrap();
        assert_eq!(process_name_in(s.path(), 100).as_deref(), Some("leader"));
        fs::write(s.join("100/status"), "Tgid:\tjunk\n").unwrap();
        assert_eq!(process_name_in(s.path(), 100), None);
        assert_eq!(process_name_in(s.path(), 101), None);
    }
}
