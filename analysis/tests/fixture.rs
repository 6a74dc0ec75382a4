//! The golden seed fixture (`tests/fixtures/seed.jsonl`, read by the CLI tests and
//! users' docs) is what the builders make. Never rewritten here: `cargo xtask
//! fixtures` writes it, on purpose, and the diff is reviewed.
use stalltrace_testkit::seed::{jsonl, records, Seed, FIXTURE};

#[test]
fn seed_fixture_file_is_what_the_builders_make() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(FIXTURE);
    let have = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let want = jsonl(&records(Seed::default()));
    assert!(
        have == want,
        "{} differs from the 2019 GitHub incident builders: run `cargo xtask fixtures` if the change is meant",
        path.display()
    );
}

/// `analyze`'s text and JSON reports of the 2019 GitHub incident and its variants (packet-only, no
/// stall, cut short) are the golden files: every word of the reports is pinned, and a
/// change shows as a diff of `tests/fixtures/*.report.*` made by `cargo xtask fixtures`.
#[test]
fn reports_of_the_seed_are_the_golden_files() {
    let scratch = stalltrace_testkit::scratch::Scratch::new("golden").unwrap();
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    let reports = stalltrace_testkit::seed::golden_reports(scratch.path()).unwrap();
    assert_eq!(reports.len(), 8);
    for (name, want) in reports {
        let path = fixtures.join(&name);
        let have =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if have != want {
            let line = have
                .lines()
                .zip(want.lines())
                .position(|(a, b)| a != b)
                .map_or_else(|| "length".to_string(), |i| format!("line {}", i + 1));
            panic!(
                "{} differs at {line} from what analyze renders now: run `cargo xtask fixtures` if the change is meant\n--- file\n{have}\n--- now\n{want}",
                path.display()
            );
        }
    }
}
