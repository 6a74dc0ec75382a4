//! Sampled stacks as text: function names without offsets, one-line stacks read leaf
//! first, a holder's headline stack. (Sampling and symbolization live in the Linux
//! crate; the dump carries symbolized frames, so reading them needs no kernel.)
use crate::dump::HolderStacks;

/// Frames of a headline stack: in one-line sentences and in the culprit ranking.
pub const HEADLINE_FRAMES: usize = 5;

/// The function names of the first `n` frames (offsets and modules dropped).
pub fn frame_names(frames: &[String], n: usize) -> Vec<String> {
    frames
        .iter()
        .take(n)
        .map(|f| {
            // Names may hold spaces (`<Vec<T> as Drop>::drop`): cut the ` [module]`
            // suffix, then the offset.
            let f = match f.rfind(" [") {
                Some(i) if f.ends_with(']') => &f[..i],
                _ => f.as_str(),
            };
            match f.rfind("+0x") {
                Some(i) if i > 0 => f[..i].to_string(),
                _ => f.to_string(),
            }
        })
        .collect()
}

/// Frames to show in one line: leaf first, offsets and modules dropped, at most `n`,
/// joined by ` ← ` (read "called from").
pub fn short_stack(frames: &[String], n: usize) -> String {
    let mut s = frame_names(frames, n).join(" ← ");
    if frames.len() > n {
        s.push_str(" ← …");
    }
    s
}

/// The headline stack of a holder: its most frequent one, kernel frames when it was
/// in the kernel, else user frames. `(samples of it, of all, "kernel"|"user", frames)`.
pub fn headline(st: &HolderStacks) -> Option<(u32, u32, &'static str, &[String])> {
    let top = st.top.first()?;
    if !top.kernel.is_empty() {
        Some((top.count, st.samples, "kernel", &top.kernel))
    } else if !top.user.is_empty() {
        Some((top.count, st.samples, "user", &top.user))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_stack_reads_leaf_first() {
        let f: Vec<String> = [
            "copy_page_to_iter+0x10",
            "shmem_file_read_iter+0x20",
            "vfs_read+0x30",
            "__x64_sys_pread64+0x40",
            "do_syscall_64+0x50",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            short_stack(&f, 4),
            "copy_page_to_iter ← shmem_file_read_iter ← vfs_read ← __x64_sys_pread64 ← …"
        );
        let u = vec![
            "stalltrace::lab::hog::spin+0x1f [stalltrace]".to_string(),
            "0x7f01 [libc.so.6+0x2]".to_string(),
        ];
        assert_eq!(short_stack(&u, 4), "stalltrace::lab::hog::spin ← 0x7f01");
        let r = vec![
            "<alloc::vec::Vec<T> as core::ops::drop::Drop>::drop+0x1f [stalltrace]".to_string(),
        ];
        assert_eq!(
            frame_names(&r, 4),
            vec!["<alloc::vec::Vec<T> as core::ops::drop::Drop>::drop"]
        );
        assert_eq!(
            frame_names(&["veth_poll+0x10 [veth]".to_string()], 1),
            vec!["veth_poll"]
        );
    }
}
