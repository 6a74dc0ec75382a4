//! A network namespace joined to the root namespace by a veth pair, deleted on drop.
//!
//! Addresses come from 10.213.N.0/24 where N is unique per namespace in this process,
//! and traffic only ever goes to the namespace side: never to an address outside.
use std::{
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT: AtomicU32 = AtomicU32::new(1);

pub struct Netns {
    /// Namespace name.
    pub name: String,
    /// veth end in the root namespace, and its address.
    pub host_if: String,
    pub host_addr: String,
    /// veth end inside the namespace, and its address (the probe target).
    pub ns_if: String,
    pub ns_addr: String,
    /// IPv6 addresses (fd00:213:N::1 host side, ::2 namespace side).
    pub host_addr6: String,
    pub ns_addr6: String,
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0]).args(&args[1..]).output().map_err(|e| format!("{args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Netns {
    /// Creates namespace `st<tag><pid>-<n>` with veth `sth<n>`/`stn<n>` (names fit
    /// IFNAMSIZ). Removes anything left with the same names first.
    pub fn create(tag: &str) -> Result<Self, String> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed) + (std::process::id() % 50) * 4;
        let n = n % 250 + 1;
        let me = Self {
            name: format!("st{tag}{}-{n}", std::process::id()),
            host_if: format!("sth{}x{n}", std::process::id() % 10000),
            host_addr: format!("10.213.{n}.1"),
            ns_if: format!("stn{}x{n}", std::process::id() % 10000),
            ns_addr: format!("10.213.{n}.2"),
            host_addr6: format!("fd00:213:{n:x}::1"),
            ns_addr6: format!("fd00:213:{n:x}::2"),
        };
        let _ = run(&["ip", "netns", "del", &me.name]);
        let _ = run(&["ip", "link", "del", &me.host_if]);
        let ns = me.name.clone();
        let steps: Vec<Vec<String>> = vec![
            vec!["ip".into(), "netns".into(), "add".into(), ns.clone()],
            vec!["ip".into(), "link".into(), "add".into(), me.host_if.clone(), "type".into(), "veth".into(), "peer".into(), "name".into(), me.ns_if.clone()],
            vec!["ip".into(), "link".into(), "set".into(), me.ns_if.clone(), "netns".into(), ns.clone()],
            vec!["ip".into(), "addr".into(), "add".into(), format!("{}/24", me.host_addr), "dev".into(), me.host_if.clone()],
            vec!["ip".into(), "-6".into(), "addr".into(), "add".into(), format!("{}/64", me.host_addr6), "dev".into(), me.host_if.clone(), "nodad".into()],
            vec!["ip".into(), "link".into(), "set".into(), me.host_if.clone(), "up".into()],
            vec!["ip".into(), "-n".into(), ns.clone(), "addr".into(), "add".into(), format!("{}/24", me.ns_addr), "dev".into(), me.ns_if.clone()],
            vec!["ip".into(), "-n".into(), ns.clone(), "-6".into(), "addr".into(), "add".into(), format!("{}/64", me.ns_addr6), "dev".into(), me.ns_if.clone(), "nodad".into()],
            vec!["ip".into(), "-n".into(), ns.clone(), "link".into(), "set".into(), me.ns_if.clone(), "up".into()],
            vec!["ip".into(), "-n".into(), ns.clone(), "link".into(), "set".into(), "lo".into(), "up".into()],
        ];
        for s in steps {
            let refs: Vec<&str> = s.iter().map(String::as_str).collect();
            run(&refs)?; // on error `me` drops and cleans up
        }
        Ok(me)
    }

    /// `ip netns exec NAME` prefix for a command run inside the namespace.
    pub fn exec(&self, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, prog]);
        c
    }

    /// Whether the namespace and the host-side link still exist.
    pub fn exists(name: &str, host_if: &str) -> bool {
        let ns = Command::new("ip").args(["netns", "list"]).output().map(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.split_whitespace().next() == Some(name))).unwrap_or(false);
        let link = Command::new("ip").args(["link", "show", host_if]).output().map(|o| o.status.success()).unwrap_or(false);
        ns || link
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace destroys its veth end, and with it the pair.
        let _ = run(&["ip", "netns", "del", &self.name]);
        let _ = run(&["ip", "link", "del", &self.host_if]);
    }
}
