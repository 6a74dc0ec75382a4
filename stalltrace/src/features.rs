//! `stalltrace features`: what this kernel and this process allow, and which path
//! `record` would take (retsnoop's `-V` idea). Loads every program through the
//! verifier; attaches nothing.
use std::path::Path;

use tracer_common::{Filter, KernelConfig};

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{
    exit::ExitCode,
    kernel::{
        loader::{LoadOptions, Tracer},
        offsets,
        packet_path::{decide, AttachMode, Needs},
        preflight,
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

/// Example runs, as `record` flags, and what each needs of the packets.
fn packet_cases() -> [(&'static str, Needs); 5] {
    let v4: IpAddr = Ipv4Addr::new(10, 0, 0, 9).into();
    let v6: IpAddr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 9).into();
    let n = |probe, tcp_port, peer| Needs {
        probe,
        tcp_port,
        peer,
        icmp: true,
    };
    [
        ("record", n(false, None, None)),
        ("record --peer 10.0.0.9", n(false, None, Some(v4))),
        ("record --peer fd00::9", n(false, None, Some(v6))),
        ("record --probe 10.0.0.9", n(true, None, None)),
        ("record --tcp 8080", n(false, Some(8080), None)),
    ]
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
            Ok(()) => "yes: kprobe:icmp_echo can report IPv4 echo requests".into(),
            Err(why) => format!("no: {why}"),
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
    // The decision `record` makes, for the runs people start most.
    crate::outln!("  packets with --attach auto, by what the run must see:");
    for (run, needs) in packet_cases() {
        match decide(AttachMode::Auto, &needs, kp.clone()) {
            Ok(p) => crate::outln!("    {run:<28} {}", p.line()),
            Err(e) => crate::outln!("    {run:<28} {e}"),
        }
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
