//! Ring-buffer headroom: `record` of every echo (no filter) at rising echo rates with
//! the default 4 MiB ring, events offered, recorded and lost per second; when nothing
//! is lost at any rate, one run with a 16 KiB ring shows what a user sees on overflow.
use std::{
    fs,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::ctx::{Ctx, Mode};
use crate::sys::*;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Step {
    pub(crate) hping3_rate: String,
    pub(crate) ring_buffer: String,
    pub(crate) secs: f64,
    pub(crate) echo_requests_per_s: f64,
    pub(crate) events_recorded: u64,
    pub(crate) events_lost: u64,
    pub(crate) events_recorded_per_s: f64,
    pub(crate) events_offered_per_s: f64,
    /// The recorder's lines about lost events.
    pub(crate) user_sees: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Headroom {
    pub(crate) steps: Vec<Step>,
    pub(crate) max_rate_without_loss_per_s: f64,
    pub(crate) any_loss_with_default_ring: bool,
}

fn step(cx: &mut Ctx, rate: Option<&str>, ring: &str, secs: u64) -> anyhow::Result<Step> {
    let (mut t, _, dump) = cx
        .start_tracer(Mode::Every, &["--ring-buffer", ring])?
        .context("no tracer")?;
    let e0 = in_echos(cx.flood_pid)?;
    let t0 = Instant::now();
    let mut flood = cx.start_flood(rate, secs)?;
    pause(Duration::from_secs(secs))?;
    flood.stop(Duration::from_secs(3));
    let dt = t0.elapsed().as_secs_f64();
    let e1 = in_echos(cx.flood_pid)?;
    pause(Duration::from_millis(300))?;
    let text = t.stop(Duration::from_secs(30));
    let f = footer_of(&dump).unwrap_or_default();
    let _ = fs::remove_file(&dump);
    let (recorded, lost) = (f.counts.packets, f.lost.packets);
    let s = Step {
        hping3_rate: rate.unwrap_or("--flood").into(),
        ring_buffer: ring.into(),
        secs: dt,
        echo_requests_per_s: (e1 - e0) as f64 / dt,
        events_recorded: recorded,
        events_lost: lost,
        events_recorded_per_s: recorded as f64 / dt,
        events_offered_per_s: (recorded + lost) as f64 / dt,
        user_sees: text
            .lines()
            .filter(|l| {
                l.contains("lost") && (l.starts_with("warning:") || l.starts_with("stopped"))
            })
            .map(String::from)
            .collect(),
    };
    println!(
        "  {:>8} ring {:>6}: {:>9.0} events/s offered, {:>9.0} recorded/s, lost {lost}",
        s.hping3_rate, ring, s.events_offered_per_s, s.events_recorded_per_s
    );
    Ok(s)
}

pub(crate) fn run(cx: &mut Ctx) -> anyhow::Result<Headroom> {
    println!(
        "bench: ring-buffer headroom (record every echo, default 4 MiB ring) at rising echo rates"
    );
    let secs: u64 = if cx.quick { 2 } else { 3 };
    let rates: &[Option<&str>] = if cx.quick {
        &[Some("u1000"), Some("u50"), None]
    } else {
        &[Some("u1000"), Some("u200"), Some("u50"), Some("u20"), None]
    };
    let mut steps = vec![];
    for &rate in rates {
        steps.push(step(cx, rate, "4MiB", secs)?);
    }
    let any_loss = steps.iter().any(|s| s.events_lost > 0);
    if !any_loss {
        // Nothing lost with the default ring: show what a user sees when it overflows.
        steps.push(step(cx, None, "16KiB", secs)?);
    }
    let best = steps
        .iter()
        .filter(|s| s.ring_buffer == "4MiB" && s.events_lost == 0)
        .map(|s| s.events_recorded_per_s)
        .fold(0.0, f64::max);
    Ok(Headroom {
        steps,
        max_rate_without_loss_per_s: best,
        any_loss_with_default_ring: any_loss,
    })
}
