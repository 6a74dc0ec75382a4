//! Everything that talks to the running kernel: capability checks, offsets from BTF
//! and tracefs, loading and attaching the programs, reading their maps.
pub mod loader;
pub mod offsets;
pub mod packet_path;
pub mod preflight;
