//! What a lab scenario is: it says how the namespace's receive work reaches the
//! starved CPU, how its culprit holds that CPU, what else must run, and whether this
//! kernel can show the stall at all. A new scenario is one more implementation and one
//! more [`ScenarioName`](super::catalog::ScenarioName).
use std::{path::Path, time::Duration};

use stalltrace_analysis::correlate::Report;

use super::{hog::HogArgs, journal::Journal, netns::Netns};

/// What a scenario works with: the lab's namespace, its journal, its private directory.
pub struct Lab<'a> {
    pub ns: &'a Netns,
    pub journal: &'a mut Journal,
    /// Private (0700) scratch directory on tmpfs, removed with the lab.
    pub scratch: &'a Path,
    /// The CPU starved.
    pub cpu: u32,
    /// Set by [`threaded_napi`](super::napi::threaded_napi) on a kernel without threaded NAPI (before 5.12): RX goes
    /// to `ksoftirqd/N` instead, which needs the ksoftirqd scenario's flood.
    pub rx_by_ksoftirqd: bool,
}

/// Something that runs alongside the culprit until dropped (ksoftirqd's flood).
pub trait Load {
    /// Stops it now (and puts back what it changed).
    fn stop(&mut self, journal: &mut Journal);
}

pub trait Scenario {
    fn name(&self) -> &'static str;
    fn summary(&self) -> &'static str;
    /// The planted culprit's task name: what the report must blame.
    fn culprit(&self) -> &'static str;
    /// Routes the namespace's receive work to `lab.cpu`; returns how, for the user.
    fn prepare(&self, lab: &mut Lab<'_>) -> anyhow::Result<String>;
    /// How the culprit holds the CPU (from the lab's common settings).
    fn hog(&self, lab: &mut Lab<'_>, base: HogArgs) -> anyhow::Result<HogArgs>;
    /// Load started once the culprit holds its CPU, for `length`.
    fn load(
        &self,
        _lab: &mut Lab<'_>,
        _culprit_pid: u32,
        _length: Duration,
    ) -> anyhow::Result<Option<Box<dyn Load>>> {
        Ok(None)
    }
    /// `Some(why)` when this kernel did not show the stall (the lab says so, exit 6).
    fn not_reproduced(&self, _dump: &Path) -> anyhow::Result<Option<String>> {
        Ok(None)
    }
    /// What the verdict needs beyond blaming the culprit: `Err(why)` if it is missing.
    fn check(&self, _report: &Report) -> Result<(), String> {
        Ok(())
    }
}
