//! Arbitrary bytes as an hping3 or ping log.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| stalltrace_fuzz::run_probelog(data));
