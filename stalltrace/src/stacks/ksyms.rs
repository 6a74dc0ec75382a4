//! Kernel addresses to `function+0xoff` through `/proc/kallsyms` (read once, as
//! `aya::util::kernel_symbols()` returns it: address → name, where module symbols
//! carry a `\t[module]` suffix).
use std::collections::BTreeMap;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum KsymError {
    #[error("reading /proc/kallsyms: {0}")]
    Read(#[from] std::io::Error),
    #[error("/proc/kallsyms shows no addresses (kptr_restrict hides them from this process)")]
    Hidden,
}

/// Symbols read from `/proc/kallsyms`, looked up by the nearest lower address.
#[derive(Debug, Default)]
pub struct KernelSymbols {
    syms: BTreeMap<u64, String>,
}

impl KernelSymbols {
    /// This kernel's symbols.
    pub fn load() -> Result<Self, KsymError> {
        Self::from_map(aya::util::kernel_symbols()?)
    }

    /// From an address → name map (`kernel_symbols()`'s form). Zero addresses are what
    /// kallsyms shows without the right to see them: refused, since every lookup
    /// would then name the same symbol.
    pub fn from_map(mut syms: BTreeMap<u64, String>) -> Result<Self, KsymError> {
        syms.remove(&0);
        if syms.is_empty() {
            return Err(KsymError::Hidden);
        }
        Ok(Self { syms })
    }

    /// No symbols: every frame prints as an address.
    pub fn empty() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.syms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.syms.is_empty()
    }

    /// `vfs_read+0x9c`, `veth_poll+0x10 [veth]`, or `0xffffffff81234567` when no
    /// symbol lies at or below the address. `lookup` is the address to find the
    /// function by (a return address minus one for callers, so a call at the very end
    /// of a function is not named after the next one); the offset is `addr`'s.
    pub fn name(&self, addr: u64, lookup: u64) -> String {
        match self.syms.range(..=lookup).next_back() {
            Some((&start, name)) => {
                let off = addr.saturating_sub(start);
                match name.split_once('\t') {
                    Some((func, module)) => format!("{func}+{off:#x} {}", module.trim()),
                    None => format!("{name}+{off:#x}"),
                }
            }
            None => format!("{addr:#x}"),
        }
    }

    /// Frames of one stack, innermost first.
    pub fn frames(&self, ips: &[u64]) -> Vec<String> {
        ips.iter()
            .enumerate()
            .map(|(i, &ip)| self.name(ip, if i == 0 { ip } else { ip.saturating_sub(1) }))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synthetic() -> KernelSymbols {
        let mut m = BTreeMap::new();
        m.insert(0xffff_ffff_8100_0000, "_stext".to_string());
        m.insert(0xffff_ffff_8120_0000, "vfs_read".to_string());
        m.insert(0xffff_ffff_8120_0400, "ksys_pread64".to_string());
        m.insert(0xffff_ffff_8120_0500, "__x64_sys_pread64".to_string());
        m.insert(0xffff_ffff_c000_1000, "veth_poll\t[veth]".to_string());
        KernelSymbols::from_map(m).unwrap()
    }

    #[test]
    fn nearest_lower_symbol_and_offset() {
        let k = synthetic();
        assert_eq!(
            k.name(0xffff_ffff_8120_009c, 0xffff_ffff_8120_009c),
            "vfs_read+0x9c"
        );
        // Exactly at a symbol: offset 0.
        assert_eq!(
            k.name(0xffff_ffff_8120_0400, 0xffff_ffff_8120_0400),
            "ksys_pread64+0x0"
        );
        // Module symbols keep their module.
        assert_eq!(
            k.name(0xffff_ffff_c000_1010, 0xffff_ffff_c000_1010),
            "veth_poll+0x10 [veth]"
        );
        // Below every symbol: the address.
        assert_eq!(k.name(0x1000, 0x1000), "0x1000");
    }

    #[test]
    fn callers_are_named_by_the_call_not_the_return_address() {
        let k = synthetic();
        // A return address right at the start of the next function belongs to the
        // function that made the call.
        let f = k.frames(&[
            0xffff_ffff_8120_009c,
            0xffff_ffff_8120_0400,
            0xffff_ffff_8120_0520,
        ]);
        assert_eq!(
            f,
            vec!["vfs_read+0x9c", "vfs_read+0x400", "__x64_sys_pread64+0x20"]
        );
    }

    #[test]
    fn hidden_addresses_are_refused() {
        let mut m = BTreeMap::new();
        m.insert(0, "vfs_read".to_string());
        assert!(matches!(KernelSymbols::from_map(m), Err(KsymError::Hidden)));
        assert_eq!(KernelSymbols::empty().name(0xabc, 0xabc), "0xabc");
    }
}
