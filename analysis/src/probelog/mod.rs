//! Parsing hping3 and iputils ping output into probe records.
//!
//! Lenient, never inventive: copy-pasted logs glue records together
//! (`rtt=127.1 mslen=46 ip= ttl=59 …`), split them over lines, and insert spaces
//! (`icmp_ seq=`, `id= 49452`). A record is whatever ends in `rtt=N ms` (hping3) or
//! holds `bytes from …: icmp_seq=N … time=N ms` (ping); fields the log lacks stay
//! empty. Lines we do not understand are counted, not fatal.
//!
//! Byte order, checked against a capture (`testdata/tcpdump_hping_icmp.txt`, hping3
//! 3.0.0-alpha-2 on x86-64, and the root test `probe_netns`):
//! - hping3 writes the ICMP echo id (its pid) and sequence in host order and prints
//!   the sequence as it wrote it: `icmp_seq=1` is the bytes `01 00` on the wire, which
//!   the kernel (and `tcpdump`, "seq 256") reads big-endian as 256. So
//!   `wire_seq = seq.swap_bytes()`. The echo id is not printed (`id=` is the reply's
//!   IP id), so `wire_ident` stays empty.
//! - iputils ping writes both in network order and prints them as such: the printed
//!   `icmp_seq` (and `ident=` with `-v`) are the wire values.
//! - `stalltrace probe` prints hping3-style lines under a `PROBE host (addr): …` header
//!   that names its echo id (`icmp echo, raw socket, echo id N`) or its TCP source
//!   ports (`tcp SYN to port P, source ports B-L`: probe i from `B + i % 8192`), and
//!   writes the sequence in network order: after that header the printed `icmp_seq`
//!   is the wire sequence and the id is known.
//! - hping3 TCP (`-S -p PORT`): probe i leaves from source port `base + i` (base is
//!   random per run and not printed) to PORT; `sport=` in a line is the answer's source
//!   port = PORT, and `seq=` is the answer's destination port minus base. So the log
//!   gives the probe's destination port (`wire_seq`) and its offset `seq`, not its
//!   source port (`wire_ident` empty): [`crate::correlate::align`] learns base from the
//!   dump's SYNs (how, and its limits, are said there) and matches the rest by ports.
use std::{
    collections::HashMap,
    io::BufRead,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use regex::Regex;

use crate::dump::{ProbeProto, ProbeRec, ProbeStatus};

#[derive(Debug, thiserror::Error)]
pub enum ProbeLogError {
    #[error("{path}: cannot read")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Nothing in the file is a probe: `line` is the first line not understood (or the
    /// last line, when every line was a header or statistics).
    #[error("{path}:{line}: no probe line found (expected hping3 or ping output): {why}")]
    NoProbes {
        path: PathBuf,
        line: u64,
        why: String,
    },
    #[error("{path}: empty, no probe line (expected hping3 or ping output)")]
    Empty { path: PathBuf },
}

/// A closing statistics block (`--- X hping statistic ---` / `--- X ping statistics ---`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogStats {
    /// `hping3` or `ping`.
    pub tool: String,
    /// Target named in the block's title, when present.
    pub target: Option<String>,
    pub transmitted: u64,
    pub received: u64,
    /// ping's `+N duplicates`.
    pub duplicates: Option<u64>,
    pub loss_pct: f64,
    pub rtt_min_ms: Option<f64>,
    pub rtt_avg_ms: Option<f64>,
    pub rtt_max_ms: Option<f64>,
}

/// Probes parsed from a log, and how many lines were not understood.
#[derive(Debug, Default)]
pub struct ProbeLog {
    pub probes: Vec<ProbeRec>,
    pub unknown_lines: u64,
    /// The statistics blocks found, in log order.
    pub stats: Vec<LogStats>,
    /// Lines read (blank ones included), and the first line not understood: its
    /// number and its text (escaped, at most 80 characters).
    pub lines: u64,
    pub first_unknown: Option<(u64, String)>,
}

impl ProbeLog {
    /// `log: N probes (ok, dup, lost), M unknown lines; stats: …`.
    pub fn summary_line(&self) -> String {
        let n = |s: ProbeStatus| self.probes.iter().filter(|p| p.status == s).count();
        let mut line = format!(
            "log: {} probes ({} ok, {} dup, {} lost), {} unknown lines",
            self.probes.len(),
            n(ProbeStatus::Ok),
            n(ProbeStatus::Dup),
            n(ProbeStatus::Lost),
            self.unknown_lines
        );
        for s in &self.stats {
            line.push_str(&format!(
                "; {} statistics: {} transmitted, {} received, {}% loss",
                s.tool, s.transmitted, s.received, s.loss_pct
            ));
        }
        line
    }
}

pub fn parse_file(path: &Path) -> Result<ProbeLog, ProbeLogError> {
    let io = |source| ProbeLogError::Io {
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    let log = parse_reader(std::io::BufReader::new(f)).map_err(io)?;
    if log.probes.is_empty() {
        let path = path.to_path_buf();
        return Err(match &log.first_unknown {
            _ if log.lines == 0 => ProbeLogError::Empty { path },
            Some((line, text)) => ProbeLogError::NoProbes {
                path,
                line: *line,
                why: format!("line {line} is not one: {text}"),
            },
            None => ProbeLogError::NoProbes {
                path,
                line: log.lines,
                why: "headers and statistics only".into(),
            },
        });
    }
    Ok(log)
}

/// Parses a log from a reader; bytes that are not UTF-8 are replaced, not fatal.
/// A prober's line is under 200 bytes; past this a line is read no further (its
/// start is parsed, the rest skipped), so a log of one endless line costs no memory.
pub const MAX_LINE_BYTES: usize = 64 << 10;

pub fn parse_reader(mut r: impl BufRead) -> std::io::Result<ProbeLog> {
    let mut p = Parser::default();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = std::io::Read::take(&mut r, MAX_LINE_BYTES as u64).read_until(b'\n', &mut buf)?;
        if n == 0 {
            break;
        }
        if buf.last() != Some(&b'\n') {
            skip_rest_of_line(&mut r)?;
        }
        p.line(&String::from_utf8_lossy(&buf));
    }
    Ok(p.finish())
}

/// Consumes input up to and including the next newline, without keeping it.
fn skip_rest_of_line(r: &mut impl BufRead) -> std::io::Result<()> {
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            return Ok(());
        }
        match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => {
                r.consume(i + 1);
                return Ok(());
            }
            None => {
                let n = chunk.len();
                r.consume(n);
            }
        }
    }
}

/// Parses a whole log held in memory.
pub fn parse_str(s: &str) -> ProbeLog {
    let mut p = Parser::default();
    for l in s.lines() {
        p.line(l);
    }
    p.finish()
}

struct Re {
    ts: Regex,
    glue_seq: Regex,
    glue_val: Regex,
    hping_rtt: Regex,
    kv: Regex,
    hping_head: Regex,
    probe_icmp_head: Regex,
    probe_tcp_head: Regex,
    hping_title: Regex,
    hping_counts: Regex,
    hping_rtts: Regex,
    ping_reply: Regex,
    ping_ident: Regex,
    ping_time: Regex,
    ping_noanswer: Regex,
    ping_from_err: Regex,
    ping_head: Regex,
    ping_title: Regex,
    ping_counts: Regex,
    ping_rtts: Regex,
}

fn re() -> &'static Re {
    static RE: OnceLock<Re> = OnceLock::new();
    RE.get_or_init(|| {
        // The patterns are constants; a typo is caught by every unit test.
        let r = |s: &str| Regex::new(s).unwrap_or_else(|e| panic!("bad built-in pattern {s}: {e}"));
        Re {
            ts: r(r"^\s*\[(\d+(?:\.\d+)?)\]\s*"),
            glue_seq: r(r"icmp_\s+seq="),
            glue_val: r(r"\b(len|ttl|id|icmp_seq|seq|sport|win)=\s+(\d)"),
            hping_rtt: r(r"rtt=(\d+(?:\.\d+)?)\s*ms"),
            kv: r(r"\b(len|ip|ttl|id|icmp_seq|seq|sport|flags|win)=(\S*)"),
            hping_head: r(r"HPING\s+(\S+)\s+\("),
            probe_icmp_head: r(r"^PROBE\s+\S+\s+\(([^)]+)\):\s+(icmp|icmpv6)\s+echo,.*\becho\s+id\s+(\d+)"),
            probe_tcp_head: r(r"^PROBE\s+\S+\s+\(([^)]+)\):\s+tcp\s+SYN\s+to\s+port\s+(\d+),\s+source\s+ports\s+(\d+)-(\d+)"),
            hping_title: r(r"---\s*(\S*)\s*(?:hping|stalltrace\s+probe)\s+statistic\s*---"),
            hping_counts: r(r"(\d+)\s+packets\s+transmitted,\s+(\d+)\s+packets\s+received,(?:\s+\d+\s+lost,)?\s+(\d+(?:\.\d+)?)%\s+packet\s+loss"),
            hping_rtts: r(r"round-trip\s+min/avg/max\s+=\s+(\d+(?:\.\d+)?)/(\d+(?:\.\d+)?)/(\d+(?:\.\d+)?)\s+ms"),
            ping_reply: r(r"(\d+)\s+bytes\s+from\s+(.+?):\s+icmp_seq=(\d+)"),
            ping_ident: r(r"\bident=(\d+)"),
            ping_time: r(r"\btime=(\d+(?:\.\d+)?)\s*ms"),
            ping_noanswer: r(r"no\s+answer\s+yet\s+for\s+icmp_seq=(\d+)"),
            ping_from_err: r(r"^From\s+\S+.*\s+icmp_seq=\d+\s+"),
            ping_head: r(r"^PING\s+(\S+?)\s*\(([^)]+)\)"),
            ping_title: r(r"---\s*(\S+)\s+ping\s+statistics\s*---"),
            ping_counts: r(
                r"(\d+)\s+packets\s+transmitted,\s+(\d+)\s+received(?:,\s+\+(\d+)\s+duplicates)?(?:,\s+\+(\d+)\s+errors)?,\s+(\d+(?:\.\d+)?)%\s+packet\s+loss",
            ),
            ping_rtts: r(r"rtt\s+min/avg/max/mdev\s+=\s+(\d+(?:\.\d+)?)/(\d+(?:\.\d+)?)/(\d+(?:\.\d+)?)/\d+(?:\.\d+)?\s+ms"),
        }
    })
}

fn ms_to_ns(s: &str) -> Option<u64> {
    let ms: f64 = s.parse().ok()?;
    (ms.is_finite() && ms >= 0.0).then(|| (ms * 1e6).round() as u64)
}

/// What a `stalltrace probe` header says about the wire.
#[derive(Debug, Clone, Copy)]
enum OwnProber {
    /// Echo id; the printed sequence is the wire's.
    Icmp { proto: ProbeProto, ident: u16 },
    /// Probe i leaves from `base + i % span` to `port`.
    Tcp { port: u16, base: u16, span: u16 },
}

#[derive(Default)]
struct Parser {
    probes: Vec<Option<ProbeRec>>,
    unknown_lines: u64,
    lines: u64,
    first_unknown: Option<(u64, String)>,
    stats: Vec<LogStats>,
    /// Target from the last `HPING`/`PING`/`PROBE` header line.
    head_target: Option<String>,
    /// After a `stalltrace probe` header: how its lines map to the wire.
    own: Option<OwnProber>,
    /// hping3 records with no target yet (empty `ip=`, no header): filled from the
    /// next statistics block that names one.
    untargeted: Vec<usize>,
    /// ping -O `no answer yet` records by printed seq: dropped if the answer follows.
    no_answer: HashMap<u32, usize>,
}

impl Parser {
    fn push(&mut self, rec: ProbeRec) -> usize {
        self.probes.push(Some(rec));
        self.probes.len() - 1
    }

    fn line(&mut self, raw: &str) {
        let re = re();
        self.lines += 1;
        let line = raw.trim_end_matches(['\r', '\n']);
        if line.trim().is_empty() {
            return;
        }
        let body = match re.ts.find(line) {
            Some(m) => &line[m.end()..],
            None => line,
        };
        let mut known = self.ping_line(body);
        if !known {
            known = self.hping_records(body);
        }
        known |= self.headers_and_stats(body);
        if !known {
            self.unknown_lines += 1;
            if self.first_unknown.is_none() {
                let text: String = line.chars().take(80).collect();
                let text = crate::report::escape::line(&text).into_owned();
                self.first_unknown = Some((self.lines, text));
            }
        }
    }

    /// iputils ping reply, `no answer yet`, or an ICMP error line.
    fn ping_line(&mut self, body: &str) -> bool {
        let re = re();
        if let Some(c) = re.ping_reply.captures(body) {
            let Some(seq) = c.get(3).and_then(|m| m.as_str().parse::<u32>().ok()) else {
                return false;
            };
            let rest = &body[c.get(0).map_or(0, |m| m.end())..];
            let Some(rtt_ns) = re.ping_time.captures(rest).and_then(|t| ms_to_ns(&t[1])) else {
                return false;
            };
            let from = c.get(2).map_or("", |m| m.as_str());
            // `name (addr)` when ping resolved the host.
            let addr = match (from.rfind('('), from.rfind(')')) {
                (Some(a), Some(b)) if a < b => &from[a + 1..b],
                _ => from,
            };
            let dup = rest.contains("DUP!");
            if !dup {
                if let Some(i) = self.no_answer.remove(&seq) {
                    // The answer came after `no answer yet`: late, not lost.
                    self.probes[i] = None;
                }
            }
            self.push(ProbeRec {
                source: "ping".into(),
                proto: if addr.contains(':') {
                    ProbeProto::Icmpv6
                } else {
                    ProbeProto::Icmp
                },
                target: addr.to_string(),
                seq,
                // ping prints what it wrote in network order: the wire values.
                wire_ident: re
                    .ping_ident
                    .captures(rest)
                    .and_then(|i| i[1].parse::<u16>().ok()),
                wire_seq: u16::try_from(seq).ok(),
                sent_ns: None,
                rtt_ns: Some(rtt_ns),
                status: if dup {
                    ProbeStatus::Dup
                } else {
                    ProbeStatus::Ok
                },
                send_error: None,
            });
            return true;
        }
        if let Some(c) = re.ping_noanswer.captures(body) {
            let Ok(seq) = c[1].parse::<u32>() else {
                return false;
            };
            let target = self.head_target.clone().unwrap_or_default();
            let proto = if target.contains(':') {
                ProbeProto::Icmpv6
            } else {
                ProbeProto::Icmp
            };
            let i = self.push(ProbeRec {
                source: "ping".into(),
                proto,
                target,
                seq,
                wire_ident: None,
                wire_seq: u16::try_from(seq).ok(),
                sent_ns: None,
                rtt_ns: None,
                status: ProbeStatus::Lost,
                send_error: None,
            });
            self.no_answer.insert(seq, i);
            return true;
        }
        re.ping_from_err.is_match(body)
    }

    /// hping3 records: each ends in `rtt=N ms`; several may share a line.
    fn hping_records(&mut self, body: &str) -> bool {
        let re = re();
        let norm = re.glue_seq.replace_all(body, "icmp_seq=");
        let norm = re.glue_val.replace_all(&norm, "$1=$2");
        let mut start = 0;
        let mut any = false;
        for m in re.hping_rtt.captures_iter(&norm) {
            let (Some(whole), Some(rtt)) = (m.get(0), m.get(1)) else {
                continue;
            };
            let seg = &norm[start..whole.start()];
            start = whole.end();
            if let Some(rec) = self.hping_record(seg, rtt.as_str()) {
                let empty = rec.target.is_empty();
                let i = self.push(rec);
                if empty {
                    self.untargeted.push(i);
                }
                any = true;
            }
        }
        any
    }

    fn hping_record(&self, seg: &str, rtt: &str) -> Option<ProbeRec> {
        let mut kv: HashMap<&str, &str> = HashMap::new();
        for c in re().kv.captures_iter(seg) {
            if let (Some(k), Some(v)) = (c.get(1), c.get(2)) {
                // The last occurrence wins: earlier text may be leftovers of a cut record.
                kv.insert(k.as_str(), v.as_str());
            }
        }
        let rtt_ns = ms_to_ns(rtt)?;
        let dup = seg.contains("DUP!");
        let ip = kv.get("ip").copied().unwrap_or("");
        let target = if ip.is_empty() {
            self.head_target.clone().unwrap_or_default()
        } else {
            ip.to_string()
        };
        let status = if dup {
            ProbeStatus::Dup
        } else {
            ProbeStatus::Ok
        };
        if let Some(s) = kv.get("icmp_seq") {
            let seq: u32 = s.parse().ok()?;
            if let Some(OwnProber::Icmp { proto, ident }) = self.own {
                return Some(ProbeRec {
                    source: "stalltrace".into(),
                    proto,
                    target,
                    seq,
                    wire_ident: Some(ident),
                    wire_seq: Some(seq as u16),
                    sent_ns: None,
                    rtt_ns: Some(rtt_ns),
                    status,
                    send_error: None,
                });
            }
            return Some(ProbeRec {
                source: "hping3".into(),
                proto: ProbeProto::Icmp,
                target,
                seq,
                // hping3 writes the sequence in host order (x86: little-endian) and
                // prints it as written; the kernel reads the bytes big-endian.
                wire_ident: None,
                wire_seq: u16::try_from(seq).ok().map(u16::swap_bytes),
                sent_ns: None,
                rtt_ns: Some(rtt_ns),
                status,
                send_error: None,
            });
        }
        // TCP answers carry `flags=`; a bare `seq=` line is UDP mode, which the dump
        // cannot represent: left as unknown.
        if let (Some(s), true) = (
            kv.get("seq"),
            kv.contains_key("flags") || kv.contains_key("sport"),
        ) {
            let seq: u32 = s.parse().ok()?;
            if let Some(OwnProber::Tcp { port, base, span }) = self.own {
                let off = u16::try_from(seq % u32::from(span.max(1))).ok()?;
                return Some(ProbeRec {
                    source: "stalltrace".into(),
                    proto: ProbeProto::Tcp,
                    target,
                    seq,
                    wire_ident: base.checked_add(off),
                    wire_seq: Some(port),
                    sent_ns: None,
                    rtt_ns: Some(rtt_ns),
                    status,
                    send_error: None,
                });
            }
            return Some(ProbeRec {
                source: "hping3".into(),
                proto: ProbeProto::Tcp,
                target,
                seq,
                // The probe's source port (base + seq) is not in the log.
                wire_ident: None,
                // `sport=` of the answer is the port the probe went to.
                wire_seq: kv.get("sport").and_then(|p| p.parse::<u16>().ok()),
                sent_ns: None,
                rtt_ns: Some(rtt_ns),
                status,
                send_error: None,
            });
        }
        None
    }

    /// Header lines and statistics blocks (which may be glued onto one line).
    fn headers_and_stats(&mut self, body: &str) -> bool {
        let re = re();
        let mut known = false;
        if let Some(c) = re.hping_head.captures(body) {
            self.head_target = Some(c[1].to_string());
            self.own = None;
            known = true;
        }
        if let Some(c) = re.probe_icmp_head.captures(body) {
            self.head_target = Some(c[1].to_string());
            let proto = if &c[2] == "icmpv6" {
                ProbeProto::Icmpv6
            } else {
                ProbeProto::Icmp
            };
            self.own = c[3]
                .parse()
                .ok()
                .map(|ident| OwnProber::Icmp { proto, ident });
            known = true;
        }
        if let Some(c) = re.probe_tcp_head.captures(body) {
            self.head_target = Some(c[1].to_string());
            let n = |i: usize| c[i].parse::<u16>().ok();
            self.own = match (n(2), n(3), n(4)) {
                (Some(port), Some(base), Some(last)) if last >= base => Some(OwnProber::Tcp {
                    port,
                    base,
                    span: last - base + 1,
                }),
                _ => None,
            };
            known = true;
        }
        if let Some(c) = re.ping_head.captures(body) {
            self.head_target = Some(c[2].to_string());
            self.own = None;
            known = true;
        }
        for (title, counts, rtts, tool) in [
            (&re.hping_title, &re.hping_counts, &re.hping_rtts, "hping3"),
            (&re.ping_title, &re.ping_counts, &re.ping_rtts, "ping"),
        ] {
            if let Some(c) = title.captures(body) {
                let target = c
                    .get(1)
                    .map(|m| m.as_str())
                    .filter(|t| !t.is_empty())
                    .map(str::to_string);
                if let Some(t) = &target {
                    for i in self.untargeted.drain(..) {
                        if let Some(Some(p)) = self.probes.get_mut(i) {
                            p.target = t.clone();
                        }
                    }
                }
                self.stats.push(LogStats {
                    tool: tool.into(),
                    target,
                    ..Default::default()
                });
                known = true;
            }
            if let Some(c) = counts.captures(body) {
                let st = self.stats_for(tool);
                st.transmitted = c[1].parse().unwrap_or(0);
                st.received = c[2].parse().unwrap_or(0);
                if tool == "ping" {
                    st.duplicates = c.get(3).and_then(|m| m.as_str().parse().ok()).or(Some(0));
                    st.loss_pct = c[5].parse().unwrap_or(0.0);
                } else {
                    st.loss_pct = c[3].parse().unwrap_or(0.0);
                }
                known = true;
            }
            if let Some(c) = rtts.captures(body) {
                let st = self.stats_for(tool);
                st.rtt_min_ms = c[1].parse().ok();
                st.rtt_avg_ms = c[2].parse().ok();
                st.rtt_max_ms = c[3].parse().ok();
                known = true;
            }
        }
        known
    }

    /// The open statistics block of `tool` (a block whose title line was lost
    /// starts a new one).
    fn stats_for(&mut self, tool: &str) -> &mut LogStats {
        let open = self.stats.last().is_some_and(|s| s.tool == tool);
        if !open {
            self.stats.push(LogStats {
                tool: tool.into(),
                ..Default::default()
            });
        }
        let last = self.stats.len() - 1;
        &mut self.stats[last]
    }

    fn finish(self) -> ProbeLog {
        ProbeLog {
            probes: self.probes.into_iter().flatten().collect(),
            unknown_lines: self.unknown_lines,
            stats: self.stats,
            lines: self.lines,
            first_unknown: self.first_unknown,
        }
    }
}

#[cfg(test)]
mod tests;
