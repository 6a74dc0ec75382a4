//! A network namespace joined to the root namespace by a veth pair, removed on drop
//! (also on panic). Used by `stalltrace lab`, the integration tests and the bench.
//!
//! Traffic only ever goes to the namespace side of the pair: an address this run
//! created, never one outside.
use std::{fs, process::Command};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum NetnsError {
    #[error("`{cmd}` failed: {why}")]
    Command { cmd: String, why: String },
    #[error("network namespace {0} already exists (another lab running, or a leftover: remove it with `ip netns del {0}`)")]
    NamespaceTaken(String),
    #[error("network interface {0} already exists (remove it with `ip link del {0}`)")]
    LinkTaken(String),
    #[error(
        "no napi thread appeared for {0} after enabling threaded NAPI (kernel older than 5.12?)"
    )]
    NoNapiThread(String),
}

pub struct Netns {
    /// Namespace name.
    pub name: String,
    /// veth end in the root namespace, and its address.
    pub host_if: String,
    pub host_addr: String,
    /// veth end inside the namespace, and its address (the probe target).
    pub ns_if: String,
    pub ns_addr: String,
    /// IPv6 addresses (host side, namespace side).
    pub host_addr6: String,
    pub ns_addr6: String,
}

pub fn run(args: &[&str]) -> Result<String, NetnsError> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| NetnsError::Command {
            cmd: args.join(" "),
            why: e.to_string(),
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NetnsError::Command {
            cmd: args.join(" "),
            why: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

pub fn namespace_exists(name: &str) -> bool {
    fs::metadata(format!("/run/netns/{name}")).is_ok()
}

pub fn link_exists(name: &str) -> bool {
    fs::metadata(format!("/sys/class/net/{name}")).is_ok()
}

impl Netns {
    /// Creates namespace `name` with veth `host_if` (10.213.`subnet`.1) and `ns_if`
    /// (10.213.`subnet`.2 inside). Refuses names already taken rather than touching
    /// what someone else made.
    pub fn create(name: &str, host_if: &str, ns_if: &str, subnet: u8) -> Result<Self, NetnsError> {
        if namespace_exists(name) {
            return Err(NetnsError::NamespaceTaken(name.into()));
        }
        for l in [host_if, ns_if] {
            if link_exists(l) {
                return Err(NetnsError::LinkTaken(l.into()));
            }
        }
        run(&["ip", "netns", "add", name])?;
        // From here on, dropping `me` removes whatever was made.
        let me = Self {
            name: name.into(),
            host_if: host_if.into(),
            host_addr: format!("10.213.{subnet}.1"),
            ns_if: ns_if.into(),
            ns_addr: format!("10.213.{subnet}.2"),
            host_addr6: format!("fd00:213:{subnet:x}::1"),
            ns_addr6: format!("fd00:213:{subnet:x}::2"),
        };
        let (h4, n4) = (format!("{}/24", me.host_addr), format!("{}/24", me.ns_addr));
        let (h6, n6) = (
            format!("{}/64", me.host_addr6),
            format!("{}/64", me.ns_addr6),
        );
        run(&[
            "ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if,
        ])?;
        run(&["ip", "link", "set", ns_if, "netns", name])?;
        run(&["ip", "addr", "add", &h4, "dev", host_if])?;
        run(&["ip", "-6", "addr", "add", &h6, "dev", host_if, "nodad"])?;
        run(&["ip", "link", "set", host_if, "up"])?;
        run(&["ip", "-n", name, "addr", "add", &n4, "dev", ns_if])?;
        run(&[
            "ip", "-n", name, "-6", "addr", "add", &n6, "dev", ns_if, "nodad",
        ])?;
        run(&["ip", "-n", name, "link", "set", ns_if, "up"])?;
        run(&["ip", "-n", name, "link", "set", "lo", "up"])?;
        Ok(me)
    }

    /// Test namespaces: unique names per process and call, subnet 10.213.(1..=200).
    pub fn create_unique(tag: &str) -> Result<Self, NetnsError> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let n = (std::process::id().wrapping_mul(7).wrapping_add(k)) % 200 + 1;
        Self::create(
            &format!("st{tag}{}-{k}", std::process::id()),
            &format!("sh{n}"),
            &format!("sn{n}"),
            n as u8,
        )
    }

    /// Gives the namespace side a NAPI instance: veth needs GRO on its receiving end for
    /// one, and TSO off on the sending end or it bypasses NAPI. Packets sent into the
    /// namespace are then polled in batches on the sender's CPU.
    pub fn napi(&self) -> Result<(), NetnsError> {
        run(&[
            "ip",
            "netns",
            "exec",
            &self.name,
            "ethtool",
            "-K",
            &self.ns_if,
            "gro",
            "on",
        ])?;
        run(&["ethtool", "-K", &self.host_if, "tso", "off"]).map(|_| ())
    }

    /// Makes a `napi/<ns_if>-<id>` kthread do RX for the namespace side, pinned to
    /// `cpu`; returns its pid.
    pub fn threaded_napi(&self, cpu: u32) -> Result<u32, NetnsError> {
        self.napi()?;
        let threaded = format!("echo 1 > /sys/class/net/{}/threaded", self.ns_if);
        run(&["ip", "netns", "exec", &self.name, "sh", "-c", &threaded])?;
        let prefix = format!("napi/{}-", self.ns_if);
        for _ in 0..50 {
            if let Some(pid) = find_thread(&prefix) {
                run(&["taskset", "-pc", &cpu.to_string(), &pid.to_string()])?;
                return Ok(pid);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Err(NetnsError::NoNapiThread(self.ns_if.clone()))
    }

    /// Steers the namespace side's RX processing (RPS) to `cpu`.
    pub fn rps_to(&self, cpu: u32) -> Result<(), NetnsError> {
        let mask = format!("{:x}", 1u64 << cpu);
        let cmd = format!(
            "echo {mask} > /sys/class/net/{}/queues/rx-0/rps_cpus",
            self.ns_if
        );
        run(&["ip", "netns", "exec", &self.name, "sh", "-c", &cmd]).map(|_| ())
    }

    /// Whether the namespace or the host-side link still exist.
    pub fn exists(name: &str, host_if: &str) -> bool {
        namespace_exists(name) || link_exists(host_if)
    }
}

/// First live process whose comm starts with `prefix`. Zombies are dead: here PID 1
/// (the VM's init) reaps orphans late, and a killed culprit lingers as one for a while.
pub fn find_thread(prefix: &str) -> Option<u32> {
    let rd = fs::read_dir("/proc").ok()?;
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state …`; comm may hold spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let zombie = stat[close + 1..].trim_start().starts_with('Z');
        if comm.starts_with(prefix) && !zombie {
            return Some(pid);
        }
    }
    None
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace destroys its veth end and with it the pair.
        let _ = run(&["ip", "netns", "del", &self.name]);
        if link_exists(&self.host_if) {
            let _ = run(&["ip", "link", "del", &self.host_if]);
        }
    }
}
