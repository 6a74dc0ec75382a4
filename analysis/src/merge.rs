//! Several dumps read as one: the culprit rows of each dump's report summed into one
//! table, so a week of one node's flight-recorder dumps, or the dumps of ten nodes,
//! answer "who delays receive work" once. Pids differ between nodes and boots and pod
//! names between rollouts, so a culprit is the same across dumps when its namespace,
//! workload (the pod's owner, [`crate::workload::infer`]), container and process name
//! agree; outside a pod, its process name.
use std::collections::{BTreeSet, HashMap};

use serde::Serialize;

use crate::correlate::{rank::CulpritRank, Report};

/// Hosts (and pods) named per row at most: the rest are counted.
const MAX_NAMES: usize = 8;

/// One culprit over every dump merged.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MergedCulprit {
    pub rank: u32,
    /// Empty for host processes.
    pub namespace: String,
    /// The pod's owner; outside a pod, the process's name.
    pub workload: String,
    /// `Deployment`, `StatefulSet`, …; empty when the pod's name does not say.
    pub workload_kind: String,
    pub container: String,
    /// The process's name.
    pub comm: String,
    pub episodes: u64,
    /// Sum of the episodes' waits.
    pub total_wait_ns: u64,
    pub worst_wait_ns: u64,
    pub packets_delayed: u64,
    pub probes_delayed: u64,
    /// Dumps it appears in.
    pub dumps: u64,
    /// Hosts whose dumps name it (first few, sorted).
    pub hosts: Vec<String>,
    /// Its pods (first few, sorted): a Deployment's pods renamed by rollouts.
    pub pods: Vec<String>,
}

type Key = (String, String, String, String);

/// The merged table; [`Merged::add`] each dump's report, then [`Merged::ranked`].
#[derive(Debug, Default)]
pub struct Merged {
    rows: HashMap<Key, (MergedCulprit, BTreeSet<String>, BTreeSet<String>)>,
    /// Dumps added.
    pub dumps: u64,
    /// Episodes over every dump, with a culprit or not.
    pub episodes: u64,
    pub episodes_without_culprit: u64,
}

fn key_of(r: &CulpritRank) -> (Key, String, String) {
    let id = r.identity.as_ref();
    let ns = id.and_then(|i| i.namespace.clone()).unwrap_or_default();
    let pod = id.and_then(|i| i.pod.clone()).unwrap_or_default();
    let container = id.and_then(|i| i.container.clone()).unwrap_or_default();
    let (workload, kind) = if pod.is_empty() {
        (r.comm.clone(), String::new())
    } else {
        let w = crate::workload::infer(&pod);
        (
            w.name.to_string(),
            w.kind.map_or("", crate::workload::Kind::as_str).to_string(),
        )
    };
    ((ns, workload, container, r.comm.clone()), kind, pod)
}

impl Merged {
    /// Adds one dump's report.
    pub fn add(&mut self, report: &Report) {
        self.dumps += 1;
        self.episodes += report.totals.episodes;
        self.episodes_without_culprit += report.episodes_without_culprit;
        let host = report.input.host.clone();
        for r in &report.culprits {
            let (key, kind, pod) = key_of(r);
            let (row, hosts, pods) = self.rows.entry(key.clone()).or_insert_with(|| {
                (
                    MergedCulprit {
                        rank: 0,
                        namespace: key.0.clone(),
                        workload: key.1.clone(),
                        workload_kind: kind,
                        container: key.2.clone(),
                        comm: key.3.clone(),
                        episodes: 0,
                        total_wait_ns: 0,
                        worst_wait_ns: 0,
                        packets_delayed: 0,
                        probes_delayed: 0,
                        dumps: 0,
                        hosts: vec![],
                        pods: vec![],
                    },
                    BTreeSet::new(),
                    BTreeSet::new(),
                )
            });
            row.episodes = row.episodes.saturating_add(r.episodes);
            row.total_wait_ns = row.total_wait_ns.saturating_add(r.total_wait_ns);
            row.worst_wait_ns = row.worst_wait_ns.max(r.worst_wait_ns);
            row.packets_delayed = row.packets_delayed.saturating_add(r.packets_delayed);
            row.probes_delayed = row.probes_delayed.saturating_add(r.probes_delayed);
            row.dumps += 1;
            if hosts.len() < MAX_NAMES {
                hosts.insert(host.clone());
            }
            if !pod.is_empty() && pods.len() < MAX_NAMES {
                pods.insert(pod);
            }
        }
    }

    /// Worst first, as a single dump's ranking: total delay caused, then episodes, then
    /// the worst single wait.
    pub fn ranked(&self) -> Vec<MergedCulprit> {
        let mut v: Vec<MergedCulprit> = self
            .rows
            .values()
            .map(|(r, hosts, pods)| MergedCulprit {
                hosts: hosts.iter().cloned().collect(),
                pods: pods.iter().cloned().collect(),
                ..r.clone()
            })
            .collect();
        v.sort_by(|a, b| {
            b.total_wait_ns
                .cmp(&a.total_wait_ns)
                .then(b.episodes.cmp(&a.episodes))
                .then(b.worst_wait_ns.cmp(&a.worst_wait_ns))
                .then_with(|| {
                    (&a.namespace, &a.workload, &a.container, &a.comm).cmp(&(
                        &b.namespace,
                        &b.workload,
                        &b.container,
                        &b.comm,
                    ))
                })
        });
        for (i, r) in v.iter_mut().enumerate() {
            r.rank = u32::try_from(i + 1).unwrap_or(u32::MAX);
        }
        v
    }
}

/// The merged table as `analyze --merge --format json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct MergedReport {
    /// `stalltrace-merged-report`.
    pub format: &'static str,
    /// Bumped when a field changes meaning or goes away.
    pub version: u32,
    pub dumps: u64,
    pub episodes: u64,
    pub episodes_without_culprit: u64,
    /// Worst first.
    pub culprits: Vec<MergedCulprit>,
}

impl Merged {
    pub fn report(&self) -> MergedReport {
        MergedReport {
            format: "stalltrace-merged-report",
            version: 1,
            dumps: self.dumps,
            episodes: self.episodes,
            episodes_without_culprit: self.episodes_without_culprit,
            culprits: self.ranked(),
        }
    }
}

/// The merged table as text: a tally, then one line per culprit and one naming where
/// it was seen.
pub fn render_text(r: &MergedReport) -> String {
    use std::fmt::Write as _;

    use crate::report::escape::line;
    use crate::units::human_ns;

    let mut s = String::new();
    let _ = writeln!(
        s,
        "stalltrace merged report: {} dumps, {} episodes ({} without a culprit)",
        r.dumps, r.episodes, r.episodes_without_culprit
    );
    if r.culprits.is_empty() {
        s.push_str("\nNo culprit in any dump.\n");
        return s;
    }
    s.push_str("\nCulprits over every dump (ranked by total delay)\n");
    let _ = writeln!(
        s,
        "  {:<4}{:<9}{:<11}{:<11}{:<7}WORKLOAD / CONTAINER / PROCESS",
        "#", "EPISODES", "TOTAL", "WORST", "DUMPS"
    );
    for c in &r.culprits {
        let workload = if c.namespace.is_empty() {
            format!("host process {}", line(&c.comm))
        } else {
            let kind = if c.workload_kind.is_empty() {
                String::new()
            } else {
                format!(" ({})", c.workload_kind)
            };
            format!(
                "{}/{}{kind} / {} / {}",
                line(&c.namespace),
                line(&c.workload),
                line(&c.container),
                line(&c.comm)
            )
        };
        let _ = writeln!(
            s,
            "  {:<4}{:<9}{:<11}{:<11}{:<7}{workload}",
            c.rank,
            c.episodes,
            human_ns(c.total_wait_ns),
            human_ns(c.worst_wait_ns),
            c.dumps,
        );
        let names = |v: &[String]| {
            v.iter()
                .map(|h| line(h).into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let pods = if c.pods.is_empty() {
            String::new()
        } else {
            format!("; pods {}", names(&c.pods))
        };
        let _ = writeln!(s, "      hosts {}{pods}", names(&c.hosts));
    }
    s
}
