//! `cargo xtask mutants`: how strong the analysis crate's tests are. cargo-mutants
//! changes the code one small edit at a time (a `<` for a `<=`, a body for
//! `Default::default()`) and runs the crate's tests; a mutant the tests do not notice
//! is a behaviour nothing checks. Writes the score and the survivors to
//! `docs/mutants.md` (the README quotes it). Hours of CPU on two cores: run it in the
//! benchmark's rhythm, not in CI. It runs at idle priority so it does not disturb a
//! test running meanwhile.
use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::{bail, Context as _};
use serde_json::Value;

/// The pinned cargo-mutants (its outcome format is what `score` reads).
const VERSION: &str = "27.1.0";

#[derive(clap::Args)]
pub struct MutantsArgs {
    /// Only mutants in files matching this glob (cargo-mutants' --file), e.g.
    /// `analysis/src/correlate/*.rs`; repeatable. Default: the whole analysis crate.
    #[arg(long)]
    file: Vec<String>,
    /// Parallel builds (each takes a copy of the tree).
    #[arg(long, default_value_t = 2)]
    jobs: u32,
    /// Only recompute the score from the last run's outcomes.
    #[arg(long)]
    score_only: bool,
    /// Test again only what the last run did not catch (cargo-mutants --iterate), e.g.
    /// after adding tests for its survivors.
    #[arg(long)]
    iterate: bool,
}

pub fn run(a: MutantsArgs) -> anyhow::Result<()> {
    let root = crate::root();
    let out = root.join("target/mutants");
    if !a.score_only {
        let path = crate::setup::run(&[])?;
        install(&path)?;
        let mut cmd = Command::new("chrt");
        // SCHED_IDLE: only the CPU time nobody else wants.
        cmd.args([
            "--idle",
            "0",
            "cargo",
            "mutants",
            "-p",
            "stalltrace-analysis",
        ])
        .args(["--jobs", &a.jobs.to_string(), "--output"])
        .arg(&out)
        .env("PATH", &path)
        .current_dir(&root);
        for f in &a.file {
            cmd.args(["--file", f]);
        }
        let outcomes = out.join("mutants.out/outcomes.json");
        if a.iterate {
            cmd.arg("--iterate");
            // The score joins the earlier outcomes with the retested ones, by mutant.
            std::fs::copy(&outcomes, out.join("earlier-outcomes.json"))
                .context("keeping the last run's outcomes (run once without --iterate first)")?;
        } else {
            let _ = std::fs::remove_file(out.join("earlier-outcomes.json"));
        }
        // Exit 2 means "some mutants survived": the score says how many.
        let st = cmd.status().context("running cargo mutants")?;
        if !matches!(st.code(), Some(0 | 2 | 3)) {
            bail!("cargo mutants failed ({st})");
        }
    }
    let current = current_mutants(&root, &a.file)?;
    let report = score(
        &out.join("earlier-outcomes.json"),
        &out.join("mutants.out/outcomes.json"),
        &root.join(EXPLAINED),
        &current,
    )?;
    let doc = root.join("docs/mutants.md");
    std::fs::write(&doc, &report).with_context(|| format!("writing {}", doc.display()))?;
    print!("{report}");
    Ok(())
}

/// The names of the mutants the code has now (`cargo mutants --list`): outcomes of an
/// earlier run whose line moved since, or whose code is gone, are not counted.
fn current_mutants(root: &Path, files: &[String]) -> anyhow::Result<Vec<String>> {
    let path = crate::setup::run(&[])?;
    let mut cmd = Command::new("cargo");
    cmd.args(["mutants", "--list", "--json", "-p", "stalltrace-analysis"])
        .env("PATH", &path)
        .current_dir(root);
    for f in files {
        cmd.args(["--file", f]);
    }
    let out = cmd
        .output()
        .context("listing the mutants (cargo mutants --list)")?;
    if !out.status.success() {
        bail!(
            "cargo mutants --list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: Value =
        serde_json::from_slice(&out.stdout).context("parsing cargo mutants --list --json")?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["name"].as_str().map(str::to_string))
        .collect())
}

fn install(path: &std::ffi::OsString) -> anyhow::Result<()> {
    let have = Command::new("cargo")
        .args(["mutants", "--version"])
        .env("PATH", path)
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(VERSION));
    if have {
        return Ok(());
    }
    crate::cargo(
        path,
        &["install", "cargo-mutants", "--locked", "--version", VERSION],
    )
}

/// Survivors judged equivalent (no behaviour can tell them apart), one a line:
/// the mutant's name as cargo-mutants gives it, ` — `, and why.
const EXPLAINED: &str = "analysis/mutants-explained.txt";

/// A survivor no test can catch, and why.
struct Explained {
    mutant: String,
    reason: String,
}

/// The explained mutants (missing file: none); blank lines are skipped.
fn explained(path: &Path) -> anyhow::Result<Vec<Explained>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let Some((mutant, reason)) = line.split_once(" — ") else {
            bail!(
                "{}:{}: expected `<mutant> — <reason>`",
                path.display(),
                i + 1
            );
        };
        out.push(Explained {
            mutant: mutant.to_string(),
            reason: reason.trim().to_string(),
        });
    }
    Ok(out)
}

/// Outcome by mutant name, from a cargo-mutants outcomes file (missing: none).
fn outcomes(path: &Path) -> anyhow::Result<(Vec<(String, String)>, String)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok((vec![], String::new()));
    };
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("parsing cargo-mutants' outcomes {}", path.display()))?;
    let list = v["outcomes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| {
            let name = o["scenario"]["Mutant"]["name"].as_str()?;
            Some((name.to_string(), o["summary"].as_str()?.to_string()))
        })
        .collect();
    let day = v["start_time"]
        .as_str()
        .unwrap_or("?")
        .get(..10)
        .unwrap_or("?")
        .to_string();
    Ok((list, day))
}

/// The score and the survivors, as the Markdown `docs/mutants.md` holds: the earlier
/// run's outcomes overlaid with the latest (an `--iterate` run retests only some).
/// Survivors explained as equivalent are listed apart with their reason, and a second
/// score leaves them out of the viable count.
fn score(
    earlier: &Path,
    latest: &Path,
    explained_path: &Path,
    current: &[String],
) -> anyhow::Result<String> {
    let reasons = explained(explained_path)?;
    let (mut all, _) = outcomes(earlier)?;
    let (newer, day) = outcomes(latest)?;
    anyhow::ensure!(
        !newer.is_empty(),
        "no outcomes in {} (run without --score-only first)",
        latest.display()
    );
    for (name, summary) in newer {
        match all.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = summary,
            None => all.push((name, summary)),
        }
    }
    // Only the mutants the code has now.
    let now: std::collections::HashSet<&str> = current.iter().map(String::as_str).collect();
    let stale = all.len();
    all.retain(|(n, _)| now.contains(n.as_str()));
    let stale = stale - all.len();
    let untested = current.len().saturating_sub(all.len());
    let count = |k: &str| all.iter().filter(|(_, s)| s == k).count();
    let (caught, missed, timeout, unviable) = (
        count("CaughtMutant"),
        count("MissedMutant"),
        count("Timeout"),
        count("Unviable"),
    );
    let viable = caught + missed + timeout;
    // A timeout is a mutant the tests noticed (it hung them).
    let pct = if viable == 0 {
        0.0
    } else {
        (caught + timeout) as f64 * 100.0 / viable as f64
    };
    // Survivors split: explained ones (with the reason) and the rest.
    let (mut equivalent, mut unexplained) = (vec![], vec![]);
    for (name, _) in all.iter().filter(|(_, s)| s == "MissedMutant") {
        match reasons.iter().find(|e| e.mutant == *name) {
            Some(e) => equivalent.push((name.as_str(), e.reason.as_str())),
            None => unexplained.push(name.as_str()),
        }
    }
    let viable_real = viable - equivalent.len();
    let pct_real = if viable_real == 0 {
        0.0
    } else {
        (caught + timeout) as f64 * 100.0 / viable_real as f64
    };
    let mut s = String::new();
    let _ = writeln!(s, "# Mutation score of the analysis crate\n");
    let _ = writeln!(
        s,
        "`cargo xtask mutants` (cargo-mutants {VERSION}), last run {day}: **{pct:.1} %** of {viable} viable mutants caught ({caught} caught, {timeout} timed out, {missed} missed; {unviable} did not build).\n"
    );
    let _ = writeln!(
        s,
        "Without the {} survivors explained as equivalent (`{EXPLAINED}`): **{pct_real:.1} %** of {viable_real} viable mutants caught.\n",
        equivalent.len()
    );
    let _ = writeln!(
        s,
        "The code has {} mutants in the files run; {untested} have no outcome yet (the run was stopped before them); {stale} earlier outcomes are of mutants whose line moved or whose code is gone, and are not counted.\n",
        current.len()
    );
    if !unexplained.is_empty() {
        let _ = writeln!(s, "Survivors (each a behaviour no test pins down):\n");
        for m in &unexplained {
            let _ = writeln!(s, "- `{m}`");
        }
        let _ = writeln!(s);
    }
    if !equivalent.is_empty() {
        let _ = writeln!(s, "Explained (equivalent):\n");
        for (m, why) in &equivalent {
            let _ = writeln!(s, "- `{m}` — {why}");
        }
    }
    Ok(s)
}
