//! A dump built from `arbitrary` (records that meet in the correlator), written as
//! JSON Lines and analyzed like `dump`, with a prober's log some of the time.
#![no_main]
use libfuzzer_sys::fuzz_target;
use stalltrace_fuzz::structured::Scenario;

fuzz_target!(|s: Scenario| {
    let (recs, log) = s.records();
    stalltrace_fuzz::run_dump(&s.jsonl(&recs), log);
});
