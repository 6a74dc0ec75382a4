//! Developer tasks, one module each with its own options. `cargo xtask test` is the
//! README's test command and what CI runs; `cargo xtask lab` the main job. Every task
//! sets up what it needs first (idempotent: Debian packages, nightly rust-src,
//! bpf-linker).
use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

mod field;
mod fixtures;
mod fuzz;
mod image;
mod imports;
mod lint;
mod man;
mod mutants;
mod setup;
mod vmtest;

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build and tests need (Debian packages, nightly rust-src, bpf-linker).
    Setup,
    /// Set up, then build stalltrace (debug and release).
    Build,
    /// Set up, build, and run every test (unit and root/kernel integration tests).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// cargo fmt --check and clippy with warnings as errors (CI runs it).
    Lint,
    /// Set up, build stalltrace and the bench (release), and run the bench
    /// (stalltrace-bench, bench/): kernel cost per event against empty programs on the
    /// same hooks, effect on the node, ring-buffer headroom, analyze throughput,
    /// record's CPU (root; writes bench/results.*). Its options: `cargo xtask bench --help`.
    #[command(disable_help_flag = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, and run `stalltrace lab` with the given arguments.
    Lab {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, and run the kernel-specific tests in qemu guests with other kernels.
    Vmtest(vmtest::VmtestArgs),
    /// Two qemu guests joined by virtio-net (a prober and a node with its own kernel and
    /// clock): the blog post's stall and every default-flag recording, judged from outside.
    Field(field::FieldArgs),
    /// Write the man pages (from the command line's definitions) into target/man.
    Man(man::ManArgs),
    /// Rewrite the golden fixtures (tests/fixtures) from the record builders.
    Fixtures,
    /// Mutation testing of the analysis crate (cargo-mutants; hours): writes the score
    /// and the surviving mutants to docs/mutants.md.
    Mutants(mutants::MutantsArgs),
    /// Set up, build (release), and build the node agent's OCI image from scratch
    /// (buildah: the binary and the libraries ldd lists), tagged localhost/stalltrace:<version>.
    Image(image::ImageArgs),
    /// Install cargo-fuzz if missing and run each fuzz target (fuzz/) for a bounded
    /// time; writes fuzz/results.md, fails on any crash.
    Fuzz(fuzz::FuzzArgs),
}

pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Runs cargo with `args` in the workspace, with `path` as PATH.
pub(crate) fn cargo(path: &OsString, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(args)
        .env("PATH", path)
        .current_dir(root())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup => {
            setup::run(&[])?;
        }
        Cmd::Build => {
            let path = setup::run(&[])?;
            cargo(&path, &["build", "-p", "stalltrace"])?;
            cargo(&path, &["build", "-p", "stalltrace", "--release"])?;
        }
        Cmd::Test { args } => {
            let path = setup::run(&[])?;
            cargo(&path, &["build", "-p", "stalltrace"])?;
            env::set_var("STALLTRACE_BIN", root().join("target/debug/stalltrace"));
            // One test at a time: the kernel tests share CPUs, namespaces and programs.
            let mut a = vec!["test", "--"];
            a.extend(args.iter().map(String::as_str));
            a.push("--test-threads=1");
            cargo(&path, &a)?;
        }
        Cmd::Lint => lint::run()?,
        Cmd::Bench { args } => {
            let path = setup::run(&[])?;
            cargo(
                &path,
                &[
                    "build",
                    "-p",
                    "stalltrace",
                    "-p",
                    "stalltrace-bench",
                    "--release",
                ],
            )?;
            let status = Command::new(root().join("target/release/stalltrace-bench"))
                .args(&args)
                .status()
                .context("running stalltrace-bench")?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Cmd::Lab { args } => {
            let path = setup::run(&[])?;
            cargo(&path, &["build", "-p", "stalltrace", "--release"])?;
            let bin = root().join("target/release/stalltrace");
            let status = if is_root() {
                Command::new(&bin).arg("lab").args(&args).status()
            } else {
                Command::new("sudo")
                    .arg(&bin)
                    .arg("lab")
                    .args(&args)
                    .status()
            }
            .context("running stalltrace lab")?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Cmd::Vmtest(a) => vmtest::run(a)?,
        Cmd::Field(a) => field::run(a)?,
        Cmd::Man(a) => man::run(a)?,
        Cmd::Fixtures => fixtures::run()?,
        Cmd::Mutants(a) => mutants::run(a)?,
        Cmd::Image(a) => image::main(a)?,
        Cmd::Fuzz(a) => fuzz::run(a)?,
    }
    Ok(())
}
