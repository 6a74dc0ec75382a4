//! `stalltrace watch`'s endpoint against hostile clients on loopback: a huge
//! Content-Length, an endless header, 1 500 idle connections, a client sending one byte
//! a second, a flood of connections and requests. After (or during) each, `/healthz`
//! answers within 2 s, and the agent's own numbers read from /proc (its RSS, threads and
//! open sockets) stay bounded; what the attacking client itself saw (its connection
//! closed, how many bytes the server took) is the other oracle. And TLS with a client
//! certificate or bearer token, driven by curl with certificates openssl made here.
//! Every attack is bounded in count and time.
use std::{
    fs,
    io::{Read as _, Write as _},
    net::{Shutdown, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use integration_tests::{free_port, require, require_root, stalltrace_bin, wait_until};
use stalltrace::lab::child::ChildGuard;
use stalltrace_testkit::scratch::Scratch;

/// A `watch` agent on a loopback port, stopped with SIGTERM at the end.
struct Agent {
    child: ChildGuard,
    port: u16,
    pid: u32,
    log: PathBuf,
}

impl Agent {
    fn start(dir: &Scratch, extra: &[&str]) -> Self {
        let port = free_port();
        let log = dir.join("watch.err");
        let child = Command::new(stalltrace_bin())
            .args(["watch", "--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let pid = child.id();
        let child = ChildGuard::new(child);
        let mut a = Self {
            child,
            port,
            pid,
            log,
        };
        wait_until("watch healthy", Duration::from_secs(30), || {
            assert!(a.child.running(), "watch exited: {}", a.stderr());
            healthz(port, Duration::from_secs(2)).is_some_and(|c| c == 200)
        });
        a
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn status(&self, key: &str) -> u64 {
        fs::read_to_string(format!("/proc/{}/status", self.pid))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    fn rss_kib(&self) -> u64 {
        self.status("VmRSS:")
    }

    fn threads(&self) -> u64 {
        self.status("Threads:")
    }

    /// The agent's open TCP sockets: its socket fds (it holds no other sockets but its
    /// listener and the ring-buffer/perf fds, which are not sockets).
    fn sockets(&self) -> usize {
        fs::read_dir(format!("/proc/{}/fd", self.pid))
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        fs::read_link(e.path())
                            .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
                    })
                    .count()
            })
            .unwrap_or(0)
    }

    /// /healthz answers 200 within 2 s, and the agent still runs.
    fn assert_healthy(&mut self, after: &str) {
        let t0 = Instant::now();
        let code = healthz(self.port, Duration::from_secs(2));
        assert!(
            self.child.running(),
            "{after}: the agent died: {}",
            self.stderr()
        );
        assert_eq!(
            code,
            Some(200),
            "{after}: /healthz within 2 s (took {:?})",
            t0.elapsed()
        );
        assert!(t0.elapsed() < Duration::from_secs(2), "{after}");
    }

    fn stop(mut self) {
        let st = self
            .child
            .signal_and_wait(libc::SIGTERM, Duration::from_secs(10));
        assert!(st.is_some_and(|s| s.success()), "{}", self.stderr());
    }
}

/// GET /healthz with every step bounded by `limit`: the status code.
fn healthz(port: u16, limit: Duration) -> Option<u16> {
    let t0 = Instant::now();
    let mut s =
        TcpStream::connect_timeout(&format!("127.0.0.1:{port}").parse().ok()?, limit).ok()?;
    s.set_read_timeout(Some(limit)).ok()?;
    s.set_write_timeout(Some(limit)).ok()?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while t0.elapsed() < limit {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => break,
        }
        if buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.ends_with(b"\n") {
            break;
        }
    }
    String::from_utf8_lossy(&buf)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn dir(tag: &str) -> Scratch {
    Scratch::new(tag).unwrap()
}

/// Growth the agent's RSS may show after an attack (allocator slack, the runtime's
/// buffers): far below what any attack here would cost an unbounded server.
const RSS_SLACK_KIB: u64 = 16 << 10;

/// One request with `Content-Length: 100000000000000` and no body: answered 413 at once
/// (a server that sized a buffer from it would abort), the agent lives.
#[test]
fn hostile_a_huge_content_length_is_refused_unread() {
    if !require_root("hostile_a_huge_content_length_is_refused_unread") {
        return;
    }
    let d = dir("hostile-cl");
    let mut a = Agent::start(&d, &[]);
    let rss0 = a.rss_kib();
    for (req, want) in [
        (
            "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000000000\r\n\r\n",
            "413",
        ),
        (
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000000000\r\n\r\n",
            "413",
        ),
        (
            "GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffff\r\n",
            "400",
        ),
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", a.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap_or(0);
        let got = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert_eq!(
            got.split_whitespace().nth(1),
            Some(want),
            "{req:?} -> {got:?}"
        );
        // Closed after the refusal: the body is never waited for.
        let mut rest = Vec::new();
        // EOF or a reset: closed; a read timeout: still open, waiting for the body.
        let closed = match s.read_to_end(&mut rest) {
            Ok(_) => true,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        };
        assert!(closed, "the connection is closed after refusing a body");
        a.assert_healthy(req);
    }
    assert!(
        a.rss_kib() < rss0 + RSS_SLACK_KIB,
        "RSS {} -> {} KiB",
        rss0,
        a.rss_kib()
    );
    a.stop();
}

/// A header line that never ends: the server stops taking bytes at the head limit and
/// closes; the client could not push more than a few socket buffers' worth.
#[test]
fn hostile_an_endless_header_is_cut_at_the_head_limit() {
    if !require_root("hostile_an_endless_header_is_cut_at_the_head_limit") {
        return;
    }
    let d = dir("hostile-header");
    let mut a = Agent::start(&d, &[]);
    let rss0 = a.rss_kib();
    let mut s = TcpStream::connect(("127.0.0.1", a.port)).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nX-Endless: ")
        .unwrap();
    const CAP: usize = 64 << 20;
    let chunk = vec![b'a'; 64 << 10];
    let t0 = Instant::now();
    let mut sent = 0usize;
    let mut cut = false;
    while sent < CAP && t0.elapsed() < Duration::from_secs(30) {
        match s.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => {
                cut = true;
                break;
            }
        }
    }
    assert!(
        cut,
        "the server took {sent} bytes of one header in {:?} without closing",
        t0.elapsed()
    );
    // Loopback socket buffers hold a few MiB at most: the server read ~16 KiB.
    assert!(sent < 16 << 20, "{sent} bytes taken before the cut");
    a.assert_healthy("an endless header");
    assert!(
        a.rss_kib() < rss0 + RSS_SLACK_KIB,
        "RSS {} -> {} KiB",
        rss0,
        a.rss_kib()
    );
    a.stop();
}

/// Raises this process's open-file limit to at least `n` (the soft limit, up to the
/// hard one): false when the hard limit is lower.
fn raise_nofile(n: u64) -> bool {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) into a struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return false;
    }
    if rl.rlim_cur >= n {
        return true;
    }
    if rl.rlim_max < n {
        return false;
    }
    rl.rlim_cur = n;
    // SAFETY: setrlimit(2) with a soft limit at most the hard one.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) == 0 }
}

/// A connection to the agent from `127.0.0.<host>` (loopback is all of 127/8): each
/// attack comes from addresses of its own, as other pods would, while /healthz is asked
/// from 127.0.0.1.
fn connect_from(host: u8, port: u16) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.bind(&std::net::SocketAddr::from(([127, 0, 0, host], 0)).into())?;
    s.connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)).into(),
        Duration::from_secs(2),
    )?;
    Ok(s.into())
}

/// Whether the server has closed `s` (EOF or reset), without blocking.
fn closed_by_server(s: &TcpStream) -> bool {
    let _ = s.set_nonblocking(true);
    let mut b = [0u8; 64];
    let r = (&*s).read(&mut b);
    let _ = s.set_nonblocking(false);
    match r {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// 1 500 connections that send nothing, from ten addresses, all held open by the
/// client: /healthz still answers within 2 s, the agent holds at most its cap of them
/// (no thread per connection), and every one is closed by the server within the head
/// timeout.
#[test]
fn hostile_1500_idle_connections_neither_lock_out_healthz_nor_pile_up() {
    let name = "hostile_1500_idle_connections_neither_lock_out_healthz_nor_pile_up";
    if !require_root(name) {
        return;
    }
    if !require(
        name,
        raise_nofile(4096),
        "the open-file hard limit is below 4096",
    ) {
        return;
    }
    let d = dir("hostile-idle");
    let mut a = Agent::start(&d, &[]);
    let (rss0, sockets0, threads0) = (a.rss_kib(), a.sockets(), a.threads());
    let t0 = Instant::now();
    let mut conns = Vec::with_capacity(1500);
    while conns.len() < 1500 && t0.elapsed() < Duration::from_secs(60) {
        // From ten addresses, 150 each: the cap on all of them is what holds.
        if let Ok(s) = connect_from(2 + (conns.len() % 10) as u8, a.port) {
            conns.push(s);
        }
    }
    assert_eq!(conns.len(), 1500, "connections made in {:?}", t0.elapsed());
    thread::sleep(Duration::from_millis(500));
    a.assert_healthy("1500 idle connections held open");
    let (sockets, threads) = (a.sockets(), a.threads());
    assert!(
        sockets <= sockets0 + 64 + 2,
        "the agent holds {sockets} sockets (was {sockets0}): capped at 64 connections"
    );
    assert!(
        threads <= threads0 + 1,
        "{threads} threads (was {threads0}): no thread per connection"
    );
    // Idle connections go at the head timeout (10 s), the rest went at once.
    wait_until(
        "every idle connection closed by the server",
        Duration::from_secs(20),
        || conns.iter().all(closed_by_server),
    );
    drop(conns);
    a.assert_healthy("after the idle connections");
    assert!(
        a.rss_kib() < rss0 + RSS_SLACK_KIB,
        "RSS {} -> {} KiB",
        rss0,
        a.rss_kib()
    );
    a.stop();
}

/// A client that sends its request one byte a second: cut at the head timeout (10 s),
/// and /healthz answers meanwhile.
#[test]
fn hostile_a_one_byte_a_second_client_is_cut_at_the_head_timeout() {
    if !require_root("hostile_a_one_byte_a_second_client_is_cut_at_the_head_timeout") {
        return;
    }
    let d = dir("hostile-slow");
    let mut a = Agent::start(&d, &[]);
    let mut s = TcpStream::connect(("127.0.0.1", a.port)).unwrap();
    let t0 = Instant::now();
    let req = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut cut_after = None;
    for (i, b) in req.iter().enumerate() {
        if s.write_all(&[*b]).is_err() || closed_by_server(&s) {
            cut_after = Some(t0.elapsed());
            break;
        }
        if i == 3 {
            a.assert_healthy("a slow client sending");
        }
        thread::sleep(Duration::from_secs(1));
    }
    let took = cut_after.unwrap_or_else(|| {
        panic!(
            "the whole {}-byte request trickled in over {:?} and the server never cut it",
            req.len(),
            t0.elapsed()
        )
    });
    assert!(
        took < Duration::from_secs(14),
        "cut after {took:?} (head timeout 10 s)"
    );
    a.assert_healthy("after the slow client");
    a.stop();
}

/// 200 connections at once from four addresses, each sending GETs (and some POSTs
/// with bodies) every 20 ms, reconnecting when closed, for 10 s: the agent never holds
/// more than its 64 connections, answers thousands of requests, and /healthz (from
/// another address) within 2 s during and after.
#[test]
fn hostile_a_flood_of_connections_and_requests_stays_capped() {
    if !require_root("hostile_a_flood_of_connections_and_requests_stays_capped") {
        return;
    }
    let d = dir("hostile-flood");
    let mut a = Agent::start(&d, &[]);
    let (rss0, sockets0) = (a.rss_kib(), a.sockets());
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let port = a.port;
    let clients: Vec<_> = (0..200)
        .map(|i| {
            let (stop, answered) = (stop.clone(), answered.clone());
            thread::spawn(move || {
                let req: &[u8] = if i % 10 == 0 {
                    b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
                } else if i % 2 == 0 {
                    b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
                } else {
                    b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                };
                let t0 = Instant::now();
                while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(20) {
                    let Ok(mut s) = connect_from(2 + (i % 4) as u8, port) else {
                        continue;
                    };
                    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut buf = [0u8; 4096];
                    // Keep-alive: request after request on one connection until closed.
                    while !stop.load(Ordering::Relaxed) {
                        if s.write_all(req).is_err() {
                            break;
                        }
                        match s.read(&mut buf) {
                            Ok(n) if n > 0 => {
                                if buf[..n].starts_with(b"HTTP/1.1 ") {
                                    answered.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            _ => break,
                        }
                        thread::sleep(Duration::from_millis(20));
                    }
                    let _ = s.shutdown(Shutdown::Both);
                }
            })
        })
        .collect();
    let t0 = Instant::now();
    let mut most = 0;
    while t0.elapsed() < Duration::from_secs(10) {
        most = most.max(a.sockets());
        thread::sleep(Duration::from_millis(50));
    }
    a.assert_healthy("during the flood");
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let n = answered.load(Ordering::Relaxed);
    assert!(n > 2000, "only {n} requests answered in 10 s");
    assert!(
        most <= sockets0 + 64 + 2,
        "the agent held {most} sockets (was {sockets0}): capped at 64 connections"
    );
    a.assert_healthy("after the flood");
    assert!(
        a.rss_kib() < rss0 + RSS_SLACK_KIB,
        "RSS {} -> {} KiB",
        rss0,
        a.rss_kib()
    );
    a.stop();
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate it signed, and a
/// self-signed client certificate, made with openssl in `dir`.
fn certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=stalltrace-test-ca",
        ],
    ]
    .concat());
    // A client certificate of nobody's CA: its own.
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "rogue.key",
            "-out",
            "rogue.crt",
            "-days",
            "2",
            "-subj",
            "/CN=prometheus",
        ],
    ]
    .concat());
    fs::write(dir.join("srv.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    fs::write(dir.join("cli.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (who, cn) in [("srv", "127.0.0.1"), ("cli", "prometheus")] {
        run(&[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                &format!("{who}.key"),
                "-out",
                &format!("{who}.csr"),
                "-subj",
                &format!("/CN={cn}"),
            ],
        ]
        .concat());
        run(&[
            "x509",
            "-req",
            "-in",
            &format!("{who}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{who}.crt"),
            "-days",
            "2",
            "-extfile",
            &format!("{who}.ext"),
        ]);
    }
}

/// TLS with a client CA and a bearer token: /healthz open to anyone (the kubelet's
/// probes present neither), /metrics only with a certificate the CA signed or the token;
/// plain HTTP on the TLS port gets no answer. curl is the client.
#[test]
fn watch_over_tls_opens_metrics_only_to_a_client_certificate_or_the_token() {
    let name = "watch_over_tls_opens_metrics_only_to_a_client_certificate_or_the_token";
    if !require_root(name) {
        return;
    }
    let tools = ["openssl", "curl"].map(|t| {
        (
            t,
            Command::new(t)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
                || Command::new(t)
                    .arg("version")
                    .output()
                    .is_ok_and(|o| o.status.success()),
        )
    });
    if !require(name, tools.iter().all(|t| t.1), &format!("{tools:?}")) {
        return;
    }
    let d = dir("tls");
    certificates(d.path());
    fs::write(d.join("token"), "t0k3n-for-the-test\n").unwrap();
    let p = |f: &str| d.join(f).to_string_lossy().into_owned();
    let a = Agent::start_tls(
        &d,
        &[
            "--tls-cert",
            &p("srv.crt"),
            "--tls-key",
            &p("srv.key"),
            "--tls-client-ca",
            &p("ca.crt"),
            "--auth-token-file",
            &p("token"),
        ],
    );
    let curl = |path: &str, extra: &[&str]| -> String {
        let out = Command::new("curl")
            .args(["-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(extra)
            .arg(format!("https://127.0.0.1:{}{path}", a.port))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ca = p("ca.crt");
    let with_ca = ["--cacert", ca.as_str()];
    assert_eq!(curl("/healthz", &with_ca), "200");
    assert_eq!(curl("/metrics", &with_ca), "401");
    let bearer = |t: &str| format!("Authorization: Bearer {t}");
    let good = bearer("t0k3n-for-the-test");
    let bad = bearer("t0k3n-for-the-tesT");
    assert_eq!(
        curl("/metrics", &[&with_ca[..], &["-H", good.as_str()]].concat()),
        "200"
    );
    assert_eq!(
        curl("/metrics", &[&with_ca[..], &["-H", bad.as_str()]].concat()),
        "401"
    );
    let (crt, key) = (p("cli.crt"), p("cli.key"));
    assert_eq!(
        curl(
            "/metrics",
            &[
                &with_ca[..],
                &["--cert", crt.as_str(), "--key", key.as_str()]
            ]
            .concat()
        ),
        "200"
    );
    // A certificate the CA did not sign: the handshake fails, no answer at all.
    assert_eq!(
        curl(
            "/metrics",
            &[
                &with_ca[..],
                &[
                    "--cert",
                    p("rogue.crt").as_str(),
                    "--key",
                    p("rogue.key").as_str()
                ]
            ]
            .concat()
        ),
        "000"
    );
    // Plain HTTP to the TLS port: no HTTP answer.
    let out = Command::new("curl")
        .args(["-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://127.0.0.1:{}/metrics", a.port))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "000");
    assert!(a.stderr().contains("https://127.0.0.1:"), "{}", a.stderr());
    a.stop();
    // A token without TLS is refused before anything is loaded.
    let out = Command::new(stalltrace_bin())
        .args(["watch", "--auth-token-file", &p("token")])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Agent {
    /// As [`Agent::start`], healthy once curl gets 200 from /healthz over TLS.
    fn start_tls(dir: &Scratch, extra: &[&str]) -> Self {
        let port = free_port();
        let log = dir.join("watch.err");
        let child = Command::new(stalltrace_bin())
            .args(["watch", "--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut a = Self {
            child: ChildGuard::new(child),
            port,
            pid,
            log,
        };
        let ca = dir.join("ca.crt");
        wait_until("watch healthy over TLS", Duration::from_secs(30), || {
            assert!(a.child.running(), "watch exited: {}", a.stderr());
            Command::new("curl")
                .args([
                    "-s",
                    "-m",
                    "2",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--cacert",
                ])
                .arg(&ca)
                .arg(format!("https://127.0.0.1:{port}/healthz"))
                .output()
                .is_ok_and(|o| o.stdout == b"200")
        });
        a
    }
}
