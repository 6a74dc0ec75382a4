//! Correlation of probes with kernel waits into stall episodes, and the reports.
//! (Placeholder, owned by the correlation work: see issue 5.)
