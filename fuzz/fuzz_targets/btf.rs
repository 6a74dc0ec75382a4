//! Arbitrary bytes as kernel BTF, through the loader's offset reader.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| stalltrace_fuzz::run_btf(data));
