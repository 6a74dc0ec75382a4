//! User-space addresses to `function+0xoff [binary]`, resolved while the process
//! lives: blazesym reads the process's memory map and the ELF symbol tables of its
//! binaries (through `/proc/PID/map_files`, so it works across mount namespaces).
//! Addresses it cannot name fall back to `0x… [binary+0xoff]` from `/proc/PID/maps`.
use std::{fs, path::Path};

use blazesym::symbolize::{
    source::{Process, Source},
    Input, Symbolized, Symbolizer,
};

/// Names user-space frames of one process.
pub trait UserSymbolizer {
    /// Frames for `ips` (innermost first) of process `tgid`, one string per address.
    fn frames(&mut self, tgid: u32, ips: &[u64]) -> Vec<String>;
}

/// blazesym's symbolizer (it caches parsed binaries across calls).
pub struct Blazesym {
    sym: Symbolizer,
}

impl Default for Blazesym {
    fn default() -> Self {
        Self {
            sym: Symbolizer::new(),
        }
    }
}

fn basename(p: &Path) -> String {
    p.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.to_string_lossy().into_owned())
}

impl UserSymbolizer for Blazesym {
    fn frames(&mut self, tgid: u32, ips: &[u64]) -> Vec<String> {
        // Pid 0 would mean "this process" to blazesym: never symbolize it.
        if tgid == 0 || ips.is_empty() {
            return ips.iter().map(|ip| format!("{ip:#x}")).collect();
        }
        let lookups: Vec<u64> = ips
            .iter()
            .enumerate()
            .map(|(i, &ip)| if i == 0 { ip } else { ip.saturating_sub(1) })
            .collect();
        let mut proc_src = Process::new(tgid.into());
        // ELF symbols only (the crate is built without DWARF support).
        proc_src.debug_syms = false;
        proc_src.perf_map = false;
        let src = Source::Process(proc_src);
        let syms = self
            .sym
            .symbolize(&src, Input::AbsAddr(lookups.as_slice()))
            .unwrap_or_default();
        let mut maps: Option<Vec<MapEntry>> = None;
        ips.iter()
            .enumerate()
            .map(|(i, &ip)| match syms.get(i) {
                Some(Symbolized::Sym(s)) => {
                    let lookup = lookups.get(i).copied().unwrap_or(ip);
                    let off = ip.saturating_sub(lookup) + s.offset as u64;
                    match &s.module {
                        Some(m) => format!("{}+{off:#x} [{}]", s.name, basename(Path::new(m))),
                        None => format!("{}+{off:#x}", s.name),
                    }
                }
                _ => {
                    let maps = maps.get_or_insert_with(|| read_maps(tgid));
                    module_offset(maps, ip)
                }
            })
            .collect()
    }
}

/// One file-backed mapping of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    pub file_off: u64,
    pub path: String,
}

/// File-backed mappings of a process (empty when it is gone).
pub fn read_maps(tgid: u32) -> Vec<MapEntry> {
    fs::read_to_string(format!("/proc/{tgid}/maps"))
        .map(|s| parse_maps(&s))
        .unwrap_or_default()
}

/// Parses `/proc/PID/maps` text; lines it does not understand are skipped.
pub fn parse_maps(text: &str) -> Vec<MapEntry> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let range = it.next()?;
            let _perms = it.next()?;
            let off = it.next()?;
            let _dev = it.next()?;
            let _inode = it.next()?;
            let path: Vec<&str> = it.collect();
            let path = path.join(" ");
            if path.is_empty() {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            Some(MapEntry {
                start: u64::from_str_radix(a, 16).ok()?,
                end: u64::from_str_radix(b, 16).ok()?,
                file_off: u64::from_str_radix(off, 16).ok()?,
                path,
            })
        })
        .collect()
}

/// `0x7f… [libc.so.6+0x1234]` (offset into the file), or `0x…` outside every file.
pub fn module_offset(maps: &[MapEntry], ip: u64) -> String {
    match maps.iter().find(|m| m.start <= ip && ip < m.end) {
        Some(m) if m.path.starts_with('[') => format!("{ip:#x} {}", m.path),
        Some(m) => format!(
            "{ip:#x} [{}+{:#x}]",
            basename(Path::new(&m.path)),
            ip - m.start + m.file_off
        ),
        None => format!("{ip:#x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0a00000-55d0c0b00000 r-xp 00010000 08:01 1234   /usr/bin/stalltrace
7f0000000000-7f0000100000 r-xp 00028000 08:01 99     /usr/lib/x86_64-linux-gnu/libc.so.6
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0      [stack]
7ffd00100000-7ffd00102000 r-xp 00000000 00:00 0      [vdso]
7f0000200000-7f0000300000 rw-p 00000000 00:00 0
";

    #[test]
    fn maps_give_module_and_file_offset() {
        let m = parse_maps(MAPS);
        assert_eq!(m.len(), 4, "anonymous mappings are skipped: {m:?}");
        assert_eq!(
            module_offset(&m, 0x55d0_c0a0_1234),
            "0x55d0c0a01234 [stalltrace+0x11234]"
        );
        assert_eq!(
            module_offset(&m, 0x7f00_0000_0010),
            "0x7f0000000010 [libc.so.6+0x28010]"
        );
        assert_eq!(module_offset(&m, 0x7ffd_0010_0010), "0x7ffd00100010 [vdso]");
        assert_eq!(module_offset(&m, 0x7f00_0020_0000), "0x7f0000200000");
    }

    #[test]
    fn own_process_frames_resolve_to_this_binary() {
        // A real symbolization: an address inside this test function's binary.
        let ip = own_process_frames_resolve_to_this_binary as fn() as usize as u64;
        let mut b = Blazesym::default();
        let f = b.frames(std::process::id(), &[ip]);
        assert_eq!(f.len(), 1);
        assert!(
            f[0].contains("own_process_frames_resolve_to_this_binary+0x0 ["),
            "{f:?}"
        );
        // A gone process: addresses, no panic.
        let f = b.frames(u32::MAX - 1, &[0x1234, 0x5678]);
        assert_eq!(f, vec!["0x1234", "0x5678"]);
    }
}
