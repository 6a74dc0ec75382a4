//! deploy/alerts: the rules file passes `promtool check rules`, its unit tests
//! (deploy/alerts/stalltrace-rules.test.yaml) pass `promtool test rules` and fail when
//! a threshold is changed, every alert has a case where it fires and one where it does
//! not, the PrometheusRule wraps exactly the same groups, and every metric and label the
//! rules and their test series name is one the agent's exposition really has. Under CI a
//! missing promtool fails these tests (scripts/setup.sh installs Debian's prometheus,
//! which ships it).
#![allow(
    clippy::unwrap_used,
    reason = "test helpers too: a panic is how a test fails"
)]
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use serde_yaml::Value;
use stalltrace_analysis::analyze::Sink;
use stalltrace_analysis::correlate::{Config, Correlator, Episode};
use stalltrace_analysis::dump::Record;
use stalltrace_analysis::identity::Identity;
use stalltrace_analysis::report::metrics::{Metrics, NodeStats};
use stalltrace_testkit::{ci::require, scratch::Scratch, seed};

/// Labels the scrape attaches (docs/deploy.md section 6): the job's, the `node`
/// relabelling, and the agent's own pod as a PodMonitor adds it.
const TARGET_LABELS: [&str; 7] = [
    "job",
    "instance",
    "node",
    "namespace",
    "pod",
    "container",
    "endpoint",
];

fn alerts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/alerts")
}

fn yaml(file: &Path) -> Value {
    let text = std::fs::read_to_string(file).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

/// `$PROMTOOL`, or `promtool` on the PATH; None (after `require`) when absent.
fn promtool(test: &str) -> Option<PathBuf> {
    let p = std::env::var_os("PROMTOOL").map_or_else(|| PathBuf::from("promtool"), PathBuf::from);
    let ok = Command::new(&p)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    require(
        test,
        ok,
        "promtool is missing (scripts/setup.sh installs Debian's prometheus package)",
    )
    .then_some(p)
}

fn run(cmd: &mut Command) -> (Output, String) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

/// The alerting rules of a rules file's groups: (name, rule).
fn alerts(groups: &Value) -> Vec<(String, Value)> {
    groups
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap().iter())
        .map(|r| (r["alert"].as_str().unwrap().to_string(), r.clone()))
        .collect()
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let name = "alert_rules_pass_promtool_check_and_their_unit_tests";
    let Some(promtool) = promtool(name) else {
        return;
    };
    let dir = alerts_dir();
    let rules = dir.join("stalltrace-rules.yaml");
    let n = alerts(&yaml(&rules)["groups"]).len();
    assert!(n >= 6, "{n} alerts");
    let (out, text) = run(Command::new(&promtool).args(["check", "rules"]).arg(&rules));
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("SUCCESS: {n} rules found")),
        "{text}"
    );
    let (out, text) = run(Command::new(&promtool)
        .args(["test", "rules"])
        .arg(dir.join("stalltrace-rules.test.yaml")));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("SUCCESS"), "{text}");

    // The unit tests are not a rubber stamp: with the node threshold raised out of
    // reach, the case where node-a stalls once a minute fails.
    let tmp = Scratch::new("alerts").unwrap();
    let original = std::fs::read_to_string(&rules).unwrap();
    let want = "increase(stalltrace_cpu_stall_episodes_total[10m])) >= 5\n";
    assert_eq!(original.matches(want).count(), 1, "{original}");
    std::fs::write(
        tmp.join("stalltrace-rules.yaml"),
        original.replace(
            want,
            "increase(stalltrace_cpu_stall_episodes_total[10m])) >= 50\n",
        ),
    )
    .unwrap();
    std::fs::copy(
        dir.join("stalltrace-rules.test.yaml"),
        tmp.join("stalltrace-rules.test.yaml"),
    )
    .unwrap();
    let (out, text) = run(Command::new(&promtool)
        .args(["test", "rules"])
        .arg(tmp.join("stalltrace-rules.test.yaml")));
    assert!(!out.status.success(), "a raised threshold passed:\n{text}");
    assert!(text.contains("StalltraceNodeStalling"), "{text}");
}

#[test]
fn every_alert_has_a_case_that_fires_and_one_that_does_not() {
    let dir = alerts_dir();
    let rules = yaml(&dir.join("stalltrace-rules.yaml"));
    let tests = yaml(&dir.join("stalltrace-rules.test.yaml"));
    assert_eq!(
        tests["rule_files"][0].as_str(),
        Some("stalltrace-rules.yaml")
    );
    // alert name -> (cases that expect it firing, cases that expect it quiet)
    let mut cases: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for t in tests["tests"].as_sequence().unwrap() {
        for c in t["alert_rule_test"].as_sequence().unwrap() {
            let e = cases
                .entry(c["alertname"].as_str().unwrap().to_string())
                .or_default();
            if c["exp_alerts"].as_sequence().unwrap().is_empty() {
                e.1 += 1;
            } else {
                e.0 += 1;
            }
        }
    }
    let names: BTreeSet<String> = alerts(&rules["groups"]).into_iter().map(|a| a.0).collect();
    for a in &names {
        let (fires, quiet) = cases.get(a).copied().unwrap_or_default();
        assert!(
            fires > 0 && quiet > 0,
            "{a}: {fires} firing, {quiet} quiet cases"
        );
    }
    // No case tests an alert that does not exist (promtool would only see it quiet).
    for a in cases.keys() {
        assert!(
            names.contains(a),
            "the unit tests name {a}, the rules do not"
        );
    }
}

#[test]
fn the_prometheusrule_wraps_the_rules_file() {
    let dir = alerts_dir();
    let rules = yaml(&dir.join("stalltrace-rules.yaml"));
    let cr = yaml(&dir.join("prometheusrule.yaml"));
    assert_eq!(cr["apiVersion"].as_str(), Some("monitoring.coreos.com/v1"));
    assert_eq!(cr["kind"].as_str(), Some("PrometheusRule"));
    assert_eq!(cr["metadata"]["namespace"].as_str(), Some("stalltrace"));
    assert_eq!(cr["spec"]["groups"], rules["groups"]);
    assert!(!alerts(&cr["spec"]["groups"]).is_empty());
}

/// The 2019 GitHub incident's one episode (cadvisor holding CPU 11), in a pod.
fn seed_episode() -> Episode {
    let recs = seed::records(seed::Seed::default());
    let Record::Header(h) = &recs[0] else {
        panic!("no header")
    };
    let mut c = Correlator::new(Config::from_header(h, None));
    for r in &recs {
        c.push(r);
    }
    let mut ep = c.finish().episodes.remove(0);
    let culprit = ep.culprit.as_mut().unwrap();
    culprit.identity = Some(Identity {
        namespace: Some("kube-system".into()),
        pod: Some("cadvisor-x7kqp".into()),
        container: Some("cadvisor".into()),
        ..Identity::default()
    });
    ep
}

/// Sample name -> label names, from an agent's text exposition with every family the
/// alerts read populated.
fn exported() -> BTreeMap<String, BTreeSet<String>> {
    let mut m = Metrics::new(5, "0.1.0");
    Sink::episode(&mut m, &seed_episode()).unwrap();
    m.set_node(NodeStats {
        flight_failures: vec![("no_space".into(), 1)],
        ..NodeStats::default()
    });
    let text = m.encode_text().unwrap();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, labels) = parse_series(l.split_once(' ').map_or(l, |x| x.0).trim());
        out.entry(name).or_default().extend(labels.into_keys());
    }
    out
}

/// `name{a="x",b="y"}` -> (name, labels). Label values here hold no `,` or `"`.
fn parse_series(s: &str) -> (String, BTreeMap<String, String>) {
    let Some((name, rest)) = s.split_once('{') else {
        return (s.to_string(), BTreeMap::new());
    };
    let labels = rest
        .trim_end_matches('}')
        .split(',')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.trim().to_string(), v.trim_matches('"').to_string())
        })
        .collect();
    (name.to_string(), labels)
}

#[test]
fn alerts_read_only_metrics_and_labels_the_agent_exports() {
    let exported = exported();
    let dir = alerts_dir();
    let rules = yaml(&dir.join("stalltrace-rules.yaml"));
    let tests = yaml(&dir.join("stalltrace-rules.test.yaml"));
    let metric = regex::Regex::new(r"\bstalltrace_[a-z_]+").unwrap();
    let mut read = BTreeSet::new();
    for (a, r) in alerts(&rules["groups"]) {
        let expr = r["expr"].as_str().unwrap();
        for m in metric.find_iter(expr) {
            assert!(
                exported.contains_key(m.as_str()),
                "{a} reads {}, which the agent does not export: {:?}",
                m.as_str(),
                exported.keys()
            );
            read.insert(m.as_str().to_string());
        }
    }
    // Each metric an alert reads is fed by the unit tests, under the agent's labels.
    let mut fed = BTreeSet::new();
    for t in tests["tests"].as_sequence().unwrap() {
        for s in t["input_series"].as_sequence().unwrap() {
            let (name, labels) = parse_series(s["series"].as_str().unwrap());
            if name == "up" {
                continue;
            }
            let have = exported
                .get(&name)
                .unwrap_or_else(|| panic!("test series {name} is not exported"));
            for l in labels.keys() {
                assert!(
                    have.contains(l) || TARGET_LABELS.contains(&l.as_str()),
                    "test series {name} has label {l}; the agent exports {have:?}"
                );
            }
            for l in have {
                assert!(labels.contains_key(l), "test series {name} lacks {l}");
            }
            fed.insert(name);
        }
    }
    assert_eq!(read, fed, "metrics the alerts read vs the unit tests feed");
}

#[test]
fn every_alert_links_its_section_of_the_runbook() {
    let rules = yaml(&alerts_dir().join("stalltrace-rules.yaml"));
    let runbook =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/runbook.md"))
            .unwrap();
    for (a, r) in alerts(&rules["groups"]) {
        let link = r["annotations"]["runbook"].as_str().unwrap_or_default();
        assert_eq!(
            link,
            format!("docs/runbook.md#{}", a.to_lowercase()),
            "{a}'s runbook annotation"
        );
        assert!(
            runbook.lines().any(|l| l == format!("## {a}")),
            "docs/runbook.md has no section `## {a}`"
        );
    }
}
