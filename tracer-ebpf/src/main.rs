//! stalltrace's kernel programs. Tracepoints everywhere (they exist on every kernel we
//! target); `kprobe:icmp_echo` where the kernel has kprobes. Filtering and aggregation
//! happen here so the ring buffer carries answers, not a firehose: packets only for
//! probe traffic, waits only above a threshold, syscalls only when they held the CPU.
#![no_std]
// An atomic add to a map value (core's atomic types have no add on this target).
#![feature(core_intrinsics)]
#![allow(
    internal_features,
    reason = "core_intrinsics for atomic_xadd, see maps::atomic_inc"
)]
#![no_main]

mod drain;
mod header;
mod history;
mod maps;
mod packet;
mod rx_thread;
mod sampler;
mod sched;
mod softirq;
mod syscall;
mod wait;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// GPL: bpf_probe_read_kernel and the sched tracepoints need a GPL-compatible licence.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
