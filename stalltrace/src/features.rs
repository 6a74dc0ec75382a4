//! `stalltrace features`: what this kernel and this process allow, and which path
//! `record` would take (retsnoop's `-V` idea). Loads every program through the
//! verifier; attaches nothing.
use std::path::Path;

use tracer_common::{Filter, KernelConfig};

use crate::{
    exit::ExitCode,
    kernel::{
        loader::{LoadOptions, Tracer},
        offsets, preflight,
    },
};

struct Row {
    what: &'static str,
    ok: bool,
    detail: String,
    /// Missing it stops `record`.
    required: bool,
}

use crate::sys::read_trim;

#[derive(clap::Args, Debug)]
pub struct FeaturesArgs {
    /// Kernel BTF file to use instead of /sys/kernel/btf/vmlinux (as `record --btf`).
    #[arg(long, value_name = "FILE")]
    pub btf: Option<std::path::PathBuf>,
}

pub fn run(a: FeaturesArgs) -> anyhow::Result<ExitCode> {
    let mut rows = vec![];
    let kernel = read_trim("/proc/sys/kernel/osrelease").unwrap_or_else(|| "?".into());
    crate::outln!(
        "stalltrace {} on Linux {kernel} ({})",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH
    );

    let privs = preflight::check_privileges("stalltrace record");
    rows.push(Row {
        what: "privileges (CAP_BPF+CAP_PERFMON or root)",
        ok: privs.is_ok(),
        detail: privs
            .as_ref()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "yes".into()),
        required: true,
    });
    let btf = a.btf.clone().unwrap_or_else(|| offsets::VMLINUX_BTF.into());
    let offs = offsets::read(&btf);
    rows.push(Row {
        what: "kernel BTF (struct offsets)",
        ok: offs.is_ok(),
        detail: match &offs {
            Ok((_, notes)) if notes.is_empty() => format!("{} (all members found)", btf.display()),
            Ok((_, notes)) => format!("{}; {}", btf.display(), notes.join("; ")),
            Err(e) => e.to_string(),
        },
        required: true,
    });
    let kp = preflight::kprobe_support();
    rows.push(Row {
        what: "kprobes",
        ok: kp.is_ok(),
        detail: match &kp {
            Ok(()) => "yes: packets via kprobe:icmp_echo with --attach auto".into(),
            Err(why) => format!("no: {why}; packets via tracepoint:net:netif_receive_skb"),
        },
        required: false,
    });
    let sw = Path::new("/sys/bus/event_source/devices/software").exists();
    rows.push(Row {
        what: "perf software events (cpu-clock)",
        ok: sw,
        detail: if sw { "yes".into() } else { "no".into() },
        required: false,
    });
    let lockdown = read_trim("/sys/kernel/security/lockdown")
        .unwrap_or_else(|| "unknown (securityfs not mounted)".into());
    rows.push(Row {
        what: "lockdown",
        ok: !lockdown.contains("[confidentiality]"),
        detail: lockdown,
        required: true,
    });

    // The verifier's word on every program, if we may ask it.
    let mut degraded = vec![];
    if privs.is_ok() {
        if let Ok((o, _)) = &offs {
            let opts = LoadOptions {
                filter: Filter::all_icmp(),
                offsets: *o,
                config: KernelConfig::defaults(),
                ring_bytes: 1 << 16,
                stacks: true,
            };
            let res = Tracer::load(&opts, true);
            rows.push(Row {
                what: "programs through the verifier",
                ok: res.is_ok(),
                detail: match &res {
                    Ok(t) => format!(
                        "load: {}",
                        crate::kernel::loader::PROGRAMS
                            .iter()
                            .filter(|p| t.loaded.contains(&p.name))
                            .map(|p| format!("{} ({})", p.name, p.hook_name()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    Err(e) => e.to_string(),
                },
                required: true,
            });
            if let Ok(t) = &res {
                rows.push(Row {
                    what: "sampler (what culprits were doing)",
                    ok: t.sampler.is_some(),
                    detail: t.sampler_variant().to_string(),
                    required: false,
                });
                degraded = t.degraded.clone();
            }
        }
    }
    for r in &rows {
        let mark = if r.ok {
            "ok  "
        } else if r.required {
            "FAIL"
        } else {
            "no  "
        };
        crate::outln!("  [{mark}] {:<42} {}", r.what, r.detail);
    }
    // Where this kernel makes record do without something: the same lines the dump
    // header carries in `degraded`.
    for d in &degraded {
        crate::outln!("  degraded: {d}");
    }
    let ready = rows.iter().all(|r| r.ok || !r.required);
    crate::outln!(
        "{}",
        if ready {
            "record: ready"
        } else {
            "record: cannot run here (see FAIL above)"
        }
    );
    Ok(match (ready, privs.is_ok()) {
        (true, _) => ExitCode::Ok,
        (false, false) => ExitCode::Privileges,
        (false, true) => ExitCode::KernelFeature,
    })
}
