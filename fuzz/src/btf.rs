//! A small BTF writer for the seeds of the `btf` target: the kernel's BTF is 5 MiB, too
//! big to mutate usefully, so the seed is a minimized copy holding only the structs
//! the offset reader looks at (with their real member names and offsets).
use std::collections::HashMap;

use btf_rs::{Btf, Type};

const KIND_INT: u32 = 1;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_CONST: u32 = 10;

/// Little-endian BTF being built: types get ids 1, 2, … in the order added.
#[derive(Default)]
pub struct Writer {
    types: Vec<u8>,
    strings: Vec<u8>,
    offsets: HashMap<String, u32>,
    next_id: u32,
}

impl Writer {
    pub fn new() -> Self {
        Self {
            strings: vec![0],
            next_id: 1,
            ..Self::default()
        }
    }

    fn name(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return 0;
        }
        if let Some(&o) = self.offsets.get(s) {
            return o;
        }
        let o = self.strings.len() as u32;
        self.strings.extend(s.as_bytes());
        self.strings.push(0);
        self.offsets.insert(s.to_string(), o);
        o
    }

    fn words(&mut self, w: &[u32]) {
        for x in w {
            self.types.extend(x.to_le_bytes());
        }
    }

    fn id(&mut self) -> u32 {
        self.next_id += 1;
        self.next_id - 1
    }

    pub fn int(&mut self, name: &str, bytes: u32) -> u32 {
        let n = self.name(name);
        self.words(&[n, KIND_INT << 24, bytes, bytes * 8]);
        self.id()
    }

    /// A typedef or const of `to`.
    pub fn alias(&mut self, name: &str, konst: bool, to: u32) -> u32 {
        let n = self.name(name);
        let kind = if konst { KIND_CONST } else { KIND_TYPEDEF };
        self.words(&[n, kind << 24, to]);
        self.id()
    }

    /// A struct or union with (name, type id, bit offset) members. Its id is returned;
    /// member types may name ids added later.
    pub fn aggregate(
        &mut self,
        name: &str,
        union: bool,
        size: u32,
        members: &[(String, u32, u32)],
    ) -> u32 {
        let n = self.name(name);
        let kind = if union { KIND_UNION } else { KIND_STRUCT };
        let vlen = members.len().min(0xffff) as u32;
        self.words(&[n, (kind << 24) | vlen, size]);
        for (m, ty, off) in members.iter().take(0xffff) {
            let mn = self.name(m);
            self.words(&[mn, *ty, *off]);
        }
        self.id()
    }

    pub fn finish(self) -> Vec<u8> {
        let mut out = vec![0x9f, 0xeb, 1, 0];
        let type_len = self.types.len() as u32;
        for w in [24, 0, type_len, type_len, self.strings.len() as u32] {
            out.extend(w.to_le_bytes());
        }
        out.extend(self.types);
        out.extend(self.strings);
        out
    }
}

/// Members followed into their own struct (the offset reader's paths go through them);
/// anonymous structs and unions are always followed.
const DESCEND: &[&str] = &["se", "thread_info"];

/// The structs the offset reader needs, out of a kernel's BTF, as a small BTF: every
/// member keeps its name and offset; its type becomes `int` unless the reader may look
/// inside it.
pub fn minimize(vmlinux: &[u8]) -> Result<Vec<u8>, String> {
    let btf = Btf::from_bytes(vmlinux).map_err(|e| e.to_string())?;
    let mut w = Writer::new();
    let int = w.int("int", 4);
    // Structs are written after the members that name them: collect first.
    let mut todo: Vec<(String, btf_rs::Struct, bool)> = vec![];
    for name in ["sk_buff", "task_struct", "pt_regs"] {
        let st = btf
            .resolve_types_by_name(name)
            .map_err(|e| e.to_string())?
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) if !s.members.is_empty() => Some(s),
                _ => None,
            })
            .ok_or_else(|| format!("no struct {name}"))?;
        todo.push((name.to_string(), st, false));
    }
    // Ids are assigned in order: the roots first, nested ones appended as found.
    let mut out: Vec<(String, bool, u32, Vec<(String, u32, u32)>)> = vec![];
    let mut i = 0;
    while i < todo.len() {
        let (name, st, union) = todo[i].clone();
        let mut members = vec![];
        for m in &st.members {
            let mname = btf.resolve_name(m).unwrap_or_default();
            let mut ty = btf.resolve_chained_type(m).map_err(|e| e.to_string())?;
            // Through typedefs and qualifiers, as the reader does.
            for _ in 0..16 {
                match &ty {
                    Type::Typedef(_) | Type::Const(_) | Type::Volatile(_) => {
                        let Some(b) = ty.as_btf_type() else { break };
                        ty = btf.resolve_chained_type(b).map_err(|e| e.to_string())?;
                    }
                    _ => break,
                }
            }
            let nested = match ty {
                Type::Struct(s) if mname.is_empty() || DESCEND.contains(&mname.as_str()) => {
                    Some((s, false))
                }
                Type::Union(s) if mname.is_empty() || DESCEND.contains(&mname.as_str()) => {
                    Some((s, true))
                }
                _ => None,
            };
            let ty_id = match nested {
                Some((s, u)) => {
                    todo.push((String::new(), s, u));
                    // Ids: 1 is int, then one per aggregate in `todo` order.
                    todo.len() as u32 + 1
                }
                None => int,
            };
            members.push((mname, ty_id, m.bit_offset()));
        }
        let size = st.size() as u32;
        out.push((name, union, size, members));
        i += 1;
    }
    for (name, union, size, members) in out {
        w.aggregate(&name, union, size, &members);
    }
    Ok(w.finish())
}

/// A hand-made BTF reaching every branch of the reader: a typedef/const chain to a
/// nested struct, an anonymous union, `thread_info.cpu` instead of `task_struct.cpu`,
/// no `policy` (a note) and a bitfield-looking offset.
pub fn synthetic() -> Vec<u8> {
    let mut w = Writer::new();
    let int = w.int("int", 4); // 1
    let m = |n: &str, t: u32, off: u32| (n.to_string(), t, off);
    // 2: sk_buff with its header offsets in an anonymous union (3).
    w.aggregate(
        "sk_buff",
        false,
        232,
        &[
            m("head", int, 192 * 8),
            m("data", int, 200 * 8),
            m("", 3, 180 * 8),
        ],
    );
    w.aggregate(
        "",
        true,
        4,
        &[m("transport_header", int, 0), m("network_header", int, 16)],
    ); // 3
       // 4: task_struct; thread_info through a typedef (5) of a const (6) of struct 7.
    w.aggregate(
        "task_struct",
        false,
        4096,
        &[
            m("thread_info", 5, 0),
            m("pid", int, 1400 * 8),
            m("tgid", int, 1404 * 8),
            m("comm", int, 2000 * 8),
            m("prio", int, 100 * 8),
            m("se", 7, 128 * 8),
            m("flags", int, 3),
        ],
    );
    w.alias("thread_info_t", false, 6); // 5
    w.alias("", true, 7); // 6
    w.aggregate(
        "thread_info",
        false,
        24,
        &[m("flags", int, 0), m("cpu", int, 16 * 8)],
    ); // 7
    w.aggregate("pt_regs", false, 168, &[m("di", int, 112 * 8)]); // 8
    w.finish()
}
