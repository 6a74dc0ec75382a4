//! RX CPUs against what else may hold them: real-time user tasks (SCHED_FIFO, SCHED_RR,
//! SCHED_DEADLINE run before every SCHED_OTHER thread, ksoftirqd and NAPI threads
//! included) and isolated or nohz_full CPUs (meant for one task, not for RX). This is the
//! lab's planted stall, found before it happens: a NAPI thread that can run only where
//! a spinning SCHED_FIFO task runs waits for RT throttling to let it in.
use super::{
    cpus::{self, CpuSet},
    kernel::{defers_net_rx_to_ksoftirqd, KernelFacts},
    rx::RxLayout,
    tasks::{TaskInfo, TaskScan},
    Check, Status,
};

/// RX CPUs listed one per line before the rest are summed up.
const CPU_LINES: usize = 16;
/// Real-time tasks named in the details.
const RT_NAMED: usize = 10;

/// `t` may take the CPU from `victim` (a real-time task over a SCHED_OTHER thread, or over
/// a real-time one of no higher priority).
fn preempts(t: &TaskInfo, victim: &TaskInfo) -> bool {
    !victim.policy.realtime() || t.rt_priority >= victim.rt_priority
}

fn names(tasks: &[&TaskInfo]) -> String {
    tasks
        .iter()
        .map(|t| t.label())
        .collect::<Vec<_>>()
        .join("; ")
}

pub fn check(rx: &RxLayout, tasks: &TaskScan, kernel: &KernelFacts) -> Check {
    const ID: &str = "rx_cpus";
    const TITLE: &str = "RX CPUs";
    let rt: Vec<&TaskInfo> = tasks.rt_user.iter().collect();
    let throttling_off = kernel.rt_runtime_us == Some(-1);
    let old_deferral = kernel.version.is_some_and(defers_net_rx_to_ksoftirqd);
    let mut findings: Vec<(Status, String)> = vec![];

    // NAPI threads: the RX work itself is a SCHED_OTHER thread.
    for napi in &tasks.napi {
        let rivals: Vec<&TaskInfo> = rt
            .iter()
            .copied()
            .filter(|t| !t.allowed.is_disjoint(&napi.allowed) && preempts(t, napi))
            .collect();
        if rivals.is_empty() {
            continue;
        }
        let trapped = !napi.allowed.is_empty()
            && napi
                .allowed
                .iter()
                .all(|c| rivals.iter().any(|t| t.allowed.contains(c)));
        let spinning = rivals.iter().any(|t| t.spins());
        let status = if trapped && (spinning || throttling_off) {
            Status::Bad
        } else {
            Status::Warn
        };
        let shared: CpuSet = rivals
            .iter()
            .flat_map(|t| t.allowed.intersection(&napi.allowed).copied())
            .collect();
        findings.push((
            status,
            format!(
                "{} shares {} with {}{}",
                napi.label(),
                cpus::words(&shared),
                names(&rivals),
                if trapped {
                    ": it can run nowhere else"
                } else {
                    ""
                }
            ),
        ));
    }

    // Interrupt and RPS CPUs: softirq work that overflows goes to ksoftirqd/N.
    let softirq_cpus: CpuSet = rx
        .rx_cpus
        .iter()
        .filter(|(_, why)| {
            why.iter()
                .any(|w| w.starts_with("irq ") || w.starts_with("RPS "))
        })
        .map(|(c, _)| *c)
        .collect();
    for t in &rt {
        let overlap: CpuSet = t.allowed.intersection(&softirq_cpus).copied().collect();
        if overlap.is_empty() {
            continue;
        }
        let reasons: Vec<String> = overlap
            .iter()
            .filter_map(|c| rx.rx_cpus.get(c))
            .flatten()
            .filter(|w| w.starts_with("irq ") || w.starts_with("RPS "))
            .take(3)
            .cloned()
            .collect();
        // A ksoftirqd raised above the task is not held by it.
        let guarded = overlap.iter().all(|c| {
            tasks
                .ksoftirqd
                .iter()
                .any(|k| k.comm == format!("ksoftirqd/{c}") && !preempts(t, k))
        });
        let status = if t.spins() && (old_deferral || throttling_off) && !guarded {
            Status::Bad
        } else {
            Status::Warn
        };
        findings.push((
            status,
            format!(
                "{} may run on RX {} ({})",
                t.label(),
                cpus::words(&overlap),
                reasons.join(", ")
            ),
        ));
    }

    // Isolated and nohz_full CPUs that take RX anyway.
    for (what, set) in [("nohz_full", &rx.nohz_full), ("isolated", &rx.isolated)] {
        let hit: Vec<u32> = rx
            .rx_cpus
            .keys()
            .copied()
            .filter(|c| set.contains(c))
            .collect();
        if let Some(first) = hit.first() {
            let why = rx
                .rx_cpus
                .get(first)
                .and_then(|w| w.first())
                .cloned()
                .unwrap_or_default();
            findings.push((
                Status::Warn,
                format!(
                    "{} {what} yet take{} RX (CPU {first}: {why})",
                    cpus::words(&hit.iter().copied().collect()),
                    if hit.len() == 1 { "s" } else { "" }
                ),
            ));
        }
    }
    if throttling_off && !findings.is_empty() {
        for f in findings.iter_mut() {
            f.0 = Status::Bad;
        }
    }
    findings.sort_by_key(|f| std::cmp::Reverse(f.0));

    let mut details: Vec<String> = findings.iter().map(|(_, f)| f.clone()).collect();
    for (i, (cpu, why)) in rx.rx_cpus.iter().enumerate() {
        if i == CPU_LINES {
            details.push(format!("… {} more RX CPUs", rx.rx_cpus.len() - CPU_LINES));
            break;
        }
        details.push(format!("RX on CPU {cpu}: {}", why.join(", ")));
    }
    details.push(match rt.len() {
        0 => "real-time user tasks: none".into(),
        n => format!(
            "real-time user tasks: {n}{}: {}",
            if tasks.rt_user_more > 0 {
                format!(" (+{} not kept)", tasks.rt_user_more)
            } else {
                String::new()
            },
            names(&rt.iter().copied().take(RT_NAMED).collect::<Vec<_>>())
        ),
    });
    if tasks.rt_kernel > 0 {
        details.push(format!(
            "{} real-time kernel threads (migration/N, irq/N-…, …): expected, not counted",
            tasks.rt_kernel
        ));
    }
    let raised: Vec<String> = tasks
        .ksoftirqd
        .iter()
        .filter(|k| k.policy.realtime())
        .map(TaskInfo::label)
        .collect();
    if !raised.is_empty() {
        details.push(format!(
            "ksoftirqd raised to real time: {}",
            raised.join("; ")
        ));
    }
    details.push(match (kernel.rt_runtime_us, kernel.rt_period_us) {
        (Some(-1), _) => "kernel.sched_rt_runtime_us -1: real-time tasks are never throttled, \
                          a spinning one keeps SCHED_OTHER RX threads off its CPU indefinitely"
            .into(),
        (Some(run), Some(period)) if period > 0 => format!(
            "kernel.sched_rt_runtime_us {run} of {period}: real-time tasks may take {:.0}% of \
             each CPU; a SCHED_OTHER RX thread under a spinning one waits up to {} ms at a time",
            run as f64 * 100.0 / period as f64,
            run / 1000
        ),
        _ => "kernel.sched_rt_runtime_us: not readable".into(),
    });
    if old_deferral {
        details.push(
            "this kernel (4.9 to 6.4) leaves NET_RX to ksoftirqd whenever ksoftirqd is \
             runnable: a real-time task spinning on an RX CPU holds that CPU's RX"
                .into(),
        );
    }
    details.push(format!(
        "scanned {} threads in {} ms{}{}",
        super::count(tasks.tasks_scanned),
        tasks.scan_ms,
        if tasks.cut {
            " (cut at the scan's bound)"
        } else {
            ""
        },
        if tasks.unreadable > 0 {
            format!(", {} unreadable", tasks.unreadable)
        } else {
            String::new()
        }
    ));
    if let Some(h) = &tasks.hidden {
        details.push(format!("{h}: other users' tasks are not seen"));
    }

    let blind = tasks.hidden.is_some() || tasks.cut || tasks.unreadable > 0;
    if let Some((worst, first)) = findings.first() {
        let more = if findings.len() > 1 {
            format!(" (+{} more)", findings.len() - 1)
        } else {
            String::new()
        };
        return Check::new(ID, TITLE, *worst, format!("{first}{more}"))
            .todo(
                "move the real-time task off the RX CPUs (taskset -pc CPUS PID), or move RX \
                 off them (/proc/irq/N/smp_affinity_list, rps_cpus, taskset the napi thread), \
                 or run the RX thread above the task (chrt -f -p PRIO PID of the napi or \
                 ksoftirqd thread); keep isolated CPUs out of IRQ affinity and RPS masks",
            )
            .details(details);
    }
    let rx_where = if rx.rx_cpus.is_empty() {
        "RX CPUs not found".to_string()
    } else {
        format!(
            "RX on {}",
            cpus::words(&rx.rx_cpus.keys().copied().collect())
        )
    };
    if blind {
        let why = tasks
            .hidden
            .clone()
            .unwrap_or_else(|| "the task scan was incomplete".into());
        return Check::new(
            ID,
            TITLE,
            Status::Unknown,
            format!("{rx_where}; real-time tasks not fully seen ({why})"),
        )
        .details(details);
    }
    if rx.rx_cpus.is_empty() && !rt.is_empty() {
        return Check::new(
            ID,
            TITLE,
            Status::Unknown,
            format!(
                "{} real-time user tasks, but where RX runs was not found",
                rt.len()
            ),
        )
        .details(details);
    }
    let rt_phrase = if rt.is_empty() {
        "no real-time user tasks".to_string()
    } else {
        format!("{} real-time user tasks, none on them", rt.len())
    };
    Check::new(
        ID,
        TITLE,
        Status::Ok,
        format!("{rx_where}; {rt_phrase}; none isolated or nohz_full"),
    )
    .details(details)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::doctor::{
        kernel, rx, tasks,
        testfs::{Task, Tree},
        Budget,
    };

    /// The lab's threaded-NAPI scenario as a fixture: vB's napi thread pinned to CPU 1,
    /// a SCHED_FIFO busy loop on CPU 1.
    fn lab_like(hog_busy_ticks: u64, release: &str) -> Tree {
        let t = Tree::new("contention");
        t.file("proc/uptime", "1000.00 1900.00\n")
            .file("proc/sys/kernel/osrelease", &format!("{release}\n"))
            .file("proc/sys/kernel/sched_rt_runtime_us", "950000\n")
            .file("proc/sys/kernel/sched_rt_period_us", "1000000\n")
            .file("proc/interrupts", "           CPU0       CPU1\n")
            .file("sys/devices/system/cpu/online", "0-1\n")
            .file("sys/class/net/vB/threaded", "1\n")
            .file("sys/class/net/vB/queues/rx-0/rps_cpus", "0\n")
            .task(Task::user(1, 1, "init").on("0-1"))
            .task(Task::kthread(15, "ksoftirqd/1").on("1"))
            .task(Task::kthread(4242, "napi/vB-8193").on("1"))
            .task(Task::user(5000, 5000, "stalltrace").on("0-1"))
            .task(
                Task::user(5000, 5001, "hog")
                    .on("1")
                    .fifo(50)
                    .busy(hog_busy_ticks),
            );
        t
    }

    fn run(t: &Tree) -> Check {
        let roots = t.roots();
        let ts = tasks::scan(&roots, Budget::new(Duration::from_secs(5), 1000));
        let layout = rx::read(&roots, &ts);
        check(&layout, &ts, &kernel::read(&roots))
    }

    #[test]
    fn napi_thread_trapped_with_a_spinning_fifo_task_is_bad_and_names_both() {
        let t = lab_like(90_000, "6.18.44");
        let c = run(&t);
        assert_eq!(c.status, Status::Bad, "{c:#?}");
        assert!(
            c.summary
                .contains("napi/vB-8193 (pid 4242, SCHED_OTHER, CPUs 1"),
            "{}",
            c.summary
        );
        assert!(
            c.summary
                .contains("hog (tid 5001 of stalltrace pid 5000, SCHED_FIFO 50, CPUs 1, 90% CPU)"),
            "{}",
            c.summary
        );
        assert!(c.summary.contains("it can run nowhere else"));
        assert!(c.what_to_do.as_deref().unwrap().contains("chrt"));
        assert!(
            c.details
                .iter()
                .any(|d| d == "RX on CPU 1: napi/vB-8193 (pid 4242)"),
            "{c:#?}"
        );
        assert!(c
            .details
            .iter()
            .any(|d| d.contains("may take 95% of each CPU")));
    }

    #[test]
    fn an_idle_fifo_task_or_a_napi_thread_with_a_way_out_warns() {
        let c = run(&lab_like(0, "6.18.44"));
        assert_eq!(c.status, Status::Warn, "{c:#?}");
        let t = lab_like(90_000, "6.18.44");
        t.task(Task::kthread(4242, "napi/vB-8193").on("0-1"));
        let c = run(&t);
        assert_eq!(c.status, Status::Warn, "{c:#?}");
        assert!(!c.summary.contains("nowhere else"));
        // With RT throttling off, a trapped napi thread is bad even under an idle task.
        let t = lab_like(0, "6.18.44");
        t.file("proc/sys/kernel/sched_rt_runtime_us", "-1\n");
        let c = run(&t);
        assert_eq!(c.status, Status::Bad);
        assert!(c.details.iter().any(|d| d.contains("never throttled")));
    }

    #[test]
    fn irq_cpu_with_a_spinning_fifo_task_is_bad_on_the_2019_incident_kernels_only() {
        let t = lab_like(90_000, "4.9.0-19-amd64");
        std::fs::remove_dir_all(t.path("proc/4242")).unwrap();
        t.file(
            "proc/interrupts",
            "           CPU0       CPU1\n 60:  0  100  IR-PCI-MSI 1572864-edge  eth0-TxRx-0\n",
        )
        .file("proc/irq/60/smp_affinity_list", "1\n")
        .dir("sys/devices/pci0000:00/0000:00:1c.0/0000:06:00.0")
        .link(
            "sys/class/net/eth0/device",
            &t.path("sys/devices/pci0000:00/0000:00:1c.0/0000:06:00.0"),
        );
        let c = run(&t);
        assert_eq!(c.status, Status::Bad, "{c:#?}");
        assert!(c.summary.starts_with("hog (tid 5001"), "{}", c.summary);
        assert!(
            c.summary
                .contains("may run on RX CPU 1 (irq 60 eth0-TxRx-0)"),
            "{}",
            c.summary
        );
        t.file("proc/sys/kernel/osrelease", "6.18.44\n");
        assert_eq!(run(&t).status, Status::Warn);
        // ksoftirqd/1 raised above the hog: not held by it.
        t.file("proc/sys/kernel/osrelease", "4.9.0\n")
            .task(Task::kthread(15, "ksoftirqd/1").on("1").fifo(60));
        let c = run(&t);
        assert_eq!(c.status, Status::Warn, "{c:#?}");
        assert!(c
            .details
            .iter()
            .any(|d| d.starts_with("ksoftirqd raised to real time: ksoftirqd/1")));
    }

    #[test]
    fn isolated_rx_cpus_warn_and_a_quiet_node_is_ok() {
        let t = lab_like(0, "6.18.44");
        std::fs::remove_dir_all(t.path("proc/5000")).unwrap();
        let c = run(&t);
        assert_eq!(c.status, Status::Ok, "{c:#?}");
        assert_eq!(
            c.summary,
            "RX on CPU 1; no real-time user tasks; none isolated or nohz_full"
        );
        t.file("sys/devices/system/cpu/isolated", "1\n");
        let c = run(&t);
        assert_eq!(c.status, Status::Warn);
        assert_eq!(
            c.summary,
            "CPU 1 isolated yet takes RX (CPU 1: napi/vB-8193 (pid 4242))"
        );
    }

    #[test]
    fn hidden_tasks_make_a_clean_answer_unknown() {
        let t = lab_like(0, "6.18.44");
        std::fs::remove_dir_all(t.path("proc/5000")).unwrap();
        t.file("proc/mounts", "proc /proc proc rw,hidepid=2 0 0\n")
            .file("proc/self/status", "Uid:\t1000\t1000\t1000\t1000\n");
        let c = run(&t);
        assert_eq!(c.status, Status::Unknown, "{c:#?}");
        assert!(c.summary.contains("hidepid=2"), "{}", c.summary);
    }
}
