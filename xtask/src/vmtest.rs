//! `cargo xtask vmtest`: the kernel matrix. Runs a focused part of the root test suite
//! inside qemu guests booted with Debian's own kernels, where the project's machines
//! cannot go: kprobes (absent on the host's 6.18) and the 2019 GitHub incident's ksoftirqd deferral
//! (gone since 6.5).
//!
//! Per kernel of the matrix (CI: 5.10 and 6.1-rt; `--all`: 5.10, 6.1, 6.1-rt, 6.12):
//! 1. the newest `linux-image-<series>…-amd64-unsigned` that apt knows (the machine's
//!    sources, or a private configuration for bullseye: [`apt`]) is downloaded
//!    once (`apt-get download`, `dpkg-deb -x`) into a cache outside the repository
//!    (`$XDG_CACHE_HOME/stalltrace/kernels/<package>/`: vmlinuz plus the few modules the
//!    guest needs, in load order, resolved from `depmod`'s modules.dep);
//! 2. a busybox initramfs is packed under `target/vmtest/<release>/` with
//!    `scripts/vm/init` as its init;
//! 3. qemu (TCG: KVM hangs on these machines) boots it; the guest mounts the host's root
//!    read-only over 9p with a tmpfs overlay, so it runs this checkout's freshly built
//!    binaries, and runs `scripts/vm/guest-suite.sh`, which executes the plan written
//!    here (the integration test binaries, filtered, one test per line) and writes each
//!    test's status, time and output to a writable 9p share (`target/vmtest/<release>/results`);
//! 4. the results come back as a table per kernel; any failed, unfinished or missing
//!    test, or a guest that did not boot or finish in time, makes the exit status
//!    non-zero. qemu is killed on timeout and on every error path.
//!
//! Why the test binaries and not a separate runner: the guest runs exactly the tests
//! that the host runs (`record_netns`: tracepoint and kprobe paths, signals, refusals,
//! verifier), plus `vm_guest`, whose tests are `#[ignore]`d on the host because they
//! need what only the guests have (kprobes, a kernel before 6.5).
use std::{
    env,
    ffi::OsString,
    fs,
    io::{Read as _, Seek as _, SeekFrom},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::root;

pub(crate) mod apt;
mod matrix;

#[derive(clap::Args, Debug)]
pub struct VmtestArgs {
    /// Kernel series to boot (`5.10`, `6.1`, `6.1-rt`, `6.12`: the newest Debian package
    /// of that series and flavour), or an exact package name
    /// (`linux-image-6.1.0-56-amd64-unsigned`). Repeatable. Default: the CI matrix.
    #[arg(long = "kernel", value_name = "NAME", conflicts_with = "all")]
    pub kernels: Vec<String>,
    /// The full matrix: 5.10, 6.1, 6.1-rt and 6.12.
    #[arg(long)]
    pub all: bool,
    /// Only tests whose name contains this.
    #[arg(long, value_name = "SUBSTRING")]
    pub filter: Option<String>,
    /// Time limit per test inside the guest, in seconds.
    #[arg(long, default_value_t = 300)]
    pub test_timeout: u64,
    /// Time limit for a whole guest, in seconds (default: every test at its limit plus
    /// three minutes); qemu is killed when it is reached.
    #[arg(long)]
    pub guest_timeout: Option<u64>,
}

/// Every kernel the project is tested on (`--all`): 5.10 LTS (Debian bullseye, the
/// oldest the registry serves), 6.1 (bookworm), 6.1 PREEMPT_RT, 6.12 (bookworm's
/// backport; NET_RX no longer deferred to ksoftirqd since 6.5).
pub const FULL_MATRIX: &[&str] = &["5.10", "6.1", "6.1-rt", "6.12"];

/// What `cargo xtask vmtest` (and CI) boots without `--kernel`: the full matrix takes
/// 30+ minutes under emulation on a 2-CPU machine, past CI's budget, so CI boots the two
/// kernels that cover what neither the host (6.18: sample_task_regs, threaded NAPI, no
/// ksoftirqd deferral, no kprobes) nor each other covers: 5.10 (the degraded sampler,
/// no threaded NAPI, the 2019 GitHub incident's deferral, kprobes) and 6.1-rt (PREEMPT_RT's softirq
/// threads, kprobes). 6.1 and 6.12 run with `--all`.
pub const CI_MATRIX: &[&str] = &["5.10", "6.1-rt"];

impl VmtestArgs {
    /// The kernels to boot: `--kernel`s, else `--all`'s or CI's matrix.
    fn matrix(&self) -> Vec<String> {
        if !self.kernels.is_empty() {
            return self.kernels.clone();
        }
        let m = if self.all { FULL_MATRIX } else { CI_MATRIX };
        m.iter().map(|k| k.to_string()).collect()
    }
}

/// Modules the guest needs (their dependencies come along): virtio PCI and 9p for the
/// shared root, overlay for its writable layer, veth for the tests' namespaces.
/// virtio_net too: the field harness (`cargo xtask field`) links two guests with it.
const WANTED_MODULES: &[&str] = &[
    "virtio_pci",
    "9pnet_virtio",
    "9p",
    "overlay",
    "veth",
    "virtio_net",
];

/// The integration test binary (one, a module per area).
const TEST_BINARY: &str = "it";

/// Modules of it the guest runs, and whether their tests are `#[ignore]`d (guest-only)
/// ones.
const SUITES: &[(&str, bool)] = &[("record_netns", false), ("vm_guest", true)];

/// `$XDG_CACHE_HOME/stalltrace` (or `~/.cache/stalltrace`): kernels and private apt
/// configurations, outside the repository, kept between runs.
fn cache_root() -> PathBuf {
    let base = env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache")
        });
    base.join("stalltrace")
}

fn cache_dir() -> PathBuf {
    cache_root().join("kernels")
}

/// Runs scripts/setup.sh --vm (the build toolchain plus qemu, busybox-static, cpio) and
/// returns PATH with bpf-linker's directory in front.
pub(crate) fn setup_vm() -> anyhow::Result<OsString> {
    crate::setup::run(&["--vm"])
}

pub(crate) fn run_ok(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Builds stalltrace (debug) and the test binaries with the very commands `cargo xtask
/// test` uses (the whole workspace: `-p integration-tests` would unify features
/// differently and rebuild), so after it there is nothing to rebuild; returns
/// (stalltrace, [(suite, executable)]).
fn build(path: &OsString) -> anyhow::Result<(PathBuf, Vec<(String, PathBuf)>)> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let st = Command::new(&cargo)
        .args(["build", "-p", "stalltrace"])
        .env("PATH", path)
        .current_dir(root())
        .status()
        .context("running cargo build")?;
    if !st.success() {
        bail!("cargo build -p stalltrace failed ({st})");
    }
    let out = Command::new(&cargo)
        .args([
            "test",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .env("PATH", path)
        .current_dir(root())
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("cargo test --no-run failed ({})", out.status);
    }
    let mut exes = vec![];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] != "compiler-artifact" {
            continue;
        }
        let name = v["target"]["name"].as_str().unwrap_or_default();
        if let (true, Some(exe)) = (name == TEST_BINARY, v["executable"].as_str()) {
            exes.push((name.to_string(), PathBuf::from(exe)));
        }
    }
    if exes.is_empty() {
        bail!("cargo did not report the test binary {TEST_BINARY}");
    }
    let target = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    Ok((target.join("debug/stalltrace"), exes))
}

/// Numbers in a version string, for ordering `6.1.0-9` before `6.1.0-56`.
fn version_key(s: &str) -> Vec<u64> {
    s.split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// A kernel unpacked into the cache: vmlinuz, its release, modules in load order.
pub(crate) struct Kernel {
    pub package: String,
    pub dir: PathBuf,
    pub release: String,
}

/// Load order for `wanted` from a modules.dep: each module after its dependencies.
/// Built-in ones (in modules.builtin) are skipped; others missing are an error.
fn module_order(dep: &str, builtin: &str, wanted: &[&str]) -> anyhow::Result<Vec<String>> {
    let stem = |p: &str| -> String {
        let f = p.rsplit('/').next().unwrap_or(p);
        f.split(".ko").next().unwrap_or(f).replace('-', "_")
    };
    let mut deps = std::collections::HashMap::new();
    for line in dep.lines() {
        if let Some((m, d)) = line.split_once(':') {
            deps.insert(
                stem(m),
                (
                    m.trim().to_string(),
                    d.split_whitespace().map(str::to_string).collect::<Vec<_>>(),
                ),
            );
        }
    }
    let builtins: Vec<String> = builtin.lines().map(stem).collect();
    fn visit(
        name: &str,
        deps: &std::collections::HashMap<String, (String, Vec<String>)>,
        order: &mut Vec<String>,
        depth: usize,
    ) -> anyhow::Result<()> {
        if depth > 32 {
            bail!("module dependency loop at {name}");
        }
        let Some((path, ds)) = deps.get(name) else {
            bail!("module {name} is not in modules.dep")
        };
        // modprobe loads the dependencies listed last first.
        for d in ds.iter().rev() {
            let f = d.rsplit('/').next().unwrap_or(d);
            let dn = f.split(".ko").next().unwrap_or(f).replace('-', "_");
            visit(&dn, deps, order, depth + 1)?;
        }
        if !order.contains(path) {
            order.push(path.clone());
        }
        Ok(())
    }
    let mut order = vec![];
    for w in wanted {
        if !deps.contains_key(*w) && builtins.iter().any(|b| b == w) {
            continue;
        }
        visit(w, &deps, &mut order, 0)?;
    }
    Ok(order)
}

/// Downloads and unpacks `package` into the cache unless it is there already.
pub(crate) fn fetch(package: &str, source: &apt::Source) -> anyhow::Result<Kernel> {
    let dir = cache_dir().join(package);
    // A cache made for another set of modules is made again.
    let same_modules =
        fs::read_to_string(dir.join("wanted")).is_ok_and(|w| w.trim() == WANTED_MODULES.join(" "));
    if dir.join("ready").exists() && same_modules {
        let release = fs::read_to_string(dir.join("release"))
            .context("reading the cached release")?
            .trim()
            .to_string();
        return Ok(Kernel {
            package: package.into(),
            dir,
            release,
        });
    }
    let t0 = Instant::now();
    let tmp = cache_dir().join(format!(".{package}.tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(tmp.join("modules"))
        .with_context(|| format!("creating {}", tmp.display()))?;
    let res = (|| -> anyhow::Result<String> {
        apt::download(source, package, &tmp)?;
        let deb = fs::read_dir(&tmp)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .context("apt-get download left no .deb")?;
        let x = tmp.join("x");
        run_ok(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&x))?;
        let release = fs::read_dir(x.join("lib/modules"))
            .context("the package has no lib/modules")?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .next()
            .context("the package has no lib/modules/<release>")?;
        fs::copy(
            x.join(format!("boot/vmlinuz-{release}")),
            tmp.join("vmlinuz"),
        )
        .context("copying vmlinuz")?;
        let _ = fs::copy(x.join(format!("boot/config-{release}")), tmp.join("config"));
        // The package ships no modules.dep (made at install): make one.
        run_ok(Command::new("depmod").arg("-b").arg(&x).arg(&release))?;
        let mdir = x.join("lib/modules").join(&release);
        let dep = fs::read_to_string(mdir.join("modules.dep")).context("reading modules.dep")?;
        let builtin = fs::read_to_string(mdir.join("modules.builtin")).unwrap_or_default();
        let order = module_order(&dep, &builtin, WANTED_MODULES)?;
        let mut names = vec![];
        for rel in &order {
            let src = mdir.join(rel);
            let base = rel.rsplit('/').next().unwrap_or(rel);
            let name = format!("{}.ko", base.split(".ko").next().unwrap_or(base));
            let dst = tmp.join("modules").join(&name);
            // busybox insmod takes plain .ko: decompress here.
            let bytes = match base.rsplit('.').next() {
                Some("xz") => run_bytes(Command::new("xz").arg("-dc").arg(&src))?,
                Some("zst") => run_bytes(Command::new("zstd").arg("-dc").arg(&src))?,
                Some("gz") => run_bytes(Command::new("gzip").arg("-dc").arg(&src))?,
                _ => fs::read(&src).with_context(|| format!("reading {}", src.display()))?,
            };
            fs::write(&dst, bytes)?;
            names.push(name);
        }
        fs::write(tmp.join("modules/order"), names.join("\n") + "\n")?;
        fs::write(tmp.join("release"), &release)?;
        fs::write(tmp.join("wanted"), WANTED_MODULES.join(" "))?;
        fs::remove_dir_all(&x)?;
        fs::remove_file(&deb)?;
        fs::write(tmp.join("ready"), "")?;
        Ok(release)
    })();
    let release = match res {
        Ok(r) => r,
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e.context(format!("preparing kernel {package}")));
        }
    };
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&tmp, &dir).with_context(|| format!("moving the kernel into {}", dir.display()))?;
    eprintln!(
        "vmtest: {package} ({release}) cached in {} ({:.1} s)",
        dir.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(Kernel {
        package: package.into(),
        dir,
        release,
    })
}

fn run_bytes(cmd: &mut Command) -> anyhow::Result<Vec<u8>> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({})", out.status);
    }
    Ok(out.stdout)
}

/// Packs busybox, scripts/vm/init and the kernel's modules into `work/initrd.gz`.
pub(crate) fn initramfs(k: &Kernel, work: &Path) -> anyhow::Result<PathBuf> {
    let stage = work.join("initramfs");
    let _ = fs::remove_dir_all(&stage);
    for d in ["bin", "modules", "proc", "sys", "dev"] {
        fs::create_dir_all(stage.join(d))?;
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(Path::new)
        .find(|p| p.exists())
        .context("busybox is not installed (apt-get install busybox-static)")?;
    fs::copy(busybox, stage.join("bin/busybox")).context("copying busybox")?;
    fs::copy(root().join("scripts/vm/init"), stage.join("init"))
        .context("copying scripts/vm/init")?;
    for e in fs::read_dir(k.dir.join("modules"))?.flatten() {
        fs::copy(e.path(), stage.join("modules").join(e.file_name()))?;
    }
    let out = work.join("initrd.gz");
    let st = Command::new("sh")
        .arg("-c")
        .arg("cd \"$1\" && find . | cpio -o -H newc --quiet | gzip -1 > \"$2\"")
        .args(["sh"])
        .arg(&stage)
        .arg(&out)
        .status()
        .context("running cpio")?;
    if !st.success() {
        bail!("packing the initramfs failed ({st})");
    }
    fs::remove_dir_all(&stage)?;
    Ok(out)
}

const PR_SET_PDEATHSIG: i32 = 1;
const SIGKILL: u64 = 9;

extern "C" {
    fn prctl(option: i32, arg2: u64, arg3: u64, arg4: u64, arg5: u64) -> i32;
}

/// qemu, killed and reaped on drop (timeout, error, panic).
pub(crate) struct Qemu(pub Option<Child>);

impl Drop for Qemu {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[derive(Debug)]
struct TestResult {
    id: String,
    status: &'static str,
    secs: f64,
}

struct KernelRun {
    label: String,
    /// `uname -r` of the guest, once its kernel is known.
    release: Option<String>,
    /// The guest's look at its kernel (`results/info`) and what the tests measured
    /// (`results/matrix.tsv`), for the table.
    info_kv: Vec<(String, String)>,
    facts: Vec<(String, String)>,
    boot_s: Option<f64>,
    wall_s: f64,
    problem: Option<String>,
    info: Vec<String>,
    tests: Vec<TestResult>,
    /// The guest stopped making progress (no test finished within a test's limit plus a
    /// minute): an emulator/guest-kernel hang, retried once.
    hung: bool,
}

impl KernelRun {
    /// `release (package)`, or the entry asked for when it never got that far.
    fn name(&self) -> String {
        match &self.release {
            Some(r) => format!("{r} ({})", self.label),
            None => self.label.clone(),
        }
    }

    fn failed(&self) -> bool {
        self.problem.is_some() || self.tests.iter().any(|t| t.status != "PASS")
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Test names in a libtest binary (`--list`), the ignored ones if `ignored`.
fn list_tests(exe: &Path, ignored: bool) -> anyhow::Result<Vec<String>> {
    let mut c = Command::new(exe);
    c.arg("--list");
    if ignored {
        c.arg("--ignored");
    }
    let out = run_ok(&mut c)?;
    Ok(out
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_string)
        .collect())
}

fn plan(
    stalltrace: &Path,
    exes: &[(String, PathBuf)],
    a: &VmtestArgs,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut lines = vec![];
    let Some((_, exe)) = exes.iter().find(|e| e.0 == TEST_BINARY) else {
        bail!("no test binary {TEST_BINARY}");
    };
    for (suite, ignored) in SUITES {
        let prefix = format!("{suite}::");
        for t in list_tests(exe, *ignored)? {
            if !t.starts_with(&prefix) || a.filter.as_deref().is_some_and(|f| !t.contains(f)) {
                continue;
            }
            let mut cmd = format!(
                "STALLTRACE_BIN={} {} --exact {} --test-threads=1 --nocapture",
                shell_quote(&stalltrace.to_string_lossy()),
                shell_quote(&exe.to_string_lossy()),
                shell_quote(&t)
            );
            if *ignored {
                cmd.push_str(" --ignored");
            }
            lines.push((t.replace("::", "."), cmd));
        }
    }
    if lines.is_empty() {
        bail!("no test to run (filter {:?})", a.filter);
    }
    Ok(lines)
}

fn boot(k: &Kernel, plan: &[(String, String)], a: &VmtestArgs) -> anyhow::Result<KernelRun> {
    let work = root().join("target/vmtest").join(&k.release);
    fs::create_dir_all(&work)?;
    let initrd = initramfs(k, &work)?;
    let results = work.join("results");
    let _ = fs::remove_dir_all(&results);
    fs::create_dir_all(&results)?;
    // STALLTRACE_ARTIFACTS: where tests keep dumps for a post-mortem (on the host, in
    // target/vmtest/<release>/results/artifacts).
    fs::write(
        results.join("env"),
        "export CI=true RUST_BACKTRACE=1 STALLTRACE_ARTIFACTS=/results/artifacts STALLTRACE_MATRIX=/results/matrix.tsv\n",
    )?;
    let plan_text: String = plan
        .iter()
        .map(|(id, cmd)| format!("{id}\t{}\t{cmd}\n", a.test_timeout))
        .collect();
    fs::write(results.join("plan"), plan_text)?;
    let console = work.join("console.log");
    let _ = fs::remove_file(&console);
    let suite = root().join("scripts/vm/guest-suite.sh");
    // Whole guest: every test at its limit, plus boot and slack.
    let limit = Duration::from_secs(
        a.guest_timeout
            .unwrap_or(a.test_timeout * plan.len() as u64 + 180),
    );
    let virtfs = |path: &Path, tag: &str, ro: bool| {
        format!(
            "local,path={},mount_tag={tag},security_model=none,multidevs=remap{}",
            path.display(),
            if ro { ",readonly=on" } else { "" }
        )
    };
    let mut cmd = Command::new("qemu-system-x86_64");
    // 4 GiB: the slow-syscall lab reads a 256 MiB tmpfs file into a 256 MiB buffer
    // while the overlay's upper layer is in RAM too; with 2 GiB its reader did not
    // hold the CPU in any guest.
    cmd.args(["-accel", "tcg", "-cpu", "max", "-m", "4096", "-smp", "2"])
        .args([
            "-display",
            "none",
            "-monitor",
            "none",
            "-no-reboot",
            "-nic",
            "none",
        ])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(k.dir.join("vmlinuz"))
        .arg("-initrd")
        .arg(&initrd)
        .arg("-virtfs")
        .arg(virtfs(Path::new("/"), "hostroot", true))
        .arg("-virtfs")
        .arg(virtfs(&results, "results", false))
        // The workspace again, mounted at its own path after the guest covers /tmp and
        // /run with tmpfs: a clone living there (CI's may) stays visible.
        .arg("-virtfs")
        .arg(virtfs(&root(), "repo", true))
        .arg("-append")
        .arg(format!(
            "console=ttyS0 panic=-1 quiet st_cmd={} st_repo={}",
            suite.display(),
            root().display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    println!(
        "vmtest: booting {} ({}) under qemu (TCG), {} tests, limit {} s",
        k.release,
        k.package,
        plan.len(),
        limit.as_secs()
    );
    let t0 = Instant::now();
    // SAFETY: the closure runs in the child between fork and exec and only calls
    // prctl(2), which is async-signal-safe: qemu gets SIGKILL if this process dies
    // (killed by CI, say) before it could kill qemu itself.
    unsafe {
        cmd.pre_exec(|| {
            prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
            Ok(())
        });
    }
    let mut qemu = Qemu(Some(cmd.spawn().context("starting qemu-system-x86_64")?));
    let mut seen = 0u64;
    let mut text = String::new();
    let mut problem = None;
    let mut hung = false;
    // Progress watchdog: under TCG the guest kernel can lock up (RCU stalls, soft
    // lockups with timer interrupts not delivered); then no test ever finishes and the
    // in-guest per-test timeout cannot fire either.
    let stall_limit = Duration::from_secs(a.test_timeout + 60);
    let mut last_progress = Instant::now();
    loop {
        // Follow the console: progress lines as they come.
        if let Ok(mut f) = fs::File::open(&console) {
            if f.seek(SeekFrom::Start(seen)).is_ok() {
                let mut buf = Vec::new();
                if let Ok(n) = f.read_to_end(&mut buf) {
                    seen += n as u64;
                    let chunk = String::from_utf8_lossy(&buf).into_owned();
                    for l in chunk.lines() {
                        let l = l.trim_matches(|c: char| c.is_control() || c == ' ');
                        if l.starts_with("STALLTRACE-TEST-END") || l.starts_with("guest: ") {
                            last_progress = Instant::now();
                        }
                        if l.starts_with("guest: ")
                            || l.starts_with("STALLTRACE-TEST-END")
                            || l.contains("FATAL")
                        {
                            println!("  [{}] {l}", k.release);
                        }
                    }
                    text.push_str(&chunk);
                }
            }
        }
        let Some(child) = qemu.0.as_mut() else { break };
        match child.try_wait() {
            Ok(Some(st)) => {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                qemu.0 = None;
                if !st.success() {
                    problem = Some(format!("qemu exited with {st}: {}", err.trim()));
                }
                // Read what the console got last.
                if let Ok(all) = fs::read_to_string(&console) {
                    text = all;
                }
                break;
            }
            Ok(None) => {}
            Err(e) => {
                problem = Some(format!("waiting for qemu: {e}"));
                break;
            }
        }
        if t0.elapsed() > limit {
            problem = Some(format!(
                "the guest did not finish within {} s; qemu killed",
                limit.as_secs()
            ));
            break;
        }
        if last_progress.elapsed() > stall_limit {
            let lockup: Vec<&str> = text
                .lines()
                .filter(|l| {
                    l.contains("soft lockup")
                        || l.contains("self-detected stall")
                        || l.contains("hung_task")
                })
                .take(3)
                .collect();
            problem = Some(format!(
                "the guest made no progress for {} s; qemu killed (guest kernel: {})",
                stall_limit.as_secs(),
                if lockup.is_empty() {
                    "no lockup message".to_string()
                } else {
                    lockup.join(" | ")
                }
            ));
            hung = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    drop(qemu);
    let wall_s = t0.elapsed().as_secs_f64();
    if problem.is_none() {
        if let Some(l) = text.lines().find(|l| l.contains("STALLTRACE-GUEST-FATAL")) {
            problem = Some(format!("the guest failed to boot: {}", l.trim()));
        } else if !text.contains("STALLTRACE-GUEST-DONE") {
            problem = Some(format!(
                "the guest stopped before finishing (console: {})",
                console.display()
            ));
        }
    }
    let boot_s = text
        .lines()
        .find_map(|l| l.split("guest: root ready after ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok());
    let (info_kv, facts) = matrix::read_facts(&results);
    let info = fs::read_to_string(results.join("info"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    let done = fs::read_to_string(results.join("results.tsv")).unwrap_or_default();
    let mut tests = vec![];
    for (id, _) in plan {
        let row = done.lines().find_map(|l| {
            let mut f = l.split('\t');
            (f.next() == Some(id.as_str()))
                .then(|| (f.next().unwrap_or(""), f.next().unwrap_or("")))
        });
        let (status, secs) = match row {
            Some(("0", s)) => ("PASS", s.parse().unwrap_or(0.0)),
            Some(("124" | "137", s)) => ("TIMEOUT", s.parse().unwrap_or(0.0)),
            Some((_, s)) => ("FAIL", s.parse().unwrap_or(0.0)),
            None => ("NOT RUN", 0.0),
        };
        tests.push(TestResult {
            id: id.clone(),
            status,
            secs,
        });
    }
    Ok(KernelRun {
        label: k.package.clone(),
        release: Some(k.release.clone()),
        info_kv,
        facts,
        boot_s,
        wall_s,
        problem,
        info,
        tests,
        hung,
    })
}

fn report(run: &KernelRun, results: &Path) {
    println!();
    println!(
        "vmtest: kernel {}: {} — boot {}, guest {:.0} s",
        run.name(),
        if run.failed() { "FAILED" } else { "ok" },
        run.boot_s
            .map(|b| format!("{b:.1} s"))
            .unwrap_or_else(|| "?".into()),
        run.wall_s
    );
    for i in &run.info {
        println!("  {i}");
    }
    if let Some(p) = &run.problem {
        println!("  PROBLEM: {p}");
    }
    for t in &run.tests {
        println!("  {:<8} {:>6.1} s  {}", t.status, t.secs, t.id);
    }
    for t in &run.tests {
        let log = results.join(format!("{}.log", t.id));
        let text = fs::read_to_string(&log).unwrap_or_default();
        if t.status != "PASS" && t.status != "NOT RUN" {
            println!(
                "  --- {} ({}), last lines of {}:",
                t.id,
                t.status,
                log.display()
            );
            let lines: Vec<&str> = text.lines().collect();
            for l in &lines[lines.len().saturating_sub(40)..] {
                println!("  | {l}");
            }
        } else if t.id.contains("ksoftirqd") {
            // The 2019 GitHub incident's case: show what the lab said in each run.
            for l in text.lines().filter(|l| {
                l.starts_with("== ")
                    || l.starts_with("lab: PASS")
                    || l.starts_with("lab: FAIL")
                    || l.starts_with("lab: NO STALL")
                    || l.starts_with("probes:")
                    || l.starts_with("  stall-hog")
                    || l.starts_with("  e.g.")
            }) {
                println!("  | {l}");
            }
        }
    }
}

pub fn run(a: VmtestArgs) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let path = setup_vm()?;
    let (stalltrace, exes) = build(&path)?;
    let plan = plan(&stalltrace, &exes, &a)?;
    let mut runs = vec![];
    for entry in &a.matrix() {
        let kernel = apt::resolve(&apt::Entry::parse(entry)).and_then(|(p, src)| fetch(&p, &src));
        let k = match kernel {
            Ok(k) => k,
            Err(e) => {
                runs.push((
                    KernelRun {
                        label: entry.clone(),
                        release: None,
                        info_kv: vec![],
                        facts: vec![],
                        boot_s: None,
                        wall_s: 0.0,
                        problem: Some(format!("{e:#}")),
                        info: vec![],
                        tests: vec![],
                        hung: false,
                    },
                    PathBuf::new(),
                ));
                continue;
            }
        };
        let results = root()
            .join("target/vmtest")
            .join(&k.release)
            .join("results");
        let run = || {
            boot(&k, &plan, &a).unwrap_or_else(|e| KernelRun {
                label: k.package.clone(),
                release: Some(k.release.clone()),
                info_kv: vec![],
                facts: vec![],
                boot_s: None,
                wall_s: 0.0,
                problem: Some(format!("{e:#}")),
                info: vec![],
                tests: vec![],
                hung: false,
            })
        };
        let mut r = run();
        // An emulator hang is not a test result: show it, then boot the kernel again from
        // scratch, at most twice (the 6.1-rt guest can hang at the lab test with no lockup
        // message, and passes when booted again). A third hang,
        // or any test failure, still fails.
        for retry in 1..=2 {
            if !r.hung {
                break;
            }
            report(&r, &results);
            println!(
                "vmtest: the {} guest hung under emulation; booting it again ({retry} of 2)",
                k.release
            );
            r = run();
        }
        report(&r, &results);
        runs.push((r, results));
    }
    println!();
    println!(
        "vmtest: matrix summary ({:.0} s in all)",
        t0.elapsed().as_secs_f64()
    );
    for (r, _) in &runs {
        let pass = r.tests.iter().filter(|t| t.status == "PASS").count();
        println!(
            "  {:<7} {}: {pass}/{} tests passed{}",
            if r.failed() { "FAILED" } else { "ok" },
            r.name(),
            r.tests.len(),
            r.problem
                .as_deref()
                .map(|p| format!(" — {p}"))
                .unwrap_or_default()
        );
    }
    let out = root().join("target/vmtest");
    let command = std::iter::once("cargo xtask vmtest".to_string())
        .chain(env::args().skip(2))
        .collect::<Vec<_>>()
        .join(" ");
    let all: Vec<&KernelRun> = runs.iter().map(|(r, _)| r).collect();
    match matrix::write(&out, &all, &command, t0.elapsed().as_secs_f64()) {
        Ok(()) => println!(
            "vmtest: the table is in {} (and {})",
            out.join("kernels.md").display(),
            out.join("matrix.json").display()
        ),
        Err(e) => println!("vmtest: could not write the table: {e:#}"),
    }
    if runs.iter().any(|(r, _)| r.failed()) {
        bail!("the kernel matrix failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_load_after_their_dependencies() {
        let dep = "kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n\
                   kernel/drivers/virtio/virtio_ring.ko:\n\
                   kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
                   kernel/drivers/virtio/virtio_pci_legacy_dev.ko:\n\
                   kernel/fs/9p/9p.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/fs/netfs/netfs.ko.xz\n\
                   kernel/net/9p/9pnet.ko.xz:\nkernel/fs/netfs/netfs.ko.xz:\n";
        let builtin = "kernel/fs/overlayfs/overlay.ko\n";
        let o = module_order(dep, builtin, &["virtio_pci", "9p", "overlay"]).unwrap();
        let pos = |m: &str| o.iter().position(|p| p.ends_with(m)).unwrap();
        assert!(pos("/virtio_ring.ko") < pos("/virtio.ko"));
        assert!(pos("/virtio.ko") < pos("/virtio_pci.ko"));
        assert!(pos("/virtio_pci_legacy_dev.ko") < pos("/virtio_pci.ko"));
        assert!(pos("/netfs.ko.xz") < pos("/9p.ko.xz") && pos("/9pnet.ko.xz") < pos("/9p.ko.xz"));
        assert_eq!(o.len(), 7, "{o:?}");
        assert!(
            module_order(dep, builtin, &["veth"]).is_err(),
            "missing and not built in"
        );
    }
}
