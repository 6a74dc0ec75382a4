//! The flight recorder: `watch` keeps the last seconds of records in memory (bounded by
//! time, count and bytes) and, when an episode closes, writes that episode with its
//! context as one dump that `stalltrace analyze` reads. Files rotate by count and by
//! total size; nothing else touches the disk.
use std::{
    collections::VecDeque,
    fs, io,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use stalltrace_analysis::{
    analyze::Sink,
    correlate::Episode,
    dump::{Counts, DumpWriter, Footer, Header, Record},
};

/// Records held at most, and how far back (kernel clock) they go.
const MAX_RECORDS: usize = 200_000;
const MAX_HELD_BYTES: usize = 64 << 20;
const KEEP_NS: u64 = 70_000_000_000;
/// File names: `stalltrace-episode-<wall time>-cpu<N>-<id>.jsonl`.
const PREFIX: &str = "stalltrace-episode-";

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_files: usize,
    pub max_bytes: u64,
    /// Records kept before and after each episode.
    pub context_ns: u64,
}

pub struct FlightRecorder {
    dir: PathBuf,
    limits: Limits,
    header: Option<Header>,
    /// (kernel time, record, approximate bytes), oldest first.
    recent: VecDeque<(u64, Record, usize)>,
    held_bytes: usize,
    newest: u64,
    pub written: u64,
    /// The last write error, said once.
    pub last_error: Option<String>,
    /// Episodes closed whose after-context has not passed yet.
    pending: Vec<Episode>,
}

/// The kernel time a record is about, when it has one.
fn when(r: &Record) -> Option<u64> {
    match r {
        Record::Packet(p) => Some(p.ts_ns),
        Record::Wait(w) => Some(w.ts_ns),
        Record::Syscall(s) => Some(s.ts_ns),
        Record::Probe(p) => p.sent_ns,
        Record::Header(_) | Record::Footer(_) => None,
    }
}

impl FlightRecorder {
    /// `dir` is made (0700) if missing.
    pub fn new(dir: &Path, limits: Limits) -> io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt as _;
        match fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(dir)
        {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            limits,
            header: None,
            recent: VecDeque::new(),
            held_bytes: 0,
            newest: 0,
            written: 0,
            last_error: None,
            pending: vec![],
        })
    }

    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    fn forget_old(&mut self) {
        let floor = self
            .newest
            .saturating_sub(KEEP_NS.max(self.limits.context_ns * 2));
        while let Some((t, _, b)) = self.recent.front() {
            let over = self.recent.len() > MAX_RECORDS || self.held_bytes > MAX_HELD_BYTES;
            if *t >= floor && !over {
                break;
            }
            self.held_bytes = self.held_bytes.saturating_sub(*b);
            self.recent.pop_front();
        }
    }

    /// Writes one episode's dump; returns its path.
    fn write(&mut self, ep: &Episode) -> io::Result<PathBuf> {
        let Some(mut header) = self.header.clone() else {
            return Err(io::Error::other("no header yet"));
        };
        let from = ep.start_ns.saturating_sub(self.limits.context_ns);
        let to = ep.end_ns.saturating_add(self.limits.context_ns);
        let stamp = ep
            .start_wall
            .clone()
            .unwrap_or_else(|| format!("boot{}", ep.start_ns))
            .replace(':', "");
        let path = self
            .dir
            .join(format!("{PREFIX}{stamp}-cpu{}-{}.jsonl", ep.cpu, ep.id));
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        let mut w = DumpWriter::new(&path, file);
        header.started_at = ep.start_wall.clone().unwrap_or(header.started_at);
        w.write(&Record::Header(header))?;
        let mut counts = Counts::default();
        for (t, r, _) in &self.recent {
            if (from..=to).contains(t) {
                counts.add(r);
                w.write(r)?;
            }
        }
        w.write(&Record::Footer(Footer {
            ended_at: ep.start_wall.clone().unwrap_or_default(),
            duration_ns: to.saturating_sub(from),
            counts,
            reason: format!("flight recorder: episode {}", ep.id),
            ..Footer::default()
        }))?;
        w.sync()?;
        Ok(path)
    }

    /// Removes the oldest episode dumps past the count or size limit.
    fn rotate(&self) -> io::Result<()> {
        let mut files: Vec<(PathBuf, u64)> = fs::read_dir(&self.dir)?
            .flatten()
            .filter(|e| {
                e.file_name().to_string_lossy().starts_with(PREFIX)
                    && e.file_type().is_ok_and(|t| t.is_file())
            })
            .map(|e| (e.path(), e.metadata().map(|m| m.len()).unwrap_or(0)))
            .collect();
        // Names start with the episode's wall time: oldest first.
        files.sort();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        let mut n = files.len();
        for (p, len) in files {
            if n <= self.limits.max_files && total <= self.limits.max_bytes {
                break;
            }
            fs::remove_file(&p)?;
            n -= 1;
            total = total.saturating_sub(len);
        }
        Ok(())
    }
}

impl Sink for FlightRecorder {
    fn what(&self) -> &str {
        "the flight recorder"
    }

    fn record(&mut self, rec: &Record) -> io::Result<()> {
        match rec {
            Record::Header(h) => self.header = Some(h.clone()),
            Record::Footer(_) => {}
            r => {
                let t = when(r).unwrap_or(self.newest);
                self.newest = self.newest.max(t);
                // A record's size in the dump is ~200-400 bytes: estimated, not encoded.
                let bytes = match r {
                    Record::Wait(w) => 600 + 400 * w.holders.len(),
                    _ => 300,
                };
                self.held_bytes += bytes;
                self.recent.push_back((t, r.clone(), bytes));
                self.forget_old();
                self.write_due(self.newest);
            }
        }
        Ok(())
    }

    /// Holds the episode until its after-context has been recorded.
    fn episode(&mut self, ep: &Episode) -> io::Result<()> {
        self.pending.push(ep.clone());
        self.write_due(self.newest);
        Ok(())
    }

    /// Live ticks: time passes even when no record comes.
    fn flush(&mut self) -> io::Result<()> {
        self.write_due(crate::sys::boot_ns());
        Ok(())
    }

    fn finish(&mut self, _report: &stalltrace_analysis::correlate::Report) -> io::Result<()> {
        self.write_due(u64::MAX);
        Ok(())
    }
}

impl FlightRecorder {
    fn write_due(&mut self, now: u64) {
        if self.pending.is_empty() {
            return;
        }
        let ctx = self.limits.context_ns;
        let due: Vec<Episode> = {
            let (due, wait): (Vec<Episode>, Vec<Episode>) = std::mem::take(&mut self.pending)
                .into_iter()
                .partition(|e| e.end_ns.saturating_add(ctx) <= now);
            self.pending = wait;
            due
        };
        for ep in due {
            self.save(&ep);
        }
    }

    /// A full disk or a removed directory is said once and the agent goes on: the
    /// metrics matter more than one dump.
    fn save(&mut self, ep: &Episode) {
        match self.write(ep).and_then(|p| self.rotate().map(|()| p)) {
            Ok(p) => {
                self.written += 1;
                self.last_error = None;
                crate::errln!(
                    "flight recorder: episode {} written to {}",
                    ep.id,
                    p.display()
                );
            }
            Err(e) => {
                let msg = format!("flight recorder: episode {} not written: {e}", ep.id);
                if self.last_error.as_deref() != Some(msg.as_str()) {
                    crate::errln!("{msg}");
                }
                self.last_error = Some(msg);
            }
        }
    }
}
