//! What a task was doing while it held a CPU, from samples taken during the wait:
//! the share in user space, in each syscall (and on which file), in the kernel
//! otherwise. Samples see a culprit that makes thousands of short syscalls as clearly
//! as one that sits in one long read, which tracing only the long syscalls missed.
use crate::dump::{Activity, SyscallShare};

/// Syscalls (with their file) listed per activity; the rest are counted together.
pub const TOP_SYSCALLS: usize = 5;

/// What one sample caught the task doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Doing<'a> {
    User,
    /// In the kernel outside a syscall.
    Kernel,
    Kthread,
    /// In the kernel; inside a syscall or not could not be read.
    Unknown,
    Syscall {
        nr: i64,
        name: &'a str,
        path: Option<&'a str>,
    },
}

/// Where cgroup filesystems are mounted: files under them are cgroup statistics.
const CGROUP_ROOT: &str = "/sys/fs/cgroup/";

/// The same statistics file of many cgroups is one activity: `/sys/fs/cgroup/memory/
/// kubepods/…/pod1/memory.stat` and 3 000 siblings read as `/sys/fs/cgroup/memory/…/
/// memory.stat` once more than [`COLLAPSE_AT`] of them were read.
const COLLAPSE_AT: usize = 3;

fn collapsed(path: &str) -> Option<String> {
    let rest = path.strip_prefix(CGROUP_ROOT)?;
    let (dir, file) = rest.rsplit_once('/')?;
    let top = dir.split('/').next().unwrap_or(dir);
    Some(format!("{CGROUP_ROOT}{top}/…/{file}"))
}

/// A cgroup statistics file (`memory.stat`, `cpu.stat`, `io.stat`, …) among what a
/// culprit did: its name.
pub fn cgroup_stat_file(path: &str) -> Option<&str> {
    let file = path.rsplit('/').next()?;
    let stat =
        file.ends_with(".stat") || file.starts_with("memory.") || file.starts_with("cpuacct.");
    (path.starts_with(CGROUP_ROOT) && stat).then_some(file)
}

impl Activity {
    /// The profile of a set of samples.
    pub fn from_samples<'a>(samples: impl IntoIterator<Item = Doing<'a>>) -> Self {
        let samples: Vec<Doing<'a>> = samples.into_iter().collect();
        // The same file of many cgroups (whichever syscalls touched them): one entry
        // per syscall, so openat, read and close of 3 000 memory.stat files are three.
        let mut distinct: Vec<(String, &str)> = vec![];
        for s in &samples {
            if let Doing::Syscall { path: Some(p), .. } = s {
                if let Some(c) = collapsed(p) {
                    if !distinct.iter().any(|(k, q)| *k == c && q == p) {
                        distinct.push((c, p));
                    }
                }
            }
        }
        let collapse = |_nr: i64, p: &str| -> Option<String> {
            let c = collapsed(p)?;
            let n = distinct.iter().filter(|(k, _)| *k == c).count();
            (n > COLLAPSE_AT).then_some(c)
        };
        let mut a = Activity::default();
        let mut all: Vec<SyscallShare> = Vec::new();
        for s in samples {
            let s = match s {
                Doing::Syscall {
                    nr,
                    name,
                    path: Some(p),
                } => match collapse(nr, p) {
                    Some(c) => {
                        let share_path = c;
                        a.samples = a.samples.saturating_add(1);
                        match all
                            .iter_mut()
                            .find(|x| x.nr == nr && x.path.as_deref() == Some(share_path.as_str()))
                        {
                            Some(x) => x.samples += 1,
                            None => all.push(SyscallShare {
                                nr,
                                name: name.to_string(),
                                path: Some(share_path),
                                samples: 1,
                            }),
                        }
                        continue;
                    }
                    None => Doing::Syscall {
                        nr,
                        name,
                        path: Some(p),
                    },
                },
                other => other,
            };
            a.samples = a.samples.saturating_add(1);
            match s {
                Doing::User => a.user += 1,
                Doing::Kernel => a.kernel += 1,
                Doing::Kthread => a.kthread += 1,
                Doing::Unknown => a.unknown += 1,
                Doing::Syscall { nr, name, path } => {
                    match all
                        .iter_mut()
                        .find(|x| x.nr == nr && x.path.as_deref() == path)
                    {
                        Some(x) => x.samples += 1,
                        None => all.push(SyscallShare {
                            nr,
                            name: name.to_string(),
                            path: path.map(str::to_string),
                            samples: 1,
                        }),
                    }
                }
            }
        }
        a.keep_top(all);
        a
    }

    fn keep_top(&mut self, mut all: Vec<SyscallShare>) {
        all.sort_by(|x, y| {
            y.samples
                .cmp(&x.samples)
                .then(x.name.cmp(&y.name))
                .then(x.path.cmp(&y.path))
        });
        let rest: u32 = all.iter().skip(TOP_SYSCALLS).map(|x| x.samples).sum();
        all.truncate(TOP_SYSCALLS);
        self.syscalls = all;
        self.other_syscalls = self.other_syscalls.saturating_add(rest);
    }

    /// Adds another profile of the same task (the ranking's sum over episodes).
    pub fn add(&mut self, o: &Activity) {
        self.samples = self.samples.saturating_add(o.samples);
        self.user = self.user.saturating_add(o.user);
        self.kernel = self.kernel.saturating_add(o.kernel);
        self.kthread = self.kthread.saturating_add(o.kthread);
        self.unknown = self.unknown.saturating_add(o.unknown);
        self.other_syscalls = self.other_syscalls.saturating_add(o.other_syscalls);
        let mut all = std::mem::take(&mut self.syscalls);
        for x in &o.syscalls {
            match all.iter_mut().find(|y| y.nr == x.nr && y.path == x.path) {
                Some(y) => y.samples = y.samples.saturating_add(x.samples),
                None => all.push(x.clone()),
            }
        }
        self.keep_top(all);
    }

    /// The cgroup statistics file it spent the most samples reading, if any (at least
    /// a tenth of them).
    pub fn cgroup_stat_file(&self) -> Option<&str> {
        self.syscalls
            .iter()
            .filter(|x| x.samples.saturating_mul(10) >= self.samples)
            .find_map(|x| x.path.as_deref().and_then(cgroup_stat_file))
    }

    /// Samples inside any syscall.
    pub fn in_syscalls(&self) -> u32 {
        self.syscalls
            .iter()
            .fold(self.other_syscalls, |n, x| n.saturating_add(x.samples))
    }
}

fn pct(n: u32, of: u32) -> u32 {
    if of == 0 {
        return 0;
    }
    ((u64::from(n) * 100 + u64::from(of) / 2) / u64::from(of)) as u32
}

/// `read() of /proc/4242/status`, `openat()`, `syscall 333`.
pub fn call_words(x: &SyscallShare) -> String {
    let call = match x.name.strip_prefix("syscall_") {
        Some(n) => format!("syscall {n}"),
        None => format!("{}()", x.name),
    };
    match &x.path {
        Some(p) => format!("{call} of {p}"),
        None => call,
    }
}

/// Most of the samples (90% or more) caught the task doing one thing.
const DOMINANT_PCT: u32 = 90;

/// The profile in words, for sentences: `inside pread64() of /x (24 of 25 samples)`,
/// `in user space (25 of 25 samples)`, or the breakdown `91% in syscalls — read() of
/// /proc/4242/status 63%, openat() 18%, close() 10% — 9% in user space (48 samples)`.
pub fn phrase(a: &Activity) -> Option<String> {
    let n = a.samples;
    if n == 0 {
        return None;
    }
    if let Some(top) = a.syscalls.first() {
        if pct(top.samples, n) >= DOMINANT_PCT {
            return Some(format!(
                "inside {} ({} of {n} samples)",
                call_words(top),
                top.samples
            ));
        }
    }
    if pct(a.user, n) >= DOMINANT_PCT {
        return Some(format!("in user space ({} of {n} samples)", a.user));
    }
    if pct(a.kthread, n) >= DOMINANT_PCT {
        return Some(format!(
            "a kernel thread at work ({} of {n} samples)",
            a.kthread
        ));
    }
    let mut parts = vec![];
    let sys = a.in_syscalls();
    if sys > 0 {
        let mut calls: Vec<String> = a
            .syscalls
            .iter()
            .map(|x| format!("{} {}%", call_words(x), pct(x.samples, n)))
            .collect();
        if a.other_syscalls > 0 {
            calls.push(format!("others {}%", pct(a.other_syscalls, n)));
        }
        parts.push(format!(
            "{}% in syscalls — {}",
            pct(sys, n),
            calls.join(", ")
        ));
    }
    for (k, what) in [
        (a.user, "in user space"),
        (a.kernel, "in the kernel outside syscalls"),
        (a.kthread, "as a kernel thread"),
        (a.unknown, "in the kernel"),
    ] {
        if k > 0 {
            parts.push(format!("{}% {what}", pct(k, n)));
        }
    }
    Some(format!("{} ({n} samples)", parts.join(" — ")))
}

/// The culprit table's INSIDE cell: the top two things it was doing, with shares.
pub fn cell(a: &Activity) -> Option<String> {
    let n = a.samples;
    if n == 0 {
        return None;
    }
    let mut items: Vec<(u32, String)> = a
        .syscalls
        .iter()
        .map(|x| (x.samples, call_words(x)))
        .collect();
    items.push((a.user, "user space".into()));
    items.push((a.kernel, "kernel".into()));
    items.push((a.kthread, "kernel thread".into()));
    items.sort_by(|x, y| y.0.cmp(&x.0).then(x.1.cmp(&y.1)));
    let shown: Vec<String> = items
        .iter()
        .filter(|(k, _)| *k > 0)
        .take(2)
        .map(|(k, w)| format!("{w} {}%", pct(*k, n)))
        .collect();
    Some(shown.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sys<'a>(nr: i64, name: &'a str, path: Option<&'a str>) -> Doing<'a> {
        Doing::Syscall { nr, name, path }
    }

    /// The short-syscall culprit: reads of one file, opens and closes, a little user
    /// space: the breakdown names the file and the shares.
    #[test]
    fn a_loop_of_short_syscalls_reads_as_such() {
        let status = Some("/proc/4242/status");
        let mut s = vec![];
        s.extend(std::iter::repeat_n(sys(0, "read", status), 30));
        s.extend(std::iter::repeat_n(
            sys(257, "openat", Some("/proc/self/status")),
            9,
        ));
        s.extend(std::iter::repeat_n(sys(3, "close", None), 5));
        s.extend(std::iter::repeat_n(Doing::User, 4));
        let a = Activity::from_samples(s);
        assert_eq!((a.samples, a.user, a.in_syscalls()), (48, 4, 44));
        assert_eq!(
            phrase(&a).unwrap(),
            "92% in syscalls — read() of /proc/4242/status 63%, openat() of /proc/self/status 19%, \
             close() 10% — 8% in user space (48 samples)"
        );
        assert_eq!(
            cell(&a).unwrap(),
            "read() of /proc/4242/status 63%, openat() of /proc/self/status 19%"
        );
    }

    #[test]
    fn one_long_syscall_and_a_busy_loop_read_plainly() {
        let one = Activity::from_samples(
            std::iter::repeat_n(sys(17, "pread64", Some("/x.dat")), 24).chain([Doing::User]),
        );
        assert_eq!(
            phrase(&one).unwrap(),
            "inside pread64() of /x.dat (24 of 25 samples)"
        );
        let busy = Activity::from_samples(std::iter::repeat_n(Doing::User, 25));
        assert_eq!(phrase(&busy).unwrap(), "in user space (25 of 25 samples)");
        assert_eq!(cell(&busy).unwrap(), "user space 100%");
        assert_eq!(phrase(&Activity::default()), None);
    }

    /// A walker reading memory.stat of many cgroups: one entry, the file named.
    #[test]
    fn the_same_stat_file_of_many_cgroups_is_one_activity() {
        let paths: Vec<String> = (0..40)
            .map(|i| format!("/sys/fs/cgroup/memory/stalltrace-lab/c{i}/memory.stat"))
            .collect();
        let mut s: Vec<Doing<'_>> = paths.iter().map(|p| sys(0, "read", Some(p))).collect();
        s.extend(std::iter::repeat_n(
            sys(
                257,
                "openat",
                Some("/sys/fs/cgroup/memory/stalltrace-lab/c1/memory.stat"),
            ),
            5,
        ));
        s.push(Doing::User);
        let a = Activity::from_samples(s);
        assert_eq!(
            a.syscalls[0].path.as_deref(),
            Some("/sys/fs/cgroup/memory/…/memory.stat")
        );
        assert_eq!(a.syscalls[0].samples, 40);
        assert_eq!(a.cgroup_stat_file(), Some("memory.stat"));
        // Any syscall on one of those files joins its syscall's entry: openat of one
        // cgroup's file is "openat() of …/memory.stat", not a path of its own.
        assert_eq!(
            (
                a.syscalls[1].name.as_str(),
                a.syscalls[1].path.as_deref(),
                a.syscalls[1].samples
            ),
            ("openat", Some("/sys/fs/cgroup/memory/…/memory.stat"), 5)
        );
        assert_eq!(a.syscalls.len(), 2);
        // One cgroup's file keeps its full path.
        let one = Activity::from_samples([sys(0, "read", Some("/sys/fs/cgroup/cpu/cpu.stat"))]);
        assert_eq!(
            one.syscalls[0].path.as_deref(),
            Some("/sys/fs/cgroup/cpu/cpu.stat")
        );
        assert_eq!(one.cgroup_stat_file(), Some("cpu.stat"));
        assert_eq!(cgroup_stat_file("/proc/1/status"), None);
    }

    #[test]
    fn many_syscalls_keep_the_top_and_count_the_rest() {
        let names = ["a", "b", "c", "d", "e", "f", "g"];
        let s: Vec<Doing<'_>> = names
            .iter()
            .enumerate()
            .flat_map(|(i, n)| std::iter::repeat_n(sys(i as i64, n, None), 7 - i))
            .collect();
        let mut a = Activity::from_samples(s);
        assert_eq!(a.syscalls.len(), TOP_SYSCALLS);
        assert_eq!(a.other_syscalls, 2 + 1);
        assert_eq!(a.in_syscalls(), a.samples);
        let b = a.clone();
        a.add(&b);
        assert_eq!(a.samples, 2 * b.samples);
        assert_eq!(a.syscalls[0].samples, 14);
        assert!(phrase(&a).unwrap().contains("others"));
    }
}
