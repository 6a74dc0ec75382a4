//! Correlation of probes with kernel waits into stall episodes, and culprit ranking.
//! One engine ([`Correlator`]) serves live `record` and offline `analyze`.
pub mod align;
pub mod correlate;
pub mod episode;
pub mod outcome;
pub mod rank;

#[cfg(test)]
pub mod fixture;

pub use correlate::{Config, Correlator};
pub use episode::Episode;
pub use outcome::{Mode, Report};
