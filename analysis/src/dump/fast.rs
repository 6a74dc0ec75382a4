//! A hand-written decoder for the two record kinds that make up most of a dump
//! (`packet` and `probe` lines: on a probed node, one of each per probe and one packet
//! per other echo). serde_json spends most of its time on these in generic work (field
//! names matched through a visitor, every string checked for UTF-8 again); this reads
//! the writer's own compact form, keys in the writer's order, straight off the bytes,
//! several times faster.
//!
//! It only ever answers for input in exactly that form: any other key order, an
//! unknown key, an escape, whitespace, a number out of range or in another form makes
//! it decline (`None`), and the line then goes through serde_json, which decides (and
//! words the error). So for every line it accepts it returns what serde_json returns;
//! the `dump_fast` fuzz target and the tests below check that against serde_json. A
//! line it accepts has no NUL byte (strings hold no control character; the rest is
//! keys and digits), so the reader looks for NUL only in the lines it declines.
use super::schema::{PacketKind, PacketRec, ProbeProto, ProbeRec, ProbeStatus, Record, RxContext};

/// The line and where decoding is.
struct Cursor<'a> {
    line: &'a str,
    s: &'a [u8],
    i: usize,
    /// Every string so far was printable ASCII (nothing for `sanitize` to escape).
    plain: bool,
}

impl<'a> Cursor<'a> {
    /// Exactly these bytes next. (A fixed-size compare: inlined, no call to memcmp.)
    fn lit<const N: usize>(&mut self, l: &[u8; N]) -> Option<()> {
        let next: &[u8; N] = self.s.get(self.i..self.i + N)?.try_into().ok()?;
        (next == l).then(|| self.i += N)
    }

    /// These bytes next, if they are: an optional field's key.
    fn key<const N: usize>(&mut self, l: &[u8; N]) -> bool {
        self.lit(l).is_some()
    }

    /// The rest of a string whose opening quote was read: no escape, no control
    /// character (JSON forbids raw ones).
    fn string(&mut self) -> Option<&'a str> {
        let start = self.i;
        let mut end = start;
        let mut unusual = false;
        // Eight bytes at a time up to the first quote, backslash or control character.
        while let Some(chunk) = self.s.get(end..end + 8) {
            let w = u64::from_le_bytes(chunk.try_into().ok()?);
            let stop = eq_bytes(w, b'"') | eq_bytes(w, b'\\') | below(w, 0x20);
            let odd = (w & HIGH_BITS) | eq_bytes(w, 0x7f);
            if stop != 0 {
                // The lowest flag is exact: the stop byte's index.
                let at = stop.trailing_zeros() / 8;
                unusual |= odd & ((1u64 << (at * 8)) - 1) != 0;
                end += at as usize;
                break;
            }
            unusual |= odd != 0;
            end += 8;
        }
        loop {
            match *self.s.get(end)? {
                b'"' => break,
                b if b < 0x20 || b == b'\\' => return None,
                b => unusual |= b >= 0x7f,
            }
            end += 1;
        }
        self.plain &= !unusual;
        self.i = end + 1;
        // The quotes are ASCII: both ends are character boundaries.
        self.line.get(start..end)
    }

    /// A string value (with its opening quote).
    fn quoted(&mut self) -> Option<&'a str> {
        self.lit(b"\"")?;
        self.string()
    }

    /// An unsigned integer in JSON's form (no leading zero, no fraction or exponent),
    /// followed by `,` or `}`.
    #[inline]
    fn uint(&mut self) -> Option<u64> {
        let start = self.i;
        let mut v: u64 = 0;
        let mut i = start;
        while let Some(d) = self
            .s
            .get(i)
            .and_then(|b| b.checked_sub(b'0'))
            .filter(|d| *d < 10)
        {
            // Nineteen digits cannot overflow; past that, checked.
            v = if i - start < 19 {
                v * 10 + u64::from(d)
            } else {
                v.checked_mul(10)?.checked_add(u64::from(d))?
            };
            i += 1;
        }
        let digits = i - start;
        if digits == 0 || (digits > 1 && self.s[start] == b'0') {
            return None;
        }
        self.i = i;
        // A fraction or exponent makes it a float: serde_json decides.
        matches!(self.s.get(i), Some(b',' | b'}')).then_some(v)
    }

    fn narrow<T: TryFrom<u64>>(&mut self) -> Option<T> {
        T::try_from(self.uint()?).ok()
    }

    /// `null` or an unsigned integer that fits `T`.
    fn opt_narrow<T: TryFrom<u64>>(&mut self) -> Option<Option<T>> {
        if self.key(b"null") {
            return Some(None);
        }
        self.narrow().map(Some)
    }

    /// `null` or a string.
    fn opt_quoted(&mut self) -> Option<Option<&'a str>> {
        if self.key(b"null") {
            return Some(None);
        }
        self.quoted().map(Some)
    }

    /// The object's closing brace ends the line.
    fn end(&mut self) -> Option<()> {
        self.lit(b"}")?;
        (self.i == self.s.len()).then_some(())
    }
}

const LOW_BITS: u64 = 0x0101_0101_0101_0101;
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `w` below `n` (n <= 0x80) is set. Bytes above the
/// first such byte may be flagged wrongly (a borrow); the lowest flag is exact.
fn below(w: u64, n: u8) -> u64 {
    w.wrapping_sub(LOW_BITS * u64::from(n)) & !w & HIGH_BITS
}

/// The high bit of each byte of `w` equal to `b` is set, the lowest flag exact as in
/// [`below`].
fn eq_bytes(w: u64, b: u8) -> u64 {
    below(w ^ (LOW_BITS * u64::from(b)), 1)
}

fn rx_context(s: &str) -> Option<RxContext> {
    Some(match s {
        "ksoftirqd" => RxContext::Ksoftirqd,
        "napi" => RxContext::Napi,
        "backlog_napi" => RxContext::BacklogNapi,
        "idle" => RxContext::Idle,
        "process_softirq" => RxContext::ProcessSoftirq,
        "process" => RxContext::Process,
        _ => return None,
    })
}

fn packet_kind(s: &str) -> Option<PacketKind> {
    Some(match s {
        "echo_request" => PacketKind::EchoRequest,
        "echo_reply" => PacketKind::EchoReply,
        "syn" => PacketKind::Syn,
        "syn_ack" => PacketKind::SynAck,
        "rst" => PacketKind::Rst,
        "other_tcp" => PacketKind::OtherTcp,
        _ => return None,
    })
}

fn probe_proto(s: &str) -> Option<ProbeProto> {
    Some(match s {
        "icmp" => ProbeProto::Icmp,
        "icmpv6" => ProbeProto::Icmpv6,
        "tcp" => ProbeProto::Tcp,
        _ => return None,
    })
}

fn probe_status(s: &str) -> Option<ProbeStatus> {
    Some(match s {
        "ok" => ProbeStatus::Ok,
        "lost" => ProbeStatus::Lost,
        "dup" => ProbeStatus::Dup,
        _ => return None,
    })
}

impl<'a> Cursor<'a> {
    fn new(line: &'a str) -> Self {
        Self {
            line,
            s: line.as_bytes(),
            i: 0,
            plain: true,
        }
    }
}

/// Replaces `to`'s text, reusing its buffer.
fn set(to: &mut String, s: &str) {
    to.clear();
    to.push_str(s);
}

/// Decodes a packet line as the writer writes it into `p`, reusing its text buffers;
/// `None` (with `p` partly overwritten) leaves the line to serde_json. Else whether
/// all its text is printable ASCII.
pub fn packet_into(line: &str, p: &mut PacketRec) -> Option<bool> {
    let mut c = Cursor::new(line);
    c.lit(br#"{"type":"packet","ts_ns":"#)?;
    p.ts_ns = c.uint()?;
    c.lit(br#","cpu":"#)?;
    p.cpu = c.narrow()?;
    c.lit(br#","pid":"#)?;
    p.pid = c.narrow()?;
    c.lit(br#","tgid":"#)?;
    p.tgid = c.narrow()?;
    c.lit(br#","comm":""#)?;
    set(&mut p.comm, c.string()?);
    c.lit(br#","context":""#)?;
    p.context = rx_context(c.string()?)?;
    c.lit(br#","hook":""#)?;
    set(&mut p.hook, c.string()?);
    c.lit(br#","proto":""#)?;
    set(&mut p.proto, c.string()?);
    c.lit(br#","kind":""#)?;
    p.kind = packet_kind(c.string()?)?;
    c.lit(br#","src":""#)?;
    set(&mut p.src, c.string()?);
    c.lit(br#","dst":""#)?;
    set(&mut p.dst, c.string()?);
    c.lit(br#","ident":"#)?;
    p.ident = c.narrow()?;
    c.lit(br#","seq":"#)?;
    p.seq = c.narrow()?;
    p.tcp_seq = None;
    if c.key(br#","tcp_seq":"#) {
        p.tcp_seq = c.opt_narrow()?;
    }
    p.rx_start_ns = None;
    if c.key(br#","rx_start_ns":"#) {
        p.rx_start_ns = c.opt_narrow()?;
    }
    p.drain_start_ns = None;
    if c.key(br#","drain_start_ns":"#) {
        p.drain_start_ns = c.opt_narrow()?;
    }
    c.end()?;
    Some(c.plain)
}

/// Decodes a probe line as the writer writes it into `p`, as [`packet_into`] does.
pub fn probe_into(line: &str, p: &mut ProbeRec) -> Option<bool> {
    let mut c = Cursor::new(line);
    c.lit(br#"{"type":"probe","source":""#)?;
    set(&mut p.source, c.string()?);
    c.lit(br#","proto":""#)?;
    p.proto = probe_proto(c.string()?)?;
    c.lit(br#","target":""#)?;
    set(&mut p.target, c.string()?);
    c.lit(br#","seq":"#)?;
    p.seq = c.narrow()?;
    p.wire_ident = None;
    if c.key(br#","wire_ident":"#) {
        p.wire_ident = c.opt_narrow()?;
    }
    p.wire_seq = None;
    if c.key(br#","wire_seq":"#) {
        p.wire_seq = c.opt_narrow()?;
    }
    p.sent_ns = None;
    if c.key(br#","sent_ns":"#) {
        p.sent_ns = c.opt_narrow()?;
    }
    p.rtt_ns = None;
    if c.key(br#","rtt_ns":"#) {
        p.rtt_ns = c.opt_narrow()?;
    }
    c.lit(br#","status":""#)?;
    p.status = probe_status(c.string()?)?;
    let mut send_error = None;
    if c.key(br#","send_error":"#) {
        send_error = c.opt_quoted()?;
    }
    match (send_error, &mut p.send_error) {
        (Some(e), Some(to)) => set(to, e),
        (e, to) => *to = e.map(String::from),
    }
    c.end()?;
    Some(c.plain)
}

/// Decodes a packet or probe line into `slot` when it can (reusing the record there
/// if it is of the same kind); whether all its text is printable ASCII (then
/// [`Record::sanitize`] has nothing to do). `None` leaves the line to serde_json, and
/// `slot` holds a record of the line's kind, partly overwritten.
pub fn record_into(line: &str, slot: &mut Option<Record>) -> Option<bool> {
    match line.as_bytes().get(9..11) {
        Some(b"pa") => {
            if !matches!(slot, Some(Record::Packet(_))) {
                *slot = Some(Record::Packet(blank_packet()));
            }
            match slot {
                Some(Record::Packet(p)) => packet_into(line, p),
                _ => None,
            }
        }
        Some(b"pr") => {
            if !matches!(slot, Some(Record::Probe(_))) {
                *slot = Some(Record::Probe(blank_probe()));
            }
            match slot {
                Some(Record::Probe(p)) => probe_into(line, p),
                _ => None,
            }
        }
        _ => None,
    }
}

/// A packet or probe line through the fast decoder, when it can; and whether all its
/// text is printable ASCII.
pub fn record(line: &str) -> Option<(Record, bool)> {
    let mut slot = None;
    let plain = record_into(line, &mut slot)?;
    Some((slot?, plain))
}

fn blank_packet() -> PacketRec {
    PacketRec {
        ts_ns: 0,
        cpu: 0,
        pid: 0,
        tgid: 0,
        comm: String::new(),
        context: RxContext::Process,
        hook: String::new(),
        proto: String::new(),
        kind: PacketKind::EchoRequest,
        src: String::new(),
        dst: String::new(),
        ident: 0,
        seq: 0,
        tcp_seq: None,
        rx_start_ns: None,
        drain_start_ns: None,
    }
}

fn blank_probe() -> ProbeRec {
    ProbeRec {
        source: String::new(),
        proto: ProbeProto::Icmp,
        target: String::new(),
        seq: 0,
        wire_ident: None,
        wire_seq: None,
        sent_ns: None,
        rtt_ns: None,
        status: ProbeStatus::Ok,
        send_error: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// serde_json's answer for the line, decoded the way the reader's serde path does.
    fn serde(line: &str) -> Option<Record> {
        if line.starts_with(r#"{"type":"packet""#) {
            serde_json::from_str(line).ok().map(Record::Packet)
        } else {
            serde_json::from_str(line).ok().map(Record::Probe)
        }
    }

    fn fast(line: &str) -> Option<Record> {
        record(line).map(|(r, _)| r)
    }

    const PKT: &str = r#"{"type":"packet","ts_ns":1000000055000,"cpu":3,"pid":0,"tgid":0,"comm":"swapper/3","context":"idle","hook":"tracepoint","proto":"icmp","kind":"echo_request","src":"10.0.0.1","dst":"10.0.0.11","ident":7982,"seq":0,"rx_start_ns":1000000052000}"#;
    const PRB: &str = r#"{"type":"probe","source":"hping3","proto":"icmp","target":"10.0.0.11","seq":1,"wire_ident":7982,"wire_seq":1,"rtt_ns":422477,"status":"ok"}"#;

    #[test]
    fn the_writers_lines_decode_as_serde_json_decodes_them() {
        for line in [PKT, PRB] {
            let got = record(line);
            assert!(got.is_some(), "declined {line}");
            assert_eq!(got.clone().map(|g| g.0), serde(line), "{line}");
            assert!(got.is_some_and(|g| g.1), "{line} is plain ASCII");
        }
        // Written by the real writer, every optional field set, text beyond ASCII.
        let mut p: PacketRec = serde_json::from_str(PKT).unwrap();
        (p.tcp_seq, p.drain_start_ns, p.comm) = (Some(u32::MAX), Some(u64::MAX), "é ☃".into());
        let line = serde_json::to_string(&Record::Packet(p.clone())).unwrap();
        assert_eq!(record(&line), Some((Record::Packet(p), false)));
        let mut q: ProbeRec = serde_json::from_str(PRB).unwrap();
        (q.sent_ns, q.send_error, q.status) = (Some(0), Some("EPERM".into()), ProbeStatus::Lost);
        let line = serde_json::to_string(&Record::Probe(q.clone())).unwrap();
        assert_eq!(record(&line), Some((Record::Probe(q), true)));
        // DEL is not printable: the reader must escape it.
        let del = PKT.replace("swapper/3", "swap\u{7f}per");
        assert!(record(&del).is_some_and(|(_, plain)| !plain));
    }

    /// Each change either decodes as serde_json does or is declined; never a different
    /// answer.
    #[test]
    fn anything_unusual_is_declined_or_agrees_with_serde_json() {
        let variants = [
            // serde_json accepts these: the fast path may decline, never differ.
            PKT.replace(r#""rx_start_ns":1000000052000"#, r#""rx_start_ns":null"#),
            PKT.replace(r#","rx_start_ns":1000000052000"#, ""),
            PKT.replace(r#""cpu":3"#, r#""cpu" : 3"#),
            PKT.replace(r#""comm":"swapper/3""#, r#""comm":"swap\u0070er/3""#),
            PKT.replace(r#""comm":"swapper/3""#, r#""comm":"a\nb""#),
            PKT.replace(r#""seq":0"#, r#""seq":0,"extra":[1,{"a":2}]"#),
            PKT.replacen(r#""type":"packet","#, "", 1),
            PKT.replace(r#""cpu":3,"pid":0"#, r#""pid":0,"cpu":3"#),
            PRB.replace(r#""status":"ok""#, r#""status":"ok","send_error":null"#),
            PKT.replace(r#""type":"packet","#, r#""type":"packet","type":"packet","#),
            // serde_json refuses these: the fast path must decline.
            PKT.replace(r#""cpu":3"#, r#""cpu":4294967296"#),
            PKT.replace(r#""ident":7982"#, r#""ident":65536"#),
            PKT.replace(r#""cpu":3"#, r#""cpu":03"#),
            PKT.replace(r#""cpu":3"#, r#""cpu":3.0"#),
            PKT.replace(r#""cpu":3"#, r#""cpu":3e0"#),
            PKT.replace(r#""cpu":3"#, r#""cpu":-3"#),
            PKT.replace(
                r#""ts_ns":1000000055000"#,
                r#""ts_ns":18446744073709551616"#,
            ),
            PKT.replace(r#""cpu":3"#, r#""cpu":3,"cpu":4"#),
            PKT.replace(r#""cpu":3"#, r#""cpu":null"#),
            PKT.replace(r#""cpu":3,"#, ""),
            PKT.replace(r#""idle""#, r#""sleepy""#),
            PKT.replace(r#""comm":"swapper/3""#, "\"comm\":\"a\u{1}b\""),
            PKT.to_string() + "x",
            PKT.to_string() + "}",
            PKT[..PKT.len() - 1].to_string(),
            PKT.replace(r#""seq":0"#, r#""seq":"#),
            PRB.replace(r#""rtt_ns":422477"#, r#""rtt_ns":true"#),
            PRB.replace(r#""status":"ok""#, r#""status":"OK""#),
            PRB.replace(r#""wire_seq":1"#, r#""wire_seq":-1"#),
        ];
        for v in &variants {
            if let Some(r) = fast(v) {
                assert_eq!(Some(r), serde(v), "{v}");
            }
        }
        // Optional fields null or absent are the writer's forms too: understood.
        for i in [0, 1, 8] {
            assert!(fast(&variants[i]).is_some(), "{}", variants[i]);
        }
        // A NUL in a string is declined (the reader then reports the line as binary).
        assert_eq!(fast(&PKT.replace("swapper", "swap\0per")), None);
    }

    /// Decoding into a slot that held another record (of the same kind or not, with
    /// every optional field set) gives what decoding afresh gives.
    #[test]
    fn a_reused_slot_holds_nothing_of_the_record_before() {
        let mut full: PacketRec = serde_json::from_str(PKT).unwrap();
        (full.tcp_seq, full.drain_start_ns, full.comm) = (Some(9), Some(9), "longer-name".into());
        let mut q: ProbeRec = serde_json::from_str(PRB).unwrap();
        (q.sent_ns, q.send_error) = (Some(5), Some("EPERM".into()));
        let lines = [
            serde_json::to_string(&Record::Packet(full)).unwrap(),
            PKT.to_string(),
            serde_json::to_string(&Record::Probe(q)).unwrap(),
            PRB.to_string(),
            PKT.to_string(),
        ];
        let mut slot = None;
        for l in &lines {
            assert!(record_into(l, &mut slot).is_some(), "{l}");
            assert_eq!(slot, serde(l), "{l}");
        }
    }

    /// The word-at-a-time string scan against a byte loop, on strings mixing every
    /// class of byte at every offset.
    #[test]
    fn the_string_scan_agrees_with_a_byte_loop() {
        fn naive(s: &[u8]) -> Option<(usize, bool)> {
            let mut unusual = false;
            for (i, &b) in s.iter().enumerate() {
                match b {
                    b'"' => return Some((i, !unusual)),
                    b if b < 0x20 || b == b'\\' => return None,
                    b => unusual |= b >= 0x7f,
                }
            }
            None
        }
        let classes: [&[u8]; 7] = [b"a", b"\"", b"\\", b"\x01", b"\x7f", "é".as_bytes(), b" "];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            let mut text = String::new();
            let mut bytes: Vec<u8> = vec![];
            for _ in 0..(x % 24) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                bytes.extend_from_slice(classes[(x % 7) as usize]);
            }
            text.push_str(&String::from_utf8_lossy(&bytes));
            let mut c = Cursor::new(&text);
            let got = c.string().map(|s| (s.len(), c.plain));
            assert_eq!(got, naive(text.as_bytes()), "{text:?}");
            x = x.wrapping_add(1);
        }
    }

    /// Every prefix of a line (a torn last line) is declined.
    #[test]
    fn every_prefix_is_declined() {
        for line in [PKT, PRB] {
            for cut in 0..line.len() {
                let p = &line[..cut];
                assert_eq!(fast(p), None, "{p}");
            }
        }
    }
}
