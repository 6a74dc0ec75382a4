//! Where received packets are processed: NIC queue interrupts and their CPUs, RPS and
//! RFS, threaded NAPI, the softirq budget sysctls, and from all of these the set of CPUs
//! that carry RX, each with the reasons it does.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use serde::{Deserialize, Serialize};

use super::{
    budget,
    cpus::{self, CpuSet},
    read_text, read_u64,
    tasks::TaskScan,
    Budget, Check, Roots, Status,
};

/// Reasons kept per CPU (a 64-queue NIC with RPS everywhere gives many).
const MAX_REASONS: usize = 8;
/// Interrupt lines shown per NIC in the text report.
const IRQ_LINES_SHOWN: usize = 16;

/// One interrupt line of /proc/interrupts.
#[derive(Debug, Clone, PartialEq)]
pub struct IrqLine {
    pub irq: u32,
    /// Interrupts taken so far, by CPU (CPUs with none left out).
    pub counts: BTreeMap<u32, u64>,
    /// Action names (`virtio2-input.0`, `mlx5_comp3@pci:0000:3b:00.0`).
    pub names: Vec<String>,
}

/// `5-edge`, `1572864-edge`, `11-fasteoi`: the hardware-irq column of newer kernels.
fn is_hwirq(token: &str) -> bool {
    token.split_once('-').is_some_and(|(n, kind)| {
        !n.is_empty()
            && n.chars().all(|c| c.is_ascii_hexdigit())
            && !kind.is_empty()
            && kind.chars().all(|c| c.is_ascii_alphabetic())
    })
}

/// Parses /proc/interrupts: numbered lines only (not NMI, LOC, …).
pub fn parse_interrupts(text: &str) -> Vec<IrqLine> {
    let mut lines = text.lines();
    // `CPU0 CPU2 …`: the columns are the online CPUs, not 0..n.
    let columns: Vec<u32> = lines
        .next()
        .map(|h| {
            h.split_whitespace()
                .filter_map(|w| w.strip_prefix("CPU")?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let mut out = vec![];
    for line in lines {
        let toks: Vec<&str> = line.split_whitespace().collect();
        let Some(irq) = toks
            .first()
            .and_then(|t| t.strip_suffix(':'))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let values: Vec<u64> = toks
            .iter()
            .skip(1)
            .take(columns.len())
            .map_while(|t| t.parse().ok())
            .collect();
        let rest = toks.get(1 + values.len()..).unwrap_or_default();
        let counts = columns
            .iter()
            .zip(&values)
            .filter(|(_, n)| **n > 0)
            .map(|(c, n)| (*c, *n))
            .collect();
        // rest: chip, [hwirq], names… e.g. `PCI-MSIX-0000:00:03.0 1-edge virtio2-input.0`,
        // `PCI-MSI-edge eth0-TxRx-0` (older), `ITS-MSI 524288 Edge eth0-TxRx-0` (arm64).
        let start = match (rest.get(1), rest.get(2)) {
            (Some(h), _) if is_hwirq(h) => 2,
            (Some(n), Some(kind))
                if n.chars().all(|c| c.is_ascii_digit()) && matches!(*kind, "Edge" | "Level") =>
            {
                3
            }
            _ => 1,
        };
        let names: Vec<String> = rest
            .get(start..)
            .unwrap_or_default()
            .join(" ")
            .split(',')
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect();
        out.push(IrqLine { irq, counts, names });
    }
    out
}

/// `name` mentions interface `ifname` as a whole token (`eth0-TxRx-0`, `i40e-eth0-TxRx-0`,
/// but not `eth01-TxRx-0`).
fn mentions(name: &str, ifname: &str) -> bool {
    if ifname.is_empty() {
        return false;
    }
    let sep = |c: Option<char>| c.is_none_or(|c| matches!(c, '-' | '@' | ':' | '.' | ' ' | '_'));
    name.match_indices(ifname).any(|(i, _)| {
        let before = name.get(..i).and_then(|s| s.chars().next_back());
        let after = name.get(i + ifname.len()..).and_then(|s| s.chars().next());
        sep(before) && sep(after)
    })
}

/// Whether an interrupt of a NIC carries received packets, by its name: queue vectors
/// (`-TxRx-`, `-rx-`, `input.`, `mlx5_comp`, `virtqueues`, `ntfy`) yes; configuration,
/// admin and transmit-only vectors no.
pub fn is_rx_vector(name: &str) -> Option<bool> {
    let l = name.to_ascii_lowercase();
    const NOT: [&str; 9] = [
        "config", "async", "misc", "mgmnt", "mgmt", "ctrl", "control", "output", "-event",
    ];
    if NOT.iter().any(|w| l.contains(w)) {
        return Some(false);
    }
    const RX: [&str; 6] = ["rx", "input", "comp", "virtqueues", "ntfy", "queue"];
    if RX.iter().any(|w| l.contains(w)) {
        return Some(true);
    }
    if l.contains("tx") {
        return Some(false);
    }
    None
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NicIrq {
    pub irq: u32,
    pub name: String,
    /// Carries received packets (by its name; see [`is_rx_vector`]).
    pub rx: bool,
    /// smp_affinity_list: where it may go.
    pub affinity: CpuSet,
    /// effective_affinity_list: where it goes (x86 picks one CPU of the mask).
    pub effective: Option<CpuSet>,
    /// Interrupts so far, by CPU (CPUs with none left out).
    pub counts: BTreeMap<u32, u64>,
}

impl NicIrq {
    /// The CPUs it is delivered to.
    pub fn cpus(&self) -> &CpuSet {
        match &self.effective {
            Some(e) if !e.is_empty() => e,
            _ => &self.affinity,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RxQueue {
    /// `rx-0`.
    pub name: String,
    /// RPS: CPUs this queue's packets are handed to for protocol processing.
    pub rps_cpus: CpuSet,
    /// RFS flow table size for this queue (0: RFS off here).
    pub rps_flow_cnt: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    pub driver: Option<String>,
    /// The bus device (`virtio2`, `0000:3b:00.0`) and, for virtio, its PCI parent.
    pub device: Option<String>,
    pub parent_device: Option<String>,
    /// /sys/class/net/X/threaded: NAPI polled by `napi/X-N` kthreads instead of softirq.
    pub threaded: Option<u64>,
    pub rx_queues: Vec<RxQueue>,
    pub queues_cut: bool,
    pub irqs: Vec<NicIrq>,
}

impl Interface {
    pub fn physical(&self) -> bool {
        self.device.is_some()
    }

    pub fn rps_on(&self) -> bool {
        self.rx_queues.iter().any(|q| !q.rps_cpus.is_empty())
    }

    pub fn threaded_on(&self) -> bool {
        self.threaded.is_some_and(|t| t != 0)
    }

    pub fn rx_irqs(&self) -> impl Iterator<Item = &NicIrq> {
        self.irqs.iter().filter(|i| i.rx)
    }
}

/// Per-CPU counters of /proc/net/softnet_stat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Softnet {
    pub cpu: u32,
    pub processed: u64,
    /// Dropped because the backlog (netdev_max_backlog) was full.
    pub dropped: u64,
    /// Softirq rounds that ran out of budget or time with work left.
    pub time_squeeze: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RxLayout {
    /// Physical interfaces, and virtual ones with RPS or threaded NAPI on.
    pub interfaces: Vec<Interface>,
    /// Virtual interfaces (veth, bridges, …) without RPS or threaded NAPI: counted only.
    pub plain_virtual: u64,
    pub interfaces_cut: bool,
    /// /proc/interrupts was readable.
    pub interrupts_read: bool,
    pub rps_sock_flow_entries: Option<u64>,
    pub netdev_budget: Option<u64>,
    pub netdev_budget_usecs: Option<u64>,
    pub dev_weight: Option<u64>,
    pub softnet: Vec<Softnet>,
    pub online: CpuSet,
    pub nohz_full: CpuSet,
    pub isolated: CpuSet,
    /// CPU → why it processes received packets.
    pub rx_cpus: BTreeMap<u32, Vec<String>>,
    pub notes: Vec<String>,
}

fn basename(p: &Path) -> Option<String> {
    p.file_name().map(|n| n.to_string_lossy().into_owned())
}

fn irq_numbers(dir: &Path) -> BTreeSet<u32> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn rx_queues(dir: &Path) -> (Vec<RxQueue>, bool) {
    let mut names: Vec<(u32, String)> = std::fs::read_dir(dir.join("queues"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_str()?.to_string();
                    Some((n.strip_prefix("rx-")?.parse().ok()?, n))
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let cut = names.len() > budget::QUEUES_PER_INTERFACE;
    names.truncate(budget::QUEUES_PER_INTERFACE);
    let queues = names
        .into_iter()
        .map(|(_, name)| {
            let q = dir.join("queues").join(&name);
            RxQueue {
                rps_cpus: read_text(&q.join("rps_cpus"))
                    .map(|s| cpus::parse_mask(&s))
                    .unwrap_or_default(),
                rps_flow_cnt: read_u64(&q.join("rps_flow_cnt")),
                name,
            }
        })
        .collect();
    (queues, cut)
}

/// The interrupts of a NIC: its device's MSI vectors, or lines naming it.
fn nic_irqs(
    iface: &Interface,
    msi: &BTreeSet<u32>,
    lines: &[IrqLine],
    roots: &Roots,
) -> Vec<NicIrq> {
    let dev_prefix = iface.device.as_ref().map(|d| format!("{d}-"));
    let ours = |l: &IrqLine| {
        msi.contains(&l.irq)
            || l.names.iter().any(|n| {
                mentions(n, &iface.name)
                    || dev_prefix
                        .as_ref()
                        .is_some_and(|p| n.starts_with(p.as_str()))
                    || [&iface.device, &iface.parent_device]
                        .into_iter()
                        .flatten()
                        .any(|d| d.contains(':') && n.contains(d.as_str()))
            })
    };
    let mut irqs: Vec<NicIrq> = lines
        .iter()
        .filter(|l| ours(l))
        .map(|l| {
            let dir = roots.proc(&format!("proc/irq/{}", l.irq));
            let name = l.names.join(", ");
            NicIrq {
                irq: l.irq,
                rx: is_rx_vector(&name).unwrap_or(false),
                affinity: read_text(&dir.join("smp_affinity_list"))
                    .map(|s| cpus::parse_list(&s))
                    .unwrap_or_default(),
                effective: read_text(&dir.join("effective_affinity_list"))
                    .ok()
                    .map(|s| cpus::parse_list(&s)),
                counts: l.counts.clone(),
                name,
            }
        })
        .collect();
    // A single-vector NIC (`eth0`) carries everything: RX included.
    if !irqs.iter().any(|i| i.rx) {
        for i in irqs.iter_mut() {
            if is_rx_vector(&i.name).is_none() {
                i.rx = true;
            }
        }
    }
    irqs
}

fn softnet(text: &str) -> Vec<Softnet> {
    text.lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let f: Vec<u64> = l
                .split_whitespace()
                .map(|h| u64::from_str_radix(h, 16).ok())
                .collect::<Option<Vec<u64>>>()?;
            // Column 13, where present, is the CPU; without it the lines are the online
            // CPUs in order (numbered as if none were offline).
            let cpu = f
                .get(12)
                .and_then(|c| u32::try_from(*c).ok())
                .unwrap_or(u32::try_from(i).unwrap_or(u32::MAX));
            Some(Softnet {
                cpu,
                processed: *f.first()?,
                dropped: *f.get(1)?,
                time_squeeze: *f.get(2)?,
            })
        })
        .collect()
}

fn add_reason(map: &mut BTreeMap<u32, Vec<String>>, cpu: u32, why: String) {
    let v = map.entry(cpu).or_default();
    if v.len() < MAX_REASONS && !v.contains(&why) {
        v.push(why);
    }
}

pub fn read(roots: &Roots, tasks: &TaskScan) -> RxLayout {
    let mut rx = RxLayout::default();
    let interrupts = match read_text(&roots.proc("proc/interrupts")) {
        Ok(t) => {
            rx.interrupts_read = true;
            parse_interrupts(&t)
        }
        Err(e) => {
            rx.notes
                .push(super::why(&roots.proc("proc/interrupts"), &e));
            vec![]
        }
    };
    let net = roots.sys("sys/class/net");
    let mut names: Vec<String> = std::fs::read_dir(&net)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| n != "lo")
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let mut bound = Budget::new(budget::NET_SCAN, budget::INTERFACES);
    for name in names {
        if !bound.take() {
            break;
        }
        let dir = net.join(&name);
        let device_link = dir.join("device");
        let device_path = std::fs::canonicalize(&device_link).ok();
        let (queues, queues_cut) = rx_queues(&dir);
        let mut iface = Interface {
            device: device_path.as_deref().and_then(basename),
            // virtio devices sit below the PCI function that owns their vectors.
            parent_device: device_path
                .as_deref()
                .filter(|p| basename(p).is_some_and(|b| b.starts_with("virtio")))
                .and_then(Path::parent)
                .and_then(basename),
            driver: std::fs::read_link(device_link.join("driver"))
                .ok()
                .as_deref()
                .and_then(basename),
            threaded: read_u64(&dir.join("threaded")),
            rx_queues: queues,
            queues_cut,
            name,
            irqs: vec![],
        };
        if iface.physical() {
            let mut msi = irq_numbers(&device_link.join("msi_irqs"));
            if msi.is_empty() {
                // virtio: the vectors belong to the PCI function above the virtio device.
                msi = irq_numbers(&device_link.join("..").join("msi_irqs"));
            }
            iface.irqs = nic_irqs(&iface, &msi, &interrupts, roots);
        } else if !iface.rps_on() && !iface.threaded_on() {
            rx.plain_virtual += 1;
            continue;
        }
        rx.interfaces.push(iface);
    }
    rx.interfaces_cut = bound.cut();
    if rx.interfaces_cut {
        rx.notes.push(format!(
            "looked at the first {} interfaces only (time or count bound)",
            rx.interfaces.len() as u64 + rx.plain_virtual
        ));
    }
    let sysctl = |n: &str| read_u64(&roots.proc(&format!("proc/sys/net/core/{n}")));
    rx.rps_sock_flow_entries = sysctl("rps_sock_flow_entries");
    rx.netdev_budget = sysctl("netdev_budget");
    rx.netdev_budget_usecs = sysctl("netdev_budget_usecs");
    rx.dev_weight = sysctl("dev_weight");
    rx.softnet = softnet(&read_text(&roots.proc("proc/net/softnet_stat")).unwrap_or_default());
    let cpu_file = |n: &str| {
        read_text(&roots.sys(&format!("sys/devices/system/cpu/{n}")))
            .map(|s| cpus::parse_list(&s))
            .unwrap_or_default()
    };
    rx.online = cpu_file("online");
    rx.nohz_full = cpu_file("nohz_full");
    rx.isolated = cpu_file("isolated");

    let mut map = BTreeMap::new();
    for iface in &rx.interfaces {
        for irq in iface.rx_irqs() {
            for &cpu in irq.cpus() {
                add_reason(&mut map, cpu, format!("irq {} {}", irq.irq, irq.name));
            }
        }
        for q in &iface.rx_queues {
            for &cpu in &q.rps_cpus {
                add_reason(&mut map, cpu, format!("RPS {}/{}", iface.name, q.name));
            }
        }
    }
    for t in &tasks.napi {
        for &cpu in &t.allowed {
            add_reason(&mut map, cpu, format!("{} (pid {})", t.comm, t.pid));
        }
    }
    rx.rx_cpus = map;
    rx
}

fn irq_line(irq: &NicIrq) -> String {
    let to = cpus::words(irq.cpus());
    let allowed = cpus::format(&irq.affinity);
    let counts: Vec<String> = irq
        .counts
        .iter()
        .map(|(cpu, n)| format!("CPU{cpu} {}", super::count(*n)))
        .collect();
    format!(
        "irq {} {} → {to}{}; interrupts so far: {}",
        irq.irq,
        irq.name,
        if allowed != cpus::format(irq.cpus()) {
            format!(" (allowed {allowed})")
        } else {
            String::new()
        },
        if counts.is_empty() {
            "none".into()
        } else {
            counts.join(", ")
        }
    )
}

fn rps_phrase(iface: &Interface) -> String {
    let on: Vec<String> = iface
        .rx_queues
        .iter()
        .filter(|q| !q.rps_cpus.is_empty())
        .map(|q| format!("{} → {}", q.name, cpus::words(&q.rps_cpus)))
        .collect();
    if on.is_empty() {
        "RPS off".into()
    } else {
        format!("RPS {}", on.join(", "))
    }
}

pub fn queues_check(rx: &RxLayout, tasks: &TaskScan) -> Check {
    const ID: &str = "rx_queues";
    const TITLE: &str = "receive queues";
    let mut parts = vec![];
    let mut details = vec![];
    let mut warnings = vec![];
    for iface in &rx.interfaces {
        let rx_irqs: Vec<&NicIrq> = iface.rx_irqs().collect();
        let irq_cpus: CpuSet = rx_irqs
            .iter()
            .flat_map(|i| i.cpus().iter().copied())
            .collect();
        let threaded = if iface.threaded_on() {
            "threaded NAPI on"
        } else {
            "threaded NAPI off"
        };
        let head = if iface.physical() {
            format!(
                "{}: {} RX queue{}, {} on {}, {}, {threaded}",
                iface.name,
                iface.rx_queues.len(),
                if iface.rx_queues.len() == 1 { "" } else { "s" },
                match rx_irqs.len() {
                    0 => "no queue interrupt found".to_string(),
                    1 => "interrupt".to_string(),
                    n => format!("{n} interrupts"),
                },
                cpus::words(&irq_cpus),
                rps_phrase(iface)
            )
        } else {
            format!(
                "{} (virtual): {}, {threaded}",
                iface.name,
                rps_phrase(iface)
            )
        };
        parts.push(head);
        let what = match (&iface.driver, &iface.device, &iface.parent_device) {
            (Some(drv), Some(dev), Some(parent)) => format!("{drv} at {dev} ({parent})"),
            (Some(drv), Some(dev), None) => format!("{drv} at {dev}"),
            (None, Some(dev), _) => dev.clone(),
            _ => "virtual".into(),
        };
        details.push(format!("{}: {what}", iface.name));
        for irq in iface.irqs.iter().filter(|i| i.rx).take(IRQ_LINES_SHOWN) {
            details.push(format!("  {}", irq_line(irq)));
        }
        if rx_irqs.len() > IRQ_LINES_SHOWN {
            details.push(format!(
                "  … {} more queue interrupts",
                rx_irqs.len() - IRQ_LINES_SHOWN
            ));
        }
        let others = iface.irqs.iter().filter(|i| !i.rx).count();
        if others > 0 {
            details.push(format!(
                "  {others} other interrupt{} (config, transmit, admin) not counted as RX",
                if others == 1 { "" } else { "s" }
            ));
        }
        if iface.queues_cut {
            details.push(format!(
                "  only the first {} queues were read",
                budget::QUEUES_PER_INTERFACE
            ));
        }
        if rx_irqs.len() > 1 && irq_cpus.len() == 1 && rx.online.len() > 1 {
            warnings.push(format!(
                "all {} RX queue interrupts of {} go to {}",
                rx_irqs.len(),
                iface.name,
                cpus::words(&irq_cpus)
            ));
        }
    }
    if rx.plain_virtual > 0 {
        details.push(format!(
            "{} virtual interface{} without RPS or threaded NAPI (counted, not listed)",
            super::count(rx.plain_virtual),
            if rx.plain_virtual == 1 { "" } else { "s" }
        ));
    }
    let flow_queues = rx
        .interfaces
        .iter()
        .flat_map(|i| i.rx_queues.iter())
        .filter(|q| q.rps_flow_cnt.unwrap_or(0) > 0)
        .count();
    details.push(match rx.rps_sock_flow_entries {
        Some(n) if n > 0 && flow_queues > 0 => format!(
            "RFS on: net.core.rps_sock_flow_entries {}, queues with rps_flow_cnt: {flow_queues}",
            super::count(n)
        ),
        Some(n) => format!(
            "RFS off (net.core.rps_sock_flow_entries {}, queues with rps_flow_cnt: {flow_queues})",
            super::count(n)
        ),
        None => "RFS: net.core.rps_sock_flow_entries not readable".into(),
    });
    details.push(if tasks.napi.is_empty() {
        "NAPI threads: none".to_string()
    } else {
        format!(
            "NAPI threads: {}",
            tasks
                .napi
                .iter()
                .map(|t| t.label())
                .collect::<Vec<_>>()
                .join("; ")
        )
    });
    details.extend(rx.notes.iter().cloned());
    if !rx.interrupts_read {
        return Check::new(ID, TITLE, Status::Unknown, "/proc/interrupts not readable")
            .details(details);
    }
    if rx.interfaces.is_empty() {
        return Check::new(
            ID,
            TITLE,
            Status::Ok,
            "no physical NIC found (virtual interfaces only: RX runs where the sender's \
             softirq or RPS puts it)",
        )
        .details(details);
    }
    if !warnings.is_empty() {
        return Check::new(ID, TITLE, Status::Warn, warnings.join("; "))
            .todo(
                "spread the queue interrupts over CPUs (irqbalance, or write \
                 /proc/irq/N/smp_affinity_list), or spread protocol work with RPS \
                 (/sys/class/net/DEV/queues/rx-N/rps_cpus): one CPU's softirq then carries \
                 every queue and anything holding that CPU stalls all of them",
            )
            .detail(parts.join("; "))
            .details(details);
    }
    Check::new(ID, TITLE, Status::Ok, parts.join("; ")).details(details)
}

/// Below these the softirq stops early and leaves the rest to ksoftirqd or the next round.
const BUDGET_LOW: u64 = 100;
const BUDGET_USECS_LOW: u64 = 1000;
const WEIGHT_LOW: u64 = 16;

pub fn budget_check(rx: &RxLayout) -> Check {
    const ID: &str = "softirq_budget";
    const TITLE: &str = "softirq budget";
    let show = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_else(|| "?".into());
    let summary = format!(
        "netdev_budget {}, netdev_budget_usecs {}, dev_weight {}",
        show(rx.netdev_budget),
        show(rx.netdev_budget_usecs),
        show(rx.dev_weight)
    );
    let mut details = vec![
        "a NET_RX softirq round stops after netdev_budget packets or netdev_budget_usecs, \
         each NAPI poll after dev_weight packets; work left over goes to a later round, \
         and past the softirq's own limits to ksoftirqd, an ordinary SCHED_OTHER thread"
            .to_string(),
    ];
    let squeezed: Vec<String> = rx
        .softnet
        .iter()
        .filter(|s| s.time_squeeze > 0 || s.dropped > 0)
        .map(|s| {
            format!(
                "CPU{}: {} processed, {} time_squeeze, {} dropped",
                s.cpu,
                super::count(s.processed),
                super::count(s.time_squeeze),
                super::count(s.dropped)
            )
        })
        .collect();
    details.push(if rx.softnet.is_empty() {
        "/proc/net/softnet_stat: not readable".into()
    } else if squeezed.is_empty() {
        "/proc/net/softnet_stat since boot: no CPU ran out of budget, none dropped".into()
    } else {
        format!("/proc/net/softnet_stat since boot: {}", squeezed.join("; "))
    });
    if rx.netdev_budget.is_none() && rx.netdev_budget_usecs.is_none() && rx.dev_weight.is_none() {
        return Check::new(ID, TITLE, Status::Unknown, "net.core sysctls not readable")
            .details(details);
    }
    let mut low = vec![];
    if rx.netdev_budget.is_some_and(|b| b < BUDGET_LOW) {
        low.push(format!("netdev_budget below {BUDGET_LOW}"));
    }
    if rx.netdev_budget_usecs.is_some_and(|b| b < BUDGET_USECS_LOW) {
        low.push(format!("netdev_budget_usecs below {BUDGET_USECS_LOW}"));
    }
    if rx.dev_weight.is_some_and(|w| w < WEIGHT_LOW) {
        low.push(format!("dev_weight below {WEIGHT_LOW}"));
    }
    let dropped: u64 = rx.softnet.iter().map(|s| s.dropped).sum();
    if dropped > 0 {
        low.push(format!(
            "{} packets dropped on full backlogs",
            super::count(dropped)
        ));
    }
    if low.is_empty() {
        return Check::new(ID, TITLE, Status::Ok, summary).details(details);
    }
    Check::new(
        ID,
        TITLE,
        Status::Warn,
        format!("{summary} ({})", low.join(", ")),
    )
    .todo(
        "restore the defaults (netdev_budget 300, dev_weight 64, netdev_budget_usecs \
             2 jiffies) unless a measurement asked for less: a small budget hands RX to \
             ksoftirqd sooner; backlog drops call for a larger net.core.netdev_max_backlog \
             or less RPS fan-in",
    )
    .details(details)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::testfs::Tree;

    const VIRTIO: &str = "           CPU0       CPU1       \n\
  24:          1          0  IO-APIC   5-edge      ACPI:Ged\n\
  35:          0          1 PCI-MSIX-0000:00:02.0   0-edge      virtio1-config\n\
  37:          0          0 PCI-MSIX-0000:00:03.0   0-edge      virtio2-config\n\
  38:          0       6494 PCI-MSIX-0000:00:03.0   1-edge      virtio2-input.0\n\
  39:       5579          0 PCI-MSIX-0000:00:03.0   2-edge      virtio2-output.0\n\
  41:       1918          0 PCI-MSIX-0000:00:04.0   1-edge      virtio3-rx\n\
 NMI:          0          0   Non-maskable interrupts\n\
 LOC:     234668     214142   Local timer interrupts\n\
 ERR:          0\n";

    const MLX5: &str = "            CPU0       CPU1       CPU2       CPU3\n\
  95:          0          0          0          0  IR-PCI-MSIX-0000:3b:00.0    0-edge      mlx5_async0@pci:0000:3b:00.0\n\
  96:    1834512          0          0          0  IR-PCI-MSIX-0000:3b:00.0    1-edge      mlx5_comp0@pci:0000:3b:00.0\n\
  97:          0    2002211          0          0  IR-PCI-MSIX-0000:3b:00.0    2-edge      mlx5_comp1@pci:0000:3b:00.0\n\
  98:          0          0     991022          0  IR-PCI-MSIX-0000:3b:00.0    3-edge      mlx5_comp2@pci:0000:3b:00.0\n\
  99:          0          0          0    1200334  IR-PCI-MSIX-0000:3b:00.0    4-edge      mlx5_comp3@pci:0000:3b:00.0\n";

    const IXGBE_I40E: &str = "            CPU0       CPU1\n\
  60:     912345          0  IR-PCI-MSI 1572864-edge      eth2-TxRx-0\n\
  61:          0     812345  IR-PCI-MSI 1572865-edge      eth2-TxRx-1\n\
  62:          3          0  IR-PCI-MSI 1572866-edge      eth2\n\
  70:          9          0  IR-PCI-MSI 1048576-edge      i40e-0000:02:00.0:misc\n\
  71:     500000          0  IR-PCI-MSI 1048577-edge      i40e-ens1f0-TxRx-0\n\
  72:     400000          0  IR-PCI-MSI 1048578-edge      i40e-ens1f0-TxRx-1\n\
  80:         12          0   PCI-MSI-edge      eth20-TxRx-0\n\
  11:       5000          0   IO-APIC-fasteoi   uhci_hcd:usb1, eth3\n";

    #[test]
    fn interrupts_of_real_nics_parse_and_classify() {
        let v = parse_interrupts(VIRTIO);
        assert_eq!(v.len(), 6);
        let input = v.iter().find(|l| l.irq == 38).unwrap();
        assert_eq!(input.counts, BTreeMap::from([(1, 6494)]));
        assert_eq!(input.names, vec!["virtio2-input.0"]);
        assert_eq!(v[0].names, vec!["ACPI:Ged"]);
        let m = parse_interrupts(MLX5);
        assert_eq!(m[1].names, vec!["mlx5_comp0@pci:0000:3b:00.0"]);
        assert_eq!(m[1].counts, BTreeMap::from([(0, 1_834_512)]));
        // An offline CPU has no column: counts keep the header's CPU numbers.
        let gap = parse_interrupts("      CPU0  CPU2\n 5:  7  9  IO-APIC 5-edge eth0\n");
        assert_eq!(gap[0].counts, BTreeMap::from([(0, 7), (2, 9)]));
        assert_eq!(gap[0].names, vec!["eth0"]);
        let x = parse_interrupts(IXGBE_I40E);
        let shared = x.iter().find(|l| l.irq == 11).unwrap();
        assert_eq!(shared.names, vec!["uhci_hcd:usb1", "eth3"]);
        let old = x.iter().find(|l| l.irq == 80).unwrap();
        assert_eq!(old.names, vec!["eth20-TxRx-0"]);

        assert_eq!(is_rx_vector("virtio2-input.0"), Some(true));
        assert_eq!(is_rx_vector("virtio2-output.0"), Some(false));
        assert_eq!(is_rx_vector("virtio2-config"), Some(false));
        assert_eq!(is_rx_vector("mlx5_comp3@pci:0000:3b:00.0"), Some(true));
        assert_eq!(is_rx_vector("mlx5_async0@pci:0000:3b:00.0"), Some(false));
        assert_eq!(is_rx_vector("eth2-TxRx-0"), Some(true));
        assert_eq!(is_rx_vector("i40e-0000:02:00.0:misc"), Some(false));
        assert_eq!(is_rx_vector("eth0-tx-0"), Some(false));
        assert_eq!(is_rx_vector("eth2"), None);

        assert!(mentions("i40e-ens1f0-TxRx-0", "ens1f0"));
        assert!(mentions("eth2-TxRx-0", "eth2"));
        assert!(mentions("eth2", "eth2"));
        assert!(!mentions("eth20-TxRx-0", "eth2"));
        assert!(!mentions("veth2", "eth2"));
    }

    /// A NIC under sys/devices with its class/net link, like the kernel's layout.
    fn nic(t: &Tree, name: &str, device: &str, driver: &str, queues: u32) {
        let dev = format!("sys/devices/{device}");
        t.dir(&dev)
            .dir(&format!("sys/bus/drivers/{driver}"))
            .link(
                &format!("{dev}/driver"),
                &t.path(&format!("sys/bus/drivers/{driver}")),
            )
            .link(&format!("sys/class/net/{name}/device"), &t.path(&dev));
        for q in 0..queues {
            t.file(
                &format!("sys/class/net/{name}/queues/rx-{q}/rps_cpus"),
                "00000000\n",
            )
            .file(
                &format!("sys/class/net/{name}/queues/rx-{q}/rps_flow_cnt"),
                "0\n",
            );
        }
        t.file(&format!("sys/class/net/{name}/threaded"), "0\n");
    }

    fn irq(t: &Tree, n: u32, allowed: &str, effective: &str) {
        t.file(
            &format!("proc/irq/{n}/smp_affinity_list"),
            &format!("{allowed}\n"),
        )
        .file(
            &format!("proc/irq/{n}/effective_affinity_list"),
            &format!("{effective}\n"),
        );
    }

    #[test]
    fn virtio_layout_like_this_machine() {
        let t = Tree::new("rx-virtio");
        t.file("proc/interrupts", VIRTIO)
            .file("sys/devices/system/cpu/online", "0-1\n")
            .file("proc/sys/net/core/rps_sock_flow_entries", "0\n")
            .file("proc/sys/net/core/netdev_budget", "300\n")
            .file("proc/sys/net/core/netdev_budget_usecs", "8000\n")
            .file("proc/sys/net/core/dev_weight", "64\n")
            .file(
                "proc/net/softnet_stat",
                "00001a2b 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000\n\
                 00000c1d 00000000 00000002 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000001\n",
            );
        nic(
            &t,
            "eth0",
            "pci0000:00/0000:00:03.0/virtio2",
            "virtio_net",
            1,
        );
        for n in [37, 38, 39] {
            t.file(
                &format!("sys/devices/pci0000:00/0000:00:03.0/msi_irqs/{n}"),
                "msix\n",
            );
        }
        irq(&t, 38, "0-1", "1");
        irq(&t, 39, "0-1", "0");
        t.dir("sys/class/net/ifb0/queues/rx-0")
            .dir("sys/class/net/lo");
        let rx = read(&t.roots(), &TaskScan::default());
        assert_eq!(rx.interfaces.len(), 1);
        assert_eq!(rx.plain_virtual, 1);
        let eth0 = &rx.interfaces[0];
        assert_eq!(eth0.device.as_deref(), Some("virtio2"));
        assert_eq!(eth0.parent_device.as_deref(), Some("0000:00:03.0"));
        assert_eq!(eth0.driver.as_deref(), Some("virtio_net"));
        let irqs: Vec<(u32, bool)> = eth0.irqs.iter().map(|i| (i.irq, i.rx)).collect();
        assert_eq!(irqs, vec![(37, false), (38, true), (39, false)]);
        assert_eq!(rx.rx_cpus.keys().copied().collect::<Vec<_>>(), vec![1]);
        assert_eq!(rx.rx_cpus[&1], vec!["irq 38 virtio2-input.0"]);
        assert_eq!(rx.softnet[1].cpu, 1);
        assert_eq!(rx.softnet[1].time_squeeze, 2);
        let c = queues_check(&rx, &TaskScan::default());
        assert_eq!(c.status, Status::Ok, "{c:#?}");
        assert_eq!(
            c.summary,
            "eth0: 1 RX queue, interrupt on CPU 1, RPS off, threaded NAPI off"
        );
        assert!(
            c.details.iter().any(|d| d.contains(
                "irq 38 virtio2-input.0 → CPU 1 (allowed 0-1); interrupts so far: CPU1 6 494"
            )),
            "{c:#?}"
        );
        assert!(c.details.iter().any(|d| d.starts_with("RFS off")));
        let b = budget_check(&rx);
        assert_eq!(b.status, Status::Ok);
        assert_eq!(
            b.summary,
            "netdev_budget 300, netdev_budget_usecs 8000, dev_weight 64"
        );
        assert!(b
            .details
            .iter()
            .any(|d| d.contains("CPU1: 3 101 processed, 2 time_squeeze")));
    }

    #[test]
    fn mlx5_by_name_and_rps_masks() {
        let t = Tree::new("rx-mlx5");
        t.file("proc/interrupts", MLX5)
            .file("sys/devices/system/cpu/online", "0-3\n")
            .file("proc/sys/net/core/rps_sock_flow_entries", "32768\n");
        nic(
            &t,
            "ens1f0np0",
            "pci0000:3a/0000:3a:00.0/0000:3b:00.0",
            "mlx5_core",
            4,
        );
        for (n, cpu) in [(96, 0), (97, 1), (98, 2), (99, 3)] {
            irq(&t, n, &cpu.to_string(), &cpu.to_string());
        }
        t.file(
            "sys/class/net/ens1f0np0/queues/rx-0/rps_cpus",
            "00000000,0000000c\n",
        )
        .file("sys/class/net/ens1f0np0/queues/rx-0/rps_flow_cnt", "4096\n");
        // A veth with RPS is listed; one without is only counted.
        t.file("sys/class/net/veth1/queues/rx-0/rps_cpus", "2\n")
            .file("sys/class/net/veth2/queues/rx-0/rps_cpus", "0\n");
        let rx = read(&t.roots(), &TaskScan::default());
        let nic = &rx.interfaces[0];
        assert_eq!(nic.name, "ens1f0np0");
        assert_eq!(nic.rx_irqs().count(), 4);
        assert_eq!(nic.irqs.len(), 5);
        assert_eq!(rx.interfaces[1].name, "veth1");
        assert_eq!(rx.plain_virtual, 1);
        assert_eq!(
            rx.rx_cpus[&2],
            vec!["irq 98 mlx5_comp2@pci:0000:3b:00.0", "RPS ens1f0np0/rx-0"]
        );
        assert!(rx.rx_cpus[&1].contains(&"RPS veth1/rx-0".to_string()));
        let c = queues_check(&rx, &TaskScan::default());
        assert_eq!(c.status, Status::Ok);
        assert!(c.summary.starts_with(
            "ens1f0np0: 4 RX queues, 4 interrupts on CPUs 0-3, RPS rx-0 → CPUs 2-3, threaded NAPI off"
        ), "{}", c.summary);
        assert!(
            c.details.iter().any(|d| d.starts_with(
                "RFS on: net.core.rps_sock_flow_entries 32 768, queues with rps_flow_cnt: 1"
            )),
            "{c:#?}"
        );
    }

    #[test]
    fn ixgbe_all_queues_on_one_cpu_warns() {
        let t = Tree::new("rx-ixgbe");
        t.file("proc/interrupts", IXGBE_I40E)
            .file("sys/devices/system/cpu/online", "0-1\n")
            .file("proc/sys/net/core/netdev_budget", "1\n");
        nic(
            &t,
            "eth2",
            "pci0000:00/0000:00:1c.0/0000:06:00.0",
            "ixgbe",
            2,
        );
        nic(
            &t,
            "ens1f0",
            "pci0000:00/0000:00:02.0/0000:02:00.0",
            "i40e",
            2,
        );
        nic(
            &t,
            "eth20",
            "pci0000:00/0000:00:1d.0/0000:07:00.0",
            "e1000e",
            1,
        );
        for n in [60, 61, 71, 72] {
            irq(&t, n, "0-1", "0");
        }
        let rx = read(&t.roots(), &TaskScan::default());
        let names: Vec<&str> = rx.interfaces.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, vec!["ens1f0", "eth2", "eth20"]);
        let i40e = &rx.interfaces[0];
        // The misc vector is the i40e's (named by PCI address) but carries no RX.
        assert_eq!(
            i40e.irqs.iter().map(|i| (i.irq, i.rx)).collect::<Vec<_>>(),
            vec![(70, false), (71, true), (72, true)]
        );
        let ixgbe = &rx.interfaces[1];
        assert_eq!(
            ixgbe.irqs.iter().map(|i| (i.irq, i.rx)).collect::<Vec<_>>(),
            vec![(60, true), (61, true), (62, false)]
        );
        // eth20 is not eth2; its single old-style vector carries RX.
        assert_eq!(
            rx.interfaces[2]
                .irqs
                .iter()
                .map(|i| i.irq)
                .collect::<Vec<_>>(),
            vec![80]
        );
        let c = queues_check(&rx, &TaskScan::default());
        assert_eq!(c.status, Status::Warn);
        assert!(
            c.summary
                .contains("all 2 RX queue interrupts of ens1f0 go to CPU 0"),
            "{}",
            c.summary
        );
        assert!(c
            .summary
            .contains("all 2 RX queue interrupts of eth2 go to CPU 0"));
        let b = budget_check(&rx);
        assert_eq!(b.status, Status::Warn);
        assert!(
            b.summary.contains("netdev_budget below 100"),
            "{}",
            b.summary
        );
    }

    #[test]
    fn nothing_readable_is_unknown_not_a_panic() {
        let t = Tree::new("rx-empty");
        let rx = read(&t.roots(), &TaskScan::default());
        let c = queues_check(&rx, &TaskScan::default());
        assert_eq!(c.status, Status::Unknown);
        assert!(
            c.details
                .iter()
                .any(|d| d.contains("proc/interrupts does not exist")),
            "{c:#?}"
        );
        assert_eq!(budget_check(&rx).status, Status::Unknown);
        assert!(parse_interrupts("").is_empty());
        assert!(parse_interrupts("garbage\n1: x\n:\n").len() <= 1);
    }
}
