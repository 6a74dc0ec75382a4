//! Prometheus metrics for `stalltrace watch`: what a fleet's dashboards and alerts
//! need from each node, with bounded label sets. Episodes and their delay are counted
//! by culprit (namespace, workload, pod, container, process) for at most `top_k`
//! culprits at a time, and again by workload for at most `top_k` workloads, everything
//! else under `other`; a culprit or workload idle for ten minutes gives its place up, so
//! a node that churns through thousands of short-lived pods keeps a fixed number of
//! series, and a Deployment whose pods a rollout renames keeps its workload series.
//! Every label describing a task is prefixed `culprit_`: a Kubernetes scrape attaches
//! `namespace`, `pod` and `container` of the scraped pod (the agent's), which would
//! otherwise rename the task's to `exported_*`. The Linux side adds what only it knows ([`NodeStats`]): the kernel's wait
//! histograms, lost events, the BPF programs' and the agent's own cost.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::{Registry, Unit},
};

use crate::analyze::Sink;
use crate::correlate::Episode;
use crate::dump::{CpuHist, Lost, ProbeStatus, Record};

/// The label values of a series in a bounded table.
pub trait SeriesKey: Clone + Eq + std::hash::Hash {
    /// The series everything beyond the top K goes to.
    fn other() -> Self;
    fn labels(&self) -> Vec<(&'static str, String)>;
}

/// Label values of a culprit series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct CulpritKey {
    pub namespace: String,
    /// The pod's owner ([`crate::workload::infer`]); the process's name outside a pod.
    pub workload: String,
    /// `Deployment`, `StatefulSet`, …; empty when the pod's name does not say.
    pub workload_kind: String,
    pub pod: String,
    pub container: String,
    pub comm: String,
}

impl CulpritKey {
    /// The key of a culprit in `pod` (if any) running the process `comm`.
    pub fn new(namespace: &str, pod: &str, container: &str, comm: &str) -> Self {
        let (workload, workload_kind) = if pod.is_empty() {
            (comm, "")
        } else {
            let w = crate::workload::infer(pod);
            (w.name, w.kind.map_or("", crate::workload::Kind::as_str))
        };
        Self {
            namespace: namespace.into(),
            workload: workload.into(),
            workload_kind: workload_kind.into(),
            pod: pod.into(),
            container: container.into(),
            comm: comm.into(),
        }
    }

    fn workload_key(&self) -> WorkloadKey {
        WorkloadKey {
            namespace: self.namespace.clone(),
            workload: self.workload.clone(),
            kind: self.workload_kind.clone(),
        }
    }
}

impl SeriesKey for CulpritKey {
    fn other() -> Self {
        Self {
            namespace: "other".into(),
            workload: "other".into(),
            workload_kind: "other".into(),
            pod: "other".into(),
            container: "other".into(),
            comm: "other".into(),
        }
    }

    fn labels(&self) -> Vec<(&'static str, String)> {
        vec![
            ("culprit_namespace", self.namespace.clone()),
            ("culprit_workload", self.workload.clone()),
            ("culprit_workload_kind", self.workload_kind.clone()),
            ("culprit_pod", self.pod.clone()),
            ("culprit_container", self.container.clone()),
            ("culprit_comm", self.comm.clone()),
        ]
    }
}

/// Label values of a workload series: its pods' episodes summed, across renames.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct WorkloadKey {
    pub namespace: String,
    pub workload: String,
    pub kind: String,
}

impl SeriesKey for WorkloadKey {
    fn other() -> Self {
        Self {
            namespace: "other".into(),
            workload: "other".into(),
            kind: "other".into(),
        }
    }

    fn labels(&self) -> Vec<(&'static str, String)> {
        vec![
            ("culprit_namespace", self.namespace.clone()),
            ("culprit_workload", self.workload.clone()),
            ("culprit_workload_kind", self.kind.clone()),
        ]
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    episodes: u64,
    delay_ns: u64,
    /// Kernel clock of its last episode (for giving the place up).
    last_ns: u64,
}

/// A culprit with no episode for this long (kernel clock) gives its series up.
const IDLE_NS: u64 = 600_000_000_000;

/// Series of one family: at most `k` named ones, the rest under `other`.
#[derive(Debug)]
pub struct CulpritTable<K = CulpritKey> {
    k: usize,
    named: HashMap<K, Totals>,
    other: Totals,
}

impl<K: SeriesKey> CulpritTable<K> {
    pub fn new(k: usize) -> Self {
        Self {
            k,
            named: HashMap::new(),
            other: Totals::default(),
        }
    }

    pub fn add(&mut self, key: K, delay_ns: u64, now_ns: u64) {
        if !self.named.contains_key(&key) && self.named.len() >= self.k {
            self.named
                .retain(|_, t| now_ns.saturating_sub(t.last_ns) < IDLE_NS);
        }
        let room = self.named.len() < self.k;
        let t = if self.named.contains_key(&key) || room {
            self.named.entry(key).or_default()
        } else {
            &mut self.other
        };
        t.episodes = t.episodes.saturating_add(1);
        t.delay_ns = t.delay_ns.saturating_add(delay_ns);
        t.last_ns = t.last_ns.max(now_ns);
    }

    /// Series exported now (named ones, and `other` once it has counts).
    pub fn series(&self) -> usize {
        self.named.len() + usize::from(self.other.episodes > 0)
    }

    /// The named series in `order`, then `other` once it has counts.
    fn rows(&self, order: impl Fn(&K, &K) -> std::cmp::Ordering) -> Vec<(K, Totals)> {
        let mut rows: Vec<(K, Totals)> = self.named.iter().map(|(k, t)| (k.clone(), *t)).collect();
        rows.sort_by(|a, b| order(&a.0, &b.0));
        if self.other.episodes > 0 {
            rows.push((K::other(), self.other));
        }
        rows
    }
}

/// What only the Linux side knows, refreshed before each scrape.
#[derive(Debug, Clone, Default)]
pub struct NodeStats {
    /// Per CPU: NET_RX raise→entry and RX-thread wakeup→run, log2 µs buckets.
    pub net_rx: Vec<CpuHist>,
    pub rx_thread: Vec<CpuHist>,
    pub lost: Lost,
    /// Per BPF program: (name, run time ns, runs), when `kernel.bpf_stats_enabled`.
    pub bpf: Vec<(String, u64, u64)>,
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    pub open_fds: u64,
    /// The correlator's held packets and index entries.
    pub retained: (usize, usize),
    /// Dumps the flight recorder wrote, and bytes it holds in memory.
    pub dumps_written: u64,
    pub recorder_bytes: u64,
    /// The flight recorder's failures by reason (empty when it is off).
    pub flight_failures: Vec<(String, u64)>,
}

#[derive(Debug, Default)]
struct ProbeTotals {
    ok: u64,
    lost: u64,
    dup: u64,
    /// RTT buckets (upper bounds in seconds) and their counts, sum in seconds.
    buckets: Vec<(f64, u64)>,
    sum: f64,
}

const RTT_BOUNDS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0,
];

#[derive(Debug)]
struct State {
    culprits: CulpritTable,
    workloads: CulpritTable<WorkloadKey>,
    /// Episodes by CPU.
    cpu_episodes: HashMap<u32, u64>,
    episodes_without_culprit: u64,
    probes: ProbeTotals,
    node: NodeStats,
    version: String,
}

/// The metrics of a running agent; cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct Metrics {
    state: Arc<Mutex<State>>,
}

impl Metrics {
    pub fn new(top_k: usize, version: &str) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                culprits: CulpritTable::new(top_k),
                workloads: CulpritTable::new(top_k),
                cpu_episodes: HashMap::new(),
                episodes_without_culprit: 0,
                probes: ProbeTotals {
                    buckets: RTT_BOUNDS.iter().map(|&b| (b, 0)).collect(),
                    ..ProbeTotals::default()
                },
                node: NodeStats::default(),
                version: version.into(),
            })),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        // A panic elsewhere while holding the lock leaves plain counters: keep using them.
        let mut g = match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g)
    }

    pub fn set_node(&self, n: NodeStats) {
        self.with(|s| s.node = n);
    }

    /// Culprit series exported now (the bounded-cardinality promise, for tests).
    pub fn culprit_series(&self) -> usize {
        self.with(|s| s.culprits.series())
    }

    /// Workload series exported now.
    pub fn workload_series(&self) -> usize {
        self.with(|s| s.workloads.series())
    }

    /// The exposition in the Prometheus text format 0.0.4, for clients that do not ask
    /// for OpenMetrics (curl, `promtool check metrics`, older scrapers).
    pub fn encode_text(&self) -> Result<String, std::fmt::Error> {
        Ok(openmetrics_to_text(&self.encode()?))
    }

    /// The exposition text (OpenMetrics 1.0).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut reg = Registry::default();
        reg.register_collector(Box::new(self.clone()));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg)?;
        Ok(out)
    }

    pub fn episode(&self, ep: &Episode) {
        self.with(|s| {
            *s.cpu_episodes.entry(ep.cpu).or_default() += 1;
            let Some(c) = &ep.culprit else {
                s.episodes_without_culprit += 1;
                return;
            };
            let id = c.identity.as_ref();
            let field = |f: fn(&crate::identity::Identity) -> Option<&String>| {
                id.and_then(f).map_or("", String::as_str)
            };
            let key = CulpritKey::new(
                field(|i| i.namespace.as_ref()),
                field(|i| i.pod.as_ref()),
                field(|i| i.container.as_ref()),
                c.process.as_deref().unwrap_or(&c.comm),
            );
            s.workloads.add(key.workload_key(), ep.wait_ns, ep.end_ns);
            s.culprits.add(key, ep.wait_ns, ep.end_ns);
        });
    }

    fn probe(&self, status: ProbeStatus, rtt_ns: Option<u64>) {
        self.with(|s| {
            let p = &mut s.probes;
            match status {
                ProbeStatus::Ok => p.ok += 1,
                ProbeStatus::Lost => p.lost += 1,
                ProbeStatus::Dup => p.dup += 1,
            }
            if let (ProbeStatus::Ok, Some(r)) = (status, rtt_ns) {
                let secs = r as f64 / 1e9;
                p.sum += secs;
                // Per bucket (the encoder accumulates); slower than the last: +Inf only.
                if let Some(b) = p.buckets.iter_mut().find(|b| secs <= b.0) {
                    b.1 += 1;
                }
            }
        });
    }
}

impl Sink for Metrics {
    fn what(&self) -> &str {
        "the metrics"
    }
    fn record(&mut self, rec: &Record) -> std::io::Result<()> {
        if let Record::Probe(p) = rec {
            self.probe(p.status, p.rtt_ns);
        }
        Ok(())
    }
    fn episode(&mut self, ep: &Episode) -> std::io::Result<()> {
        Metrics::episode(self, ep);
        Ok(())
    }
}

/// OpenMetrics text as the Prometheus text format 0.0.4 says it: a counter's family
/// is named by its samples' name (`_total` included, which OpenMetrics leaves out of
/// `# HELP`/`# TYPE`), `unknown` is `untyped`, and `# UNIT` and `# EOF` (which 0.0.4 does
/// not have) go. Samples are the same in both for the types encoded here (counters
/// without `_created`, gauges, histograms); families of other types lose their
/// `# TYPE` and read as untyped.
pub fn openmetrics_to_text(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    let lines: Vec<&str> = om.lines().collect();
    // Each family's name in 0.0.4, by its OpenMetrics name.
    let mut renamed: HashMap<&str, String> = HashMap::new();
    let mut kept_type: HashMap<&str, &str> = HashMap::new();
    for l in &lines {
        if let Some((name, ty)) = l.strip_prefix("# TYPE ").and_then(|r| r.split_once(' ')) {
            let (new, ty) = match ty {
                "counter" if !name.ends_with("_total") => (format!("{name}_total"), Some(ty)),
                "counter" | "gauge" | "histogram" | "summary" => (name.to_string(), Some(ty)),
                "unknown" => (name.to_string(), Some("untyped")),
                _ => (name.to_string(), None),
            };
            renamed.insert(name, new);
            if let Some(ty) = ty {
                kept_type.insert(name, ty);
            }
        }
    }
    for l in lines {
        if l == "# EOF" || l.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = l.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let new = renamed.get(name).map_or(name, String::as_str);
            out.push_str(&format!("# HELP {new} {help}\n"));
            continue;
        }
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let name = rest.split_once(' ').map_or(rest, |(n, _)| n);
            if let (Some(new), Some(ty)) = (renamed.get(name), kept_type.get(name)) {
                out.push_str(&format!("# TYPE {new} {ty}\n"));
            }
            continue;
        }
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// Kernel log2 µs buckets as a Prometheus histogram: per-bucket counts at upper bounds
/// 2^(i+1) µs (the encoder makes them cumulative); the sum is estimated at each
/// bucket's middle, as the kernel keeps no sum.
fn log2_histogram(buckets: &[u64]) -> (f64, u64, Vec<(f64, u64)>) {
    let mut count = 0u64;
    let mut sum = 0.0;
    let mut out = Vec::with_capacity(buckets.len());
    for (i, &n) in buckets.iter().enumerate() {
        let upper_us = (2u64 << i.min(62)) as f64;
        count = count.saturating_add(n);
        sum += n as f64 * upper_us * 0.75e-6;
        // The kernel's last bucket takes every longer wait: its bound is +Inf, which
        // a histogram must end with (histogram_quantile is NaN without it).
        let le = if i + 1 == buckets.len() {
            f64::INFINITY
        } else {
            upper_us * 1e-6
        };
        out.push((le, n));
    }
    (sum, count, out)
}

fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: &[(Vec<(&str, String)>, f64)],
) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (labels, v) in series {
        if labels.is_empty() {
            return ConstCounter::new(*v).encode(m);
        }
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: &[(Vec<(&str, String)>, f64)],
) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (labels, v) in series {
        if labels.is_empty() {
            return ConstGauge::new(*v).encode(m);
        }
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for Metrics {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let n = &s.node;
        {
            let mut m = e.encode_descriptor(
                "stalltrace_rx_wait",
                "How long receive work waited for its CPU: NET_RX softirq raise to entry (kind=net_rx), RX thread wakeup to run (kind=rx_thread); every wait, from the kernel's histograms.",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for (kind, hs) in [("net_rx", &n.net_rx), ("rx_thread", &n.rx_thread)] {
                for h in hs.iter() {
                    let (sum, count, buckets) = log2_histogram(&h.buckets);
                    let labels = [("cpu", h.cpu.to_string()), ("kind", kind.to_string())];
                    m.encode_family(&labels)?
                        .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                            sum, count, &buckets, None,
                        )?;
                }
            }
        }
        let culprits = s
            .culprits
            .rows(|a, b| (&a.namespace, &a.pod, &a.comm).cmp(&(&b.namespace, &b.pod, &b.comm)));
        let workloads = s
            .workloads
            .rows(|a, b| (&a.namespace, &a.workload).cmp(&(&b.namespace, &b.workload)));
        for (prefix, what, series) in [
            (
                "stalltrace_",
                "the culprit that held the CPU; top culprits by name",
                culprits
                    .iter()
                    .map(|(k, t)| (k.labels(), t))
                    .collect::<Vec<_>>(),
            ),
            (
                "stalltrace_workload_",
                "the workload (pod owner) of the culprit that held the CPU; top workloads",
                workloads
                    .iter()
                    .map(|(k, t)| (k.labels(), t))
                    .collect::<Vec<_>>(),
            ),
        ] {
            counter(
                &mut e,
                &format!("{prefix}stall_episodes"),
                &format!("Stall episodes (RX work held off its CPU for at least the stall threshold), by {what}, the rest as other."),
                None,
                &series
                    .iter()
                    .map(|(l, t)| (l.clone(), t.episodes as f64))
                    .collect::<Vec<_>>(),
            )?;
            counter(
                &mut e,
                &format!("{prefix}stall_delay"),
                &format!("Receive delay the episodes caused (sum of their waits), by {what}, the rest as other."),
                Some(&Unit::Seconds),
                &series
                    .iter()
                    .map(|(l, t)| (l.clone(), t.delay_ns as f64 / 1e9))
                    .collect::<Vec<_>>(),
            )?;
        }
        let mut cpus: Vec<(&u32, &u64)> = s.cpu_episodes.iter().collect();
        cpus.sort();
        counter(
            &mut e,
            "stalltrace_cpu_stall_episodes",
            "Stall episodes by the CPU whose receive work waited.",
            None,
            &cpus
                .iter()
                .map(|(c, n)| (vec![("cpu", c.to_string())], **n as f64))
                .collect::<Vec<_>>(),
        )?;
        counter(
            &mut e,
            "stalltrace_episodes_without_culprit",
            "Stall episodes in which no task was recorded holding the CPU (interrupts, or an idle CPU).",
            None,
            &[(vec![], s.episodes_without_culprit as f64)],
        )?;
        let l = &n.lost;
        counter(
            &mut e,
            "stalltrace_lost_events",
            "Events the kernel could not hand over (ring buffer or a kernel table full).",
            None,
            &[
                ("packets", l.packets),
                ("waits", l.waits),
                ("samples", l.samples),
                ("syscalls", l.syscalls),
                ("table_full", l.table_full),
            ]
            .iter()
            .map(|(k, v)| (vec![("kind", k.to_string())], *v as f64))
            .collect::<Vec<_>>(),
        )?;
        let p = &s.probes;
        if p.ok + p.lost + p.dup > 0 {
            counter(
                &mut e,
                "stalltrace_probes",
                "Probes of the built-in prober by outcome.",
                None,
                &[("ok", p.ok), ("lost", p.lost), ("dup", p.dup)]
                    .iter()
                    .map(|(k, v)| (vec![("status", k.to_string())], *v as f64))
                    .collect::<Vec<_>>(),
            )?;
            let mut m = e.encode_descriptor(
                "stalltrace_probe_rtt",
                "Round-trip times of the built-in prober's answered probes.",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            // Slower than the last bound, or answered without an RTT: the +Inf bucket
            // a histogram must end with (histogram_quantile is NaN without it).
            let bounded: u64 = p.buckets.iter().map(|b| b.1).sum();
            let mut buckets = p.buckets.clone();
            buckets.push((f64::INFINITY, p.ok.saturating_sub(bounded)));
            m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                p.sum, p.ok, &buckets, None,
            )?;
        }
        if !n.bpf.is_empty() {
            let by = |f: &dyn Fn(&(String, u64, u64)) -> f64| {
                n.bpf
                    .iter()
                    .map(|b| (vec![("program", b.0.clone())], f(b)))
                    .collect::<Vec<_>>()
            };
            counter(
                &mut e,
                "stalltrace_bpf_run",
                "Time the kernel spent in each of the agent's BPF programs (needs kernel.bpf_stats_enabled=1).",
                Some(&Unit::Seconds),
                &by(&|b| b.1 as f64 / 1e9),
            )?;
            counter(
                &mut e,
                "stalltrace_bpf_runs",
                "Runs of each of the agent's BPF programs (needs kernel.bpf_stats_enabled=1).",
                None,
                &by(&|b| b.2 as f64),
            )?;
        }
        counter(
            &mut e,
            "stalltrace_process_cpu",
            "CPU time of the agent itself (user and system).",
            Some(&Unit::Seconds),
            &[(vec![], n.cpu_seconds)],
        )?;
        gauge(
            &mut e,
            "stalltrace_process_resident_memory",
            "Resident memory of the agent.",
            Some(&Unit::Bytes),
            &[(vec![], n.rss_bytes as f64)],
        )?;
        gauge(
            &mut e,
            "stalltrace_process_open_fds",
            "Open file descriptors of the agent.",
            None,
            &[(vec![], n.open_fds as f64)],
        )?;
        gauge(
            &mut e,
            "stalltrace_correlator_retained",
            "What the correlator holds to join records (bounded by its window).",
            None,
            &[
                (vec![("what", "packets".to_string())], n.retained.0 as f64),
                (
                    vec![("what", "index_entries".to_string())],
                    n.retained.1 as f64,
                ),
            ],
        )?;
        counter(
            &mut e,
            "stalltrace_flight_recorder_dumps",
            "Episode dumps the flight recorder wrote.",
            None,
            &[(vec![], n.dumps_written as f64)],
        )?;
        if !n.flight_failures.is_empty() {
            counter(
                &mut e,
                "stalltrace_flight_recorder_failures",
                "Episode dumps the flight recorder could not write (reason=no_space, queue_full when its writer was behind, io), and failed removals of old dumps (rotate).",
                None,
                &n.flight_failures
                    .iter()
                    .map(|(r, v)| (vec![("reason", r.clone())], *v as f64))
                    .collect::<Vec<_>>(),
            )?;
        }
        gauge(
            &mut e,
            "stalltrace_flight_recorder_memory",
            "Bytes of recent records the flight recorder holds.",
            Some(&Unit::Bytes),
            &[(vec![], n.recorder_bytes as f64)],
        )?;
        // A gauge of 1, Prometheus's `_info` idiom: an OpenMetrics `info` family is not
        // understood by the classic text parser (promtool, Prometheus before 2.x's
        // OpenMetrics negotiation).
        gauge(
            &mut e,
            "stalltrace_build_info",
            "The agent's version (always 1).",
            None,
            &[(vec![("version", s.version.clone())], 1.0)],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: usize) -> CulpritKey {
        CulpritKey::new("batch", &format!("job-{i}"), "worker", "cruncher")
    }

    /// Thousands of short-lived pods: the series stay at K named plus `other`.
    #[test]
    fn culprit_series_stay_bounded() {
        let mut t = CulpritTable::new(20);
        for i in 0..2000 {
            t.add(key(i), 100_000_000, i as u64 * 1_000_000_000);
        }
        assert!(t.series() <= 21, "{}", t.series());
        // Idle culprits gave their places up (their series end): those named now had an
        // episode in the last ten minutes.
        assert_eq!(t.named.len(), 20);
        assert!(!t.named.contains_key(&key(0)));
        assert!(t
            .named
            .keys()
            .all(|k| k.pod.trim_start_matches("job-").parse::<u64>().unwrap() >= 1999 - 620));
        // The first 20 went idle ten minutes later: their places go to newer culprits.
        let later = 3_000 * 1_000_000_000;
        t.add(key(5000), 1, later);
        assert!(t.named.contains_key(&key(5000)));
        assert!(t.series() <= 21);
    }

    fn named(t: &CulpritTable) -> Vec<String> {
        let mut v: Vec<String> = t.named.keys().map(|k| k.pod.clone()).collect();
        v.sort();
        v
    }

    /// Places are given up only when the table is full and a new culprit comes, and
    /// only by culprits idle for ten minutes or more.
    #[test]
    fn idle_culprits_give_their_place_up_only_to_a_newcomer_when_full() {
        // Room left: an idle culprit keeps its place.
        let mut t = CulpritTable::new(2);
        t.add(key(0), 1, 0);
        t.add(key(1), 1, IDLE_NS);
        assert_eq!(named(&t), ["job-0", "job-1"]);
        // Full, idle for exactly ten minutes (IDLE_NS - 0): the newcomer takes the place.
        let mut t = CulpritTable::new(1);
        t.add(key(0), 1, 0);
        t.add(key(1), 1, IDLE_NS);
        assert_eq!(named(&t), ["job-1"]);
        assert_eq!(t.other.episodes, 0);
        // Full, idle 1 ns short of ten minutes (IDLE_NS - 1): the newcomer goes to other.
        let mut t = CulpritTable::new(1);
        t.add(key(0), 1, 1);
        t.add(key(1), 1, IDLE_NS);
        assert_eq!(named(&t), ["job-0"]);
        assert_eq!(t.other.episodes, 1);
    }

    #[test]
    fn series_are_the_named_culprits_and_other_once_it_has_episodes() {
        let mut t = CulpritTable::new(2);
        t.add(key(0), 1, 0);
        t.add(key(1), 1, 0);
        // 2 named + no other.
        assert_eq!(t.series(), 2);
        t.add(key(2), 1, 0);
        // 2 named + other (1 episode).
        assert_eq!(t.series(), 3);
    }

    #[test]
    fn log2_buckets_double_and_the_sum_is_taken_at_three_quarters_of_each_bound() {
        let (sum, count, buckets) = log2_histogram(&[4, 0, 2]);
        // 4 + 0 + 2
        assert_eq!(count, 6);
        // Upper bounds 2 and 4 µs, then +Inf: the kernel's last bucket takes the rest.
        assert_eq!(buckets, vec![(2e-6, 4), (4e-6, 0), (f64::INFINITY, 2)]);
        // (4 × 2 µs + 2 × 8 µs) × 0.75 = 18 µs
        assert!((sum - 18e-6).abs() < 1e-12, "{sum}");
    }

    fn probe(status: ProbeStatus, rtt_ns: Option<u64>) -> Record {
        Record::Probe(crate::dump::ProbeRec {
            source: "builtin".into(),
            proto: crate::dump::ProbeProto::Icmp,
            target: "10.0.0.11".into(),
            seq: 1,
            wire_ident: None,
            wire_seq: None,
            sent_ns: None,
            rtt_ns,
            status,
            send_error: None,
        })
    }

    fn encoded(m: &Metrics) -> String {
        match m.encode() {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        }
    }

    fn assert_lines(text: &str, want: &[&str]) {
        for w in want {
            assert!(text.lines().any(|l| l == *w), "{w} not in:\n{text}");
        }
    }

    /// Probes reach the metrics as records through the sink: counted by outcome, and
    /// answered ones' RTTs in per-bound buckets (cumulative in the exposition).
    #[test]
    fn probes_are_counted_by_outcome_and_answered_rtts_bucketed() -> std::io::Result<()> {
        let mut m = Metrics::new(3, "0.1.0");
        assert_eq!(Sink::what(&m), "the metrics");
        for (status, rtt) in [
            (ProbeStatus::Ok, Some(250_000_000)),
            (ProbeStatus::Ok, Some(500_000_000)),
            (ProbeStatus::Ok, Some(1_500_000_000)),
            (ProbeStatus::Ok, Some(3_000_000_000)),
            (ProbeStatus::Ok, None),
            (ProbeStatus::Lost, None),
            (ProbeStatus::Lost, None),
            (ProbeStatus::Dup, Some(100_000_000)),
        ] {
            m.record(&probe(status, rtt))?;
        }
        let text = encoded(&m);
        assert_lines(
            &text,
            &[
                "stalltrace_probes_total{status=\"ok\"} 5.0",
                "stalltrace_probes_total{status=\"lost\"} 2.0",
                "stalltrace_probes_total{status=\"dup\"} 1.0",
                // 0.25 + 0.5 + 1.5 + 3 s (a dup's RTT is not the probe's)
                "stalltrace_probe_rtt_seconds_sum 5.25",
                "stalltrace_probe_rtt_seconds_count 5",
                // The 3 s one and the one without an RTT are only in +Inf: 3 + 2 = count.
                "stalltrace_probe_rtt_seconds_bucket{le=\"+Inf\"} 5",
                // Nothing at or below 0.2 s; 0.25 and 0.5 (a bound is inclusive) by 0.5 s.
                "stalltrace_probe_rtt_seconds_bucket{le=\"0.2\"} 0",
                "stalltrace_probe_rtt_seconds_bucket{le=\"0.5\"} 2",
                "stalltrace_probe_rtt_seconds_bucket{le=\"1.0\"} 2",
                "stalltrace_probe_rtt_seconds_bucket{le=\"2.0\"} 3",
            ],
        );
        Ok(())
    }

    /// The probe families appear once any probe was seen, whatever its outcome.
    #[test]
    fn probe_families_appear_with_the_first_probe_of_any_outcome() -> std::io::Result<()> {
        let none = encoded(&Metrics::new(3, "0.1.0"));
        assert!(!none.contains("stalltrace_probes"), "{none}");
        for status in [ProbeStatus::Ok, ProbeStatus::Lost, ProbeStatus::Dup] {
            let mut m = Metrics::new(3, "0.1.0");
            m.record(&probe(status, None))?;
            let text = encoded(&m);
            assert!(
                text.contains("# TYPE stalltrace_probes counter"),
                "{status:?}: {text}"
            );
            assert!(
                text.contains("# TYPE stalltrace_probe_rtt_seconds histogram"),
                "{status:?}: {text}"
            );
        }
        Ok(())
    }

    #[test]
    fn culprit_series_carry_their_labels_and_other_only_once_it_has_episodes() {
        let m = Metrics::new(1, "0.1.0");
        m.with(|s| s.culprits.add(key(1), 1_500_000_000, 0));
        assert_eq!(m.culprit_series(), 1);
        let text = encoded(&m);
        assert_lines(
            &text,
            &[
                // job-1 reads as a StatefulSet's pod (name-ordinal).
                "stalltrace_stall_episodes_total{culprit_namespace=\"batch\",culprit_workload=\"job\",culprit_workload_kind=\"StatefulSet\",culprit_pod=\"job-1\",culprit_container=\"worker\",culprit_comm=\"cruncher\"} 1.0",
                // 1_500_000_000 ns
                "stalltrace_stall_delay_seconds_total{culprit_namespace=\"batch\",culprit_workload=\"job\",culprit_workload_kind=\"StatefulSet\",culprit_pod=\"job-1\",culprit_container=\"worker\",culprit_comm=\"cruncher\"} 1.5",
            ],
        );
        assert!(!text.contains("\"other\""), "{text}");
        // No room for a second culprit: it counts under other.
        m.with(|s| s.culprits.add(key(2), 2_000_000_000, 0));
        assert_eq!(m.culprit_series(), 2);
        let text = encoded(&m);
        assert_lines(
            &text,
            &[
                "stalltrace_stall_episodes_total{culprit_namespace=\"other\",culprit_workload=\"other\",culprit_workload_kind=\"other\",culprit_pod=\"other\",culprit_container=\"other\",culprit_comm=\"other\"} 1.0",
                "stalltrace_stall_delay_seconds_total{culprit_namespace=\"other\",culprit_workload=\"other\",culprit_workload_kind=\"other\",culprit_pod=\"other\",culprit_container=\"other\",culprit_comm=\"other\"} 2.0",
            ],
        );
    }

    /// A Deployment's pods renamed by rollouts, one culprit each: the culprit table
    /// fills up and sends the newcomers to other, the workload keeps one series with
    /// every episode; host processes are their own workload with no kind.
    #[test]
    fn a_workload_keeps_its_series_across_pod_renames() {
        let m = Metrics::new(2, "0.1.0");
        let suffixes = ["x2k4p", "b7q9z", "m4n8w", "t5v2m", "zx7k2"];
        for (i, s) in suffixes.iter().enumerate() {
            let key = CulpritKey::new("shop", &format!("cart-7d9b5f7c8-{s}"), "cart", "cart");
            m.with(|st| {
                st.workloads.add(key.workload_key(), 100_000_000, i as u64);
                st.culprits.add(key, 100_000_000, i as u64);
            });
        }
        let host = CulpritKey::new("", "", "", "kworker/1:2");
        m.with(|st| st.workloads.add(host.workload_key(), 50_000_000, 9));
        // 2 named pods + other; 2 workloads (cart, the host process).
        assert_eq!(m.culprit_series(), 3);
        assert_eq!(m.workload_series(), 2);
        assert_lines(
            &encoded(&m),
            &[
                // 5 pods × 1 episode
                "stalltrace_workload_stall_episodes_total{culprit_namespace=\"shop\",culprit_workload=\"cart\",culprit_workload_kind=\"Deployment\"} 5.0",
                // 5 × 100 ms
                "stalltrace_workload_stall_delay_seconds_total{culprit_namespace=\"shop\",culprit_workload=\"cart\",culprit_workload_kind=\"Deployment\"} 0.5",
                "stalltrace_workload_stall_episodes_total{culprit_namespace=\"\",culprit_workload=\"kworker/1:2\",culprit_workload_kind=\"\"} 1.0",
                // 3 of the 5 pods found the table full
                "stalltrace_stall_episodes_total{culprit_namespace=\"other\",culprit_workload=\"other\",culprit_workload_kind=\"other\",culprit_pod=\"other\",culprit_container=\"other\",culprit_comm=\"other\"} 3.0",
            ],
        );
    }

    /// Thousands of workloads: bounded like the culprits.
    #[test]
    fn workload_series_stay_bounded() {
        let mut t: CulpritTable<WorkloadKey> = CulpritTable::new(20);
        for i in 0..2000 {
            let k = CulpritKey::new("batch", &format!("etl{i}-q8w2n"), "etl", "etl");
            t.add(k.workload_key(), 1, i as u64);
        }
        // 20 named + other
        assert_eq!(t.series(), 21);
    }

    /// The 0.0.4 text of a full exposition: counters' families named with `_total`,
    /// no UNIT or EOF lines, every sample line as in OpenMetrics.
    #[test]
    fn text_format_names_counter_families_by_their_samples() {
        let m = Metrics::new(3, "0.1.0");
        m.with(|s| s.culprits.add(key(1), 1_500_000_000, 0));
        let om = encoded(&m);
        let text = match m.encode_text() {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        };
        for want in [
            "# HELP stalltrace_stall_episodes_total Stall episodes",
            "# TYPE stalltrace_stall_episodes_total counter",
            "# TYPE stalltrace_stall_delay_seconds_total counter",
            "# TYPE stalltrace_rx_wait_seconds histogram",
            "# TYPE stalltrace_process_resident_memory_bytes gauge",
            "# TYPE stalltrace_build_info gauge",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(want)),
                "{want} in:\n{text}"
            );
        }
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        assert!(
            om.contains("# TYPE stalltrace_stall_episodes counter"),
            "{om}"
        );
        let samples = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| !l.starts_with('#'))
                .map(String::from)
                .collect()
        };
        assert_eq!(samples(&text), samples(&om));
    }

    #[test]
    fn text_format_maps_unknown_to_untyped_and_drops_types_it_lacks() {
        let om = "# HELP a_info x\n# TYPE a_info info\na_info{v=\"1\"} 1\n# HELP b y\n# TYPE b unknown\nb 2\n# HELP c_total z\n# TYPE c_total counter\nc_total 3\n# EOF\n";
        assert_eq!(
            openmetrics_to_text(om),
            "# HELP a_info x\na_info{v=\"1\"} 1\n# HELP b y\n# TYPE b untyped\nb 2\n# HELP c_total z\n# TYPE c_total counter\nc_total 3\n"
        );
    }

    #[test]
    fn bpf_run_time_is_in_seconds() {
        let m = Metrics::new(3, "0.1.0");
        m.set_node(NodeStats {
            bpf: vec![("sched_switch".into(), 2_500_000_000, 10)],
            ..Default::default()
        });
        // 2_500_000_000 ns
        assert_lines(
            &encoded(&m),
            &["stalltrace_bpf_run_seconds_total{program=\"sched_switch\"} 2.5"],
        );
    }

    #[test]
    fn exposition_names_follow_the_conventions() {
        let m = Metrics::new(3, "0.1.0");
        let mut h = vec![0u64; 32];
        h[0] = 5;
        h[16] = 1;
        m.set_node(NodeStats {
            net_rx: vec![CpuHist { cpu: 1, buckets: h }],
            lost: Lost {
                packets: 2,
                ..Default::default()
            },
            bpf: vec![("sched_switch".into(), 1_000, 10)],
            ..Default::default()
        });
        let text = m.encode().unwrap();
        for want in [
            "# TYPE stalltrace_rx_wait_seconds histogram",
            "stalltrace_rx_wait_seconds_bucket{le=\"0.000002\",cpu=\"1\",kind=\"net_rx\"} 5",
            "stalltrace_rx_wait_seconds_bucket{le=\"0.000004\",cpu=\"1\",kind=\"net_rx\"} 5",
            "stalltrace_rx_wait_seconds_bucket{le=\"0.131072\",cpu=\"1\",kind=\"net_rx\"} 6",
            "stalltrace_rx_wait_seconds_count{cpu=\"1\",kind=\"net_rx\"} 6",
            // Bucket 30 ends at 2^31 µs; the kernel's last (2^31 µs and longer) at +Inf.
            "stalltrace_rx_wait_seconds_bucket{le=\"2147.483648\",cpu=\"1\",kind=\"net_rx\"} 6",
            "stalltrace_rx_wait_seconds_bucket{le=\"+Inf\",cpu=\"1\",kind=\"net_rx\"} 6",
            "# TYPE stalltrace_stall_episodes counter",
            "stalltrace_lost_events_total{kind=\"packets\"} 2",
            "stalltrace_bpf_runs_total{program=\"sched_switch\"} 10",
            "stalltrace_build_info{version=\"0.1.0\"} 1",
        ] {
            assert!(text.contains(want), "{want} not in:\n{text}");
        }
    }
}
