//! Creating the files the tools write (dumps, Perfetto traces, the flight recorder's
//! episodes) without ever destroying something else: a new file is made with
//! `O_CREAT|O_EXCL|O_NOFOLLOW`, mode 0600 (a dump names other users' tasks and files).
//! An existing path is replaced only with `force`, and only when it is a regular file or
//! a symbolic link: the path itself is unlinked (never a link's target, never written
//! through), then a new file made. A directory, device, FIFO or socket is refused with
//! its type named, `force` or not: `-o /dev/null --force` must not delete `/dev/null`.
use std::{
    fs::{File, FileType, OpenOptions},
    io,
    os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The path exists and `force` was not given.
    #[error("{} exists; choose another path or pass --force to replace it", .path.display())]
    Exists { path: PathBuf },
    /// The path is something other than a regular file or a symbolic link.
    #[error(
        "{} is a {kind}, not a regular file: refused (--force replaces only a regular file or a symbolic link)",
        .path.display()
    )]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: io::Error },
}

impl OutputError {
    /// A mistake on the command line (exit 2), as opposed to the system failing.
    pub fn is_usage(&self) -> bool {
        matches!(self, Self::Exists { .. } | Self::NotRegular { .. })
    }
}

/// The type of a file, in words.
pub fn kind(t: &FileType) -> &'static str {
    if t.is_file() {
        "regular file"
    } else if t.is_dir() {
        "directory"
    } else if t.is_symlink() {
        "symbolic link"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

/// What is at `path` now, not following a final symbolic link: `None` if nothing.
fn existing(path: &Path) -> Result<Option<FileType>, OutputError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m.file_type())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(OutputError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Whether [`create`] would accept `path`, checked before any work is done (a
/// recording attaches its programs only once the output is known to be acceptable).
pub fn check(path: &Path, force: bool) -> Result<(), OutputError> {
    match existing(path)? {
        None => Ok(()),
        Some(t) if !(t.is_file() || t.is_symlink()) => Err(OutputError::NotRegular {
            path: path.to_path_buf(),
            kind: kind(&t),
        }),
        Some(_) if !force => Err(OutputError::Exists {
            path: path.to_path_buf(),
        }),
        Some(_) => Ok(()),
    }
}

/// Opens a new file at `path` for writing, with `O_EXCL|O_NOFOLLOW` and mode 0600.
pub fn create_new(path: &Path) -> Result<File, OutputError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| match existing(path) {
            // Made by someone else in between: judged like an existing path.
            Ok(Some(t)) if source.kind() == io::ErrorKind::AlreadyExists => {
                if t.is_file() || t.is_symlink() {
                    OutputError::Exists {
                        path: path.to_path_buf(),
                    }
                } else {
                    OutputError::NotRegular {
                        path: path.to_path_buf(),
                        kind: kind(&t),
                    }
                }
            }
            _ => OutputError::Io {
                path: path.to_path_buf(),
                source,
            },
        })
}

/// Creates `path` as a new private file: see the module's rules.
pub fn create(path: &Path, force: bool) -> Result<File, OutputError> {
    check(path, force)?;
    if force && existing(path)?.is_some() {
        // A regular file or a link, checked just above: the name goes, not what it
        // points at. Whatever appears at the name before the O_EXCL open below is
        // refused by it.
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(OutputError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
    create_new(path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{symlink, PermissionsExt as _};

    use stalltrace_testkit::scratch::Scratch;

    use super::*;

    #[test]
    fn a_new_path_is_made_private_and_an_existing_one_needs_force() {
        let d = Scratch::new("output-new").unwrap();
        let p = d.join("out");
        drop(create(&p, false).unwrap());
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let e = create(&p, false).unwrap_err();
        assert!(matches!(e, OutputError::Exists { .. }), "{e}");
        assert!(e.is_usage());
        std::fs::write(&p, "old").unwrap();
        drop(create(&p, true).unwrap());
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "",
            "a new, empty file"
        );
    }

    #[test]
    fn force_replaces_a_link_itself_never_its_target() {
        let d = Scratch::new("output-link").unwrap();
        let target = d.join("target");
        std::fs::write(&target, "precious").unwrap();
        let link = d.join("link");
        symlink(&target, &link).unwrap();
        assert!(matches!(
            create(&link, false).unwrap_err(),
            OutputError::Exists { .. }
        ));
        drop(create(&link, true).unwrap());
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_file());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
        // A dangling link: nothing is created through it.
        let dangling = d.join("dangling");
        symlink(d.join("not-yet"), &dangling).unwrap();
        assert!(create(&dangling, false).is_err());
        assert!(create_new(&dangling).is_err());
        assert!(!d.join("not-yet").exists());
    }

    #[test]
    fn directories_fifos_and_sockets_are_refused_by_type_even_with_force() {
        let d = Scratch::new("output-types").unwrap();
        let dir = d.join("dir");
        std::fs::create_dir(&dir).unwrap();
        let fifo = d.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo(3) on a NUL-terminated path in our scratch directory.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let sock = d.join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        for (p, want) in [(&dir, "directory"), (&fifo, "FIFO"), (&sock, "socket")] {
            for force in [false, true] {
                let e = create(p, force).unwrap_err();
                assert!(
                    matches!(e, OutputError::NotRegular { kind, .. } if kind == want),
                    "{}: {e}",
                    p.display()
                );
                assert!(e.to_string().contains(want), "{e}");
                assert!(e.is_usage());
            }
        }
        let t = |p: &Path| std::fs::symlink_metadata(p).unwrap().file_type();
        assert!(t(&dir).is_dir() && t(&fifo).is_fifo() && t(&sock).is_socket());
    }
}
