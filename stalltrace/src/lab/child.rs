//! A child process that cannot outlive its owner's scope: interrupted (SIGINT first,
//! so a recorder writes its footer), then killed, and always reaped.
use std::{
    process::{Child, ExitStatus},
    time::{Duration, Instant},
};

pub struct ChildGuard {
    child: Option<Child>,
    /// How long drop waits after SIGINT before SIGKILL.
    pub grace: Duration,
}

impl ChildGuard {
    pub fn new(child: Child) -> Self {
        Self {
            child: Some(child),
            grace: Duration::from_secs(10),
        }
    }

    /// The child's stdout pipe, taken (for a reader thread).
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.as_mut().and_then(|c| c.stdout.take())
    }

    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The child still runs (it was neither reaped nor found exited).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends `sig` and waits up to `limit` for the exit; `None` if it did not exit.
    pub fn signal_and_wait(&mut self, sig: i32, limit: Duration) -> Option<ExitStatus> {
        let c = self.child.as_mut()?;
        if let Ok(Some(st)) = c.try_wait() {
            self.child = None;
            return Some(st);
        }
        if let Ok(pid) = i32::try_from(c.id()) {
            // SAFETY: kill(2) on our own child, not yet reaped, so the pid is still ours.
            unsafe { libc::kill(pid, sig) };
        }
        self.wait_for(limit)
    }

    /// Waits up to `limit` for the child to exit by itself.
    pub fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        let c = self.child.as_mut()?;
        let t0 = Instant::now();
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return Some(st);
            }
            if t0.elapsed() >= limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGINT, then SIGKILL after the grace period; reaps.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if let Some(st) = self.signal_and_wait(libc::SIGINT, self.grace) {
            return Some(st);
        }
        let mut c = self.child.take()?;
        let _ = c.kill();
        c.wait().ok()
    }

    /// Gives up ownership (the caller reaps).
    pub fn into_inner(mut self) -> Option<Child> {
        self.child.take()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
