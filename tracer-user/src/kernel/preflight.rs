//! Checks before loading anything, each failing with one actionable line and its
//! exit code: privileges, tracefs, BTF, kprobe support.
use std::{
    ffi::CString,
    fs,
    path::{Path, PathBuf},
};

use crate::exit::{CodedError, ExitCode};

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Effective capability bits of this process (from /proc/self/status).
pub fn effective_caps() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Tracing needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN on kernels before 5.8).
pub fn check_privileges(what: &str) -> Result<(), CodedError> {
    let caps = effective_caps();
    let has = |c: u32| caps & (1u64 << c) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let why = if uid != 0 {
        "not running as root".to_string()
    } else {
        format!("running as root but without CAP_BPF+CAP_PERFMON or CAP_SYS_ADMIN (CapEff={caps:016x})")
    };
    Err(CodedError::new(
        ExitCode::Privileges,
        format!("{what} needs root or CAP_BPF+CAP_PERFMON: {why}; run it with sudo"),
    ))
}

/// Where tracefs is, and whether this run mounted it (and so should unmount it).
pub struct Tracefs {
    pub path: PathBuf,
    pub mounted_by_us: bool,
}

impl Tracefs {
    /// Finds tracefs, mounting it at /sys/kernel/tracing when it is not mounted.
    pub fn find_or_mount() -> Result<Self, CodedError> {
        for p in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
            if Path::new(p).join("events").is_dir() {
                return Ok(Self { path: p.into(), mounted_by_us: false });
            }
        }
        let target = "/sys/kernel/tracing";
        let (src, dst, fstype) = (c"nodev", CString::new(target).unwrap_or_default(), c"tracefs");
        // SAFETY: valid NUL-terminated strings that outlive the call; null data is allowed.
        let rc = unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
        if rc == 0 && Path::new(target).join("events").is_dir() {
            log::info!("mounted tracefs at {target} for this run");
            return Ok(Self { path: target.into(), mounted_by_us: true });
        }
        let err = std::io::Error::last_os_error();
        Err(CodedError::new(
            ExitCode::KernelFeature,
            format!(
                "tracefs is not mounted and mounting it failed ({err}); mount it with \
                 `mount -t tracefs nodev /sys/kernel/tracing` (kernel needs CONFIG_TRACING)"
            ),
        ))
    }

    /// Unmounts tracefs if this run mounted it (lazily: attached programs keep working).
    pub fn release(&mut self) {
        if !self.mounted_by_us {
            return;
        }
        if let Ok(p) = CString::new(self.path.as_os_str().as_encoded_bytes()) {
            // SAFETY: valid NUL-terminated path.
            unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
        }
        self.mounted_by_us = false;
    }
}

impl Drop for Tracefs {
    fn drop(&mut self) {
        self.release();
    }
}

pub fn check_btf() -> Result<(), CodedError> {
    if Path::new(super::offsets::VMLINUX_BTF).exists() {
        return Ok(());
    }
    Err(CodedError::new(
        ExitCode::KernelFeature,
        format!(
            "no kernel BTF at {}: the kernel was built without CONFIG_DEBUG_INFO_BTF, and \
             stalltrace reads struct offsets from it",
            super::offsets::VMLINUX_BTF
        ),
    ))
}

/// Whether kprobes can be attached, and if not, why.
pub fn kprobe_support(tracefs: &Path) -> Result<(), String> {
    if Path::new("/sys/bus/event_source/devices/kprobe").exists()
        || tracefs.join("kprobe_events").exists()
    {
        Ok(())
    } else {
        Err("this kernel has no kprobe support (CONFIG_KPROBES is off: no \
             /sys/bus/event_source/devices/kprobe, no kprobe_events in tracefs)"
            .into())
    }
}

/// Raises RLIMIT_MEMLOCK for kernels before 5.11; later kernels charge BPF memory to
/// the cgroup, so a failure here is a note, not an error.
pub fn raise_memlock() -> Option<String> {
    let rl = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: valid pointer to an initialised rlimit.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rl) };
    if rc != 0 {
        Some(format!(
            "could not raise RLIMIT_MEMLOCK ({}); fine on kernels >= 5.11",
            std::io::Error::last_os_error()
        ))
    } else {
        None
    }
}
