//! `cargo xtask fixtures`: writes the golden files from the record builders. Tests only
//! ever compare against them; rewriting them is this deliberate step, and the diff is
//! reviewed with the change that caused it.
use anyhow::Context as _;
use stalltrace_testkit::seed::{jsonl, records, Seed, FIXTURE};

pub fn run() -> anyhow::Result<()> {
    let path = crate::root().join(FIXTURE);
    std::fs::write(&path, jsonl(&records(Seed::default())))
        .with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}
