//! stalltrace as a library: the binary (`main.rs`) is a thin CLI over these modules,
//! and the integration tests reuse the lab's namespace code.
pub mod analyze;
pub mod attribution;
pub mod dump;
pub mod enrich;
pub mod events;
pub mod exit;
pub mod kernel;
pub mod lab;
pub mod live;
pub mod probe;
pub mod record;
pub mod report;
pub mod stacks;
pub mod timefmt;
