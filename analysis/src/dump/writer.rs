//! Appends records to a dump, one JSON object per line. The live recorder flushes
//! every ~100 ms, so a killed recorder leaves every complete line readable.
use std::{
    fs::File,
    io::{self, BufWriter, Write},
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use super::schema::Record;
use crate::analyze::Sink;
use crate::correlate::Report;
use crate::output::{self, OutputError};

pub struct DumpWriter {
    path: PathBuf,
    out: BufWriter<File>,
    lines: u64,
    /// fsync applies (a pipe or terminal on standard output cannot be synced).
    syncable: bool,
}

impl DumpWriter {
    /// Creates `path`, readable by its owner only (a dump names other users' tasks and
    /// files), by [`output::create`]'s rules: never through a symlink, never over a
    /// device, FIFO, socket or directory; an existing regular file or link is replaced
    /// (unlinked, then made anew) only with `force`.
    pub fn create(path: &Path, force: bool) -> Result<Self, OutputError> {
        Ok(Self::new(path, output::create(path, force)?))
    }

    /// A writer to standard output (`-o -`): a duplicate of fd 1, never synced.
    pub fn stdout() -> io::Result<Self> {
        let fd = io::stdout().as_fd().try_clone_to_owned()?;
        let mut w = Self::new(Path::new("-"), File::from(fd));
        w.syncable = false;
        Ok(w)
    }

    /// A writer over an already open file (the flight recorder's).
    pub fn new(path: &Path, file: File) -> Self {
        Self {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(1 << 16, file),
            lines: 0,
            syncable: true,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Writes one record; buffered (call [`flush`](Self::flush) at batch ends).
    pub fn write(&mut self, rec: &Record) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, rec).map_err(io::Error::other)?;
        self.out.write_all(b"\n")?;
        self.lines += 1;
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Flushes and syncs to disk.
    pub fn sync(&mut self) -> io::Result<()> {
        self.out.flush()?;
        if self.syncable {
            self.out.get_ref().sync_all()?;
        }
        Ok(())
    }
}

impl Sink for DumpWriter {
    fn what(&self) -> &str {
        "the dump"
    }
    fn record(&mut self, rec: &Record) -> io::Result<()> {
        self.write(rec)
    }
    fn flush(&mut self) -> io::Result<()> {
        DumpWriter::flush(self)
    }
    fn finish(&mut self, _report: &Report) -> io::Result<()> {
        self.sync()
    }
}
