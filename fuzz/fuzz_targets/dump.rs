//! Arbitrary bytes as a dump: reader, correlator, text/JSON/Perfetto reports.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| stalltrace_fuzz::run_dump(data, None));
