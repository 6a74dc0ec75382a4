//! The flight recorder: `watch` keeps the last seconds of records in memory (bounded by
//! time, count and bytes) and, once an episode's after-context has passed, hands the
//! records of its window as one job to a writer thread through a bounded queue: the
//! recording loop never waits on a disk (a full queue drops the dump and counts it).
//!
//! The writer makes each dump whole or not at all: written under a hidden temporary
//! name in the directory, synced, renamed into place (never over an existing name),
//! then the directory synced. Its footer's `lost` says what the kernel lost while the
//! window was recorded and (`evicted`) how many of the window's records the memory caps
//! forgot. Files
//! rotate by count and total size, oldest first by the sequence number in their names
//! (a wall-clock step cannot reorder them), after a failed write too; after a full
//! disk the oldest dump goes as well, so the newest episodes keep being written. Every
//! failure is counted by reason for the metrics and said once per reason.
use std::{
    collections::VecDeque,
    fs, io,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        mpsc::{self, Receiver, SyncSender, TrySendError},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use stalltrace_analysis::{
    analyze::Sink,
    correlate::Episode,
    dump::{Counts, DumpWriter, Footer, Header, Lost, Record},
    output,
};

/// Records held at most, and how far back (kernel clock) they go.
const MAX_RECORDS: usize = 200_000;
const MAX_HELD_BYTES: usize = 64 << 20;
const KEEP_NS: u64 = 70_000_000_000;
/// Dumps waiting for the writer at most, and the bytes of records they may hold
/// (records shared with the ring cost nothing more until the ring forgets them).
const QUEUE_JOBS: usize = 4;
const QUEUE_BYTES: usize = 64 << 20;
/// Evictions are remembered per slot of this much kernel time.
const SLOT_NS: u64 = 100_000_000;
/// How long a stop waits for the writer to finish what is queued.
const FINISH_WAIT: Duration = Duration::from_secs(1);
/// File names: `stalltrace-episode-<sequence>-<wall time>-cpu<N>-<id>.jsonl`.
const PREFIX: &str = "stalltrace-episode-";
/// Dumps being written: hidden, and removed by the next rotation if a crash left one.
const TMP_PREFIX: &str = ".stalltrace-episode-";

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_files: usize,
    pub max_bytes: u64,
    /// Records kept before and after each episode.
    pub context_ns: u64,
}

/// Why a dump was not written (or an old one not removed): the `reason` label of
/// `stalltrace_flight_recorder_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The disk (or the quota) is full.
    NoSpace,
    /// The writer was behind: the dump was dropped, not queued.
    QueueFull,
    /// Any other error writing, syncing or renaming a dump.
    Io,
    /// Removing old dumps failed.
    Rotate,
}

impl Failure {
    pub const ALL: [Failure; 4] = [
        Failure::NoSpace,
        Failure::QueueFull,
        Failure::Io,
        Failure::Rotate,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Failure::NoSpace => "no_space",
            Failure::QueueFull => "queue_full",
            Failure::Io => "io",
            Failure::Rotate => "rotate",
        }
    }

    fn of(e: &io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => Failure::NoSpace,
            _ => Failure::Io,
        }
    }
}

/// What the recorder has done, shared with the metrics and the tick that feeds it the
/// kernel's loss counters.
#[derive(Debug, Default)]
pub struct Stats {
    written: AtomicU64,
    held_bytes: AtomicU64,
    failures: [AtomicU64; 4],
    said: [AtomicBool; 4],
    /// (kernel time, the kernel's loss counters then), oldest first.
    lost: Mutex<VecDeque<(u64, Lost)>>,
}

impl Stats {
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    pub fn held_bytes(&self) -> u64 {
        self.held_bytes.load(Ordering::Relaxed)
    }

    /// Failures by reason, every reason listed (a counter at 0 is a series too).
    pub fn failures(&self) -> Vec<(String, u64)> {
        Failure::ALL
            .iter()
            .map(|f| {
                (
                    f.label().to_string(),
                    self.failures[*f as usize].load(Ordering::Relaxed),
                )
            })
            .collect()
    }

    /// Counts a failure; the first of each reason is said on stderr.
    fn fail(&self, why: Failure, msg: &str) {
        self.failures[why as usize].fetch_add(1, Ordering::Relaxed);
        if !self.said[why as usize].swap(true, Ordering::Relaxed) {
            crate::errln!(
                "flight recorder: {msg} (said once; stalltrace_flight_recorder_failures_total{{reason=\"{}\"}} counts them)",
                why.label()
            );
        }
    }

    /// The kernel's loss counters at kernel time `now_ns` (the tick calls this).
    pub fn note_lost(&self, now_ns: u64, lost: Lost) {
        let mut l = match self.lost.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        l.push_back((now_ns, lost));
        let floor = now_ns.saturating_sub(KEEP_NS * 2);
        while l.len() > 2 && l.front().is_some_and(|(t, _)| *t < floor) {
            l.pop_front();
        }
    }

    /// What the kernel lost from `from_ns` to the latest sample.
    fn lost_since(&self, from_ns: u64) -> Lost {
        let l = match self.lost.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let Some((_, last)) = l.back() else {
            return Lost::default();
        };
        // The last sample at or before the window, else the first there is.
        let base = l
            .iter()
            .rev()
            .find(|(t, _)| *t <= from_ns)
            .or(l.front())
            .map(|(_, b)| b.clone())
            .unwrap_or_default();
        last.since(&base)
    }
}

/// One dump for the writer.
struct Job {
    seq: u64,
    name: String,
    header: Header,
    records: Vec<Arc<Record>>,
    footer: Footer,
    episode: u64,
    bytes: usize,
}

pub struct FlightRecorder {
    limits: Limits,
    header: Option<Header>,
    /// (kernel time, record, approximate bytes), oldest first.
    recent: VecDeque<(u64, Arc<Record>, usize)>,
    held_bytes: usize,
    newest: u64,
    /// Records forgotten for the caps (not their age): (time slot, how many).
    evicted: VecDeque<(u64, u64)>,
    /// Episodes closed whose after-context has not passed yet.
    pending: Vec<Episode>,
    next_seq: u64,
    tx: Option<SyncSender<Job>>,
    queued_bytes: Arc<AtomicUsize>,
    writer: Option<JoinHandle<()>>,
    pub stats: Arc<Stats>,
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

/// The sequence number in a dump's name (`None` for names of other versions).
fn seq_of(name: &str) -> Option<u64> {
    name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

impl FlightRecorder {
    /// `dir` is made (0700) if missing; numbering continues after the dumps already
    /// there. Starts the writer thread.
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
        let md = fs::metadata(dir)?;
        if !md.is_dir() {
            return Err(io::Error::other(format!(
                "{} is a {}, not a directory",
                dir.display(),
                output::kind(&md.file_type())
            )));
        }
        let next_seq = fs::read_dir(dir)?
            .flatten()
            .filter_map(|e| seq_of(&e.file_name().to_string_lossy()))
            .max()
            .map_or(1, |s| s.saturating_add(1));
        let stats = Arc::new(Stats::default());
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::sync_channel(QUEUE_JOBS);
        let writer = {
            let (dir, limits, stats, queued) = (
                dir.to_path_buf(),
                limits.clone(),
                stats.clone(),
                queued_bytes.clone(),
            );
            std::thread::Builder::new()
                .name("stalltrace-dumps".into())
                .spawn(move || writer(&dir, &limits, &rx, &stats, &queued))?
        };
        Ok(Self {
            limits,
            header: None,
            recent: VecDeque::new(),
            held_bytes: 0,
            newest: 0,
            evicted: VecDeque::new(),
            pending: vec![],
            next_seq,
            tx: Some(tx),
            queued_bytes,
            writer: Some(writer),
            stats,
        })
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
            if *t >= floor {
                // Forgotten for the caps while still inside the time kept: a dump of
                // this window will say so.
                let slot = *t / SLOT_NS;
                match self.evicted.back_mut() {
                    Some((s, n)) if *s == slot => *n += 1,
                    _ => self.evicted.push_back((slot, 1)),
                }
            }
            self.held_bytes = self.held_bytes.saturating_sub(*b);
            self.recent.pop_front();
        }
        while self
            .evicted
            .front()
            .is_some_and(|(s, _)| s.saturating_mul(SLOT_NS) < floor)
        {
            self.evicted.pop_front();
        }
        self.stats
            .held_bytes
            .store(self.held_bytes as u64, Ordering::Relaxed);
    }

    /// Records of `from..=to` forgotten for the caps (to the slot).
    fn evicted_in(&self, from: u64, to: u64) -> u64 {
        let (a, b) = (from / SLOT_NS, to / SLOT_NS);
        self.evicted
            .iter()
            .filter(|(s, _)| (a..=b).contains(s))
            .map(|(_, n)| *n)
            .sum()
    }

    /// The job for one episode's dump.
    fn job(&mut self, ep: &Episode) -> Option<Job> {
        let mut header = self.header.clone()?;
        let from = ep.start_ns.saturating_sub(self.limits.context_ns);
        let to = ep.end_ns.saturating_add(self.limits.context_ns);
        let mut counts = Counts::default();
        let mut records = Vec::new();
        let mut bytes = 0;
        for (t, r, b) in &self.recent {
            if (from..=to).contains(t) {
                counts.add(r);
                records.push(r.clone());
                bytes += b;
            }
        }
        let stamp = ep
            .start_wall
            .clone()
            .unwrap_or_else(|| format!("boot{}", ep.start_ns))
            .replace(':', "");
        let seq = self.next_seq;
        header.started_at = ep.start_wall.clone().unwrap_or(header.started_at);
        let footer = Footer {
            ended_at: ep.start_wall.clone().unwrap_or_default(),
            duration_ns: to.saturating_sub(from),
            counts,
            lost: Lost {
                evicted: self.evicted_in(from, to),
                ..self.stats.lost_since(from)
            },
            reason: format!("flight recorder: episode {}", ep.id),
            ..Footer::default()
        };
        Some(Job {
            seq,
            name: format!("{PREFIX}{seq:012}-{stamp}-cpu{}-{}.jsonl", ep.cpu, ep.id),
            header,
            records,
            footer,
            episode: ep.id,
            bytes,
        })
    }

    /// Queues one episode's dump; never waits: a writer behind drops it (counted).
    fn save(&mut self, ep: &Episode) {
        let Some(job) = self.job(ep) else {
            self.stats.fail(
                Failure::Io,
                &format!("episode {} not written: no header yet", ep.id),
            );
            return;
        };
        let queued = self.queued_bytes.load(Ordering::Relaxed);
        if queued.saturating_add(job.bytes) > QUEUE_BYTES && queued > 0 {
            self.stats.fail(
                Failure::QueueFull,
                &format!("episode {} not written: the dump writer is behind", ep.id),
            );
            return;
        }
        let bytes = job.bytes;
        let Some(tx) = &self.tx else { return };
        self.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        match tx.try_send(job) {
            Ok(()) => self.next_seq += 1,
            Err(e) => {
                self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
                let why = match e {
                    TrySendError::Full(_) => Failure::QueueFull,
                    TrySendError::Disconnected(_) => Failure::Io,
                };
                self.stats.fail(
                    why,
                    &format!("episode {} not written: the dump writer is behind", ep.id),
                );
            }
        }
    }

    fn write_due(&mut self, now: u64) {
        if self.pending.is_empty() {
            return;
        }
        let ctx = self.limits.context_ns;
        let (due, wait): (Vec<Episode>, Vec<Episode>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|e| e.end_ns.saturating_add(ctx) <= now);
        self.pending = wait;
        for ep in due {
            self.save(&ep);
        }
    }

    /// Closes the queue and waits (a second at most) for the writer to finish it.
    fn close(&mut self) {
        self.tx = None;
        if let Some(w) = self.writer.take() {
            let t0 = Instant::now();
            while !w.is_finished() && t0.elapsed() < FINISH_WAIT {
                std::thread::sleep(Duration::from_millis(10));
            }
            if w.is_finished() {
                let _ = w.join();
            }
        }
    }
}

impl Drop for FlightRecorder {
    fn drop(&mut self) {
        self.close();
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
                self.recent.push_back((t, Arc::new(r.clone()), bytes));
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
        self.close();
        Ok(())
    }
}

/// The writer thread: each job written whole or not at all, then a rotation.
fn writer(dir: &Path, limits: &Limits, rx: &Receiver<Job>, stats: &Stats, queued: &AtomicUsize) {
    // What a crash left half-written goes first.
    if let Err(e) = rotate(dir, limits, false) {
        stats.fail(Failure::Rotate, &format!("removing old dumps: {e}"));
    }
    for job in rx {
        let (bytes, episode) = (job.bytes, job.episode);
        let res = write_job(dir, &job);
        drop(job);
        queued.fetch_sub(bytes, Ordering::Relaxed);
        let mut make_room = false;
        match res {
            Ok(p) => {
                stats.written.fetch_add(1, Ordering::Relaxed);
                crate::errln!(
                    "flight recorder: episode {episode} written to {}",
                    p.display()
                );
            }
            Err(e) => {
                let why = Failure::of(&e);
                make_room = why == Failure::NoSpace;
                stats.fail(why, &format!("episode {episode} not written: {e}"));
            }
        }
        if let Err(e) = rotate(dir, limits, make_room) {
            stats.fail(Failure::Rotate, &format!("removing old dumps: {e}"));
        }
    }
}

/// Writes a dump under a temporary name, syncs it, renames it into place without
/// replacing anything, and syncs the directory. On an error nothing is left.
fn write_job(dir: &Path, job: &Job) -> io::Result<PathBuf> {
    let tmp = dir.join(format!("{TMP_PREFIX}{:012}.tmp", job.seq));
    let path = dir.join(&job.name);
    let res = (|| {
        let file = output::create_new(&tmp).map_err(|e| match e {
            output::OutputError::Io { source, .. } => source,
            other => io::Error::other(other.to_string()),
        })?;
        let mut w = DumpWriter::new(&tmp, file);
        w.write(&Record::Header(job.header.clone()))?;
        for r in &job.records {
            w.write(r)?;
        }
        w.write(&Record::Footer(job.footer.clone()))?;
        w.sync()?;
        drop(w);
        rename_noreplace(&tmp, &path)?;
        fs::File::open(dir)?.sync_all()
    })();
    match res {
        Ok(()) => Ok(path),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// `rename(2)` that fails with EEXIST rather than replace what is at `to`; where the
/// file system has no RENAME_NOREPLACE, a hard link and an unlink do the same.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
    };
    let (f, t) = (c(from)?, c(to)?);
    // SAFETY: renameat2(2) on two NUL-terminated paths that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOSYS) => {
            fs::hard_link(from, to)?;
            fs::remove_file(from)
        }
        _ => Err(e),
    }
}

/// Removes leftover temporary files and the oldest dumps past the count or size limit
/// (and, after a full disk, the oldest one more): oldest by sequence number.
fn rotate(dir: &Path, limits: &Limits, make_room: bool) -> io::Result<()> {
    let mut files: Vec<(u64, String, u64)> = vec![];
    for e in fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let regular = e.file_type().is_ok_and(|t| t.is_file());
        if name.starts_with(TMP_PREFIX) && regular {
            // The writer is this one thread: no temporary file is in progress now.
            fs::remove_file(e.path())?;
        } else if name.starts_with(PREFIX) && regular {
            let len = e.metadata().map(|m| m.len()).unwrap_or(0);
            files.push((seq_of(&name).unwrap_or(0), name, len));
        }
    }
    files.sort();
    let mut total: u64 = files.iter().map(|f| f.2).sum();
    let mut n = files.len();
    let mut extra = usize::from(make_room);
    for (_, name, len) in files {
        let over = n > limits.max_files || total > limits.max_bytes;
        if !over && extra == 0 {
            break;
        }
        if !over {
            extra -= 1;
        }
        fs::remove_file(dir.join(&name))?;
        n -= 1;
        total = total.saturating_sub(len);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use stalltrace_analysis::{
        correlate::episode::RxTask,
        dump::{DumpReader, RxContext},
    };
    use stalltrace_testkit::{records, scratch::Scratch};

    use super::*;

    fn header() -> Header {
        records::header("node", "6.18", 2, 0, None)
    }

    fn packet(ts_ns: u64) -> Record {
        Record::Packet(records::echo_request(
            ts_ns,
            ts_ns,
            1,
            (10, 10, "napi/x-1", RxContext::Napi),
            7,
            1,
        ))
    }

    fn episode(id: u64, start_ns: u64, wall: &str) -> Episode {
        Episode {
            id,
            cpu: 1,
            start_ns,
            end_ns: start_ns + 100_000_000,
            wait_ns: 100_000_000,
            start_wall: Some(wall.into()),
            waits: vec![],
            rx: RxTask {
                pid: 10,
                tgid: 10,
                comm: "napi/x-1".into(),
                context: RxContext::Napi,
            },
            culprit: None,
            holders: vec![],
            probes_delayed: 0,
            probes_in_run: 0,
            probes_lost: 0,
            packets_delayed: 1,
            packets_in_drain: 0,
            drain_ns: None,
            worst_rtt_ns: None,
            lines: vec![],
            lines_omitted: 0,
            truncated: false,
            why: None,
        }
    }

    fn names(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn wait_written(f: &FlightRecorder, n: u64) {
        let t0 = Instant::now();
        while f.stats.written() < n && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(f.stats.written(), n);
    }

    /// Wall time stepped back between episodes: rotation still removes the first one
    /// written, by its sequence number, and numbering goes on after a restart.
    #[test]
    fn rotation_follows_the_sequence_not_the_wall_clock() {
        let d = Scratch::new("flight-rotate").unwrap();
        let limits = Limits {
            max_files: 2,
            max_bytes: 1 << 30,
            context_ns: 0,
        };
        let mut f = FlightRecorder::new(d.path(), limits.clone()).unwrap();
        f.record(&Record::Header(header())).unwrap();
        let walls = [
            "2026-12-01T10:00:00.000Z",
            "2026-12-01T09:00:00.000Z", // the clock was stepped back an hour
            "2026-12-01T09:00:01.000Z",
        ];
        for (i, w) in walls.iter().enumerate() {
            let t = (i as u64 + 1) * 1_000_000_000;
            f.record(&packet(t)).unwrap();
            f.episode(&episode(i as u64 + 1, t, w)).unwrap();
            f.record(&packet(t + 500_000_000)).unwrap();
            wait_written(&f, i as u64 + 1);
        }
        f.close();
        let left = names(d.path());
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(
            left[0].starts_with("stalltrace-episode-000000000002-2026-12-01T090000"),
            "{left:?}"
        );
        assert!(
            left[1].starts_with("stalltrace-episode-000000000003-"),
            "{left:?}"
        );
        // A restarted agent numbers after what is there.
        let f = FlightRecorder::new(d.path(), limits).unwrap();
        assert_eq!(f.next_seq, 4);
    }

    /// Every dump left is whole (header to footer), the footer counts the kernel's
    /// losses in the window and the records the caps forgot; nothing temporary stays.
    #[test]
    fn dumps_are_whole_and_their_footer_says_what_was_lost() {
        let d = Scratch::new("flight-footer").unwrap();
        let mut f = FlightRecorder::new(
            d.path(),
            Limits {
                max_files: 10,
                max_bytes: 1 << 30,
                context_ns: 1_000_000_000,
            },
        )
        .unwrap();
        f.record(&Record::Header(header())).unwrap();
        let base = 100_000_000_000u64;
        f.stats.note_lost(
            base - 5_000_000_000,
            Lost {
                packets: 10,
                ..Lost::default()
            },
        );
        // More records than the cap inside the kept time: the oldest are evicted.
        for i in 0..(MAX_RECORDS as u64 + 1000) {
            f.record(&packet(base + i * 10_000)).unwrap();
        }
        let end = base + (MAX_RECORDS as u64 + 1000) * 10_000;
        f.stats.note_lost(
            end,
            Lost {
                packets: 17,
                waits: 2,
                ..Lost::default()
            },
        );
        f.episode(&episode(7, base + 500_000_000, "2026-12-01T10:00:00.000Z"))
            .unwrap();
        f.record(&packet(end + 2_000_000_000)).unwrap();
        wait_written(&f, 1);
        f.close();
        let files = names(d.path());
        assert_eq!(files.len(), 1, "{files:?}");
        let p = d.path().join(&files[0]);
        let mut r =
            DumpReader::new(&p, std::io::BufReader::new(fs::File::open(&p).unwrap())).unwrap();
        while r.next_record().unwrap().is_some() {}
        let footer = r.footer().expect("a footer").clone();
        assert_eq!(footer.lost.packets, 7, "{footer:?}");
        assert_eq!(footer.lost.waits, 2);
        assert!(footer.lost.evicted >= 1000, "{footer:?}");
        assert_eq!(footer.counts.packets, r.line() - 2, "counted what it holds");
    }

    /// A write that fails (its directory removed under it) is counted by reason, every
    /// reason is a series, and nothing is claimed written.
    #[test]
    fn a_failed_write_is_counted_by_reason() {
        let d = Scratch::new("flight-fail").unwrap();
        let mut f = FlightRecorder::new(
            d.path(),
            Limits {
                max_files: 10,
                max_bytes: 1 << 30,
                context_ns: 0,
            },
        )
        .unwrap();
        f.record(&Record::Header(header())).unwrap();
        // The directory goes away: the next dump cannot be written.
        fs::remove_dir(d.path()).unwrap();
        f.record(&packet(1_000_000_000)).unwrap();
        f.episode(&episode(1, 1_000_000_000, "2026-12-01T10:00:00.000Z"))
            .unwrap();
        f.record(&packet(3_000_000_000)).unwrap();
        let t0 = Instant::now();
        while f.stats.failures().iter().all(|(_, n)| *n == 0) && t0.elapsed().as_secs() < 10 {
            std::thread::sleep(Duration::from_millis(5));
        }
        f.close();
        let failures = f.stats.failures();
        let count = |r: &str| failures.iter().find(|f| f.0 == r).map_or(0, |f| f.1);
        assert_eq!(count("io"), 1, "{failures:?}");
        assert_eq!(count("queue_full") + count("no_space"), 0, "{failures:?}");
        assert_eq!(f.stats.written(), 0);
        assert_eq!(
            failures.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>(),
            ["no_space", "queue_full", "io", "rotate"]
        );
        fs::create_dir(d.path()).unwrap();
    }
}
