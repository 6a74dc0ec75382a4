//! What stalltrace's tests, benchmarks and lab share:
//! - [`records`]: builders for dump records, [`seed`]: the 2019 GitHub incident incident as a
//!   recording, [`benchdump`]: large generated dumps;
//! - [`netns`]: network namespaces joined by veth pairs, [`child`]: child processes,
//!   [`scratch`]: private directories, all removed when their guard drops;
//! - [`ci`]: the rule that a root/kernel test fails rather than skips under CI.
pub mod benchdump;
pub mod child;
pub mod ci;
pub mod netns;
pub mod records;
pub mod scratch;
pub mod seed;
