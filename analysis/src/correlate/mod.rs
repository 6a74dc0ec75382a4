//! Correlation of probes with kernel waits into stall episodes, and culprit ranking.
//! One engine ([`Correlator`]) serves live `record` and offline `analyze`.
//!
//! Data flow inside: [`align`] keys probes and packets by what is on the wire;
//! [`window`] keeps the recent ones, indexed, for joining; [`Correlator`] merges waits
//! into stalls and closes each into an [`Episode`] ([`episode`]); [`rank`] aggregates
//! episodes into the culprit ranking; [`outcome`] is the whole-recording [`Report`].
pub mod align;
pub mod correlator;
pub mod episode;
pub mod outcome;
pub mod rank;
pub mod window;

pub use correlator::{Config, Correlator};
pub use episode::Episode;
pub use outcome::{Mode, Report};
