//! What stalltrace's tests and benchmarks share (the lab's namespaces and child guards
//! are the product's: `stalltrace::lab::{netns, child}`):
//! - [`records`]: builders for dump records, [`seed`]: the 2019 GitHub incident as a
//!   recording, [`benchdump`]: large generated dumps;
//! - [`scratch`]: private directories, removed when their guard drops;
//! - [`ci`]: the rule that a root/kernel test fails rather than skips under CI.
pub mod benchdump;
pub mod ci;
pub mod records;
pub mod scratch;
pub mod seed;
