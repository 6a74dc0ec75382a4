//! Streams a dump line by line (memory does not grow with the dump), with the line
//! number of every problem.
use std::{
    fs::File,
    io::{self, Read},
    path::{Path, PathBuf},
};

use thiserror::Error;

use super::schema::{Footer, Header, Record, DUMP_FORMAT, DUMP_VERSION};

#[derive(Debug, Error)]
pub enum DumpError {
    #[error("{path}: cannot read")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: empty file, not a stalltrace dump")]
    Empty { path: PathBuf },
    #[error("{path}:{line}: not a stalltrace dump: {why}")]
    NotADump {
        path: PathBuf,
        line: u64,
        why: String,
    },
    #[error("{path}:{line}: dump format version {found} is newer than this stalltrace understands ({DUMP_VERSION})")]
    Version {
        path: PathBuf,
        line: u64,
        found: u32,
    },
    #[error("{path}:{line}: malformed record: {why}")]
    Malformed {
        path: PathBuf,
        line: u64,
        why: String,
    },
    #[error("{path}:{line}: binary data, not JSON text")]
    Binary { path: PathBuf, line: u64 },
    #[error("{path}:{line}: record after the footer")]
    AfterFooter { path: PathBuf, line: u64 },
    #[error("{path}:{line}: line {line} is over {} MiB: not a stalltrace dump", MAX_LINE_BYTES >> 20)]
    LineTooLong { path: PathBuf, line: u64 },
}

/// The longest line read. A record is at most tens of KiB (three holders with their
/// stacks); without a cap a file with no newline would be buffered whole.
pub const MAX_LINE_BYTES: usize = 16 << 20;

/// Reads the header on open, then yields records; remembers whether a footer came.
pub struct DumpReader<R: Read> {
    path: PathBuf,
    lines: Lines<R>,
    line: u64,
    header: Header,
    footer: Option<Footer>,
    /// The last line had no newline (the writer was killed mid-line).
    partial_last_line: bool,
    /// The record last read: the next one is decoded into it, reusing its text
    /// buffers when it is of the same kind (no allocation per record).
    slot: Option<Record>,
}

/// Lines straight out of the read buffer: a line is copied only when it straddles
/// two reads, and the buffer grows only to the longest line (at most the cap).
struct Lines<R> {
    src: R,
    buf: Vec<u8>,
    /// The unread bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    eof: bool,
}

/// What one read asks for, and the buffer's starting size.
const CHUNK: usize = 256 << 10;

/// One line, without its newline.
enum Line<'a> {
    /// Ended by a newline.
    Complete(&'a [u8]),
    /// The last bytes of the input, with no newline after them.
    Unterminated(&'a [u8]),
    /// Over [`MAX_LINE_BYTES`] without a newline.
    TooLong,
}

impl<R: Read> Lines<R> {
    fn new(src: R) -> Self {
        Self {
            src,
            buf: vec![0; CHUNK],
            start: 0,
            end: 0,
            eof: false,
        }
    }

    fn next(&mut self) -> io::Result<Option<Line<'_>>> {
        // Where the newline search resumes: bytes before it were searched already.
        let mut searched = 0;
        loop {
            let unread = &self.buf[self.start..self.end];
            if let Some(i) = memchr::memchr(b'\n', &unread[searched..]) {
                let n = searched + i;
                let at = self.start;
                self.start += n + 1;
                if n > MAX_LINE_BYTES {
                    return Ok(Some(Line::TooLong));
                }
                return Ok(Some(Line::Complete(&self.buf[at..at + n])));
            }
            searched = unread.len();
            if searched > MAX_LINE_BYTES {
                return Ok(Some(Line::TooLong));
            }
            if self.eof {
                if searched == 0 {
                    return Ok(None);
                }
                let at = self.start;
                self.start = self.end;
                return Ok(Some(Line::Unterminated(&self.buf[at..self.end])));
            }
            if self.end == self.buf.len() {
                // Full: move the partial line to the front; still full, grow (never
                // past the cap plus one byte, which tells an overlong line).
                if self.start > 0 {
                    self.buf.copy_within(self.start..self.end, 0);
                    self.end -= self.start;
                    self.start = 0;
                }
                if self.end == self.buf.len() {
                    let grown = (self.buf.len() * 2).min(MAX_LINE_BYTES + 1);
                    self.buf.resize(grown, 0);
                }
            }
            let n = loop {
                match self.src.read(&mut self.buf[self.end..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            if n == 0 {
                self.eof = true;
            }
            self.end += n;
        }
    }
}

impl DumpReader<File> {
    pub fn open(path: &Path) -> Result<Self, DumpError> {
        let f = File::open(path).map_err(|source| DumpError::Io {
            path: path.into(),
            source,
        })?;
        Self::new(path, f)
    }
}

impl<R: Read> DumpReader<R> {
    pub fn new(path: &Path, r: R) -> Result<Self, DumpError> {
        let mut me = Self {
            path: path.to_path_buf(),
            lines: Lines::new(r),
            line: 0,
            header: Header {
                format: String::new(),
                version: 0,
                host: String::new(),
                kernel: String::new(),
                cpus: 0,
                boot_to_wall_ns: 0,
                started_at: String::new(),
                hooks: vec![],
                packet_hook: String::new(),
                options: Default::default(),
                cgroups: None,
            },
            footer: None,
            partial_last_line: false,
            slot: None,
        };
        let first = if me.next_line()? {
            me.slot.take()
        } else {
            None
        };
        match first {
            None => return Err(DumpError::Empty { path: me.path }),
            Some(Record::Header(h)) => {
                if h.format != DUMP_FORMAT {
                    return Err(DumpError::NotADump {
                        path: me.path,
                        line: 1,
                        why: format!("format is {:?}, expected {DUMP_FORMAT:?}", h.format),
                    });
                }
                if h.version > DUMP_VERSION {
                    return Err(DumpError::Version {
                        path: me.path,
                        line: 1,
                        found: h.version,
                    });
                }
                me.header = h;
            }
            Some(_) => {
                return Err(DumpError::NotADump {
                    path: me.path,
                    line: me.line,
                    why: "the first record is not a header".into(),
                })
            }
        }
        Ok(me)
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The footer, once the stream has been read to its end; `None` means the dump
    /// was cut short.
    pub fn footer(&self) -> Option<&Footer> {
        self.footer.as_ref()
    }

    pub fn line(&self) -> u64 {
        self.line
    }

    pub fn partial_last_line(&self) -> bool {
        self.partial_last_line
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Decodes the next line into `slot`; false at the end.
    fn next_line(&mut self) -> Result<bool, DumpError> {
        loop {
            let got = self.lines.next().map_err(|source| DumpError::Io {
                path: self.path.clone(),
                source,
            })?;
            let (bytes, complete) = match got {
                None => return Ok(false),
                Some(Line::TooLong) => {
                    self.line += 1;
                    return Err(DumpError::LineTooLong {
                        path: self.path.clone(),
                        line: self.line,
                    });
                }
                Some(Line::Complete(b)) => (b, true),
                Some(Line::Unterminated(b)) => (b, false),
            };
            self.line += 1;
            let bytes = trim_ascii(bytes);
            if bytes.is_empty() {
                continue;
            }
            let Ok(text) = std::str::from_utf8(bytes) else {
                return Err(DumpError::Binary {
                    path: self.path.clone(),
                    line: self.line,
                });
            };
            // What the fast decoder accepts holds no NUL byte; when all its text is
            // printable ASCII there is nothing to escape.
            if let Some(plain) = super::fast::record_into(text, &mut self.slot) {
                if !plain {
                    if let Some(r) = self.slot.as_mut() {
                        r.sanitize();
                    }
                }
                return Ok(true);
            }
            if memchr::memchr(0, bytes).is_some() {
                return Err(DumpError::Binary {
                    path: self.path.clone(),
                    line: self.line,
                });
            }
            match decode_record(text) {
                Ok(mut r) => {
                    r.sanitize();
                    self.slot = Some(r);
                    return Ok(true);
                }
                Err(e) if !complete && self.line > 1 => {
                    // A torn last line: the recorder died while writing it.
                    let _ = e;
                    self.partial_last_line = true;
                    return Ok(false);
                }
                Err(e) => {
                    return Err(DumpError::Malformed {
                        path: self.path.clone(),
                        line: self.line,
                        why: e.to_string(),
                    })
                }
            }
        }
    }

    /// The next record after the header (the footer is kept, not yielded), borrowed:
    /// the fastest way through a dump (no allocation or copy per record).
    pub fn next_ref(&mut self) -> Result<Option<&Record>, DumpError> {
        if !self.next_line()? {
            return Ok(None);
        }
        if !matches!(self.slot, Some(Record::Footer(_) | Record::Header(_))) {
            return Ok(self.slot.as_ref());
        }
        match self.slot.take() {
            Some(Record::Footer(f)) => {
                self.footer = Some(f);
                // Only blank lines may follow a footer.
                if self.next_line()? {
                    return Err(DumpError::AfterFooter {
                        path: self.path.clone(),
                        line: self.line,
                    });
                }
                Ok(None)
            }
            Some(Record::Header(_)) => Err(DumpError::Malformed {
                path: self.path.clone(),
                line: self.line,
                why: "a second header".into(),
            }),
            r => {
                self.slot = r;
                Ok(self.slot.as_ref())
            }
        }
    }

    /// The next record after the header (the footer is kept, not yielded).
    pub fn next_record(&mut self) -> Result<Option<Record>, DumpError> {
        if self.next_ref()?.is_none() {
            return Ok(None);
        }
        Ok(self.slot.take())
    }
}

/// Decodes a line the fast decoder ([`super::fast`]) declined. The writer puts
/// `"type"` first, so the common kinds are decoded straight into their struct (the
/// extra `type` key is ignored): serde's generic path for internally tagged enums
/// buffers every field first. Anything else takes that generic path. The text was
/// checked for UTF-8 already: serde_json's `from_str` does not check each string again.
fn decode_record(text: &str) -> serde_json::Result<Record> {
    const PACKET: &str = r#"{"type":"packet","#;
    const WAIT: &str = r#"{"type":"wait","#;
    const SYSCALL: &str = r#"{"type":"syscall","#;
    const PROBE: &str = r#"{"type":"probe","#;
    if text.starts_with(PACKET) {
        serde_json::from_str(text).map(Record::Packet)
    } else if text.starts_with(WAIT) {
        serde_json::from_str(text).map(Record::Wait)
    } else if text.starts_with(SYSCALL) {
        serde_json::from_str(text).map(Record::Syscall)
    } else if text.starts_with(PROBE) {
        serde_json::from_str(text).map(Record::Probe)
    } else {
        serde_json::from_str::<Record>(text)
    }
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dump::schema::*;

    fn header_line() -> String {
        serde_json::to_string(&Record::Header(Header {
            format: DUMP_FORMAT.into(),
            version: DUMP_VERSION,
            host: "h".into(),
            kernel: "6.1".into(),
            cpus: 2,
            boot_to_wall_ns: 0,
            started_at: "2026-01-01T00:00:00Z".into(),
            hooks: vec![],
            packet_hook: "tracepoint".into(),
            options: Options::default(),
            cgroups: None,
        }))
        .unwrap()
    }

    fn probe_line(seq: u32) -> String {
        serde_json::to_string(&Record::Probe(ProbeRec {
            source: "ping".into(),
            proto: ProbeProto::Icmp,
            target: "10.0.0.2".into(),
            seq,
            wire_ident: Some(7),
            wire_seq: Some(seq as u16),
            sent_ns: None,
            rtt_ns: Some(1_000_000),
            status: ProbeStatus::Ok,
            send_error: None,
        }))
        .unwrap()
    }

    fn read_all(text: &[u8]) -> Result<(Vec<Record>, bool, bool), DumpError> {
        let mut r = DumpReader::new(Path::new("d.jsonl"), text)?;
        let mut v = vec![];
        while let Some(rec) = r.next_record()? {
            v.push(rec);
        }
        Ok((v, r.footer().is_some(), r.partial_last_line()))
    }

    #[test]
    fn complete_dump_reads_with_footer() {
        let foot = serde_json::to_string(&Record::Footer(Footer::default())).unwrap();
        let text = format!("{}\n{}\n{}\n", header_line(), probe_line(1), foot);
        let (v, footer, partial) = read_all(text.as_bytes()).unwrap();
        assert_eq!(v.len(), 1);
        assert!(footer);
        assert!(!partial);
    }

    #[test]
    fn cut_short_dump_reads_up_to_last_complete_line() {
        let p = probe_line(2);
        let text = format!(
            "{}\n{}\n{}",
            header_line(),
            probe_line(1),
            &p[..p.len() / 2]
        );
        let (v, footer, partial) = read_all(text.as_bytes()).unwrap();
        assert_eq!(v.len(), 1);
        assert!(!footer);
        assert!(partial);
    }

    #[test]
    fn errors_name_the_line() {
        let text = format!(
            "{}\n{}\n{{\"type\":\"packet\"}}\n",
            header_line(),
            probe_line(1)
        );
        let e = read_all(text.as_bytes()).unwrap_err();
        assert!(matches!(e, DumpError::Malformed { line: 3, .. }), "{e}");
        assert!(
            e.to_string().starts_with("d.jsonl:3: malformed record"),
            "{e}"
        );

        let e = read_all(b"").unwrap_err();
        assert!(matches!(e, DumpError::Empty { .. }));

        let e = read_all(b"\x7fELF\x02\x01\x01\x00\x00\n").unwrap_err();
        assert!(matches!(e, DumpError::Binary { line: 1, .. }), "{e}");

        let e = read_all(format!("{}\n", probe_line(1)).as_bytes()).unwrap_err();
        assert!(matches!(e, DumpError::NotADump { line: 1, .. }), "{e}");

        let e = read_all(b"hello world\n").unwrap_err();
        assert!(matches!(e, DumpError::Malformed { line: 1, .. }), "{e}");
    }

    #[test]
    fn records_without_stack_fields_still_read() {
        // A holder and a footer as written before --stacks existed.
        let holder = r#"{"pid":1,"tgid":1,"comm":"c","run_ns":5,"cgroup_id":0,"policy":"SCHED_OTHER","priority":0}"#;
        let h: HolderRec = serde_json::from_str(holder).unwrap();
        assert_eq!(h.stacks, None);
        let lost: Lost = serde_json::from_str(r#"{"packets":1,"waits":2,"syscalls":3}"#).unwrap();
        assert_eq!((lost.stack_samples, lost.total()), (0, 6));
        // And the stack fields round-trip; absent ones are not written.
        let mut h2 = h.clone();
        h2.stacks = Some(HolderStacks {
            samples: 2,
            top: vec![StackRec {
                count: 2,
                kernel: vec!["vfs_read+0x1".into()],
                user: vec![],
            }],
            ..Default::default()
        });
        let text = serde_json::to_string(&h2).unwrap();
        assert!(!text.contains("\"user\""), "{text}");
        assert_eq!(serde_json::from_str::<HolderRec>(&text).unwrap(), h2);
        assert!(!serde_json::to_string(&h).unwrap().contains("stacks"));
        assert!(!serde_json::to_string(&lost)
            .unwrap()
            .contains("stack_samples"));
    }

    #[test]
    fn the_fast_path_decodes_what_the_generic_one_does() {
        let line = probe_line(5);
        assert!(
            line.starts_with(r#"{"type":"probe","#),
            "writer puts the tag first: {line}"
        );
        let fast = decode_record(&line).unwrap();
        let generic: Record = serde_json::from_str(&line).unwrap();
        assert_eq!(fast, generic);
        // A line whose tag is not first still decodes (another writer's key order).
        let moved =
            line.replacen(r#""type":"probe","#, "", 1)
                .replacen('}', r#","type":"probe"}"#, 1);
        assert_eq!(decode_record(&moved).unwrap(), generic);
        // Malformed fast-path lines are still errors.
        assert!(decode_record(r#"{"type":"packet","ts_ns":"soon"}"#).is_err());
    }

    /// `head`, then `fill` repeated `n` times, then `tail`: generated as read, never
    /// held whole.
    struct Gen {
        head: Vec<u8>,
        fill: u8,
        n: u64,
        tail: Vec<u8>,
        pos: u64,
    }

    impl Read for Gen {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let total = self.head.len() as u64 + self.n + self.tail.len() as u64;
            let mut k = 0;
            while k < out.len() && self.pos < total {
                let p = self.pos;
                let h = self.head.len() as u64;
                out[k] = if p < h {
                    self.head[p as usize]
                } else if p < h + self.n {
                    self.fill
                } else {
                    self.tail[(p - h - self.n) as usize]
                };
                k += 1;
                self.pos += 1;
            }
            Ok(k)
        }
    }

    #[test]
    fn an_overlong_line_is_refused_with_its_number() {
        // 1 GiB of a line with no newline: refused after 16 MiB, not buffered.
        let head = format!("{}\n{}\n", header_line(), probe_line(1)).into_bytes();
        let gen = Gen {
            head,
            fill: b'x',
            n: 1 << 30,
            tail: vec![],
            pos: 0,
        };
        let mut r = DumpReader::new(Path::new("big.jsonl"), gen).unwrap();
        assert!(r.next_record().unwrap().is_some());
        let e = r.next_record().unwrap_err();
        assert!(matches!(e, DumpError::LineTooLong { line: 3, .. }), "{e}");
        assert_eq!(
            e.to_string(),
            "big.jsonl:3: line 3 is over 16 MiB: not a stalltrace dump"
        );
        assert!(
            r.lines.buf.capacity() <= 2 * (MAX_LINE_BYTES + 1),
            "buffered {} bytes",
            r.lines.buf.capacity()
        );

        // A line of exactly the cap plus its newline (blank, so skipped) still reads.
        let foot = serde_json::to_string(&Record::Footer(Footer::default())).unwrap();
        let gen = Gen {
            head: format!("{}\n", header_line()).into_bytes(),
            fill: b' ',
            n: MAX_LINE_BYTES as u64,
            tail: format!("\n{foot}\n").into_bytes(),
            pos: 0,
        };
        let mut r = DumpReader::new(Path::new("edge.jsonl"), gen).unwrap();
        assert!(r.next_record().unwrap().is_none());
        assert!(r.footer().is_some());
    }

    /// A torn last line of exactly the cap is read like any torn line, not refused as
    /// overlong (the cap's extra byte tells them apart only when there is one).
    #[test]
    fn a_last_line_of_exactly_the_cap_is_not_overlong() {
        let gen = Gen {
            head: format!("{}\n", header_line()).into_bytes(),
            fill: b' ',
            n: MAX_LINE_BYTES as u64,
            tail: vec![],
            pos: 0,
        };
        let mut r = DumpReader::new(Path::new("edge.jsonl"), gen).unwrap();
        assert!(r.next_record().unwrap().is_none());
        // The header, then the blank line of the cap.
        assert_eq!(r.line(), 2);
    }

    #[test]
    fn line_counts_every_line_read_blank_ones_included() {
        let text = format!(
            "{}\n{}\n\n{}\n",
            header_line(),
            probe_line(1),
            probe_line(2)
        );
        let mut r = DumpReader::new(Path::new("d.jsonl"), text.as_bytes()).unwrap();
        assert_eq!(r.line(), 1);
        assert!(r.next_record().unwrap().is_some());
        assert!(r.next_record().unwrap().is_some());
        // Header, probe, blank, probe.
        assert_eq!(r.line(), 4);
    }

    /// Only a line after the header can be a torn last line: a torn header alone is a
    /// malformed first line, not an empty dump.
    #[test]
    fn a_torn_header_is_malformed() {
        let h = header_line();
        let e = read_all(&h.as_bytes()[..h.len() / 2]).unwrap_err();
        assert!(matches!(e, DumpError::Malformed { line: 1, .. }), "{e}");
    }

    #[test]
    fn newer_version_is_refused() {
        let h = header_line().replace(&format!("\"version\":{DUMP_VERSION}"), "\"version\":99");
        let e = read_all(format!("{h}\n").as_bytes()).unwrap_err();
        assert!(matches!(e, DumpError::Version { found: 99, .. }), "{e}");
    }
}
