//! `analyze` over dump files: live and offline agree, cut-short and malformed dumps,
//! the Perfetto sink.
use std::path::PathBuf;

use stalltrace_analysis::analyze::{analyze, AnalyzeError, AnalyzeOptions, OnEpisode, Sink};
use stalltrace_analysis::correlate::{Config, Correlator, Episode, Report};
use stalltrace_analysis::dump::Record;
use stalltrace_analysis::report::{self, perfetto::PerfettoWriter, text::episode_line};
use stalltrace_testkit::scratch::Scratch;
use stalltrace_testkit::seed::{self as fixture, jsonl, Seed, MS};

fn args(dump: PathBuf) -> AnalyzeOptions {
    AnalyzeOptions::dump(dump)
}

fn run(o: &AnalyzeOptions, on: impl FnMut(&Episode)) -> Result<Report, AnalyzeError> {
    analyze(o, &mut [&mut OnEpisode(on) as &mut dyn Sink])
}

/// The live path: records pushed as they come, a tick every 100 ms of kernel time.
fn live_lines(recs: &[Record]) -> Vec<String> {
    let Record::Header(h) = &recs[0] else {
        panic!("no header")
    };
    let mut cor = Correlator::new(Config::from_header(h, None));
    let mut lines = vec![];
    let mut now = 0;
    for r in recs {
        let ts = match r {
            Record::Packet(p) => p.ts_ns,
            Record::Wait(w) => w.ts_ns,
            _ => now,
        };
        if ts > now + 100 * MS {
            now = ts;
            lines.extend(cor.tick(now).iter().map(episode_line));
        }
        lines.extend(cor.push(r).iter().map(episode_line));
    }
    // The recorder stops: ticks run on for a while before it flushes.
    lines.extend(cor.tick(now + 2_000 * MS).iter().map(episode_line));
    lines.extend(cor.flush().iter().map(episode_line));
    lines
}

#[test]
fn live_and_offline_print_the_same_episode_lines() {
    let recs = fixture::records(Seed::default());
    let live = live_lines(&recs);
    assert_eq!(live.len(), 1, "{live:?}");
    let dir = Scratch::new("analyze").unwrap();
    let path = dir.join("seed.jsonl");
    std::fs::write(&path, jsonl(&recs)).unwrap();
    let mut offline = vec![];
    let report = run(&args(path.clone()), |e| offline.push(episode_line(e))).unwrap();
    assert_eq!(live, offline);
    // And the text report prints those very lines.
    let text = report::text::render(&report);
    for l in &live {
        assert!(text.contains(l.as_str()), "{l}\nnot in\n{text}");
    }
}

#[test]
fn the_live_path_reports_within_a_second_of_the_end() {
    let recs = fixture::records(Seed::default());
    let Record::Header(h) = &recs[0] else {
        panic!()
    };
    let mut cor = Correlator::new(Config::from_header(h, None));
    let end = fixture::arrival(1953) + 99 * MS;
    let mut got = None;
    for r in &recs {
        // Feed everything up to the end of the stall plus the probe results.
        let past = matches!(r, Record::Packet(p) if p.ts_ns > end + 5 * MS);
        if past {
            break;
        }
        assert!(cor.push(r).is_empty());
    }
    for step in 1..=20u64 {
        let eps = cor.tick(end + step * 100 * MS);
        if !eps.is_empty() {
            got = Some(step * 100);
            break;
        }
    }
    let ms = got.expect("the episode closed on tick");
    assert!(ms <= 1100, "closed {ms} ms after the stall");
}

#[test]
fn cut_short_dump_is_reported_with_what_it_holds() {
    let recs = fixture::records(Seed {
        footer: false,
        ..Seed::default()
    });
    let mut text = jsonl(&recs);
    text.push_str("{\"type\":\"packet\",\"ts_ns\":12"); // torn
    let dir = Scratch::new("analyze").unwrap();
    let path = dir.join("cut.jsonl");
    std::fs::write(&path, text).unwrap();
    let r = run(&args(path.clone()), |_| {}).unwrap();
    assert!(!r.input.complete);
    assert!(r.input.partial_last_line);
    assert_eq!(r.totals.episodes, 1);
    assert!(
        report::summary(&r)[0].contains("cut short"),
        "{:?}",
        report::summary(&r)
    );
}

#[test]
fn malformed_line_is_an_input_error_naming_the_line() {
    let recs = fixture::records(Seed::default());
    let mut lines: Vec<String> = jsonl(&recs).lines().map(str::to_string).collect();
    lines[4] = "{\"type\":\"wait\",\"cpu\":\"eleven\"}".into();
    let dir = Scratch::new("analyze").unwrap();
    let path = dir.join("bad.jsonl");
    std::fs::write(&path, lines.join("\n")).unwrap();
    let e = run(&args(path.clone()), |_| {}).unwrap_err();
    assert!(e.is_bad_input(), "{e}");
    assert!(
        format!("{e:#}").contains(&format!("{}:5:", path.display())),
        "{e:#}"
    );
}

#[test]
fn perfetto_trace_is_written_alongside() {
    let dir = Scratch::new("analyze").unwrap();
    let path = dir.join("seed.jsonl");
    std::fs::write(&path, jsonl(&fixture::records(Seed::default()))).unwrap();
    let out = dir.join("seed.trace.json");
    let mut trace = PerfettoWriter::new(std::fs::File::create(&out).unwrap()).unwrap();
    analyze(&args(path), &mut [&mut trace as &mut dyn Sink]).unwrap();
    drop(trace);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let evs = v["traceEvents"].as_array().unwrap();
    assert!(evs.iter().any(|e| e["name"]
        .as_str()
        .is_some_and(|n| n.starts_with("episode 1: cadvisor"))));
    // Packets are named by kind and sequence, on their CPU's track: pid 12 for CPU 11
    // (pid 0 is no CPU's).
    assert!(
        evs.iter()
            .any(|e| e["name"] == "echo_request 1953" && e["pid"] == 12),
        "{v:#}"
    );
}

#[test]
fn json_report_is_written_when_the_analysis_ends() {
    let dir = Scratch::new("analyze").unwrap();
    let path = dir.join("seed.jsonl");
    std::fs::write(&path, jsonl(&fixture::records(Seed::default()))).unwrap();
    let mut sink = report::json::JsonSink(Vec::new());
    analyze(&args(path), &mut [&mut sink as &mut dyn Sink]).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&sink.0).unwrap();
    assert_eq!(v["format"], "stalltrace-report");
    assert_eq!(v["episodes"].as_array().map(Vec::len), Some(1));
}

/// Several dumps analysed in parallel: each report is what that dump analysed alone
/// gives (the 2019 GitHub incident's stall found in the stalled ones, none in the others), a bad dump
/// is an error for its own index only, and every dump is reported exactly once.
#[test]
fn dumps_analysed_in_parallel_each_report_what_they_hold() {
    use stalltrace_analysis::analyze::analyze_many;
    let dir = Scratch::new("analyze-many").unwrap();
    let mut dumps = vec![];
    for i in 0..7 {
        let path = dir.join(&format!("d{i}.jsonl"));
        let stall = i % 2 == 0;
        let text = jsonl(&fixture::records(Seed {
            stall,
            ..Default::default()
        }));
        std::fs::write(&path, if i == 5 { "not a dump\n".into() } else { text }).unwrap();
        dumps.push(args(path));
    }
    let mut seen = vec![0; dumps.len()];
    analyze_many(&dumps, 3, |i, r| {
        seen[i] += 1;
        if i == 5 {
            assert!(r.is_err(), "dump 5 is not a dump");
            return;
        }
        let r = r.unwrap();
        let alone = analyze(&dumps[i], &mut []).unwrap();
        assert_eq!(r.input.path, alone.input.path);
        assert_eq!(r.episodes.len(), alone.episodes.len(), "dump {i}");
        assert_eq!(
            r.episodes.is_empty(),
            i % 2 == 1,
            "dump {i}: stall planted {}",
            i % 2 == 0
        );
    });
    assert_eq!(seen, vec![1; dumps.len()]);
}
