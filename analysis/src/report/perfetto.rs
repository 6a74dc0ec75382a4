//! Perfetto export as Chrome trace-event JSON (`{"traceEvents":[…]}`), which
//! ui.perfetto.dev and chrome://tracing open. Written as records stream by: only the
//! first events are held, to find the time origin (records arrive slightly out of
//! order, and a wait's start precedes its record).
//!
//! Layout: one process per CPU ("CPU n", pid n+1) with threads for NET_RX softirq
//! waits, RX-thread waits, the tasks holding the CPU during a wait (by rank), probe
//! packets (instants), episodes and probe RTTs (counter). Long syscalls go in a
//! "Tasks" process, one thread per task; probe RTTs as the prober saw them (when it
//! ran on this host) in a "Prober" process.
use std::{collections::HashSet, io::Write};

use serde::Serialize;
use serde_json::{json, Value};

use crate::correlate::Episode;
use crate::dump::{PacketKind, Record, WaitKind};

const PID_TASKS: u32 = 1_000_001;
const PID_PROBER: u32 = 1_000_002;
const TID_NET_RX: u32 = 1;
const TID_RX_THREAD: u32 = 2;
const TID_PACKETS: u32 = 3;
const TID_EPISODES: u32 = 4;
const TID_HOLDER0: u32 = 10;
/// Events held back to find the time origin.
const HOLD: usize = 4096;

struct Ev {
    name: String,
    ph: &'static str,
    ts_ns: u64,
    dur_ns: Option<u64>,
    pid: u32,
    tid: u32,
    args: Value,
}

#[derive(Serialize)]
struct Out<'a> {
    name: &'a str,
    ph: &'static str,
    ts: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    dur: Option<f64>,
    pid: u32,
    tid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    s: Option<&'static str>,
    #[serde(skip_serializing_if = "Value::is_null")]
    args: &'a Value,
}

pub struct PerfettoWriter<W: Write> {
    out: W,
    base: Option<u64>,
    held: Vec<Ev>,
    first: bool,
    named_procs: HashSet<u32>,
    named_threads: HashSet<(u32, u32)>,
    /// Per CPU: end of the last wait window whose holders were drawn (the NET_RX and
    /// RX-thread waits of one stall share holders; draw them once).
    holders_until: std::collections::HashMap<u32, u64>,
}

fn cpu_pid(cpu: u32) -> u32 {
    cpu.saturating_add(1)
}

fn kind_name(k: PacketKind) -> &'static str {
    match k {
        PacketKind::EchoRequest => "echo_request",
        PacketKind::EchoReply => "echo_reply",
        PacketKind::Syn => "syn",
        PacketKind::SynAck => "syn_ack",
        PacketKind::Rst => "rst",
        PacketKind::OtherTcp => "tcp",
    }
}

impl<W: Write> PerfettoWriter<W> {
    pub fn new(mut out: W) -> std::io::Result<Self> {
        out.write_all(b"{\"displayTimeUnit\":\"ms\",\"traceEvents\":[\n")?;
        Ok(Self {
            out,
            base: None,
            held: Vec::new(),
            first: true,
            named_procs: HashSet::new(),
            named_threads: HashSet::new(),
            holders_until: Default::default(),
        })
    }

    fn write_raw(&mut self, o: &Out<'_>) -> std::io::Result<()> {
        if !self.first {
            self.out.write_all(b",\n")?;
        }
        self.first = false;
        serde_json::to_writer(&mut self.out, o).map_err(std::io::Error::other)
    }

    fn meta(
        &mut self,
        pid: u32,
        tid: u32,
        name: &str,
        what: &'static str,
        sort: u32,
    ) -> std::io::Result<()> {
        let args = json!({ "name": name });
        self.write_raw(&Out {
            name: what,
            ph: "M",
            ts: 0.0,
            dur: None,
            pid,
            tid,
            s: None,
            args: &args,
        })?;
        let (sname, sargs) = if what == "process_name" {
            ("process_sort_index", json!({ "sort_index": sort }))
        } else {
            ("thread_sort_index", json!({ "sort_index": sort }))
        };
        self.write_raw(&Out {
            name: sname,
            ph: "M",
            ts: 0.0,
            dur: None,
            pid,
            tid,
            s: None,
            args: &sargs,
        })
    }

    /// Names the process and thread of a track the first time it is used.
    fn track(&mut self, pid: u32, tid: u32) -> std::io::Result<()> {
        if self.named_procs.insert(pid) {
            let name = match pid {
                PID_TASKS => "Tasks (long syscalls)".to_string(),
                PID_PROBER => "Prober".to_string(),
                p => format!("CPU {}", p - 1),
            };
            self.meta(pid, 0, &name, "process_name", pid)?;
        }
        // tid 0 carries process-wide counters; task threads are named where known.
        if tid != 0 && pid != PID_TASKS && self.named_threads.insert((pid, tid)) {
            let name = match (pid, tid) {
                (_, TID_NET_RX) => "NET_RX softirq wait".into(),
                (_, TID_RX_THREAD) => "RX thread wait".into(),
                (_, TID_PACKETS) => "probe packets".into(),
                (_, TID_EPISODES) => "episodes".into(),
                (_, t) => format!("CPU holder #{}", t.saturating_sub(TID_HOLDER0) + 1),
            };
            self.meta(pid, tid, &name, "thread_name", tid)?;
        }
        Ok(())
    }

    fn emit(&mut self, ev: Ev) -> std::io::Result<()> {
        self.track(ev.pid, ev.tid)?;
        match self.base {
            None => {
                self.held.push(ev);
                if self.held.len() >= HOLD {
                    self.release()?;
                }
                Ok(())
            }
            Some(b) => self.write_ev(&ev, b),
        }
    }

    fn release(&mut self) -> std::io::Result<()> {
        let base = self
            .base
            .or_else(|| self.held.iter().map(|e| e.ts_ns).min())
            .unwrap_or(0);
        self.base = Some(base);
        for ev in std::mem::take(&mut self.held) {
            self.write_ev(&ev, base)?;
        }
        Ok(())
    }

    fn write_ev(&mut self, ev: &Ev, base: u64) -> std::io::Result<()> {
        // µs relative to the first event; a straggler from before it is pinned to 0.
        let ts = ev.ts_ns.saturating_sub(base) as f64 / 1e3;
        let o = Out {
            name: &ev.name,
            ph: ev.ph,
            ts,
            dur: ev.dur_ns.map(|d| d as f64 / 1e3),
            pid: ev.pid,
            tid: ev.tid,
            s: (ev.ph == "i").then_some("t"),
            args: &ev.args,
        };
        self.write_raw(&o)
    }

    pub fn record(&mut self, rec: &Record) -> std::io::Result<()> {
        match rec {
            Record::Packet(p) => self.emit(Ev {
                name: format!("{} {}", kind_name(p.kind), p.seq),
                ph: "i",
                ts_ns: p.ts_ns,
                dur_ns: None,
                pid: cpu_pid(p.cpu),
                tid: TID_PACKETS,
                args: json!({
                    "comm": p.comm, "pid": p.pid, "tgid": p.tgid, "context": p.context,
                    "proto": p.proto, "ident": p.ident, "seq": p.seq,
                    "src": p.src, "dst": p.dst, "rx_start_ns": p.rx_start_ns,
                }),
            }),
            Record::Wait(w) => {
                let (tid, what) = match w.kind {
                    WaitKind::NetRxSoftirq => (TID_NET_RX, "NET_RX wait"),
                    WaitKind::RxThread => (TID_RX_THREAD, "RX thread wait"),
                };
                let start = w.start_ns.min(w.ts_ns);
                let holders: Vec<Value> = w
                    .holders
                    .iter()
                    .map(|h| json!({"comm": h.comm, "pid": h.pid, "tgid": h.tgid, "run_ns": h.run_ns}))
                    .collect();
                self.emit(Ev {
                    name: format!("{what} → {}", w.rx.comm),
                    ph: "X",
                    ts_ns: start,
                    dur_ns: Some(w.ts_ns - start),
                    pid: cpu_pid(w.cpu),
                    tid,
                    args: json!({
                        "wait_ns": w.wait_ns, "rx": w.rx.comm, "rx_context": w.rx_context,
                        "waker": w.waker.comm, "nr_switches": w.nr_switches,
                        "truncated": w.truncated, "holders": holders,
                    }),
                })?;
                if self
                    .holders_until
                    .get(&w.cpu)
                    .is_some_and(|&until| start < until)
                {
                    return Ok(());
                }
                self.holders_until.insert(w.cpu, w.ts_ns);
                let window = w.ts_ns - start;
                for (rank, h) in (0u32..).zip(&w.holders) {
                    // The kernel gives time on CPU within the window, not when: drawn
                    // from the window's start.
                    self.emit(Ev {
                        name: format!("{} ({})", h.comm, h.pid),
                        ph: "X",
                        ts_ns: start,
                        dur_ns: Some(h.run_ns.min(window)),
                        pid: cpu_pid(w.cpu),
                        tid: TID_HOLDER0 + rank,
                        args: json!({
                            "pid": h.pid, "tgid": h.tgid, "run_ns": h.run_ns, "policy": h.policy,
                            "priority": h.priority, "cgroup": h.cgroup,
                            "syscall": h.syscall.as_ref().map(|s| &s.name),
                            "path": h.syscall.as_ref().and_then(|s| s.path.as_ref()),
                            "stacks": h.stacks.as_ref().map(|s| super::text::stack_lines("", s)),
                            "note": "time on the CPU inside the wait window; placement approximate",
                        }),
                    })?;
                }
                Ok(())
            }
            Record::Syscall(s) => {
                let tid = s.pid;
                if self.named_threads.insert((PID_TASKS, tid)) {
                    self.track(PID_TASKS, tid)?;
                    let name = format!("{} ({})", s.comm, s.pid);
                    self.meta(PID_TASKS, tid, &name, "thread_name", tid)?;
                }
                self.emit(Ev {
                    name: match &s.path {
                        Some(p) => format!("{}() {p}", s.name),
                        None => format!("{}()", s.name),
                    },
                    ph: "X",
                    ts_ns: s.start_ns.min(s.ts_ns),
                    dur_ns: Some(s.ts_ns.saturating_sub(s.start_ns)),
                    pid: PID_TASKS,
                    tid,
                    args: json!({"cpu": s.cpu, "cpu_ns": s.cpu_ns, "dur_ns": s.dur_ns, "tgid": s.tgid, "ret": s.ret}),
                })
            }
            Record::Probe(p) => match (p.sent_ns, p.rtt_ns) {
                (Some(sent), Some(rtt)) => self.emit(Ev {
                    name: "probe RTT (ms)".into(),
                    ph: "C",
                    ts_ns: sent,
                    dur_ns: None,
                    pid: PID_PROBER,
                    tid: 0,
                    args: json!({ "rtt_ms": rtt as f64 / 1e6 }),
                }),
                _ => Ok(()),
            },
            Record::Header(_) | Record::Footer(_) => Ok(()),
        }
    }

    pub fn episode(&mut self, e: &Episode) -> std::io::Result<()> {
        let pid = cpu_pid(e.cpu);
        self.emit(Ev {
            name: format!(
                "episode {}: {}",
                e.id,
                e.culprit
                    .as_ref()
                    .map_or("no holder recorded", |c| c.comm.as_str())
            ),
            ph: "X",
            ts_ns: e.start_ns,
            dur_ns: Some(e.wait_ns),
            pid,
            tid: TID_EPISODES,
            args: json!({
                "summary": super::text::episode_line(e),
                "probes_delayed": e.probes_delayed,
                "packets_delayed": e.packets_delayed,
                "worst_rtt_ns": e.worst_rtt_ns,
                "culprit_stacks": e.culprit.as_ref().and_then(|c| c.stacks.as_ref())
                    .map(|s| super::text::stack_lines("culprit's ", s)),
            }),
        })?;
        // The staircase, at the time the kernel processed each probe.
        for l in e.lines.iter().filter(|l| l.delayed) {
            if let Some(rtt) = l.rtt_ns {
                self.emit(Ev {
                    name: "probe RTT (ms)".into(),
                    ph: "C",
                    ts_ns: l.ts_ns,
                    dur_ns: None,
                    pid,
                    tid: 0,
                    args: json!({ "rtt_ms": rtt as f64 / 1e6 }),
                })?;
            }
        }
        Ok(())
    }

    /// Writes what is held back and closes the JSON document.
    pub fn close(&mut self) -> std::io::Result<()> {
        self.release()?;
        self.out.write_all(b"\n]}\n")?;
        self.out.flush()
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write> crate::analyze::Sink for PerfettoWriter<W> {
    fn record(&mut self, rec: &Record) -> std::io::Result<()> {
        PerfettoWriter::record(self, rec)
    }
    fn episode(&mut self, ep: &Episode) -> std::io::Result<()> {
        PerfettoWriter::episode(self, ep)
    }
    fn finish(&mut self, _report: &crate::correlate::Report) -> std::io::Result<()> {
        self.close()
    }
}
