//! stalltrace against the real kernel, as root: one test binary, a module per area.
//! Every test that needs root or a kernel feature fails under CI instead of skipping
//! (`stalltrace_testkit::ci`). Run one at a time (`--test-threads=1`): they share CPUs,
//! namespaces and the kernel's programs.
mod attribution_lab;
mod deploy;
mod doctor;
mod hardening;
mod hostile_http;
mod lab;
mod limits;
mod probe_match;
mod probe_netns;
mod promises;
mod record_netns;
mod vm_guest;
mod watch;
