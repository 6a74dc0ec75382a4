//! Struct member offsets from the running kernel's BTF, and tracepoint field offsets
//! from tracefs `format` files. aya cannot emit CO-RE relocations from Rust, so the
//! programs take these as a global at load time.
use std::{fs, path::Path};

use btf_rs::{Btf, Type};
use thiserror::Error;
use tracer_common::Offsets;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, Error)]
pub enum OffsetError {
    #[error("cannot read kernel BTF at {VMLINUX_BTF}: {0}")]
    Btf(String),
    #[error("kernel BTF has no member {0}")]
    Member(String),
    #[error("cannot read tracepoint format {path}: {source}")]
    Format { path: String, source: std::io::Error },
    #[error("tracepoint {tp} has no field {field} (format changed?)")]
    Field { tp: String, field: String },
}

/// Byte offset of `path` (e.g. `["se", "sum_exec_runtime"]`) inside `struct name`,
/// looking through anonymous struct/union members (struct_group and friends).
pub fn member_offset(btf: &Btf, name: &str, path: &[&str]) -> Result<u32, OffsetError> {
    let what = || format!("{name}.{}", path.join("."));
    let types = btf.resolve_types_by_name(name).map_err(|_| OffsetError::Member(what()))?;
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
        let (off, ty) = find_member(btf, &cur, want, 0).ok_or_else(|| OffsetError::Member(what()))?;
        bits += off;
        if i + 1 < path.len() {
            cur = match strip(btf, ty) {
                Some(Type::Struct(s)) | Some(Type::Union(s)) => s,
                _ => return Err(OffsetError::Member(what())),
            };
        }
    }
    if bits % 8 != 0 {
        return Err(OffsetError::Member(format!("{} (bitfield)", what())));
    }
    Ok(bits / 8)
}

/// Follows typedef/const/volatile to the underlying type.
fn strip(btf: &Btf, mut t: Type) -> Option<Type> {
    for _ in 0..16 {
        match &t {
            Type::Typedef(_) | Type::Const(_) | Type::Volatile(_) | Type::Restrict(_) | Type::TypeTag(_) => {
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

/// Offset of `field` in a tracepoint's format file text.
pub fn format_field(format: &str, field: &str) -> Option<u32> {
    for line in format.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else { continue };
        let Some((decl, tail)) = rest.split_once(';') else { continue };
        // `char prev_comm[16]`, `unsigned long args[6]`, `void * skbaddr`
        let last = decl.split_whitespace().last().unwrap_or("");
        let fname = last.split('[').next().unwrap_or("").trim_start_matches('*');
        if fname != field {
            continue;
        }
        let off = tail.split(';').find_map(|kv| kv.trim().strip_prefix("offset:"))?;
        return off.trim().parse().ok();
    }
    None
}

fn tp_field(tracefs: &Path, tp: &str, field: &str) -> Result<u32, OffsetError> {
    let path = tracefs.join("events").join(tp).join("format");
    let text = fs::read_to_string(&path)
        .map_err(|source| OffsetError::Format { path: path.display().to_string(), source })?;
    format_field(&text, field).ok_or_else(|| OffsetError::Field { tp: tp.into(), field: field.into() })
}

/// Reads every offset the programs need. Missing BTF members that only refine the
/// output (policy, CPU time) are left at 0, which the programs treat as unknown; the
/// returned notes say which.
pub fn read(tracefs: &Path, btf_path: &Path) -> Result<(Offsets, Vec<String>), OffsetError> {
    // From memory: btf-rs's file backend seeks per type and takes seconds.
    let bytes = fs::read(btf_path).map_err(|e| OffsetError::Btf(e.to_string()))?;
    let btf = Btf::from_bytes(&bytes).map_err(|e| OffsetError::Btf(e.to_string()))?;
    let mut o = Offsets::defaults();
    let mut notes = vec![];
    o.skb_head = member_offset(&btf, "sk_buff", &["head"])?;
    o.skb_data = member_offset(&btf, "sk_buff", &["data"])?;
    o.skb_network_header = member_offset(&btf, "sk_buff", &["network_header"])?;
    o.skb_transport_header = member_offset(&btf, "sk_buff", &["transport_header"])?;
    match member_offset(&btf, "task_struct", &["policy"]) {
        Ok(v) => o.task_policy = v,
        Err(e) => notes.push(format!("scheduling policy unknown: {e}")),
    }
    match member_offset(&btf, "task_struct", &["se", "sum_exec_runtime"]) {
        Ok(v) => o.task_sum_exec = v,
        Err(e) => notes.push(format!("syscall CPU time unknown, long syscalls not reported: {e}")),
    }
    o.tp_skbaddr = tp_field(tracefs, "net/netif_receive_skb", "skbaddr")?;
    o.ss_prev_comm = tp_field(tracefs, "sched/sched_switch", "prev_comm")?;
    o.ss_prev_pid = tp_field(tracefs, "sched/sched_switch", "prev_pid")?;
    o.ss_prev_prio = tp_field(tracefs, "sched/sched_switch", "prev_prio")?;
    o.ss_next_comm = tp_field(tracefs, "sched/sched_switch", "next_comm")?;
    o.ss_next_pid = tp_field(tracefs, "sched/sched_switch", "next_pid")?;
    o.ss_next_prio = tp_field(tracefs, "sched/sched_switch", "next_prio")?;
    o.sw_comm = tp_field(tracefs, "sched/sched_wakeup", "comm")?;
    o.sw_pid = tp_field(tracefs, "sched/sched_wakeup", "pid")?;
    o.sw_target_cpu = tp_field(tracefs, "sched/sched_wakeup", "target_cpu")?;
    o.si_vec = tp_field(tracefs, "irq/softirq_entry", "vec")?;
    o.se_id = tp_field(tracefs, "raw_syscalls/sys_enter", "id")?;
    o.se_args = tp_field(tracefs, "raw_syscalls/sys_enter", "args")?;
    o.sx_ret = tp_field(tracefs, "raw_syscalls/sys_exit", "ret")?;
    Ok((o, notes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHED_SWITCH: &str = "name: sched_switch
ID: 316
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:char prev_comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t prev_pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:unsigned long args[6];\toffset:16;\tsize:48;\tsigned:0;
";

    #[test]
    fn parses_format_fields() {
        assert_eq!(format_field(SCHED_SWITCH, "prev_comm"), Some(8));
        assert_eq!(format_field(SCHED_SWITCH, "prev_pid"), Some(24));
        assert_eq!(format_field(SCHED_SWITCH, "skbaddr"), Some(8));
        assert_eq!(format_field(SCHED_SWITCH, "args"), Some(16));
        assert_eq!(format_field(SCHED_SWITCH, "next_pid"), None);
        assert_eq!(format_field("garbage\n\tfield:;", "x"), None);
    }

    /// Reads this machine's BTF; sk_buff's header offsets sit inside a struct_group
    /// (anonymous union), which is what the recursive lookup exists for.
    #[test]
    fn reads_offsets_from_this_kernels_btf() {
        if !Path::new(VMLINUX_BTF).exists() {
            assert!(std::env::var("CI").is_err(), "CI machines have BTF");
            return;
        }
        let btf = Btf::from_bytes(&fs::read(VMLINUX_BTF).unwrap()).unwrap();
        let data = member_offset(&btf, "sk_buff", &["data"]).unwrap();
        let head = member_offset(&btf, "sk_buff", &["head"]).unwrap();
        let nh = member_offset(&btf, "sk_buff", &["network_header"]).unwrap();
        let th = member_offset(&btf, "sk_buff", &["transport_header"]).unwrap();
        assert_eq!(data, head + 8, "data follows head in every kernel since 2.6");
        assert_eq!(nh, th + 2, "network_header follows transport_header");
        let se = member_offset(&btf, "task_struct", &["se", "sum_exec_runtime"]).unwrap();
        assert!(se > 0);
        assert!(member_offset(&btf, "sk_buff", &["no_such_member"]).is_err());
    }
}
