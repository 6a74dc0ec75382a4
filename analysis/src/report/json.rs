//! The JSON report: the correlator's [`Report`] plus format, version and the
//! plain-words summary. Documented in `docs/report-schema.md`; bump
//! [`REPORT_VERSION`] when a field changes meaning or goes away (adding is fine).
use serde::Serialize;

use crate::correlate::Report;

pub const REPORT_FORMAT: &str = "stalltrace-report";
pub const REPORT_VERSION: u32 = 1;

#[derive(Serialize)]
struct Doc<'a> {
    format: &'static str,
    version: u32,
    summary: Vec<String>,
    #[serde(flatten)]
    report: &'a Report,
}

pub fn render(r: &Report) -> serde_json::Result<String> {
    let mut s = serde_json::to_string_pretty(&Doc {
        format: REPORT_FORMAT,
        version: REPORT_VERSION,
        summary: super::summary(r),
        report: r,
    })?;
    s.push('\n');
    Ok(s)
}

/// The JSON report on one line (several reports as JSON Lines).
pub fn render_line(r: &Report) -> serde_json::Result<String> {
    serde_json::to_string(&Doc {
        format: REPORT_FORMAT,
        version: REPORT_VERSION,
        summary: super::summary(r),
        report: r,
    })
}

/// The JSON report, written when the analysis ends.
pub struct JsonSink<W: std::io::Write>(pub W);

impl<W: std::io::Write> crate::analyze::Sink for JsonSink<W> {
    fn finish(&mut self, r: &Report) -> std::io::Result<()> {
        let s = render(r).map_err(std::io::Error::other)?;
        self.0.write_all(s.as_bytes())?;
        self.0.flush()
    }
}
