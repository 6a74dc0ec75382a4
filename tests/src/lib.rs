//! What the root/kernel tests share beyond `stalltrace_testkit`: the stalltrace binary
//! under test, a recorder child, and the checks that a run left the machine clean.
//!
//! Every test that needs root calls [`require_root`]: outside CI it skips with a
//! message; under CI it fails, so CI never passes by skipping.

use std::{
    path::PathBuf,
    process::{Command, Output},
};

pub use stalltrace::lab::netns::{find_thread, Netns};
pub use stalltrace_testkit::ci::{is_ci, require, require_root};

/// The stalltrace binary under test: $STALLTRACE_BIN, else the workspace's debug build.
pub fn stalltrace_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("STALLTRACE_BIN") {
        return PathBuf::from(p);
    }
    let ws = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or(ws.join("target"));
    let p = target.join("debug").join("stalltrace");
    assert!(
        p.exists(),
        "{} is missing: build it first (cargo build -p stalltrace) or set STALLTRACE_BIN",
        p.display()
    );
    p
}

/// Runs a command to completion, panicking with its output when it fails.
pub fn sh(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Our BPF programs still loaded. The kernel frees a program after its last fd and
/// link close, once an RCU grace period has passed: well under a second on a quiet
/// machine, seconds under heavy load. So this waits up to 15 s for them to go; a real
/// leak (a process still holding them, or a pin) does not go away.
pub fn our_bpf_programs() -> Vec<String> {
    let t0 = std::time::Instant::now();
    loop {
        let left = our_bpf_programs_now();
        if left.is_empty() || t0.elapsed() > std::time::Duration::from_secs(15) {
            return left;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Our BPF programs loaded right now, as `id name (owner pids)` (bpftool).
pub fn our_bpf_programs_now() -> Vec<String> {
    // bpftool prints the full name from BTF; without BTF the kernel's 15 bytes.
    let ours: Vec<String> = stalltrace::kernel::loader::PROGRAMS
        .iter()
        .flat_map(|p| [p.name.to_string(), p.name.chars().take(15).collect()])
        .collect();
    let out = match Command::new("bpftool").args(["prog", "show"]).output() {
        Ok(o) => o,
        Err(e) => panic!("bpftool is needed to check for leftover programs: {e}"),
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut found = vec![];
    let mut cur: Option<String> = None;
    for l in text.lines() {
        if !l.starts_with(char::is_whitespace) {
            if let Some(c) = cur.take() {
                found.push(c);
            }
            let kind_ok = l.contains(": tracepoint")
                || l.contains(": raw_tracepoint")
                || l.contains(": kprobe")
                || l.contains(": perf_event");
            if kind_ok && ours.iter().any(|n| l.contains(&format!("name {n} "))) {
                let id = l.split(':').next().unwrap_or("");
                let name = l
                    .split("name ")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .unwrap_or("");
                cur = Some(format!("{id} {name}"));
            }
        } else if let (Some(c), Some(p)) = (cur.as_mut(), l.trim().strip_prefix("pids ")) {
            c.push_str(&format!(" (owner {p})"));
        }
    }
    if let Some(c) = cur {
        found.push(c);
    }
    found
}

/// A `stalltrace record` child: started with the programs attached (its dump has its
/// header), killed on drop if a test panics before it exits.
pub struct Recorder {
    child: Option<std::process::Child>,
}

impl Recorder {
    /// Runs `stalltrace record ARGS -o DUMP` and waits (30 s at most) until it records.
    pub fn start(args: &[&str], dump: &std::path::Path) -> Self {
        let child = Command::new(stalltrace_bin())
            .arg("record")
            .args(args)
            .arg("-o")
            .arg(dump)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawning stalltrace record");
        let me = Self { child: Some(child) };
        let t0 = std::time::Instant::now();
        while !std::fs::read_to_string(dump)
            .map(|s| s.contains("\"type\":\"header\""))
            .unwrap_or(false)
        {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(30),
                "recorder did not start within 30 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        me
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// Whether it ended by itself (not reaped yet: `finish` collects its output).
    pub fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    /// Sends `sig` and waits at most `limit` (then kills it and panics): (code, stdout,
    /// stderr).
    pub fn finish_within(mut self, sig: i32, limit: std::time::Duration) -> (i32, String, String) {
        let c = self.child.as_mut().expect("recorder running");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(c.id() as i32, sig) };
        let t0 = std::time::Instant::now();
        while c.try_wait().expect("waiting for the recorder").is_none() {
            assert!(
                t0.elapsed() < limit,
                "recorder did not exit within {limit:?} of signal {sig}"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        self.finish(None)
    }

    /// Sends `sig` (if any) and waits (30 s at most) for the exit: (code, stdout, stderr).
    pub fn finish(mut self, sig: Option<i32>) -> (i32, String, String) {
        let mut c = self.child.take().expect("recorder running");
        if let Some(sig) = sig {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
        let t0 = std::time::Instant::now();
        while c.try_wait().expect("waiting for the recorder").is_none() {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(60),
                "recorder did not exit"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let out = c.wait_with_output().expect("recorder output");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A fresh directory under the system temp dir for one test's files.
pub fn tempdir(tag: &str) -> std::path::PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let d = std::env::temp_dir().join(format!(
        "stalltrace-test-{tag}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&d).expect("creating a temp dir");
    d
}

/// Nothing the lab makes is left: namespace, veth, culprit, its file, BPF programs.
pub fn assert_machine_clean(ctx: &str) {
    let ns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let ns = String::from_utf8_lossy(&ns.stdout).into_owned();
    assert!(
        !ns.lines().any(|l| l.starts_with("stlab")),
        "{ctx}: lab namespace left: {ns}"
    );
    assert!(!Netns::exists("stlab", "stl-h"), "{ctx}: lab veth left");
    assert!(
        find_thread("stall-hog").is_none() && find_thread("stat-reader").is_none(),
        "{ctx}: culprit left running"
    );
    assert!(
        find_thread("hping3").is_none() && find_flood().is_none(),
        "{ctx}: the ksoftirqd scenario's flood left running"
    );
    for s in ["netdev_budget", "dev_weight"] {
        let v = std::fs::read_to_string(format!("/proc/sys/net/core/{s}")).unwrap_or_default();
        assert_ne!(
            v.trim(),
            "1",
            "{ctx}: net.core.{s} left lowered by the ksoftirqd lab"
        );
    }
    assert!(
        !std::path::Path::new("/run/stalltrace/lab.json").exists(),
        "{ctx}: the lab's journal is left (the lab did not finish its clean-up)"
    );
    assert!(
        !std::path::Path::new("/run/stalltrace").exists(),
        "{ctx}: /run/stalltrace is left (the lab removes its lock and directory at its end)"
    );
    let left = our_bpf_programs();
    assert!(left.is_empty(), "{ctx}: programs left: {left:?}");
    let shm: Vec<_> = std::fs::read_dir("/dev/shm")
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with("stalltrace-lab")
                })
                .map(|e| e.file_name())
                .collect()
        })
        .unwrap_or_default();
    assert!(shm.is_empty(), "{ctx}: lab file left in /dev/shm: {shm:?}");
}

/// A `stalltrace flood` process still running (its comm is the binary's name).
fn find_flood() -> Option<u32> {
    let rd = std::fs::read_dir("/proc").ok()?;
    for e in rd.flatten() {
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
        if args.len() > 1 && args[0].ends_with(b"stalltrace") && args[1] == b"flood" {
            return e.file_name().to_str().and_then(|s| s.parse().ok());
        }
    }
    None
}

/// An HTTP/1.0 GET on localhost: (status, body); `None` when nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// Polls `ok` every 200 ms; fails the test saying `what` after `limit`.
pub fn wait_until(what: &str, limit: std::time::Duration, mut ok: impl FnMut() -> bool) {
    let t0 = std::time::Instant::now();
    while !ok() {
        assert!(t0.elapsed() < limit, "{what} within {limit:?}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// A localhost TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free localhost port")
}

/// A kubelet-shaped pod cgroup (systemd driver, containerd) on the v2 hierarchy, made
/// for one test and removed on drop, children first up to `kubepods.slice`.
pub struct PodCgroup(pub PathBuf);

impl PodCgroup {
    /// `qos` is the pod's QoS class as the kubelet spells it in slices (`besteffort`,
    /// `burstable`); `uid` the pod's UID, `cid` the container's id.
    pub fn make(qos: &str, uid: &str, cid: &str) -> Self {
        let uid_ = uid.replace('-', "_");
        let path = std::path::Path::new("/sys/fs/cgroup/unified")
            .join(format!(
                "kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{uid_}.slice"
            ))
            .join(format!("cri-containerd-{cid}.scope"));
        std::fs::create_dir_all(&path).expect("making the pod's cgroup");
        Self(path)
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        let mut p = self.0.clone();
        while p.file_name().is_some_and(|n| n != "unified") {
            let _ = std::fs::remove_dir(&p);
            p = match p.parent() {
                Some(q) => q.to_path_buf(),
                None => break,
            };
        }
    }
}
