//! Facts read off this machine, one helper each: clocks, small /proc and /sys files,
//! the CPUs this process may use.
use std::path::Path;

fn clock(id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock ids used exist on Linux.
    if unsafe { libc::clock_gettime(id, &mut ts) } != 0 {
        return 0;
    }
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
}

/// Boot-clock nanoseconds (CLOCK_BOOTTIME), the eBPF side's `bpf_ktime_get_boot_ns`.
pub fn boot_ns() -> u64 {
    clock(libc::CLOCK_BOOTTIME)
}

/// Wall-clock nanoseconds since the epoch.
pub fn wall_ns() -> u64 {
    clock(libc::CLOCK_REALTIME)
}

/// Wall minus boot clock now: what turns a kernel timestamp into wall-clock time.
pub fn boot_to_wall_ns() -> i64 {
    i64::try_from(wall_ns()).unwrap_or(0) - i64::try_from(boot_ns()).unwrap_or(0)
}

/// A small text file, trimmed; `None` when unreadable.
pub fn read_trim(p: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

pub fn hostname() -> String {
    read_trim("/proc/sys/kernel/hostname").unwrap_or_default()
}

/// `uname -r`.
pub fn kernel_release() -> String {
    read_trim("/proc/sys/kernel/osrelease").unwrap_or_default()
}

/// CPUs this process may run on (its affinity: `taskset -c 0 stalltrace lab` has one).
pub fn allowed_cpus() -> u32 {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size.
    let n = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return 1;
        }
        libc::CPU_COUNT(&set)
    };
    u32::try_from(n.max(1)).unwrap_or(1)
}

/// Why a file given on the command line (a BTF file, a certificate, a token) was not
/// read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{} is a {kind}, not a regular file", .path.display())]
    NotRegular {
        path: std::path::PathBuf,
        kind: &'static str,
    },
    #[error("{} is larger than the {max} bytes accepted", .path.display())]
    TooLarge { path: std::path::PathBuf, max: u64 },
}

/// Reads a regular file of at most `max` bytes: a device (`/dev/zero`), FIFO or
/// directory is refused before any byte is read, and a file that is or grows larger
/// than `max` is refused without reading past it. Symbolic links are followed (a
/// Kubernetes secret's files are links).
pub fn read_regular(path: &Path, max: u64) -> Result<Vec<u8>, ReadError> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    };
    // O_NONBLOCK: opening a FIFO must not wait for a writer before it is refused.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(io)?;
    let md = f.metadata().map_err(io)?;
    if !md.is_file() {
        return Err(ReadError::NotRegular {
            path: path.to_path_buf(),
            kind: stalltrace_analysis::output::kind(&md.file_type()),
        });
    }
    let too_large = || ReadError::TooLarge {
        path: path.to_path_buf(),
        max,
    };
    if md.len() > max {
        return Err(too_large());
    }
    let mut buf = Vec::with_capacity(usize::try_from(md.len()).unwrap_or(0));
    f.take(max.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(io)?;
    if buf.len() as u64 > max {
        return Err(too_large());
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_regular_refuses_devices_fifos_directories_and_large_files() {
        let d = stalltrace_testkit::scratch::Scratch::new("read-regular").unwrap();
        let small = d.join("small");
        std::fs::write(&small, b"token\n").unwrap();
        assert_eq!(read_regular(&small, 6).unwrap(), b"token\n");
        assert!(matches!(
            read_regular(&small, 5),
            Err(ReadError::TooLarge { max: 5, .. })
        ));
        let e = read_regular(Path::new("/dev/zero"), 1 << 20).unwrap_err();
        assert!(e.to_string().contains("character device"), "{e}");
        assert!(matches!(
            read_regular(d.path(), 10),
            Err(ReadError::NotRegular {
                kind: "directory",
                ..
            })
        ));
        let fifo = d.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo(3) on a NUL-terminated path in our scratch directory.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Returns at once (no writer): refused by type, not blocked on the open.
        assert!(matches!(
            read_regular(&fifo, 10),
            Err(ReadError::NotRegular { kind: "FIFO", .. })
        ));
        // A link to a regular file is followed.
        let link = d.join("link");
        std::os::unix::fs::symlink(&small, &link).unwrap();
        assert_eq!(read_regular(&link, 100).unwrap(), b"token\n");
    }
}
