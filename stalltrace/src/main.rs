//! `stalltrace`: why did this packet wait on this node, and who is to blame?
fn main() -> std::process::ExitCode {
    stalltrace::cli::main()
}
