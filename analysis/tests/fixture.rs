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
        "{} differs from the seed builders: run `cargo xtask fixtures` if the change is meant",
        path.display()
    );
}
