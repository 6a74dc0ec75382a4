//! The agent's HTTP endpoint: `/metrics` (Prometheus exposition) and `/healthz` (ok
//! while the record loop ticks). It runs on its own thread with its own single-threaded
//! tokio runtime, so no client ever holds up the recording loop, and it is built for a
//! pod network where any client may be hostile (hyper, HTTP/1.1):
//!
//! - `GET` only; a request announcing a body (`Content-Length` above 0, or any
//!   `Transfer-Encoding`) is answered 413/400 and the connection closed, the body unread;
//! - a request head (request line and headers) of at most [`MAX_HEAD_BYTES`], received
//!   in full within [`HEAD_TIMEOUT`] of the connection becoming ready for one (a new or
//!   idle keep-alive connection is closed after that long without a complete head);
//! - a response write (and a TLS handshake) that makes no progress for
//!   [`WRITE_TIMEOUT`] closes the connection;
//! - at most [`MAX_CONNECTIONS`] connections, [`MAX_PER_PEER`] of them from one
//!   address: a new connection takes the place of the longest-idle connection (no
//!   request being answered) of its own address when that one is at its share, else of
//!   the address holding the most; it is closed at once when none is idle. Nothing
//!   queues, and one client (one pod) cannot crowd out the scraper or the kubelet.
//!
//! Optionally TLS (rustls, ring), with `/metrics` behind a client certificate signed by
//! a given CA or a bearer token; `/healthz` says only ok/starting/stuck and stays open
//! to the kubelet's probes, which present neither.
use std::{
    collections::HashMap,
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    path::Path,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use hyper::{
    body::{Bytes, Frame, Incoming, SizeHint},
    header::{self, HeaderMap, HeaderValue},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use stalltrace_analysis::report::metrics::Metrics;
use subtle::ConstantTimeEq as _;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::{oneshot, Notify},
};
use tokio_io_timeout::TimeoutStream;

use crate::exit::{CodedError, ExitCode};

/// Connections open at once, at most.
pub const MAX_CONNECTIONS: usize = 64;
/// … and from one client address.
pub const MAX_PER_PEER: usize = 16;
/// A request's line and headers, at most.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Headers in a request, at most.
const MAX_HEADERS: usize = 64;
/// How long a connection may take to send a complete request head (counted from its
/// accept, or from the end of the previous response on a keep-alive connection).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a response write or a TLS handshake may make no progress.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The exposition is encoded at most this often; scrapes in between get the same text
/// (a flood of scrapes then costs no time under the lock the recording loop shares).
const ENCODE_EVERY: Duration = Duration::from_millis(500);
/// Certificate, key, CA and token files are read up to this size.
const MAX_SECRET_FILE: u64 = 1 << 20;
/// `--listen` with an address alone.
pub const DEFAULT_PORT: u16 = 9910;

/// The loop is stuck if it has not ticked for this long.
const STUCK_NS: u64 = 5_000_000_000;

/// `--listen`: `ADDR:PORT`, `[IPV6]:PORT`, or an address alone (port 9910), so that the
/// DaemonSet's `$(POD_IP)` serves IPv4 and IPv6 pods alike.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_PORT));
    }
    Err(format!(
        "{s:?}: expected ADDR:PORT, [IPV6]:PORT or an address alone (port {DEFAULT_PORT})"
    ))
}

/// The files that turn TLS and authentication on (`watch --tls-*`, `--auth-token-file`).
#[derive(Debug, Clone, Default)]
pub struct Security<'a> {
    pub tls_cert: Option<&'a Path>,
    pub tls_key: Option<&'a Path>,
    pub tls_client_ca: Option<&'a Path>,
    pub auth_token_file: Option<&'a Path>,
}

/// What the endpoint serves and how, checked (every file read) before anything is
/// loaded into the kernel.
pub struct Endpoint {
    pub listen: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    token: Option<Vec<u8>>,
    client_ca: bool,
}

fn bad_file(what: &str, path: &Path, e: impl std::fmt::Display) -> anyhow::Error {
    CodedError::new(
        ExitCode::BadInput,
        format!("{what} {}: {e}", path.display()),
    )
    .into()
}

fn read_secret(what: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    crate::sys::read_regular(path, MAX_SECRET_FILE)
        .map_err(|e| CodedError::new(ExitCode::BadInput, format!("reading the {what}: {e}")).into())
}

impl Endpoint {
    /// Plain HTTP, no authentication.
    pub fn plain(listen: SocketAddr) -> Self {
        Self {
            listen,
            tls: None,
            token: None,
            client_ca: false,
        }
    }

    pub fn new(listen: SocketAddr, s: &Security<'_>) -> anyhow::Result<Self> {
        let mut ep = Self::plain(listen);
        let (cert, key) = match (s.tls_cert, s.tls_key) {
            (Some(c), Some(k)) => (c, k),
            (None, None) => {
                if s.tls_client_ca.is_some() || s.auth_token_file.is_some() {
                    return Err(CodedError::new(
                        ExitCode::Usage,
                        "--tls-client-ca and --auth-token-file need --tls-cert and --tls-key: \
                         a token or the scrape itself would cross the network in clear text",
                    )
                    .into());
                }
                return Ok(ep);
            }
            _ => {
                return Err(CodedError::new(
                    ExitCode::Usage,
                    "--tls-cert and --tls-key go together",
                )
                .into())
            }
        };
        if let Some(t) = s.auth_token_file {
            let raw = read_secret("bearer token file", t)?;
            let token = String::from_utf8(raw)
                .map_err(|_| bad_file("the bearer token file", t, "not UTF-8 text"))?
                .trim()
                .to_string();
            if token.is_empty() || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(bad_file(
                    "the bearer token file",
                    t,
                    "expected one token (no spaces or control characters)",
                ));
            }
            ep.token = Some(token.into_bytes());
        }
        ep.client_ca = s.tls_client_ca.is_some();
        ep.tls = Some(Arc::new(tls_config(cert, key, s.tls_client_ca)?));
        Ok(ep)
    }

    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// How `/metrics` is guarded, in words.
    pub fn guard(&self) -> &'static str {
        match (self.client_ca, self.token.is_some()) {
            (true, true) => " (client certificate or bearer token required)",
            (true, false) => " (client certificate required)",
            (false, true) => " (bearer token required)",
            (false, false) => "",
        }
    }
}

/// rustls with the ring provider: the server's certificate chain and key, and when a
/// CA is given, client certificates verified against it. A client without one still
/// completes the handshake (the kubelet's probes of `/healthz` present none), and
/// `/metrics` then refuses it.
fn tls_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> anyhow::Result<rustls::ServerConfig> {
    use rustls::pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer};
    #[allow(
        deprecated,
        reason = "ring builds here with nothing but cc (aws-lc-rs wants cmake); it lacks the \
                  post-quantum key exchange, which a metrics scrape does not need"
    )]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = CertificateDer::pem_slice_iter(&read_secret("TLS certificate", cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_file("the TLS certificate", cert, e))?;
    if certs.is_empty() {
        return Err(bad_file(
            "the TLS certificate",
            cert,
            "no PEM certificate in it",
        ));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&read_secret("TLS key", key)?)
        .map_err(|e| bad_file("the TLS key", key, e))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("setting up TLS")?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(&read_secret("client CA", ca)?) {
                let c = c.map_err(|e| bad_file("the client CA", ca, e))?;
                roots.add(c).map_err(|e| bad_file("the client CA", ca, e))?;
            }
            if roots.is_empty() {
                return Err(bad_file("the client CA", ca, "no PEM certificate in it"));
            }
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| bad_file("the client CA", ca, e))?;
            builder.with_client_cert_verifier(v)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(certs, key_der)
        .map_err(|e| bad_file("the TLS certificate and key", cert, e))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// What every connection's handler shares.
struct Shared {
    metrics: Metrics,
    alive: Arc<AtomicU64>,
    token: Option<Vec<u8>>,
    client_ca: bool,
    /// The last exposition (OpenMetrics, text 0.0.4) and when it was encoded.
    cache: Mutex<Option<(Instant, Exposition)>>,
}

impl Shared {
    fn new(ep: &Endpoint, metrics: Metrics, alive: Arc<AtomicU64>) -> Self {
        Self {
            metrics,
            alive,
            token: ep.token.clone(),
            client_ca: ep.client_ca,
            cache: Mutex::new(None),
        }
    }

    fn authorized(&self, h: &HeaderMap, client_cert: bool) -> bool {
        if self.token.is_none() && !self.client_ca {
            return true;
        }
        if self.client_ca && client_cert {
            return true;
        }
        let Some(token) = &self.token else {
            return false;
        };
        h.get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .is_some_and(|given| bool::from(given.ct_eq(token)))
    }

    fn exposition(&self) -> Result<Exposition, std::fmt::Error> {
        let mut cache = match self.cache.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some((at, e)) = cache.as_ref() {
            if at.elapsed() < ENCODE_EVERY {
                return Ok(e.clone());
            }
        }
        let om = self.metrics.encode()?;
        let e = Exposition {
            text: Bytes::from(stalltrace_analysis::report::metrics::openmetrics_to_text(
                &om,
            )),
            openmetrics: Bytes::from(om),
        };
        *cache = Some((Instant::now(), e.clone()));
        Ok(e)
    }
}

/// One encoding of the metrics in both formats.
#[derive(Clone)]
struct Exposition {
    openmetrics: Bytes,
    text: Bytes,
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT_004: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether the client asks for OpenMetrics: an `Accept` media range
/// `application/openmetrics-text` with a q-value above 0 (Prometheus sends one first,
/// curl none). Everyone else gets the text format 0.0.4, which every parser reads.
fn wants_openmetrics(h: &HeaderMap) -> bool {
    h.get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim();
            let q = parts
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .map_or(Some(1.0), |(_, v)| v.trim().parse::<f64>().ok());
            media.eq_ignore_ascii_case("application/openmetrics-text") && q.is_some_and(|q| q > 0.0)
        })
}

/// One connection as the admission table sees it.
struct ConnState {
    /// A request is being answered (from its complete head to its body written).
    busy: AtomicBool,
    /// When it last became idle: accepted, or its last response written.
    idle_since: Mutex<Instant>,
}

impl ConnState {
    fn idle_since(&self) -> Instant {
        match self.idle_since.lock() {
            Ok(g) => *g,
            Err(p) => *p.into_inner(),
        }
    }
}

struct Slot {
    peer: IpAddr,
    state: Arc<ConnState>,
    close: Arc<Notify>,
}

/// The open connections, by id, and how many each client address holds.
#[derive(Default)]
struct Table {
    next: u64,
    open: HashMap<u64, Slot>,
    per_peer: HashMap<IpAddr, usize>,
}

impl Table {
    /// Makes room for a connection from `peer`: within the caps, or by closing the
    /// longest-idle connection of `peer` itself when it holds its share, else of the
    /// address holding the most connections. `None` when no such connection is idle
    /// (every one is answering a request): the new one is then closed.
    fn admit(
        &mut self,
        peer: IpAddr,
        max: usize,
        max_per_peer: usize,
    ) -> Option<(u64, Arc<ConnState>, Arc<Notify>)> {
        let mine = self.per_peer.get(&peer).copied().unwrap_or(0);
        let from = if mine >= max_per_peer {
            Some(peer)
        } else if self.open.len() >= max {
            self.per_peer
                .iter()
                .max_by_key(|(ip, n)| (**n, **ip))
                .map(|(ip, _)| *ip)
        } else {
            None
        };
        if let Some(from) = from {
            let victim = self
                .open
                .iter()
                .filter(|(_, s)| s.peer == from && !s.state.busy.load(Ordering::Relaxed))
                .min_by_key(|(id, s)| (s.state.idle_since(), **id))
                .map(|(id, _)| *id)?;
            if let Some(s) = self.remove(victim) {
                s.close.notify_one();
            }
        }
        self.next += 1;
        let state = Arc::new(ConnState {
            busy: AtomicBool::new(false),
            idle_since: Mutex::new(Instant::now()),
        });
        let close = Arc::new(Notify::new());
        self.open.insert(
            self.next,
            Slot {
                peer,
                state: state.clone(),
                close: close.clone(),
            },
        );
        *self.per_peer.entry(peer).or_default() += 1;
        Some((self.next, state, close))
    }

    fn remove(&mut self, id: u64) -> Option<Slot> {
        let s = self.open.remove(&id)?;
        if let Some(n) = self.per_peer.get_mut(&s.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_peer.remove(&s.peer);
            }
        }
        Some(s)
    }
}

/// Removes a connection from the table when its task ends, however it ends.
struct Leave(Arc<Mutex<Table>>, u64);

impl Drop for Leave {
    fn drop(&mut self) {
        let mut t = match self.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        t.remove(self.1);
    }
}

/// Marks a connection busy while a response exists; idle again once hyper has taken
/// the whole body (or dropped it with the connection).
struct Busy(Arc<ConnState>);

impl Busy {
    fn new(s: &Arc<ConnState>) -> Self {
        s.busy.store(true, Ordering::Relaxed);
        Self(s.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        match self.0.idle_since.lock() {
            Ok(mut g) => *g = Instant::now(),
            Err(p) => *p.into_inner() = Instant::now(),
        }
        self.0.busy.store(false, Ordering::Relaxed);
    }
}

/// A response body: one chunk, and the connection's busy mark until it is taken.
pub struct Body {
    data: Option<Bytes>,
    _busy: Option<Busy>,
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let me = self.get_mut();
        let frame = me.data.take().map(|d| Ok(Frame::data(d)));
        if frame.is_none() {
            me._busy = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

fn reply(
    busy: Busy,
    code: StatusCode,
    ctype: &'static str,
    body: Bytes,
    close: bool,
) -> Response<Body> {
    let mut r = Response::new(Body {
        data: Some(body),
        _busy: Some(busy),
    });
    *r.status_mut() = code;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if close {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

fn text(busy: Busy, code: StatusCode, body: impl Into<String>, close: bool) -> Response<Body> {
    reply(
        busy,
        code,
        "text/plain; charset=utf-8",
        Bytes::from(body.into()),
        close,
    )
}

/// Why a request's body is refused, if it announces one: 413 for a length, 400 for a
/// transfer coding (a GET has no business sending either).
fn body_refusal(h: &HeaderMap) -> Option<(StatusCode, &'static str)> {
    if h.contains_key(header::TRANSFER_ENCODING) {
        return Some((
            StatusCode::BAD_REQUEST,
            "request bodies are refused (GET only): no Transfer-Encoding\n",
        ));
    }
    let announced = h.get_all(header::CONTENT_LENGTH).iter().any(|v| {
        v.to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .is_none_or(|n| n > 0)
    });
    announced.then_some((
        StatusCode::PAYLOAD_TOO_LARGE,
        "request bodies are refused (GET only)\n",
    ))
}

/// The answer to one request; never reads its body.
fn respond(
    req: &Request<Incoming>,
    sh: &Shared,
    conn: &Arc<ConnState>,
    client_cert: bool,
) -> Response<Body> {
    let busy = Busy::new(conn);
    if let Some((code, why)) = body_refusal(req.headers()) {
        return text(busy, code, why, true);
    }
    if req.method() != Method::GET {
        let mut r = text(
            busy,
            StatusCode::METHOD_NOT_ALLOWED,
            "GET only: /metrics, /healthz\n",
            true,
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return r;
    }
    match req.uri().path() {
        "/healthz" => health(busy, &sh.alive),
        "/metrics" if !sh.authorized(req.headers(), client_cert) => {
            let mut r = text(
                busy,
                StatusCode::UNAUTHORIZED,
                "a client certificate or bearer token is required\n",
                true,
            );
            if sh.token.is_some() {
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"stalltrace\""),
                );
            }
            r
        }
        "/metrics" => match sh.exposition() {
            Ok(e) => {
                let (ctype, body) = if wants_openmetrics(req.headers()) {
                    (OPENMETRICS, e.openmetrics)
                } else {
                    (TEXT_004, e.text)
                };
                let mut r = reply(busy, StatusCode::OK, ctype, body, false);
                r.headers_mut()
                    .insert(header::VARY, HeaderValue::from_static("accept"));
                r
            }
            Err(e) => text(
                busy,
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("encoding the metrics: {e}\n"),
                false,
            ),
        },
        _ => text(
            busy,
            StatusCode::NOT_FOUND,
            "not found: /metrics, /healthz\n",
            false,
        ),
    }
}

fn health(busy: Busy, alive: &AtomicU64) -> Response<Body> {
    let last = alive.load(Ordering::Relaxed);
    let now = crate::sys::boot_ns();
    if last != 0 && now.saturating_sub(last) < STUCK_NS {
        text(busy, StatusCode::OK, "ok\n", false)
    } else if last == 0 {
        text(busy, StatusCode::SERVICE_UNAVAILABLE, "starting\n", false)
    } else {
        text(
            busy,
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "stuck: no tick for {} ms\n",
                now.saturating_sub(last) / 1_000_000
            ),
            false,
        )
    }
}

/// HTTP/1.1 over one connection with the limits above, until it ends or `close` is
/// notified (its place was given to a newer connection, or the server stops).
async fn serve_http<I>(
    io: I,
    sh: Arc<Shared>,
    conn: Arc<ConnState>,
    close: Arc<Notify>,
    client_cert: bool,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req: Request<Incoming>| {
        std::future::ready(Ok::<_, Infallible>(respond(&req, &sh, &conn, client_cert)))
    });
    let c = http1::Builder::new()
        .timer(TokioTimer::new())
        // A client that shuts its side down after its request still gets the answer.
        .half_close(true)
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_header_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS)
        .serve_connection(TokioIo::new(io), svc);
    tokio::select! {
        _ = c => {}
        _ = close.notified() => {}
    }
}

/// One accepted connection: timeouts on its socket, TLS when configured, then HTTP.
async fn connection(
    stream: TcpStream,
    sh: Arc<Shared>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    conn: Arc<ConnState>,
    close: Arc<Notify>,
) {
    let _ = stream.set_nodelay(true);
    let mut io = TimeoutStream::new(stream);
    // A read that makes no progress for this long is an idle or stalled client; the
    // head's own deadline (hyper's) bounds one that trickles bytes.
    io.set_read_timeout(Some(HEAD_TIMEOUT));
    io.set_write_timeout(Some(WRITE_TIMEOUT));
    let io = Box::pin(io);
    match tls {
        None => serve_http(io, sh, conn, close, false).await,
        Some(acceptor) => {
            let handshake = tokio::time::timeout(WRITE_TIMEOUT, acceptor.accept(io));
            let tls = tokio::select! {
                r = handshake => match r {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        log::debug!("TLS handshake failed: {e}");
                        return;
                    }
                    Err(_) => return,
                },
                _ = close.notified() => return,
            };
            let cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .is_some_and(|c| !c.is_empty());
            serve_http(tls, sh, conn, close, cert).await;
        }
    }
}

/// Accepts until `stop`: each connection admitted (or closed at once) by the table.
async fn accept_loop(
    listener: TcpListener,
    sh: Arc<Shared>,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut stop: oneshot::Receiver<()>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let table = Arc::new(Mutex::new(Table::default()));
    let mut said_accept_error = false;
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut stop => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors, mostly: said once, and a pause so the
                    // loop does not spin while it lasts.
                    if !said_accept_error {
                        crate::errln!("metrics endpoint: accepting a connection failed: {e}");
                        said_accept_error = true;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let admitted = {
            let mut t = match table.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            t.admit(peer.ip().to_canonical(), MAX_CONNECTIONS, MAX_PER_PEER)
        };
        let Some((id, conn, close)) = admitted else {
            // Every place is answering a request: this one is closed, not queued.
            drop(stream);
            continue;
        };
        let leave = Leave(table.clone(), id);
        let (sh, acceptor) = (sh.clone(), acceptor.clone());
        tokio::spawn(async move {
            let _leave = leave;
            connection(stream, sh, acceptor, conn, close).await;
        });
        // Let the connection just told to close (and the new one) run before the next
        // accept: under a connection flood, closed connections must not pile up
        // waiting for the accept loop to give the thread up.
        tokio::task::yield_now().await;
    }
}

pub struct Server {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    pub addr: SocketAddr,
}

/// Binds `ep.listen` now (a taken port is an error before anything is loaded) and
/// serves on a thread of its own.
pub fn serve(ep: Endpoint, metrics: Metrics, alive: Arc<AtomicU64>) -> anyhow::Result<Server> {
    let addr = ep.listen;
    let listener = std::net::TcpListener::bind(addr).map_err(|e| {
        CodedError::new(
            ExitCode::Failure,
            format!(
                "cannot listen on {addr}: {e} (another agent running? choose another --listen)"
            ),
        )
    })?;
    listener
        .set_nonblocking(true)
        .context("making the listening socket non-blocking")?;
    let bound = listener.local_addr().unwrap_or(addr);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("starting the HTTP runtime")?;
    let sh = Arc::new(Shared::new(&ep, metrics, alive));
    let (tx, rx) = oneshot::channel();
    let tls = ep.tls.clone();
    let thread = std::thread::Builder::new()
        .name("stalltrace-http".into())
        .spawn(move || {
            rt.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(l) => accept_loop(l, sh, tls, rx).await,
                    Err(e) => crate::errln!("metrics endpoint: cannot serve on {addr}: {e}"),
                }
            });
            // Dropping the runtime here ends every connection still open.
        })
        .context("starting the HTTP thread")?;
    Ok(Server {
        stop: Some(tx),
        thread: Some(thread),
        addr: bound,
    })
}

impl Server {
    pub fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One client's bytes through the request path exactly as a connection takes them
/// (limits, parser, handler), over an in-memory pipe closed after them: returns what
/// the server wrote back. For the fuzz target and tests.
pub fn exchange(input: &[u8], metrics: Metrics) -> Vec<u8> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    else {
        return vec![];
    };
    let alive = Arc::new(AtomicU64::new(crate::sys::boot_ns()));
    let sh = Arc::new(Shared::new(
        &Endpoint::plain(SocketAddr::from(([127, 0, 0, 1], 0))),
        metrics,
        alive,
    ));
    rt.block_on(async move {
        let (mut client, server) = tokio::io::duplex(64 << 10);
        let conn = Arc::new(ConnState {
            busy: AtomicBool::new(false),
            idle_since: Mutex::new(Instant::now()),
        });
        let task = tokio::spawn(serve_http(server, sh, conn, Arc::new(Notify::new()), false));
        let input = input.to_vec();
        let (mut rd, mut wr) = tokio::io::split(&mut client);
        let writer = async move {
            // The server may close before taking everything: that is an answer too.
            let _ = wr.write_all(&input).await;
            let _ = wr.shutdown().await;
        };
        let mut out = Vec::new();
        let reader = async {
            let mut buf = [0u8; 8192];
            while let Ok(n) = rd.read(&mut buf).await {
                if n == 0 || out.len() > (4 << 20) {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }
        };
        // The input ends with the pipe closed, so the server never waits on a timer:
        // this bound is only a guard.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::join!(writer, reader);
        })
        .await;
        task.abort();
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Metrics {
        Metrics::new(5, "0.0.0-test")
    }

    fn status(resp: &[u8]) -> Vec<u16> {
        let text = String::from_utf8_lossy(resp);
        text.match_indices("HTTP/1.1 ")
            .filter_map(|(i, _)| text[i + 9..].get(..3)?.parse().ok())
            .collect()
    }

    #[test]
    fn listen_takes_an_address_alone_for_either_family() {
        assert_eq!(
            parse_listen("10.1.2.3"),
            Ok("10.1.2.3:9910".parse().unwrap())
        );
        assert_eq!(
            parse_listen("fd00::1:2"),
            Ok("[fd00::1:2]:9910".parse().unwrap())
        );
        assert_eq!(
            parse_listen("[fd00::1]:8443"),
            Ok("[fd00::1]:8443".parse().unwrap())
        );
        assert_eq!(
            parse_listen("0.0.0.0:9910"),
            Ok("0.0.0.0:9910".parse().unwrap())
        );
        for bad in ["", "localhost:9910", "10.0.0.1:99999", "$(POD_IP):9910"] {
            assert!(parse_listen(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn gets_are_answered_and_anything_else_refused_unread() {
        let ok = exchange(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", metrics());
        assert_eq!(status(&ok), [200], "{}", String::from_utf8_lossy(&ok));
        assert!(String::from_utf8_lossy(&ok).ends_with("ok\n"));
        let m = exchange(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", metrics());
        assert_eq!(status(&m), [200]);
        assert!(String::from_utf8_lossy(&m).contains("stalltrace_build_info"));
        // A body announced and never sent: refused at once, the connection closed.
        let huge = exchange(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000000000\r\n\r\n",
            metrics(),
        );
        assert_eq!(status(&huge), [413]);
        assert!(String::from_utf8_lossy(&huge).contains("connection: close"));
        let chunked = exchange(
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            metrics(),
        );
        assert_eq!(status(&chunked), [400]);
        let post = exchange(b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n", metrics());
        assert_eq!(status(&post), [405]);
        assert!(String::from_utf8_lossy(&post).contains("allow: GET"));
        let zero = exchange(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            metrics(),
        );
        assert_eq!(status(&zero), [200]);
        let missing = exchange(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n", metrics());
        assert_eq!(status(&missing), [404]);
    }

    #[test]
    fn the_format_follows_the_accept_header() {
        let head = |accept: &str| {
            let req = format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{accept}\r\n");
            let r = String::from_utf8_lossy(&exchange(req.as_bytes(), metrics())).to_string();
            let ctype = r
                .lines()
                .find_map(|l| l.strip_prefix("content-type: "))
                .unwrap_or("")
                .to_string();
            (
                ctype,
                r.contains("# EOF"),
                r.contains("# TYPE stalltrace_lost_events_total counter"),
            )
        };
        let om = (OPENMETRICS.to_string(), true, false);
        let text = (TEXT_004.to_string(), false, true);
        // No Accept (curl), text only, anything: the text format.
        assert_eq!(head(""), text);
        assert_eq!(head("Accept: text/plain\r\n"), text);
        assert_eq!(head("Accept: */*\r\n"), text);
        // Prometheus's scrape header, and OpenMetrics alone.
        assert_eq!(
            head("Accept: application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\n"),
            om
        );
        assert_eq!(head("accept: Application/OpenMetrics-Text\r\n"), om);
        // Refused with q=0, or a q-value that does not parse: text.
        assert_eq!(
            head("Accept: application/openmetrics-text;q=0, text/plain\r\n"),
            text
        );
        assert_eq!(head("Accept: application/openmetrics-text;q=x\r\n"), text);
    }

    #[test]
    fn a_head_over_16_kib_is_refused_and_one_under_is_served() {
        let mut big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD_BYTES));
        big.extend_from_slice(b"\r\n\r\n");
        let r = exchange(&big, metrics());
        assert_eq!(status(&r), [431], "{}", String::from_utf8_lossy(&r));
        // An endless header line: cut at the limit, not buffered.
        let mut endless = b"GET /healthz HTTP/1.1\r\nX-Pad: ".to_vec();
        endless.extend(std::iter::repeat_n(b'a', 1 << 20));
        let r = exchange(&endless, metrics());
        assert_eq!(status(&r), [431]);
        let mut fits = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: ".to_vec();
        fits.extend(std::iter::repeat_n(b'a', MAX_HEAD_BYTES - 200));
        fits.extend_from_slice(b"\r\n\r\n");
        assert_eq!(status(&exchange(&fits, metrics())), [200]);
    }

    #[test]
    fn keep_alive_answers_several_requests_in_order() {
        let r = exchange(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
            metrics(),
        );
        assert_eq!(status(&r), [200, 404, 200]);
    }

    #[test]
    fn the_table_gives_the_longest_idle_place_up_and_refuses_when_all_are_busy() {
        let ip = IpAddr::from([10, 0, 0, 1]);
        let mut t = Table::default();
        let mut conns = vec![];
        for _ in 0..3 {
            conns.push(t.admit(ip, 3, 3).unwrap());
            std::thread::sleep(Duration::from_millis(2));
        }
        // The second became idle long ago, the first just now: the second goes.
        *conns[0].1.idle_since.lock().unwrap() = Instant::now();
        let (id4, _, _) = t.admit(ip, 3, 3).unwrap();
        assert!(!t.open.contains_key(&conns[1].0) && t.open.contains_key(&id4));
        assert_eq!(t.open.len(), 3);
        // All busy: refused, nobody closed.
        let busy: Vec<Busy> = t.open.values().map(|s| Busy::new(&s.state)).collect();
        assert!(t.admit(ip, 3, 3).is_none());
        assert_eq!(t.open.len(), 3);
        drop(busy);
        assert!(t.admit(ip, 3, 3).is_some());
        assert_eq!(t.per_peer.get(&ip), Some(&3));
    }

    #[test]
    fn one_address_cannot_crowd_out_another() {
        let (flood, scraper) = (IpAddr::from([10, 0, 0, 9]), IpAddr::from([10, 0, 0, 1]));
        let mut t = Table::default();
        let (mine, _, _) = t.admit(scraper, 8, 4).unwrap();
        // The flood gets its share and then only replaces its own connections ...
        for _ in 0..100 {
            assert!(t.admit(flood, 8, 4).is_some());
        }
        assert_eq!(t.per_peer.get(&flood), Some(&4));
        assert!(
            t.open.contains_key(&mine),
            "the scraper keeps its connection"
        );
        // ... and when the table is full of several addresses, the one holding the
        // most gives a place up, not the newcomer's.
        for i in 2..=4u8 {
            for _ in 0..2 {
                t.admit(IpAddr::from([10, 0, 1, i]), 8, 4).unwrap();
            }
        }
        assert_eq!(t.open.len(), 8);
        let (late, _, _) = t.admit(IpAddr::from([10, 0, 2, 1]), 8, 4).unwrap();
        assert_eq!(t.open.len(), 8);
        assert!(
            t.per_peer.get(&flood).is_some_and(|n| *n < 4),
            "the biggest holder gave places up: {:?}",
            t.per_peer
        );
        assert!(t.per_peer.values().all(|n| *n <= 4));
        assert!(t.open.contains_key(&late) && t.open.contains_key(&mine));
        // Removing what is gone keeps the counts right.
        for id in t.open.keys().copied().collect::<Vec<_>>() {
            t.remove(id);
        }
        assert!(t.per_peer.is_empty());
    }

    #[test]
    fn a_bearer_token_or_a_client_certificate_opens_metrics_and_healthz_stays_open() {
        let mut ep = Endpoint::plain(SocketAddr::from(([127, 0, 0, 1], 0)));
        ep.token = Some(b"s3cret".to_vec());
        let sh = Shared::new(&ep, metrics(), Arc::new(AtomicU64::new(0)));
        let mut h = HeaderMap::new();
        assert!(!sh.authorized(&h, false));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer s3cre"),
        );
        assert!(!sh.authorized(&h, false));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer s3cret"),
        );
        assert!(sh.authorized(&h, false));
        // A certificate counts only when a CA was given to verify it against.
        assert!(!sh.authorized(&HeaderMap::new(), true));
        ep.client_ca = true;
        let sh = Shared::new(&ep, metrics(), Arc::new(AtomicU64::new(0)));
        assert!(sh.authorized(&HeaderMap::new(), true));
    }
}
