//! The bench's parts, one module each, in the order they run.
pub(crate) mod analyze;
pub(crate) mod flood;
pub(crate) mod headroom;
pub(crate) mod perf;
pub(crate) mod sampler;
pub(crate) mod sched;
pub(crate) mod soak;
pub(crate) mod syscall;
pub(crate) mod watch;
