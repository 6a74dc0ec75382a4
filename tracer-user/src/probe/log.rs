//! Parsing hping3 and iputils ping output into probe records.
//! (Placeholder interface, owned by the prober work: see issue 4.)
use std::path::{Path, PathBuf};

use crate::dump::ProbeRec;

#[derive(Debug, thiserror::Error)]
pub enum ProbeLogError {
    #[error("{path}: cannot read: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: no probe line found (expected hping3 or ping output)")]
    NoProbes { path: PathBuf },
}

/// Probes parsed from a log, and how many lines were not understood.
#[derive(Debug, Default)]
pub struct ProbeLog {
    pub probes: Vec<ProbeRec>,
    pub unknown_lines: u64,
}

pub fn parse_file(path: &Path) -> Result<ProbeLog, ProbeLogError> {
    Err(ProbeLogError::NoProbes { path: path.to_path_buf() })
}
