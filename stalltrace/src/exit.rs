//! Documented exit codes, and the mapping from typed errors to them.
use stalltrace_analysis::{
    analyze::AnalyzeError, dump::DumpError, output::OutputError, probelog::ProbeLogError,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    Ok = 0,
    Failure = 1,
    Usage = 2,
    Privileges = 3,
    KernelFeature = 4,
    BadInput = 5,
    LabMismatch = 6,
    /// `doctor` found something bad on this node.
    DoctorBad = 7,
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(c: ExitCode) -> Self {
        std::process::ExitCode::from(c as u8)
    }
}

/// An error that carries its own exit code (raised where the cause is known).
#[derive(Debug, thiserror::Error)]
#[error("{msg}")]
pub struct CodedError {
    pub code: ExitCode,
    pub msg: String,
}

impl CodedError {
    pub fn new(code: ExitCode, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
        }
    }
}

/// Exit code for an error chain: the first typed cause decides.
pub fn classify(e: &anyhow::Error) -> ExitCode {
    for cause in e.chain() {
        if let Some(c) = cause.downcast_ref::<CodedError>() {
            return c.code;
        }
        if let Some(a) = cause.downcast_ref::<AnalyzeError>() {
            return if a.is_bad_input() {
                ExitCode::BadInput
            } else {
                ExitCode::Failure
            };
        }
        if let Some(o) = cause.downcast_ref::<OutputError>() {
            return if o.is_usage() {
                ExitCode::Usage
            } else {
                ExitCode::Failure
            };
        }
        if cause.downcast_ref::<DumpError>().is_some()
            || cause.downcast_ref::<ProbeLogError>().is_some()
        {
            return ExitCode::BadInput;
        }
    }
    ExitCode::Failure
}
