//! Arbitrary bytes as ring-buffer records: decoder, enricher (with and without stacks).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| stalltrace_fuzz::run_ring(data));
