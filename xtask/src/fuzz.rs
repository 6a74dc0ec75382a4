//! `cargo xtask fuzz`: runs the cargo-fuzz targets of fuzz/ one after another, each as
//! one process (`-jobs=1 -workers=1`: the machine is shared) for a bounded time, on the
//! committed corpus, with caps on memory; prints and writes (fuzz/results.md) what each
//! did. Fails on any crash, leak, timeout or allocation over the cap.
use std::{
    collections::BTreeMap,
    env,
    ffi::OsString,
    fs,
    io::Read as _,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

#[derive(clap::Args, Debug)]
pub struct FuzzArgs {
    /// Seconds of fuzzing per target.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Only this target (dump, dump_structured, dump_fast, probelog, ring, btf).
    #[arg(long)]
    pub target: Option<String>,
    /// Also stop a target after this many executions.
    #[arg(long)]
    pub runs: Option<u64>,
    /// Afterwards, merge the inputs that found new coverage into fuzz/corpus/TARGET and
    /// minimize it (`cargo fuzz cmin`), keeping the crash-* regression inputs.
    #[arg(long)]
    pub update_corpus: bool,
}

/// The targets, the longest input each is given (a few records, a few log lines, a
/// framed batch of ring records, the minimized kernel BTF seed, a few pipelined HTTP
/// requests past the 16 KiB head limit), and the longest kept
/// in the committed corpus.
const TARGETS: &[(&str, u32, u32)] = &[
    ("dump", 16 << 10, 2 << 10),
    ("dump_structured", 4 << 10, 1 << 10),
    ("dump_fast", 4 << 10, 1 << 10),
    ("probelog", 1 << 10, 512),
    ("ring", 1 << 10, 1 << 10),
    ("btf", 16 << 10, 4 << 10),
    ("http", 32 << 10, 2 << 10),
];
/// Caps: resident memory of the process, any single allocation, one input's time.
const RSS_LIMIT_MB: u64 = 512;
const MALLOC_LIMIT_MB: u64 = 512;
const TIMEOUT_S: u64 = 10;

/// What one target's run did.
#[derive(Debug, Default, Clone)]
struct Outcome {
    target: String,
    seconds: u64,
    execs: u64,
    execs_per_s: u64,
    peak_rss_mb: u64,
    corpus: u64,
    /// Artifacts libFuzzer wrote this run (crash-, leak-, timeout-, oom-).
    crashes: Vec<PathBuf>,
    /// The first lines of the failure report, when there was one.
    failure: Option<String>,
}

pub fn run(a: FuzzArgs) -> anyhow::Result<()> {
    let targets: Vec<(&str, u32, u32)> = match &a.target {
        Some(t) => match TARGETS.iter().find(|(n, _, _)| n == t) {
            Some(&x) => vec![x],
            None => bail!(
                "no fuzz target {t:?}; there are: {}",
                TARGETS.iter().map(|t| t.0).collect::<Vec<_>>().join(", ")
            ),
        },
        None => TARGETS.to_vec(),
    };
    let path = crate::setup::run(&[])?;
    let path = with_cargo_fuzz(path)?;
    let fuzz_dir = crate::root().join("fuzz");
    // The eBPF object is not needed to decode records: skip bpf-linker.
    nightly(&path, &fuzz_dir, &["fuzz", "build"]).context("building the fuzz targets")?;
    let tools = [
        tool_version(&path, &["rustc", "+nightly", "--version"]),
        tool_version(&path, &["cargo", "fuzz", "--version"]),
    ];
    let mut outcomes = vec![];
    for (t, max_len, corpus_len) in targets {
        let o = run_target(&path, &fuzz_dir, t, max_len, &a)?;
        print_outcome(&o);
        if a.update_corpus && o.crashes.is_empty() {
            update_corpus(&path, &fuzz_dir, t, corpus_len)?;
        }
        outcomes.push(o);
        // After each target: a run stopped half-way keeps the rows it finished.
        write_results(&fuzz_dir.join("results.md"), &outcomes, &a, &tools)?;
    }
    println!("\nwrote {}", fuzz_dir.join("results.md").display());
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| !o.crashes.is_empty()).collect();
    if !failed.is_empty() {
        for o in &failed {
            eprintln!("\n{}: {} crash input(s):", o.target, o.crashes.len());
            for c in &o.crashes {
                eprintln!("  {}", c.display());
            }
            if let Some(f) = &o.failure {
                eprintln!("{f}");
            }
        }
        bail!(
            "fuzzing found crashes in: {}",
            failed
                .iter()
                .map(|o| o.target.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// PATH with cargo-fuzz on it, installed first into the tools cache if missing.
fn with_cargo_fuzz(path: OsString) -> anyhow::Result<OsString> {
    let tools = env::var_os("STALLTRACE_TOOLS")
        .map(PathBuf::from)
        .or_else(|| env::var_os("XDG_CACHE_HOME").map(|c| PathBuf::from(c).join("stalltrace")))
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/stalltrace")))
        .context("no HOME to keep cargo-fuzz in")?;
    let root = tools.join("cargo-fuzz");
    let mut dirs = vec![root.join("bin")];
    dirs.extend(env::split_paths(&path));
    let path = env::join_paths(dirs).context("building PATH")?;
    let found = Command::new("cargo")
        .args(["fuzz", "--version"])
        .env("PATH", &path)
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("fuzz: installing cargo-fuzz into {}", root.display());
        let st = Command::new("cargo")
            .args(["install", "cargo-fuzz", "--locked", "--root"])
            .arg(&root)
            .env("PATH", &path)
            .status()
            .context("running cargo install cargo-fuzz")?;
        if !st.success() {
            bail!("cargo install cargo-fuzz failed ({st})");
        }
    }
    Ok(path)
}

/// `cargo +nightly ARGS` in `dir` (cargo-fuzz needs nightly's sanitizer flags).
fn nightly_cmd(path: &OsString, dir: &Path, args: &[&str]) -> Command {
    // The rustup proxy, not $CARGO (a stable toolchain's own cargo ignores +nightly).
    let mut c = Command::new("cargo");
    c.arg("+nightly")
        .args(args)
        .env("PATH", path)
        .env("AYA_BUILD_SKIP", "1")
        .env_remove("RUSTUP_TOOLCHAIN")
        .current_dir(dir);
    c
}

fn nightly(path: &OsString, dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let st = nightly_cmd(path, dir, args)
        .status()
        .with_context(|| format!("running cargo +nightly {}", args.join(" ")))?;
    if !st.success() {
        bail!("cargo +nightly {} failed ({st})", args.join(" "));
    }
    Ok(())
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn run_target(
    path: &OsString,
    fuzz_dir: &Path,
    t: &str,
    max_len: u32,
    a: &FuzzArgs,
) -> anyhow::Result<Outcome> {
    let committed = fuzz_dir.join("corpus").join(t);
    // New inputs go to a scratch corpus; the committed one only changes through
    // --update-corpus.
    let scratch = fuzz_dir.join("target/xtask").join(t);
    let work = scratch.join("corpus");
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    fs::create_dir_all(&committed)?;
    let artifacts = fuzz_dir.join("artifacts").join(t);
    fs::create_dir_all(&artifacts)?;
    let before = files(&artifacts);

    let mut flags = vec![
        // One process; its output goes to fuzz-0.log in the scratch directory.
        "-jobs=1".to_string(),
        "-workers=1".to_string(),
        format!("-max_total_time={}", a.seconds),
        format!("-rss_limit_mb={RSS_LIMIT_MB}"),
        format!("-malloc_limit_mb={MALLOC_LIMIT_MB}"),
        format!("-timeout={TIMEOUT_S}"),
        format!("-max_len={max_len}"),
        "-print_final_stats=1".to_string(),
    ];
    if let Some(r) = a.runs {
        flags.push(format!("-runs={r}"));
    }
    let fuzz_dir_s = fuzz_dir.to_string_lossy().into_owned();
    let work_s = work.to_string_lossy().into_owned();
    let committed_s = committed.to_string_lossy().into_owned();
    let mut args = vec![
        "fuzz",
        "run",
        "--fuzz-dir",
        &fuzz_dir_s,
        t,
        &work_s,
        &committed_s,
        "--",
    ];
    args.extend(flags.iter().map(String::as_str));
    println!(
        "\nfuzz: {t} for {} s{} (log: {})",
        a.seconds,
        a.runs.map(|r| format!(" or {r} runs")).unwrap_or_default(),
        scratch.join("fuzz-0.log").display()
    );
    let started = Instant::now();
    let mut child = nightly_cmd(path, &scratch, &args)
        // Its own process group, so an overrun can be stopped whole.
        .process_group(0)
        .spawn()
        .with_context(|| format!("running cargo fuzz run {t}"))?;
    // libFuzzer stops itself at -max_total_time; this only catches a hang of the
    // tooling around it (the build was done before).
    let status = wait_bounded(&mut child, Duration::from_secs(a.seconds + 300))?;
    let elapsed = started.elapsed().as_secs();

    let mut log = String::new();
    if let Ok(mut f) = fs::File::open(scratch.join("fuzz-0.log")) {
        let _ = f.read_to_string(&mut log);
    }
    let stat = |k: &str| -> Option<u64> {
        log.lines()
            .rev()
            .find_map(|l| l.strip_prefix(&format!("stat::{k}:")))
            .and_then(|v| v.trim().parse().ok())
    };
    let crashes: Vec<PathBuf> = files(&artifacts)
        .into_iter()
        .filter(|p| !before.contains(p))
        .filter(|p| {
            let n = p.file_name().map(|n| n.to_string_lossy().into_owned());
            n.is_some_and(|n| {
                ["crash-", "leak-", "timeout-", "oom-"]
                    .iter()
                    .any(|k| n.starts_with(k))
            })
        })
        .collect();
    let failure = log
        .lines()
        .position(|l| l.contains("panicked at") || l.contains("ERROR: libFuzzer"))
        .map(|i| log.lines().skip(i).take(12).collect::<Vec<_>>().join("\n"));
    let mut o = Outcome {
        target: t.to_string(),
        seconds: elapsed,
        execs: stat("number_of_executed_units").unwrap_or(0),
        execs_per_s: stat("average_exec_per_sec").unwrap_or(0),
        peak_rss_mb: stat("peak_rss_mb").unwrap_or(0),
        corpus: (files(&work).len() + files(&committed).len()) as u64,
        crashes,
        failure,
    };
    if !status.success() && o.crashes.is_empty() {
        // A failure that left no artifact (a broken build, a killed run) is one too.
        o.failure
            .get_or_insert_with(|| format!("cargo fuzz run {t}: {status}"));
        o.crashes.push(scratch.join("fuzz-0.log"));
    }
    if o.execs == 0 && o.crashes.is_empty() {
        bail!(
            "{t}: no executions counted; see {}",
            scratch.join("fuzz-0.log").display()
        );
    }
    Ok(o)
}

/// Waits for `child`, killing its process group after `limit`.
fn wait_bounded(child: &mut Child, limit: Duration) -> anyhow::Result<ExitStatus> {
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().context("waiting for cargo fuzz")? {
            return Ok(st);
        }
        if t0.elapsed() > limit {
            let pgid = i32::try_from(child.id()).context("pid out of range")?;
            // SAFETY: kill has no memory preconditions; -pgid is the group this task
            // created for the child (process_group(0)), nothing else.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let st = child.wait().context("waiting for cargo fuzz")?;
            eprintln!(
                "fuzz: stopped after {} s: over its time bound",
                limit.as_secs()
            );
            return Ok(st);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Merges the scratch corpus' new coverage into the committed one and minimizes it
/// (`cargo fuzz cmin`), inputs cut to the target's corpus length so the repository
/// stays small; the seed-* and crash-* inputs are kept whatever cmin thinks of them.
fn update_corpus(path: &OsString, fuzz_dir: &Path, t: &str, corpus_len: u32) -> anyhow::Result<()> {
    let committed = fuzz_dir.join("corpus").join(t);
    let work = fuzz_dir.join("target/xtask").join(t).join("corpus");
    let keep: Vec<(PathBuf, Vec<u8>)> = files(&committed)
        .into_iter()
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with("crash-") || n.starts_with("seed-")
            })
        })
        .filter_map(|p| fs::read(&p).ok().map(|b| (p, b)))
        .collect();
    let fuzz_dir_s = fuzz_dir.to_string_lossy().into_owned();
    let c = committed.to_string_lossy().into_owned();
    let w = work.to_string_lossy().into_owned();
    let max_len = format!("-max_len={corpus_len}");
    let rss = format!("-rss_limit_mb={RSS_LIMIT_MB}");
    let malloc = format!("-malloc_limit_mb={MALLOC_LIMIT_MB}");
    let merge = [
        "fuzz",
        "run",
        "--fuzz-dir",
        &fuzz_dir_s,
        t,
        &c,
        &w,
        "--",
        "-merge=1",
        &max_len,
        &rss,
        &malloc,
    ];
    nightly(path, fuzz_dir, &merge)?;
    let cmin = [
        "fuzz",
        "cmin",
        "--fuzz-dir",
        &fuzz_dir_s,
        t,
        &c,
        "--",
        &max_len,
        &rss,
        &malloc,
    ];
    nightly(path, fuzz_dir, &cmin)?;
    for (p, b) in keep {
        if !p.exists() {
            fs::write(&p, b).with_context(|| format!("restoring {}", p.display()))?;
        }
    }
    let all = files(&committed);
    let bytes: u64 = all
        .iter()
        .filter_map(|p| fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    println!(
        "fuzz: {} now holds {} inputs, {} KiB",
        committed.display(),
        all.len(),
        bytes >> 10
    );
    Ok(())
}

fn print_outcome(o: &Outcome) {
    println!(
        "fuzz: {}: {} executions in {} s ({} exec/s), peak RSS {} MiB, corpus {}, crashes {}",
        o.target,
        o.execs,
        o.seconds,
        o.execs_per_s,
        o.peak_rss_mb,
        o.corpus,
        o.crashes.len()
    );
}

fn row(o: &Outcome) -> String {
    format!(
        "| `{}` | {} | {} | {} | {} | {} | {} |",
        o.target,
        o.execs,
        o.execs_per_s,
        o.peak_rss_mb,
        o.seconds,
        o.corpus,
        o.crashes.len()
    )
}

fn tool_version(path: &OsString, args: &[&str]) -> String {
    let Some((cmd, rest)) = args.split_first() else {
        return String::new();
    };
    Command::new(cmd)
        .args(rest)
        .env("PATH", path)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// fuzz/results.md: this run's rows replace those of the same targets; rows of
/// targets not run this time are kept as they were.
fn write_results(
    file: &Path,
    outcomes: &[Outcome],
    a: &FuzzArgs,
    tools: &[String; 2],
) -> anyhow::Result<()> {
    let mut rows: BTreeMap<String, String> = BTreeMap::new();
    if let Ok(old) = fs::read_to_string(file) {
        for l in old.lines() {
            if let Some(name) = l
                .strip_prefix("| `")
                .and_then(|r| r.split_once('`'))
                .map(|(n, _)| n)
            {
                rows.insert(name.to_string(), l.to_string());
            }
        }
    }
    for o in outcomes {
        rows.insert(o.target.clone(), row(o));
    }
    let order = |n: &str| TARGETS.iter().position(|t| t.0 == n).unwrap_or(usize::MAX);
    let mut sorted: Vec<(&String, &String)> = rows.iter().collect();
    sorted.sort_by_key(|(n, _)| order(n));
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut s = String::new();
    s.push_str("# Fuzzing results\n\n");
    s.push_str("Written by `cargo xtask fuzz` (xtask/src/fuzz.rs); the targets are in `fuzz/fuzz_targets`.\n\n");
    s.push_str(&format!(
        "Last run: `cargo xtask fuzz --seconds {}{}{}` on a {cpus}-CPU machine, kernel {}, \
         {}, {}.\n\n",
        a.seconds,
        a.runs.map(|r| format!(" --runs {r}")).unwrap_or_default(),
        a.target
            .as_ref()
            .map(|t| format!(" --target {t}"))
            .unwrap_or_default(),
        kernel.trim(),
        tools[0],
        tools[1],
    ));
    s.push_str(&format!(
        "Each target: one process (`-jobs=1 -workers=1`), AddressSanitizer and debug \
         assertions on (cargo-fuzz's defaults), `-rss_limit_mb={RSS_LIMIT_MB} \
         -malloc_limit_mb={MALLOC_LIMIT_MB} -timeout={TIMEOUT_S}`, starting from the \
         committed corpus in `fuzz/corpus/<target>`. Executions include the corpus' \
         first pass. Peak RSS is libFuzzer's, of the whole process (AddressSanitizer's \
         shadow memory and quarantine included).\n\n"
    ));
    s.push_str("| target | executions | exec/s | peak RSS (MiB) | seconds | corpus | crashes |\n");
    s.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for (_, r) in sorted {
        s.push_str(r);
        s.push('\n');
    }
    fs::write(file, s).with_context(|| format!("writing {}", file.display()))
}
