//! Arbitrary bytes as one client's side of a connection to `watch`'s HTTP endpoint.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| stalltrace_fuzz::http::run(data));
