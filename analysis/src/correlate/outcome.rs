//! What the correlator hands the reports at the end: totals, episodes, ranking.
use serde::Serialize;

use super::episode::Episode;
use super::rank::{CpuSummary, CulpritRank};
use crate::dump::{Footer, Header, Lost};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Probes decide: an episode needs a probe delayed at or above the threshold.
    Probes,
    /// No probes: a wait at or above the threshold is an episode when packets were
    /// processed after it (they are delayed packets), or when it held up NET_RX or a
    /// NAPI thread.
    Packets,
}

/// Where the recording came from and whether it is whole.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct InputInfo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub host: String,
    pub kernel: String,
    pub cpus: u32,
    pub started_at: String,
    pub packet_hook: String,
    /// Why that hook (the dump header's `options.packet_hook_reason`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packet_hook_reason: Option<String>,
    /// Syscalls were traced exactly (`record --syscalls`, and every version 1 dump): a
    /// culprit with no syscall recorded was in user space.
    pub exact_syscalls: bool,
    /// The sampler's rate, when holders' activity was sampled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampler_hz: Option<u64>,
    /// Features the recording's kernel did not allow.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub degraded: Vec<String>,
    /// Memory cgroups measured at record time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroups: Option<crate::dump::CgroupFacts>,
    /// The footer was read: the recorder ended cleanly.
    pub complete: bool,
    /// The last line was torn (the recorder died while writing it).
    pub partial_last_line: bool,
    /// Lines read, header included.
    pub lines: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<String>,
    /// Events the kernel could not hand over (ring buffer full), from the footer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost: Option<Lost>,
    /// What the recorder warned about while recording, from the footer.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub recorder_warnings: Vec<String>,
    /// `dump`, `log` or `none`.
    pub probe_source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe_log: Option<String>,
    /// Lines of the probe log that were not understood.
    pub probe_log_unknown_lines: u64,
}

impl InputInfo {
    pub fn set_header(&mut self, h: &Header) {
        self.host.clone_from(&h.host);
        self.kernel.clone_from(&h.kernel);
        self.cpus = h.cpus;
        self.started_at.clone_from(&h.started_at);
        self.packet_hook.clone_from(&h.packet_hook);
        self.packet_hook_reason
            .clone_from(&h.options.packet_hook_reason);
        self.exact_syscalls = h.exact_syscalls();
        self.sampler_hz = h.options.sampler_hz;
        self.degraded.clone_from(&h.options.degraded);
        self.cgroups.clone_from(&h.cgroups);
    }

    pub fn set_footer(&mut self, f: &Footer) {
        self.complete = true;
        self.ended_at = Some(f.ended_at.clone());
        self.duration_ns = Some(f.duration_ns);
        self.end_reason = Some(f.reason.clone());
        self.lost = Some(f.lost.clone());
        self.recorder_warnings.clone_from(&f.warnings);
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Totals {
    pub records: u64,
    pub packets: u64,
    pub waits: u64,
    pub syscalls: u64,
    /// Probe results considered (from the dump or the log).
    pub probes: u64,
    pub probes_lost: u64,
    /// Lost probes that never left: the kernel refused the send (part of `probes_lost`).
    pub probes_not_sent: u64,
    /// Why the first of them was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_send_error: Option<String>,
    /// Answered at or above the stall threshold.
    pub probes_stalled: u64,
    /// Probes the prober saw answered.
    pub probes_answered: u64,
    /// Answered probes matched to at least one kernel packet (by wire id/seq or ports).
    pub probes_matched: u64,
    /// Stalled probes that an episode explains.
    pub probes_explained: u64,
    /// Stalled probes no episode explains (see `unexplained` for why).
    pub probes_unexplained: u64,
    /// Probe records in the dump ignored because a probe log was given.
    pub probes_ignored: u64,
    pub episodes: u64,
    /// Episodes beyond the listing limit (counted and ranked, not listed).
    pub episodes_not_listed: u64,
    /// Packets processed in an episode's delayed RX run.
    pub packets_delayed: u64,
    /// Packets forgotten before their time because the window held its maximum (a
    /// flood): a stall among them may show fewer packets than it delayed.
    pub packets_forgotten_early: u64,
    /// Kernel waits (merged per CPU) at or above the stall threshold.
    pub stalls_over_threshold: u64,
}

/// Why a stalled probe has no episode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unexplained {
    /// No packet of this probe was recorded (delay elsewhere, or outside the recording).
    NoPacket,
    /// Its packet was processed, but not right after a recorded wait.
    NoWait,
    /// Its packet followed a wait shorter than half its RTT.
    WaitTooShort,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UnexplainedProbe {
    pub seq: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wire_seq: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_ns: Option<u64>,
    pub reason: Unexplained,
    /// The CPU that processed its packet, when one was seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub input: InputInfo,
    pub stall_threshold_ns: u64,
    pub mode: Mode,
    pub totals: Totals,
    /// By start time; at most the listing limit.
    pub episodes: Vec<Episode>,
    pub culprits: Vec<CulpritRank>,
    pub cpus: Vec<CpuSummary>,
    /// Episodes without any holder recorded.
    pub episodes_without_culprit: u64,
    /// First few stalled probes that no episode explains.
    pub unexplained: Vec<UnexplainedProbe>,
    pub unexplained_no_packet: u64,
    pub unexplained_no_wait: u64,
    pub unexplained_wait_too_short: u64,
}
