//! Developer tasks. `cargo xtask test` is the README's test command and what CI runs:
//! it sets up the toolchain (idempotent), builds, and runs every test.
use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

mod bench;
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
    /// Set up, build (release), and measure: kernel cost per event, effect on the node,
    /// ring-buffer headroom, analyze throughput, record's CPU (root; writes bench/results.*).
    Bench(bench::BenchArgs),
    /// Set up, build, and run `stalltrace lab` with the given arguments.
    Lab {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, and run the kernel-specific tests in qemu guests with other kernels.
    Vmtest(vmtest::VmtestArgs),
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn setup() -> anyhow::Result<OsString> {
    setup_with(&[])
}

/// Runs scripts/setup.sh with `args` (e.g. `--vm`) and returns PATH with bpf-linker's
/// directory in front.
pub(crate) fn setup_with(args: &[&str]) -> anyhow::Result<OsString> {
    let out = Command::new("bash")
        .arg(root().join("scripts/setup.sh"))
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running scripts/setup.sh")?;
    if !out.status.success() {
        bail!(
            "scripts/setup.sh {} failed ({})",
            args.join(" "),
            out.status
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout
        .lines()
        .find_map(|l| l.strip_prefix("BPF_LINKER_DIR="))
        .context("scripts/setup.sh did not print BPF_LINKER_DIR")?;
    let mut paths = vec![PathBuf::from(dir)];
    paths.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
    env::join_paths(paths).context("building PATH")
}

fn cargo(path: &OsString, args: &[&str]) -> anyhow::Result<()> {
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Setup => {
            setup()?;
        }
        Cmd::Build => {
            let path = setup()?;
            cargo(&path, &["build", "-p", "stalltrace"])?;
            cargo(&path, &["build", "-p", "stalltrace", "--release"])?;
        }
        Cmd::Test { args } => {
            let path = setup()?;
            cargo(&path, &["build", "-p", "stalltrace"])?;
            let bin = root().join("target/debug/stalltrace");
            env::set_var("STALLTRACE_BIN", &bin);
            // One test at a time: the kernel tests share CPUs, tracefs and namespaces.
            // Default members: the eBPF crate builds only for the BPF target (via build.rs).
            let mut a = vec!["test", "--"];
            a.extend(args.iter().map(String::as_str));
            a.push("--test-threads=1");
            cargo(&path, &a)?;
        }
        Cmd::Bench(a) => {
            let path = setup()?;
            cargo(&path, &["build", "-p", "stalltrace", "--release"])?;
            bench::run(&root(), &root().join("target/release/stalltrace"), a)?;
        }
        Cmd::Lab { args } => {
            let path = setup()?;
            cargo(&path, &["build", "-p", "stalltrace", "--release"])?;
            let bin = root().join("target/release/stalltrace");
            // SAFETY: geteuid has no preconditions.
            let status = if unsafe { libc_geteuid() } == 0 {
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
    }
    Ok(())
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}
