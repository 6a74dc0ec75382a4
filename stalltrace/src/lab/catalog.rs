//! The scenarios `lab --scenario` offers, by name.
use super::{
    ksoftirqd::Ksoftirqd,
    memcg::MemcgStat,
    napi::{RtHog, ShortSyscalls, SlowSyscall},
    scenario::Scenario,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScenarioName {
    /// A SCHED_FIFO busy loop starves the RX thread.
    RtHog,
    /// A SCHED_FIFO reader sits inside long read()s.
    SlowSyscall,
    /// The 2019 GitHub incident's case: NET_RX deferred to a starved ksoftirqd (kernels before 6.5).
    Ksoftirqd,
    /// A SCHED_FIFO poller in many short syscalls: open, read, close of a /proc file.
    ShortSyscalls,
    /// The 2019 GitHub incident's culprit: dying memory cgroups and a walker reading memory.stat.
    MemcgStat,
}

impl ScenarioName {
    pub fn scenario(self) -> Box<dyn Scenario> {
        match self {
            ScenarioName::RtHog => Box::new(RtHog),
            ScenarioName::SlowSyscall => Box::new(SlowSyscall),
            ScenarioName::Ksoftirqd => Box::new(Ksoftirqd),
            ScenarioName::ShortSyscalls => Box::new(ShortSyscalls),
            ScenarioName::MemcgStat => Box::new(MemcgStat),
        }
    }

    /// Every scenario, in `--help`'s order (clap's list: a new variant is listed here
    /// without a second list to forget).
    pub fn all() -> &'static [ScenarioName] {
        <ScenarioName as clap::ValueEnum>::value_variants()
    }
}
