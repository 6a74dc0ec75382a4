//! Live output that never holds the recording up: lines go through a bounded queue to
//! a writer thread; when the terminal (or a pipe nobody reads) falls behind, lines are
//! dropped and counted, and the count is said once output moves again. A closed stdout
//! (`stalltrace record | head`) ends printing, not recording. The lines go to standard
//! output, or to standard error when the dump does (`-o -`).
use std::{
    io::{self, Write},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{self, SyncSender, TrySendError},
        Arc,
    },
    thread::JoinHandle,
};

use stalltrace_analysis::report::escape;

/// Lines queued before new ones are dropped.
const QUEUE: usize = 4096;

pub struct Terminal {
    tx: Option<SyncSender<String>>,
    dropped: Arc<AtomicU64>,
    broken: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Terminal {
    pub fn stdout() -> Self {
        Self::spawn(Box::new(io::stdout()))
    }

    /// The same on standard error (when the dump itself goes to standard output).
    pub fn stderr() -> Self {
        Self::spawn(Box::new(io::stderr()))
    }

    fn spawn(out: Box<dyn Write + Send>) -> Self {
        let (tx, rx) = mpsc::sync_channel::<String>(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let broken = Arc::new(AtomicBool::new(false));
        let (d, b) = (dropped.clone(), broken.clone());
        let thread = std::thread::Builder::new()
            .name("stalltrace-out".into())
            .spawn(move || {
                let mut out = io::LineWriter::new(out);
                let mut said = 0;
                for line in rx {
                    let n = d.load(Ordering::Relaxed);
                    let ok = if n > said {
                        said = n;
                        writeln!(
                            out,
                            "[{n} lines dropped so far: the terminal did not keep up]"
                        )
                        .and_then(|()| writeln!(out, "{line}"))
                    } else {
                        writeln!(out, "{line}")
                    };
                    if ok.is_err() {
                        b.store(true, Ordering::Relaxed);
                        break;
                    }
                }
            })
            .ok();
        Self {
            tx: Some(tx),
            dropped,
            broken,
            thread,
        }
    }

    /// Queues a line (control characters escaped); never blocks.
    pub fn line(&self, s: &str) {
        if self.broken.load(Ordering::Relaxed) {
            return;
        }
        let Some(tx) = &self.tx else { return };
        match tx.try_send(escape::line(s).into_owned()) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => self.broken.store(true, Ordering::Relaxed),
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Lets the queue drain, for a second at most: a reader that stopped reading
    /// must not keep the recorder from exiting (the thread dies with the process).
    pub fn close(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let t0 = std::time::Instant::now();
            while !t.is_finished() && t0.elapsed() < std::time::Duration::from_secs(1) {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        self.close();
    }
}
