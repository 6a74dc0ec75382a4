//! The namespace code is the lab's own (`stalltrace::lab::netns`): one implementation
//! for the product and its tests.
pub use stalltrace::lab::netns::{find_thread, Netns};
