//! Appends records to a dump, one JSON object per line. The live recorder flushes
//! every ~100 ms, so a killed recorder leaves every complete line readable.
use std::{
    fs::{File, OpenOptions},
    io::{self, BufWriter, Write},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use super::schema::Record;
use crate::analyze::Sink;
use crate::correlate::Report;

pub struct DumpWriter {
    path: PathBuf,
    out: BufWriter<File>,
    lines: u64,
}

impl DumpWriter {
    /// Creates `path`, readable by its owner only (a dump names other users' tasks and
    /// files). Never follows or writes through an existing file or symlink: without
    /// `force` an existing path is an `AlreadyExists` error; with it, the path itself
    /// is unlinked first and a new file made.
    pub fn create(path: &Path, force: bool) -> io::Result<Self> {
        if force {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        Ok(Self::new(path, file))
    }

    /// A writer over an already open file (the flight recorder's).
    pub fn new(path: &Path, file: File) -> Self {
        Self {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(1 << 16, file),
            lines: 0,
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
        self.out.get_ref().sync_all()
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
