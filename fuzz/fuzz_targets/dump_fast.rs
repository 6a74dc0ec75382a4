//! Arbitrary lines through the dump reader's hand-written decoder, checked against
//! serde_json's decoding of the same line.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| stalltrace_fuzz::run_fast_lines(data));
