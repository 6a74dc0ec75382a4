//! Struct member offsets from the running kernel's BTF. aya cannot emit CO-RE
//! relocations from Rust, so the programs take these as a global at load time.
use std::{fs, path::Path};

use btf_rs::{Btf, Type};
use thiserror::Error;
use tracer_common::Offsets;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, Error)]
pub enum OffsetError {
    #[error("cannot read kernel BTF: {0}")]
    Btf(String),
    #[error("kernel BTF has no member {0}")]
    Member(String),
}

/// Byte offset of `path` (e.g. `["se", "sum_exec_runtime"]`) inside `struct name`,
/// looking through anonymous struct/union members (struct_group and friends).
pub fn member_offset(btf: &Btf, name: &str, path: &[&str]) -> Result<u32, OffsetError> {
    let what = || format!("{name}.{}", path.join("."));
    let types = btf
        .resolve_types_by_name(name)
        .map_err(|_| OffsetError::Member(what()))?;
    let st = types
        .into_iter()
        .find_map(|t| match t {
            Type::Struct(s) if !s.members.is_empty() => Some(s),
            _ => None,
        })
        .ok_or_else(|| OffsetError::Member(what()))?;
    let mut cur = st;
    let mut bits: u32 = 0;
    for (i, want) in path.iter().enumerate() {
        let (off, ty) =
            find_member(btf, &cur, want, 0).ok_or_else(|| OffsetError::Member(what()))?;
        bits += off;
        if i + 1 < path.len() {
            cur = match strip(btf, ty) {
                Some(Type::Struct(s)) | Some(Type::Union(s)) => s,
                _ => return Err(OffsetError::Member(what())),
            };
        }
    }
    if !bits.is_multiple_of(8) {
        return Err(OffsetError::Member(format!("{} (bitfield)", what())));
    }
    Ok(bits / 8)
}

/// Follows typedef/const/volatile to the underlying type.
fn strip(btf: &Btf, mut t: Type) -> Option<Type> {
    for _ in 0..16 {
        match &t {
            Type::Typedef(_)
            | Type::Const(_)
            | Type::Volatile(_)
            | Type::Restrict(_)
            | Type::TypeTag(_) => {
                t = btf.resolve_chained_type(t.as_btf_type()?).ok()?;
            }
            _ => return Some(t),
        }
    }
    None
}

/// Depth-first search for a member by name, descending into anonymous members.
fn find_member(btf: &Btf, st: &btf_rs::Struct, want: &str, depth: u32) -> Option<(u32, Type)> {
    if depth > 8 {
        return None;
    }
    for m in &st.members {
        let name = btf.resolve_name(m).unwrap_or_default();
        let ty = btf.resolve_chained_type(m).ok()?;
        if name == want {
            return Some((m.bit_offset(), ty));
        }
        if name.is_empty() {
            if let Some(Type::Struct(inner) | Type::Union(inner)) = strip(btf, ty) {
                if let Some((off, t)) = find_member(btf, &inner, want, depth + 1) {
                    return Some((m.bit_offset() + off, t));
                }
            }
        }
    }
    None
}

/// `pt_regs` member holding a syscall's first argument on this architecture.
#[cfg(target_arch = "x86_64")]
const REGS_ARG0: &[&str] = &["di"];
#[cfg(target_arch = "aarch64")]
const REGS_ARG0: &[&str] = &["regs"];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const REGS_ARG0: &[&str] = &[];

/// Reads every offset the programs need. Members that only refine the output
/// (policy, CPU time, the CPU a thread was woken on, syscall argument) are left at 0 when
/// missing, which the programs treat as unknown; the returned notes say which.
pub fn read(btf_path: &Path) -> Result<(Offsets, Vec<String>), OffsetError> {
    // From memory: btf-rs's file backend seeks per type and takes seconds.
    let bytes =
        fs::read(btf_path).map_err(|e| OffsetError::Btf(format!("{}: {e}", btf_path.display())))?;
    let btf = Btf::from_bytes(&bytes)
        .map_err(|e| OffsetError::Btf(format!("{}: {e}", btf_path.display())))?;
    let mut o = Offsets::defaults();
    let mut notes = vec![];
    o.skb_head = member_offset(&btf, "sk_buff", &["head"])?;
    o.skb_data = member_offset(&btf, "sk_buff", &["data"])?;
    o.skb_network_header = member_offset(&btf, "sk_buff", &["network_header"])?;
    o.skb_transport_header = member_offset(&btf, "sk_buff", &["transport_header"])?;
    o.task_pid = member_offset(&btf, "task_struct", &["pid"])?;
    o.task_tgid = member_offset(&btf, "task_struct", &["tgid"])?;
    o.task_comm = member_offset(&btf, "task_struct", &["comm"])?;
    o.task_prio = member_offset(&btf, "task_struct", &["prio"])?;
    o.task_policy = match member_offset(&btf, "task_struct", &["policy"]) {
        Ok(v) => v,
        Err(e) => {
            notes.push(format!("scheduling policy unknown: {e}"));
            0
        }
    };
    // task_struct.cpu since 5.16; thread_info.cpu before.
    o.task_cpu = match member_offset(&btf, "task_struct", &["cpu"]) {
        Ok(v) => v,
        Err(_) => member_offset(&btf, "task_struct", &["thread_info", "cpu"]).unwrap_or(0),
    };
    o.regs_arg0 = if REGS_ARG0.is_empty() {
        notes.push("syscall arguments unknown on this architecture: no file names for fds".into());
        0
    } else {
        member_offset(&btf, "pt_regs", REGS_ARG0).unwrap_or_else(|e| {
            notes.push(format!("syscall arguments unknown: {e}"));
            0
        })
    };
    sampler_offsets(&btf, &mut o, &mut notes);
    Ok((o, notes))
}

/// Size of a struct, from BTF.
fn struct_size(btf: &Btf, name: &str) -> Option<u32> {
    btf.resolve_types_by_name(name)
        .ok()?
        .into_iter()
        .find_map(|t| match t {
            Type::Struct(s) if !s.members.is_empty() => u32::try_from(s.size()).ok(),
            _ => None,
        })
}

/// What the sampler reads: the kthread flag, the kernel stack (where the saved user
/// registers are on kernels without `bpf_task_pt_regs`) and the registers that tell a
/// syscall from a fault. Missing members leave the sampler telling user from kernel
/// only (said in a note).
fn sampler_offsets(btf: &Btf, o: &mut tracer_common::Offsets, notes: &mut Vec<String>) {
    let mut missing = vec![];
    let mut get = |st: &str, path: &[&str]| {
        member_offset(btf, st, path).unwrap_or_else(|_| {
            missing.push(format!("{st}.{}", path.join(".")));
            0
        })
    };
    o.task_flags = get("task_struct", &["flags"]);
    o.task_on_cpu = get("task_struct", &["on_cpu"]);
    o.task_stack = get("task_struct", &["stack"]);
    if let [orig_ax, ip, cx, r11, flags, arg1] = SYSCALL_REGS[..] {
        o.regs_orig_ax = get("pt_regs", &[orig_ax]);
        o.regs_ip = get("pt_regs", &[ip]);
        o.regs_cx = get("pt_regs", &[cx]);
        o.regs_r11 = get("pt_regs", &[r11]);
        o.regs_flags = get("pt_regs", &[flags]);
        o.regs_arg1 = get("pt_regs", &[arg1]);
    } else {
        missing.push("the syscall registers on this architecture".into());
    }
    match struct_size(btf, "pt_regs") {
        Some(n) => o.regs_size = n,
        None => missing.push("sizeof(struct pt_regs)".into()),
    }
    o.kstack_size = kernel_stack_size();
    if !missing.is_empty() {
        o.regs_orig_ax = 0;
        notes.push(format!(
            "samples tell user from kernel only: BTF lacks {}",
            missing.join(", ")
        ));
    }
}

/// `pt_regs` members the sampler reads: orig_ax, ip, cx, r11, flags, si (x86_64).
#[cfg(target_arch = "x86_64")]
const SYSCALL_REGS: [&str; 6] = ["orig_ax", "ip", "cx", "r11", "flags", "si"];
#[cfg(not(target_arch = "x86_64"))]
const SYSCALL_REGS: [&str; 0] = [];

/// x86_64 THREAD_SIZE: 16 KiB, doubled with KASAN (only used before 5.15, where
/// `bpf_task_pt_regs` is missing), read from the kernel's config when it is there.
fn kernel_stack_size() -> u32 {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let config =
        std::fs::read_to_string(format!("/boot/config-{}", release.trim())).unwrap_or_default();
    if config.lines().any(|l| l.trim() == "CONFIG_KASAN=y") {
        32 << 10
    } else {
        16 << 10
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads this machine's BTF; sk_buff's header offsets sit inside a struct_group
    /// (anonymous union), which is what the recursive lookup exists for.
    #[test]
    fn reads_offsets_from_this_kernels_btf() {
        if !stalltrace_testkit::ci::require(
            "reads_offsets_from_this_kernels_btf",
            Path::new(VMLINUX_BTF).exists(),
            "needs /sys/kernel/btf/vmlinux",
        ) {
            return;
        }
        let btf = Btf::from_bytes(&fs::read(VMLINUX_BTF).unwrap()).unwrap();
        let data = member_offset(&btf, "sk_buff", &["data"]).unwrap();
        let head = member_offset(&btf, "sk_buff", &["head"]).unwrap();
        let nh = member_offset(&btf, "sk_buff", &["network_header"]).unwrap();
        let th = member_offset(&btf, "sk_buff", &["transport_header"]).unwrap();
        assert_eq!(
            data,
            head + 8,
            "data follows head in every kernel since 2.6"
        );
        assert_eq!(nh, th + 2, "network_header follows transport_header");
        let se = member_offset(&btf, "task_struct", &["se", "sum_exec_runtime"]).unwrap();
        assert!(se > 0);
        let pid = member_offset(&btf, "task_struct", &["pid"]).unwrap();
        let tgid = member_offset(&btf, "task_struct", &["tgid"]).unwrap();
        assert_eq!(tgid, pid + 4, "tgid follows pid");
        let (o, notes) = read(Path::new(VMLINUX_BTF)).unwrap();
        assert!(notes.is_empty(), "{notes:?}");
        assert!(o.task_cpu > 0 && o.task_comm > 0 && o.regs_arg0 > 0);
        assert!(member_offset(&btf, "sk_buff", &["no_such_member"]).is_err());
    }
}
