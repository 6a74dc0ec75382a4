//! The agent's HTTP endpoint: `/metrics` (Prometheus exposition) and `/healthz` (ok
//! while the record loop ticks). A small blocking server on its own thread: scrapes
//! are rare and small.
use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

use anyhow::Context as _;
use stalltrace_analysis::report::metrics::Metrics;

use crate::exit::{CodedError, ExitCode};

pub struct Server {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

/// The loop is stuck if it has not ticked for this long.
const STUCK_NS: u64 = 5_000_000_000;

pub fn serve(addr: SocketAddr, metrics: Metrics, alive: Arc<AtomicU64>) -> anyhow::Result<Server> {
    let server = tiny_http::Server::http(addr).map_err(|e| {
        CodedError::new(
            ExitCode::Failure,
            format!(
                "cannot listen on {addr}: {e} (another agent running? choose another --listen)"
            ),
        )
    })?;
    let server = Arc::new(server);
    let s = server.clone();
    let thread = std::thread::Builder::new()
        .name("stalltrace-http".into())
        .spawn(move || {
            for req in s.incoming_requests() {
                let _ = answer(req, &metrics, &alive);
            }
        })
        .context("starting the HTTP thread")?;
    Ok(Server {
        server,
        thread: Some(thread),
    })
}

fn answer(req: tiny_http::Request, metrics: &Metrics, alive: &AtomicU64) -> std::io::Result<()> {
    let text = |body: String, code: u16, ctype: &str| {
        let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], ctype.as_bytes())
            .map_err(|()| std::io::Error::other("bad header"));
        header.map(|h| {
            tiny_http::Response::from_string(body)
                .with_status_code(code)
                .with_header(h)
        })
    };
    let path = req.url().split('?').next().unwrap_or("");
    let resp = match (req.method(), path) {
        (tiny_http::Method::Get, "/metrics") => match metrics.encode() {
            Ok(body) => text(
                body,
                200,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )?,
            Err(e) => text(format!("encoding the metrics: {e}\n"), 500, "text/plain")?,
        },
        (tiny_http::Method::Get, "/healthz") => {
            let last = alive.load(Ordering::Relaxed);
            let now = crate::sys::boot_ns();
            if last != 0 && now.saturating_sub(last) < STUCK_NS {
                text("ok\n".into(), 200, "text/plain")?
            } else if last == 0 {
                text("starting\n".into(), 503, "text/plain")?
            } else {
                text(
                    format!(
                        "stuck: no tick for {} ms\n",
                        now.saturating_sub(last) / 1_000_000
                    ),
                    503,
                    "text/plain",
                )?
            }
        }
        _ => text("not found: /metrics, /healthz\n".into(), 404, "text/plain")?,
    };
    req.respond(resp)
}

impl Server {
    pub fn stop(mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
