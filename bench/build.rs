//! Builds the empty programs of the floor (floor-ebpf) with nightly and bpf-linker
//! through aya-build, as stalltrace's build.rs builds its own, into OUT_DIR. With
//! AYA_BUILD_SKIP=1 an empty placeholder is written and the floor cannot be measured.
use std::{env, fs, path::PathBuf};

use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let manifest = PathBuf::from(
        env::var_os("CARGO_MANIFEST_DIR").ok_or_else(|| anyhow!("CARGO_MANIFEST_DIR not set"))?,
    );
    let ebpf_dir = manifest.join("floor-ebpf");
    let ebpf_dir = ebpf_dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "stalltrace-floor-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context(
        "building the floor's empty programs failed; run scripts/setup.sh (nightly rust-src \
         and bpf-linker) and put its BPF_LINKER_DIR on PATH, or use `cargo xtask bench`",
    )?;
    let obj = out.join("floor");
    if !obj.exists() {
        fs::write(&obj, b"").context("writing the placeholder eBPF object")?;
    }
    Ok(())
}
