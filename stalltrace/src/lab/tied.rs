//! Children that cannot outlive the lab. `PR_SET_PDEATHSIG` set by the child after its
//! exec leaves a window: a lab SIGKILLed between fork and that call leaves an orphan
//! nobody journaled, which `lab --cleanup` then cannot find (a flood left running).
//! Set between fork and exec instead, and checked against the parent that forked,
//! there is no window.

use std::os::unix::process::CommandExt as _;
use std::process::Command;

/// Makes `cmd`'s child receive `sig` when the lab dies (also if it already died before
/// the child was set up), and run on `cpu` when given.
pub fn tie_to_lab(cmd: &mut Command, sig: i32, cpu: Option<usize>) {
    let lab = std::process::id();
    // SAFETY: between fork and exec only async-signal-safe calls on the child itself:
    // prctl, getppid, sched_setaffinity and _exit.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, sig);
            // The lab died before prctl: nobody would send the signal.
            if u32::try_from(libc::getppid()).ok() != Some(lab) {
                libc::_exit(1);
            }
            if let Some(cpu) = cpu {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            }
            Ok(())
        });
    }
}
