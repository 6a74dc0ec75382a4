//! Appends records to a dump, one JSON object per line. Flushed at every record so a
//! killed recorder leaves every complete line readable.
use std::{
    fs::{File, OpenOptions},
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
};

use super::schema::Record;

pub struct DumpWriter {
    path: PathBuf,
    out: BufWriter<File>,
    lines: u64,
}

impl DumpWriter {
    /// Creates `path`; fails if it exists unless `force`.
    pub fn create(path: &Path, force: bool) -> io::Result<Self> {
        let mut opts = OpenOptions::new();
        opts.write(true);
        if force {
            opts.create(true).truncate(true);
        } else {
            opts.create_new(true);
        }
        let file = opts.open(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(1 << 16, file),
            lines: 0,
        })
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
    pub fn finish(mut self) -> io::Result<()> {
        self.out.flush()?;
        self.out.get_ref().sync_all()
    }
}
