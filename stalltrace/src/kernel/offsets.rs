//! Struct member offsets from the running kernel's BTF. aya cannot emit CO-RE
//! relocations from Rust, so the programs take these as a global at load time.
use std::path::Path;

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
    let mut visits = 0;
    for (i, want) in path.iter().enumerate() {
        let (off, ty) = find_member(btf, &cur, want, 0, &mut visits)
            .ok_or_else(|| OffsetError::Member(what()))?;
        // Checked: offsets in a BTF file from elsewhere (--btf) may be anything.
        bits = bits
            .checked_add(off)
            .ok_or_else(|| OffsetError::Member(format!("{} (offset overflows)", what())))?;
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

/// Members one lookup may look at. A kernel's needs a few hundred; a BTF file from
/// elsewhere may make a struct its own anonymous member, where a depth-limited search
/// alone visits members^depth.
const MAX_VISITS: u32 = 20_000;

/// Depth-first search for a member by name, descending into anonymous members.
fn find_member(
    btf: &Btf,
    st: &btf_rs::Struct,
    want: &str,
    depth: u32,
    visits: &mut u32,
) -> Option<(u32, Type)> {
    if depth > 8 {
        return None;
    }
    for m in &st.members {
        *visits += 1;
        if *visits > MAX_VISITS {
            return None;
        }
        let name = btf.resolve_name(m).unwrap_or_default();
        let ty = btf.resolve_chained_type(m).ok()?;
        if name == want {
            return Some((m.bit_offset(), ty));
        }
        if name.is_empty() {
            if let Some(Type::Struct(inner) | Type::Union(inner)) = strip(btf, ty) {
                if let Some((off, t)) = find_member(btf, &inner, want, depth + 1, visits) {
                    return Some((m.bit_offset().checked_add(off)?, t));
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

/// A kernel's BTF is a few MiB (6 MiB for a distribution kernel with every module
/// built in); a `--btf` file larger than this is not one.
pub const MAX_BTF_BYTES: u64 = 64 << 20;

/// Reads every offset the programs need. Members that only refine the output
/// (policy, CPU time, the CPU a thread was woken on, syscall argument) are left at 0 when
/// missing, which the programs treat as unknown; the returned notes say which.
pub fn read(btf_path: &Path) -> Result<(Offsets, Vec<String>), OffsetError> {
    // From memory: btf-rs's file backend seeks per type and takes seconds. A regular
    // file of bounded size only: `--btf /dev/zero` must not be read forever.
    let bytes = crate::sys::read_regular(btf_path, MAX_BTF_BYTES)
        .map_err(|e| OffsetError::Btf(e.to_string()))?;
    read_bytes(&bytes).map_err(|e| match e {
        OffsetError::Btf(why) => OffsetError::Btf(format!("{}: {why}", btf_path.display())),
        e => e,
    })
}

/// Size of the BTF header btf-rs reads (`struct btf_header`).
const BTF_HEADER_LEN: usize = 24;
const BTF_MAGIC: u16 = 0xeb9f;

/// Checks that the header's sections lie inside `bytes` before btf-rs sees them: it
/// sizes its tables from the header's lengths (up to 16 MiB each), so a 24-byte file
/// claiming 4 GiB of strings would cost tens of MiB before failing.
fn check_btf_header(bytes: &[u8]) -> Result<(), String> {
    let Some(hdr) = bytes.get(..BTF_HEADER_LEN) else {
        return Err(format!("{} bytes, shorter than a BTF header", bytes.len()));
    };
    let le = match [hdr[0], hdr[1]] {
        m if u16::from_le_bytes(m) == BTF_MAGIC => true,
        m if u16::from_be_bytes(m) == BTF_MAGIC => false,
        _ => return Err("no BTF magic".into()),
    };
    let word = |i: usize| {
        let b = [hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]];
        u64::from(if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    };
    let (hdr_len, type_off, type_len, str_off, str_len) =
        (word(4), word(8), word(12), word(16), word(20));
    let len = bytes.len() as u64;
    if hdr_len < BTF_HEADER_LEN as u64
        || hdr_len + type_off + type_len > len
        || hdr_len + str_off + str_len > len
    {
        return Err(format!(
            "its sections (types {type_off}+{type_len}, strings {str_off}+{str_len} after a \
             {hdr_len}-byte header) do not fit in its {len} bytes"
        ));
    }
    Ok(())
}

/// [`read`] from BTF already in memory.
pub fn read_bytes(bytes: &[u8]) -> Result<(Offsets, Vec<String>), OffsetError> {
    check_btf_header(bytes).map_err(OffsetError::Btf)?;
    let btf = Btf::from_bytes(bytes).map_err(|e| OffsetError::Btf(e.to_string()))?;
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
    o.task_state = match member_offset(btf, "task_struct", &["__state"]) {
        Ok(v) => v,
        Err(_) => get("task_struct", &["state"]),
    };
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
        let btf = Btf::from_bytes(&std::fs::read(VMLINUX_BTF).unwrap()).unwrap();
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
        // The scheduler state comes before pid in every layout since 2.6.
        assert!(o.task_state > 0 && o.task_state < pid, "{o:?}");
        assert!(member_offset(&btf, "sk_buff", &["no_such_member"]).is_err());
    }

    /// Little-endian BTF of `types` (words) and `strings`.
    fn btf_bytes(types: &[&[u32]], strings: &[u8]) -> Vec<u8> {
        let ty: Vec<u8> = types
            .iter()
            .flat_map(|t| t.iter())
            .flat_map(|w| w.to_le_bytes())
            .collect();
        let mut out = vec![0x9f, 0xeb, 1, 0];
        let n = ty.len() as u32;
        for w in [24, 0, n, n, strings.len() as u32] {
            out.extend(w.to_le_bytes());
        }
        out.extend(ty);
        out.extend(strings);
        out
    }

    const STRUCT: u32 = 4 << 24;
    /// Names at offsets 1 (task_struct), 13 (thread_info), 25 (cpu), 29 (int).
    const NAMES: &[u8] = b"\0task_struct\0thread_info\0cpu\0int\0";

    /// Offsets whose sum passes u32, through a named and an anonymous member.
    #[test]
    fn offsets_that_overflow_are_an_error() {
        let int: &[u32] = &[29, 1 << 24, 4, 32];
        let info: &[u32] = &[13, STRUCT | 1, 8, 25, 1, 0x1000];
        // task_struct { thread_info at 0xffffff00 } (id 2), thread_info { cpu } (id 3).
        let b = btf_bytes(
            &[int, &[1, STRUCT | 1, 64, 13, 3, 0xffff_ff00], info],
            NAMES,
        );
        let btf = Btf::from_bytes(&b).unwrap();
        let e = member_offset(&btf, "task_struct", &["thread_info", "cpu"]).unwrap_err();
        assert!(e.to_string().contains("overflows"), "{e}");
        // The same with thread_info anonymous: found through it, the sum overflows.
        let b = btf_bytes(&[int, &[1, STRUCT | 1, 64, 0, 3, 0xffff_ff00], info], NAMES);
        let btf = Btf::from_bytes(&b).unwrap();
        assert!(member_offset(&btf, "task_struct", &["cpu"]).is_err());
    }

    /// A struct that is its own anonymous member, 40 times: the search is cut short.
    #[test]
    fn a_struct_nested_in_itself_is_not_searched_forever() {
        let mut t: Vec<u32> = vec![1, STRUCT | 40, 64];
        for _ in 0..40 {
            t.extend([0, 1, 0]);
        }
        let b = btf_bytes(&[&t], NAMES);
        let btf = Btf::from_bytes(&b).unwrap();
        let t0 = std::time::Instant::now();
        assert!(member_offset(&btf, "task_struct", &["pid"]).is_err());
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            t0.elapsed()
        );
    }

    /// A 24-byte header claiming 4 GiB of types and strings is refused before btf-rs
    /// sizes its tables from it.
    #[test]
    fn a_header_that_does_not_fit_its_file_is_refused() {
        let mut h = vec![0x9f, 0xeb, 1, 0];
        for w in [24u32, 0, u32::MAX, 0, u32::MAX] {
            h.extend(w.to_le_bytes());
        }
        let e = read_bytes(&h).unwrap_err().to_string();
        assert!(e.contains("do not fit in its 24 bytes"), "{e}");
        // Big-endian BTF is checked the same way.
        let mut b = vec![0xeb, 0x9f, 1, 0];
        for w in [24u32, 0, 0, 0, 1] {
            b.extend(w.to_be_bytes());
        }
        assert!(read_bytes(&b)
            .unwrap_err()
            .to_string()
            .contains("do not fit"));
        assert!(read_bytes(b"").is_err());
        assert!(read_bytes(&[0u8; 64])
            .unwrap_err()
            .to_string()
            .contains("magic"));
    }
}
