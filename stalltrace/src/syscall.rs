//! Syscalls in words: a number's name, and the file behind an fd argument. Below
//! `enrich` and `samples`, which both name what a task was doing.
use std::fs;

/// Syscalls whose first argument is a file descriptor (x86_64 names).
const FD_SYSCALLS: &[&str] = &[
    "read",
    "write",
    "pread64",
    "pwrite64",
    "readv",
    "writev",
    "preadv",
    "pwritev",
    "preadv2",
    "pwritev2",
    "ioctl",
    "fstat",
    "newfstatat",
    "lseek",
    "getdents64",
    "fsync",
    "fdatasync",
    "sendmsg",
    "recvmsg",
    "sendto",
    "recvfrom",
    "splice",
    "copy_file_range",
    "fallocate",
    "ftruncate",
    "flock",
    "fcntl",
    "close",
    "sendfile",
];

pub fn syscall_name(nr: i64) -> String {
    usize::try_from(nr)
        .ok()
        .and_then(syscalls::Sysno::new)
        .map(|s| s.name().to_string())
        .unwrap_or_else(|| format!("syscall_{nr}"))
}

/// Whether the syscall's first argument is a file descriptor.
pub fn takes_fd(name: &str) -> bool {
    FD_SYSCALLS.contains(&name)
}

/// The file behind a syscall's fd argument, from /proc while the task lives.
pub fn fd_path(pid: u32, name: &str, arg0: u64) -> Option<String> {
    if !takes_fd(name) || arg0 > i32::MAX as u64 {
        return None;
    }
    fs::read_link(format!("/proc/{pid}/fd/{arg0}"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}
