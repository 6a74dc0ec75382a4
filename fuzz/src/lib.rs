//! What the fuzz targets share: one entry point per input stalltrace reads from
//! elsewhere, each driving the product's own path (the same calls `analyze`, `record`
//! and the loader make), plus the builders the seed corpus is written with
//! (`examples/seeds.rs`).
//!
//! A target panics only where the product would; everything else (errors, odd values)
//! is a normal outcome for hostile input.
use std::{
    io::{self, Cursor},
    path::Path,
};

use stalltrace::{
    enrich::Enricher,
    events::{self, RawEvent},
    samples::Sampler,
    stacks::{KernelSymbols, StackCollector, StackSource, UserSymbolizer},
};
use stalltrace_analysis::{
    analyze::{Pipeline, Sink},
    correlate::Config,
    dump::{DumpReader, ProbeRec, Record},
    probelog,
    report::{json::JsonSink, perfetto::PerfettoWriter, text::TextSink},
};

pub mod btf;
pub mod http;
pub mod ring;
pub mod structured;

/// A dump as `stalltrace analyze` reads it: the reader, the correlator (with a probe
/// log when `log` is given), and the three report sinks writing to nowhere. Records up
/// to the first bad line are analyzed, as they would be had the dump been cut there.
pub fn run_dump(bytes: &[u8], log: Option<Vec<ProbeRec>>) {
    let mut reader = match DumpReader::new(Path::new("fuzz.jsonl"), Cursor::new(bytes)) {
        Ok(r) => r,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let header = reader.header().clone();
    let perfetto = match PerfettoWriter::new(io::sink()) {
        Ok(p) => p,
        Err(e) => panic!("a PerfettoWriter on io::sink failed: {e}"),
    };
    let sinks: Vec<Box<dyn Sink>> = vec![
        Box::new(TextSink(io::sink())),
        Box::new(JsonSink(io::sink())),
        Box::new(perfetto),
    ];
    let mut p = Pipeline::new(Config::from_header(&header, None), sinks);
    if let Some(log) = log {
        p.correlator_mut().set_probe_log(log);
    }
    let ok = |r: Result<(), _>| match r {
        Ok(()) => {}
        Err(e) => panic!("io::sink cannot fail, yet: {e}"),
    };
    ok(p.push(&Record::Header(header)));
    loop {
        match reader.next_record() {
            Ok(Some(rec)) => ok(p.push(&rec)),
            Ok(None) => break,
            Err(e) => {
                let _ = e.to_string();
                break;
            }
        }
    }
    if let Some(f) = reader.footer() {
        ok(p.push(&Record::Footer(f.clone())));
    }
    let lines = reader.line();
    let partial = reader.partial_last_line();
    match p.finish(|input| {
        input.path = Some("fuzz.jsonl".into());
        input.lines = lines;
        input.partial_last_line = partial;
    }) {
        Ok(report) => {
            let _ = stalltrace_analysis::report::summary(&report);
        }
        Err(e) => panic!("io::sink cannot fail, yet: {e}"),
    }
}

/// Lines through the dump reader's hand-written decoder (`dump::fast`), one slot
/// reused from line to line as the reader does: whatever it accepts must be what
/// serde_json decodes from the same line, field for field.
pub fn run_fast_lines(bytes: &[u8]) {
    use stalltrace_analysis::dump::{fast, PacketRec};
    let mut slot = None;
    for line in bytes.split(|&b| b == b'\n') {
        let Ok(line) = std::str::from_utf8(line) else {
            continue;
        };
        let Some(_) = fast::record_into(line, &mut slot) else {
            continue;
        };
        let serde = match &slot {
            Some(Record::Packet(_)) => serde_json::from_str::<PacketRec>(line).map(Record::Packet),
            Some(Record::Probe(_)) => serde_json::from_str::<ProbeRec>(line).map(Record::Probe),
            other => panic!("the fast decoder accepted {line:?} as {other:?}"),
        };
        match serde {
            Ok(r) => assert_eq!(slot.as_ref(), Some(&r), "{line:?}"),
            Err(e) => panic!("the fast decoder accepted what serde_json refuses ({e}): {line:?}"),
        }
    }
}

/// A prober's log, through both parsers; they must agree on what they found.
pub fn run_probelog(bytes: &[u8]) {
    let from_reader = match probelog::parse_reader(Cursor::new(bytes)) {
        Ok(l) => l,
        Err(e) => panic!("reading from memory cannot fail, yet: {e}"),
    };
    let _ = from_reader.summary_line();
    if let Ok(s) = std::str::from_utf8(bytes) {
        let from_str = probelog::parse_str(s);
        let _ = from_str.summary_line();
        // `lines()` also splits at a lone trailing '\r' the same way; a '\r' alone in
        // the middle of a line is not a line end for either.
        assert_eq!(
            from_str.probes.len(),
            from_reader.probes.len(),
            "parse_str and parse_reader disagree"
        );
    }
}

/// Stack ids to addresses without a kernel: a deterministic fake of the STACKS map
/// (some ids unknown, up to the kernel's 127 frames).
struct FakeStacks;

impl StackSource for FakeStacks {
    fn ips(&mut self, id: u32) -> Option<Vec<u64>> {
        if id % 7 == 6 {
            return None;
        }
        let n = u64::from(id % 128);
        Some(
            (0..n)
                .map(|i| 0xffff_ffff_8100_0000u64.wrapping_add(u64::from(id) * 0x40 + i * 0x10))
                .collect(),
        )
    }
}

struct FakeUser;

impl UserSymbolizer for FakeUser {
    fn frames(&mut self, tgid: u32, ips: &[u64]) -> Vec<String> {
        ips.iter()
            .map(|ip| format!("{ip:#x} [pid {tgid}]"))
            .collect()
    }
}

/// Ring-buffer bytes as `record` consumes them: decoded, then enriched (with stacks
/// from a fake stack map when stack samples came, as `record --stacks`; else a plain
/// `Enricher::default()`), then sanitized and serialized as the dump writer does. The
/// whole input is tried as one record, then as frames (see [`ring::frames`]).
pub fn run_ring(bytes: &[u8]) {
    let mut evs = vec![];
    match events::decode(bytes) {
        Ok(ev) => evs.push(ev),
        Err(e) => {
            let _ = e.to_string();
        }
    }
    evs.extend(ring::frames(bytes).filter_map(|f| events::decode(f).ok()));
    let sampled = |stacks: bool| {
        evs.iter().any(|e| match e {
            RawEvent::Sample(s) => !stacks || s.kstack_id >= 0 || s.ustack_id >= 0,
            _ => false,
        })
    };
    let mut e = if sampled(true) {
        let mut syms = std::collections::BTreeMap::new();
        syms.insert(0xffff_ffff_8100_0000, "vfs_read".to_string());
        syms.insert(0xffff_ffff_8100_4000, "ksys_read".to_string());
        syms.insert(0xffff_ffff_8200_0000, "_etext".to_string());
        let ksyms = match KernelSymbols::from_map(syms) {
            Ok(k) => k,
            Err(e) => panic!("a fixed symbol map was refused: {e}"),
        };
        Enricher::with_sampler(Sampler::new(
            99,
            Some(StackCollector::new(
                99,
                Box::new(FakeStacks),
                ksyms,
                Box::new(FakeUser),
            )),
        ))
    } else if sampled(false) {
        Enricher::with_sampler(Sampler::new(99, None))
    } else {
        Enricher::default()
    };
    for ev in &evs {
        if let Some(mut rec) = e.record(ev) {
            rec.sanitize();
            if let Err(err) = serde_json::to_string(&rec) {
                panic!("an enriched record does not serialize: {err}");
            }
        }
    }
    if let Some(s) = e.sampler() {
        let _ = (s.stats(), s.stack_stats());
    }
}

/// BTF bytes through the loader's offset reader.
pub fn run_btf(bytes: &[u8]) {
    match stalltrace::kernel::offsets::read_bytes(bytes) {
        Ok((_, notes)) => {
            let _ = notes.join("; ");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}
