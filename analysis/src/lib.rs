//! stalltrace's analysis, in the order data flows: the dump a recording writes
//! ([`dump`]), a prober's log from elsewhere ([`probelog`]), the correlator that joins
//! probes, packets and kernel waits into stall episodes and ranks culprits
//! ([`correlate`]), and what is said about them ([`report`]). [`analyze`] composes them
//! over a dump file; [`output`] creates the files written without destroying what was
//! there. Nothing here needs a kernel, root or nightly: `cargo test -p
//! stalltrace-analysis` runs anywhere.
pub mod activity;
pub mod analyze;
pub mod correlate;
pub mod dump;
pub mod identity;
pub mod merge;
pub mod output;
pub mod probelog;
pub mod report;
pub mod stacks;
pub mod units;
pub mod workload;
