//! Writes the seed corpus (`cargo +nightly run --example seeds` in fuzz/, with
//! AYA_BUILD_SKIP=1): real dumps, the probe logs of the unit tests, valid ring-buffer
//! records, and a minimized copy of this machine's kernel BTF. Seeds are named
//! `seed-*`; the fuzzer's own finds sit next to them.
use std::{fs, path::Path};

use stalltrace_testkit::{benchdump, seed};

fn put(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::write(dir.join(format!("seed-{name}")), bytes)?;
    println!("{}/seed-{name}: {} bytes", dir.display(), bytes.len());
    Ok(())
}

/// The first `n` lines of a dump, and its footer if it has one.
fn head(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<&str> = lines.iter().take(n).copied().collect();
    if let Some(last) = lines
        .last()
        .filter(|l| l.starts_with(r#"{"type":"footer""#))
    {
        if lines.len() > n {
            out.push(last);
        }
    }
    out.join("\n") + "\n"
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = fuzz.parent().ok_or("no workspace")?;
    let corpus = fuzz.join("corpus");

    // Real dumps (the first is tests/fixtures/seed.jsonl) cut to their first 45 lines
    // (the 2019 GitHub incident's stall is at lines 29-31) and their footer: small enough to mutate
    // quickly, deep enough to reach an episode.
    let dump = corpus.join("dump");
    for (name, s) in [
        ("stall.jsonl", seed::Seed::default()),
        (
            "no-stall.jsonl",
            seed::Seed {
                stall: false,
                ..Default::default()
            },
        ),
        (
            "packets-only.jsonl",
            seed::Seed {
                probes: false,
                ..Default::default()
            },
        ),
        (
            "no-footer.jsonl",
            seed::Seed {
                footer: false,
                ..Default::default()
            },
        ),
    ] {
        let text = stalltrace_testkit::records::jsonl(&seed::records(s));
        put(&dump, name, head(&text, 45).as_bytes())?;
    }
    let tmp = std::env::temp_dir().join(format!(
        "stalltrace-fuzz-bench-{}.jsonl",
        std::process::id()
    ));
    benchdump::write(&tmp, 40)?;
    let bench = fs::read(&tmp);
    let _ = fs::remove_file(&tmp);
    let bench = bench?;
    put(&dump, "bench.jsonl", &bench)?;
    // The packet and probe lines the fast decoder reads, with every optional field.
    put(&corpus.join("dump_fast"), "bench.jsonl", &bench)?;
    let text = stalltrace_testkit::records::jsonl(&seed::records(seed::Seed::default()));
    put(
        &corpus.join("dump_fast"),
        "stall.jsonl",
        head(&text, 45).as_bytes(),
    )?;

    let logs = root.join("analysis/src/probelog/testdata");
    let mut names: Vec<_> = fs::read_dir(&logs)?.collect::<Result<_, _>>()?;
    names.sort_by_key(|e| e.file_name());
    for e in names {
        let name = e.file_name().to_string_lossy().into_owned();
        put(&corpus.join("probelog"), &name, &fs::read(e.path())?)?;
    }

    for (name, bytes) in stalltrace_fuzz::ring::seeds() {
        put(&corpus.join("ring"), name, &bytes)?;
    }

    // The BTF seeds must read as the kernel's own does (else they seed nothing deep).
    use stalltrace::kernel::offsets::read_bytes;
    let btf = corpus.join("btf");
    let syn = stalltrace_fuzz::btf::synthetic();
    let (o, notes) = read_bytes(&syn)?;
    println!("synthetic: {o:?} {notes:?}");
    put(&btf, "synthetic", &syn)?;
    match fs::read("/sys/kernel/btf/vmlinux") {
        Ok(v) => {
            let min = stalltrace_fuzz::btf::minimize(&v)?;
            let (want, _) = read_bytes(&v)?;
            let (got, notes) = read_bytes(&min)?;
            if got != want || !notes.is_empty() {
                return Err(format!(
                    "minimized BTF reads {got:?} {notes:?}, the kernel's {want:?}"
                )
                .into());
            }
            put(&btf, "vmlinux-min", &min)?;
        }
        Err(e) => eprintln!("no kernel BTF here ({e}): only the synthetic BTF seed"),
    }
    Ok(())
}
