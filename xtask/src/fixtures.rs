//! `cargo xtask fixtures`: writes the golden files from the record builders. Tests only
//! ever compare against them; rewriting them is this deliberate step, and the diff is
//! reviewed with the change that caused it.
use anyhow::Context as _;
use stalltrace_testkit::seed::{golden_reports, jsonl, records, Seed, FIXTURE};

pub fn run() -> anyhow::Result<()> {
    let path = crate::root().join(FIXTURE);
    std::fs::write(&path, jsonl(&records(Seed::default())))
        .with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    // The reports of the 2019 GitHub incident's variants, as `analyze` renders them.
    let scratch =
        stalltrace_testkit::scratch::Scratch::new("fixtures").context("a scratch directory")?;
    let dir = crate::root().join("tests/fixtures");
    for (name, content) in golden_reports(scratch.path()).map_err(anyhow::Error::msg)? {
        let p = dir.join(&name);
        std::fs::write(&p, content).with_context(|| format!("writing {}", p.display()))?;
        println!("wrote {}", p.display());
    }
    Ok(())
}
