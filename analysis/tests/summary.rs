//! The report's summary sentences for what the golden seed reports never show: lost
//! events, several culprits (on a CPU and over the recording), unexplained probes.
use stalltrace_analysis::correlate::{Config, Correlator, Report};
use stalltrace_analysis::dump::{Lost, Record};
use stalltrace_analysis::report::summary;
use stalltrace_testkit::seed::{self, Seed};

/// The 2019 GitHub incident's report: one episode on CPU 11, cadvisor its only culprit.
fn seed_report() -> Report {
    let recs = seed::records(Seed::default());
    let Record::Header(h) = &recs[0] else {
        panic!("no header")
    };
    let mut c = Correlator::new(Config::from_header(h, None));
    for r in &recs {
        c.push(r);
    }
    c.finish()
}

fn has(lines: &[String], pred: impl Fn(&str) -> bool) -> bool {
    lines.iter().any(|l| pred(l))
}

#[test]
fn one_culprit_and_nothing_lost_say_nothing_more() {
    let s = summary(&seed_report());
    assert!(!has(&s, |l| l.starts_with("The kernel dropped")), "{s:#?}");
    assert!(!has(&s, |l| l.starts_with("Worst culprit over")), "{s:#?}");
    assert!(!has(&s, |l| l.contains("worst culprit")), "{s:#?}");
    assert!(!has(&s, |l| l.contains("not explained")), "{s:#?}");
}

#[test]
fn lost_events_are_said_with_their_total() {
    let mut r = seed_report();
    r.input.lost = Some(Lost {
        packets: 2,
        waits: 1,
        ..Lost::default()
    });
    let s = summary(&r);
    // 2 + 1
    assert!(
        has(&s, |l| {
            l == "The kernel dropped 3 events (ring buffer full): some episodes may be missing."
        }),
        "{s:#?}"
    );
}

#[test]
fn several_culprits_name_the_worst_on_the_cpu_and_over_the_recording() {
    let mut r = seed_report();
    r.cpus[0].culprits = 2;
    let mut second = r.culprits[0].clone();
    second.comm = "kubelet".into();
    r.culprits.push(second);
    let s = summary(&r);
    assert!(
        has(&s, |l| l.starts_with("CPU 11: ")
            && l.contains("; worst culprit cadvisor")
            && l.ends_with(" 2 processes were culprits on this CPU.")),
        "{s:#?}"
    );
    assert!(
        has(&s, |l| l.starts_with(
            "Worst culprit over the recording: cadvisor (tgid "
        )),
        "{s:#?}"
    );
}

#[test]
fn unexplained_probes_are_counted_by_reason() {
    let mut r = seed_report();
    r.totals.probes_unexplained = 2;
    let s = summary(&r);
    assert!(
        has(&s, |l| l
            .starts_with("2 probes at or above 50 ms are not explained")),
        "{s:#?}"
    );
}
