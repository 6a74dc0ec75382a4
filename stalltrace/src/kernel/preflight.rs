//! Checks before loading anything, each failing with one actionable line and its
//! exit code: privileges, BTF, kprobe support. (No tracefs: every hook is a raw
//! tracepoint or a perf-PMU kprobe, attached without it.)
use std::{fs, path::Path};

use crate::{
    exit::{CodedError, ExitCode},
    host::{effective_caps, CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN},
};

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
        format!(
            "running as root but without CAP_BPF+CAP_PERFMON or CAP_SYS_ADMIN (CapEff={caps:016x})"
        )
    };
    Err(CodedError::new(
        ExitCode::Privileges,
        format!("{what} needs root or CAP_BPF+CAP_PERFMON: {why}; run it with sudo"),
    ))
}

/// The kernel's BTF: `path` when given (`--btf`, e.g. a BTFHub file for a kernel built
/// without CONFIG_DEBUG_INFO_BTF), else the kernel's own.
pub fn check_btf(path: Option<&Path>) -> Result<std::path::PathBuf, CodedError> {
    let p = path
        .map(Path::to_path_buf)
        .unwrap_or_else(|| super::offsets::VMLINUX_BTF.into());
    if let (Some(given), Ok(md)) = (path, fs::metadata(&p)) {
        // A device, FIFO or directory, or a file far larger than any kernel's BTF:
        // refused before a byte is read.
        let why = if !md.is_file() {
            Some(format!(
                "is a {}, not a BTF file",
                stalltrace_analysis::output::kind(&md.file_type())
            ))
        } else if md.len() > super::offsets::MAX_BTF_BYTES {
            Some(format!(
                "is {} bytes, more than the {} MiB a BTF file may have",
                md.len(),
                super::offsets::MAX_BTF_BYTES >> 20
            ))
        } else {
            None
        };
        if let Some(why) = why {
            return Err(CodedError::new(
                ExitCode::BadInput,
                format!("--btf {}: {why}", given.display()),
            ));
        }
    }
    if p.exists() {
        return Ok(p);
    }
    let why = match path {
        Some(_) => format!("no BTF file at {}", p.display()),
        None => format!(
            "no kernel BTF at {}: the kernel was built without CONFIG_DEBUG_INFO_BTF; \
             pass a BTF file for this kernel with --btf (e.g. from BTFHub)",
            p.display()
        ),
    };
    Err(CodedError::new(ExitCode::KernelFeature, why))
}

/// Whether kprobes can be attached (through the perf kprobe PMU, as aya does), and if
/// not, why.
pub fn kprobe_support() -> Result<(), String> {
    if Path::new("/sys/bus/event_source/devices/kprobe").exists() {
        Ok(())
    } else {
        Err(
            "this kernel has no kprobe support (CONFIG_KPROBES is off: no \
             /sys/bus/event_source/devices/kprobe)"
                .into(),
        )
    }
}

/// The first fields of `struct perf_event_attr` (PERF_ATTR_SIZE_VER0, 64 bytes),
/// enough to open a software counter.
#[repr(C)]
struct PerfAttrV0 {
    type_: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    /// Bit 0: disabled.
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

const PERF_TYPE_SOFTWARE: u32 = 1;
const PERF_COUNT_SW_CPU_CLOCK: u64 = 0;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;

/// `--stacks` needs a software cpu-clock event per CPU: opens one (disabled) on CPU 0
/// and closes it, so a missing perf subsystem is said before anything is loaded.
pub fn check_perf_cpu_clock() -> Result<(), CodedError> {
    let attr = PerfAttrV0 {
        type_: PERF_TYPE_SOFTWARE,
        size: std::mem::size_of::<PerfAttrV0>() as u32,
        config: PERF_COUNT_SW_CPU_CLOCK,
        sample_period: 0,
        sample_type: 0,
        read_format: 0,
        flags: 1,
        wakeup_events: 0,
        bp_type: 0,
        config1: 0,
    };
    // SAFETY: perf_event_open(2) with a valid, fully initialised attr of the size it
    // declares; pid -1 + cpu 0 = every task on CPU 0; no group; the fd is closed below.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const PerfAttrV0,
            -1i32,
            0i32,
            -1i32,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        let hint = match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::EOPNOTSUPP) => {
                "this kernel has no perf events (CONFIG_PERF_EVENTS)"
            }
            Some(libc::EACCES) | Some(libc::EPERM) => {
                "not allowed: needs CAP_PERFMON (or root) and kernel.perf_event_paranoid <= 2"
            }
            _ => "perf_event_open failed",
        };
        return Err(CodedError::new(
            ExitCode::KernelFeature,
            format!("--stacks needs a software cpu-clock perf event per CPU: {hint} ({e}); run without --stacks"),
        ));
    }
    // SAFETY: closing the fd we just opened.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

/// Raises RLIMIT_MEMLOCK for kernels before 5.11; later kernels charge BPF memory to
/// the cgroup, so a failure here is a note, not an error.
pub fn raise_memlock() -> Option<String> {
    let rl = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
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
