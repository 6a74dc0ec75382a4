//! `watch`'s HTTP endpoint as a client on the pod network may drive it.

/// The statuses `watch`'s endpoint answers with: its own, and hyper's for requests it
/// cannot parse (400, 431 for a head over the limit, 505 for another HTTP version).
const HTTP_STATUSES: [u16; 10] = [200, 400, 401, 404, 405, 413, 431, 500, 503, 505];

/// Whether the first request head in `bytes` announces a body: a `Content-Length`
/// that is not a number 0 (`000` is 0), or a `Transfer-Encoding`, as a header of its own line. The head ends
/// at its first empty line; lines end with CRLF or a bare LF, as the parser takes them.
fn announces_body(bytes: &[u8]) -> bool {
    let mut lines = bytes
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    // The request line, after any empty lines before it (the parser skips them).
    if lines.by_ref().find(|l| !l.is_empty()).is_none() {
        return false;
    }
    lines.take_while(|l| !l.is_empty()).any(|l| {
        let l = String::from_utf8_lossy(l).to_ascii_lowercase();
        l.starts_with("transfer-encoding:")
            || l.strip_prefix("content-length:")
                .is_some_and(|v| v.trim().parse::<u64>().map_or(true, |n| n > 0))
    })
}

/// One client's bytes to `watch`'s endpoint, through its limits, hyper's parser and the
/// handler exactly as a connection takes them: every answer is HTTP/1.x with a status
/// the endpoint gives, the first one to a request announcing a body is never 200, and
/// what comes back stays small (the head limit holds).
pub fn run(bytes: &[u8]) {
    let metrics = stalltrace_analysis::report::metrics::Metrics::new(3, "fuzz");
    let out = stalltrace::watch::http::exchange(bytes, metrics);
    assert!(out.len() < 1 << 20, "{} bytes answered", out.len());
    if out.is_empty() {
        return;
    }
    // HTTP/1.1, or 1.0 to a client that spoke 1.0.
    assert!(
        out.starts_with(b"HTTP/1.1 ") || out.starts_with(b"HTTP/1.0 "),
        "{:?}",
        String::from_utf8_lossy(&out[..out.len().min(64)])
    );
    let text = String::from_utf8_lossy(&out);
    let statuses: Vec<u16> = text
        .match_indices("HTTP/1.")
        .filter_map(|(i, _)| {
            let rest = text.get(i + 7..)?;
            let code = rest
                .strip_prefix("1 ")
                .or_else(|| rest.strip_prefix("0 "))?;
            code.get(..3)?.parse().ok()
        })
        .collect();
    for s in &statuses {
        assert!(HTTP_STATUSES.contains(s), "status {s}");
    }
    if announces_body(bytes) {
        assert_ne!(statuses.first(), Some(&200), "a body was announced");
    }
}
