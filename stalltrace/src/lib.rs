//! stalltrace as a library: the binary (`main.rs`) is a thin CLI over these modules,
//! and the integration tests reuse the lab's namespace code.
/// `println!` that never panics: a closed stdout (`stalltrace … | head`) must not kill
/// a tool that may be holding recorded data.
#[macro_export]
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// `eprintln!` that never panics (see [`outln!`]).
#[macro_export]
macro_rules! errln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

pub mod analyze;
pub mod cli;
pub mod doctor;
pub mod enrich;
pub mod events;
pub mod exit;
pub mod features;
pub mod host;
pub mod identity;
pub mod kernel;
pub mod lab;
pub mod probe;
pub mod record;
pub mod samples;
pub mod stacks;
pub mod sys;
pub mod syscall;
pub mod watch;
