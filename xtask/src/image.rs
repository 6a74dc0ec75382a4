//! `cargo xtask image`: the node agent's OCI image, built without pulling anything.
//!
//! `buildah from scratch`, then the release binary and exactly the shared libraries
//! `ldd` lists for it (the dynamic loader at its own path), then the entry point; the
//! result is tagged `localhost/stalltrace:<version>`, the version being what the binary
//! itself prints (`stalltrace --version`), which is what `deploy/daemonset.yaml` names.
//! Packages come from scripts/setup.sh (buildah, podman, runc).
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{bail, Context as _};

#[derive(clap::Args, Debug)]
pub struct ImageArgs {
    /// Put this binary in the image instead of building target/release/stalltrace
    /// (the deploy test passes the binary under test).
    #[arg(long, value_name = "FILE")]
    pub binary: Option<PathBuf>,
    /// Image name and tag (default: localhost/stalltrace:<the binary's version>).
    #[arg(long, value_name = "NAME:TAG")]
    pub tag: Option<String>,
}

/// What the image is called unless `--tag` says otherwise.
pub const REPOSITORY: &str = "localhost/stalltrace";

fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd
        .output()
        .with_context(|| format!("running {cmd:?} (scripts/setup.sh installs it)"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// The files the dynamic loader maps for `bin`, from `ldd`: absolute paths (the loader
/// itself included), without the vDSO, which the kernel provides.
pub fn libraries(ldd_output: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut libs = vec![];
    for line in ldd_output.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("not found") {
            bail!("ldd: a library is missing on this machine: {line}");
        }
        if line.contains("statically linked") || line.contains("not a dynamic executable") {
            return Ok(vec![]);
        }
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or
        // `/lib64/ld-linux-x86-64.so.2 (0x…)`; `linux-vdso.so.1 (0x…)` has no path.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

/// The version the binary reports (`stalltrace 0.1.0` → `0.1.0`).
fn version_of(bin: &Path) -> anyhow::Result<String> {
    let out = run(Command::new(bin).arg("--version"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .nth(1)
        .map(str::to_string)
        .with_context(|| format!("{} --version printed {text:?}", bin.display()))
}

/// A buildah working container, removed on every path out (commit removes it too).
struct WorkingContainer(Option<String>);

impl Drop for WorkingContainer {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            let _ = Command::new("buildah").args(["rm", &c]).output();
        }
    }
}

/// Builds the image from `bin`; returns its tag.
pub fn build(bin: &Path, tag: Option<&str>) -> anyhow::Result<String> {
    let bin = fs::canonicalize(bin).with_context(|| format!("no binary at {}", bin.display()))?;
    let version = version_of(&bin)?;
    let tag = tag.map_or_else(|| format!("{REPOSITORY}:{version}"), str::to_string);
    let ldd = run(Command::new("ldd").arg(&bin))?;
    let libs = libraries(&String::from_utf8_lossy(&ldd.stdout))?;

    // The root file system, staged: the binary at /stalltrace, each library at the path
    // ldd gave (the loader's path is compiled into the binary), content not symlinks.
    let stage = crate::root().join("target/image/rootfs");
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("clearing {}", stage.display()))?;
    }
    fs::create_dir_all(&stage).with_context(|| format!("creating {}", stage.display()))?;
    fs::copy(&bin, stage.join("stalltrace"))
        .with_context(|| format!("copying {}", bin.display()))?;
    for lib in &libs {
        let rel = lib.strip_prefix("/").unwrap_or(lib);
        let dst = stage.join(rel);
        if let Some(dir) = dst.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        fs::copy(lib, &dst).with_context(|| format!("copying {}", lib.display()))?;
    }
    // Where the DaemonSet mounts the dump directory; the rest of / stays read-only.
    fs::create_dir_all(stage.join("var/lib/stalltrace/dumps")).context("creating the dump dir")?;

    let ctr = run(Command::new("buildah").args(["from", "scratch"]))?;
    let ctr = String::from_utf8_lossy(&ctr.stdout).trim().to_string();
    let mut guard = WorkingContainer(Some(ctr.clone()));
    run(Command::new("buildah")
        .args(["copy", "--quiet", &ctr])
        .arg(&stage)
        .arg("/"))?;
    run(Command::new("buildah").args([
        "config",
        "--entrypoint",
        r#"["/stalltrace"]"#,
        "--cmd",
        r#"["watch","--listen","0.0.0.0:9910"]"#,
        "--port",
        "9910/tcp",
        "--user",
        "0:0",
        "--workingdir",
        "/",
        "--label",
        &format!("org.opencontainers.image.version={version}"),
        "--label",
        "org.opencontainers.image.title=stalltrace",
        "--label",
        "org.opencontainers.image.description=stalltrace watch: RX stalls and the tasks that caused them, as Prometheus metrics",
        &ctr,
    ]))?;
    // The tag moves to the new image; the one it named before (if any) is removed so
    // rebuilding leaves no dangling image behind.
    let old = Command::new("buildah")
        .args(["images", "--quiet", "--no-trunc", &tag])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    run(Command::new("buildah").args(["commit", "--quiet", "--rm", &ctr, &tag]))?;
    guard.0 = None;
    for id in old.lines().filter(|l| !l.is_empty()) {
        let _ = Command::new("buildah").args(["rmi", id]).output();
    }
    let _ = fs::remove_dir_all(&stage);
    Ok(tag)
}

/// `cargo xtask image`.
pub fn main(a: ImageArgs) -> anyhow::Result<()> {
    let path = crate::setup::run(&[])?;
    let bin = match a.binary {
        Some(b) => b,
        None => {
            crate::cargo(&path, &["build", "-p", "stalltrace", "--release"])?;
            crate::root().join("target/release/stalltrace")
        }
    };
    let tag = build(&bin, a.tag.as_deref())?;
    let size = Command::new("podman")
        .args(["image", "inspect", "--format", "{{.Size}}", &tag])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!("{tag}");
    eprintln!(
        "image: {tag} ({size} bytes); run it as deploy/daemonset.yaml and docs/deploy.md say"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_lines() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd2b5f2000)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f2d1c000000)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2d1be00000)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f2d1c400000)\n";
        let libs = libraries(out).unwrap();
        assert_eq!(
            libs,
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert!(libraries("\tlibfoo.so.1 => not found\n").is_err());
        assert!(libraries("\tstatically linked\n").unwrap().is_empty());
    }
}
