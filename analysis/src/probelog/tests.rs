//! Parser tests over the 2019 GitHub incident's own (mangled) lines and over output captured here.
use super::*;

const SEED: &str = include_str!("testdata/seed_hping3.txt");
/// hping3 --icmp -i u10000 -c 3 10.214.0.2 (captured on the project machine) and the
/// tcpdump -xx of the same run inside the target namespace.
const HPING_ICMP: &str = include_str!("testdata/hping_icmp.txt");
const TCPDUMP_HPING_ICMP: &str = include_str!("testdata/tcpdump_hping_icmp.txt");
const HPING_LOSS: &str = include_str!("testdata/hping_loss.txt");
const HPING_TCP_RST: &str = include_str!("testdata/hping_tcp_rst.txt");
const HPING_TCP_SA: &str = include_str!("testdata/hping_tcp_sa.txt");
const PING_D: &str = include_str!("testdata/ping_D.txt");
const PING_DO: &str = include_str!("testdata/ping_DO.txt");

fn seqs(l: &ProbeLog) -> Vec<u32> {
    l.probes.iter().map(|p| p.seq).collect()
}

fn rtts_ms(l: &ProbeLog) -> Vec<f64> {
    l.probes
        .iter()
        .map(|p| p.rtt_ns.unwrap() as f64 / 1e6)
        .collect()
}

#[test]
fn seed_tcp_syn_ack_line_glued_records() {
    let line = SEED.lines().next().unwrap();
    let l = parse_str(line);
    assert_eq!(seqs(&l), vec![1485, 1486, 1487, 1488, 5024, 5231]);
    assert_eq!(rtts_ms(&l), vec![127.1, 117.0, 106.2, 104.1, 109.2, 109.2]);
    for p in &l.probes {
        assert_eq!(p.source, "hping3");
        assert_eq!(p.proto, ProbeProto::Tcp);
        assert_eq!(
            p.wire_seq,
            Some(30927),
            "the probe's destination port, from sport="
        );
        assert_eq!(
            p.wire_ident, None,
            "hping3 does not print the probe's source port"
        );
        assert_eq!(
            p.target, "",
            "ip= is empty in the 2019 GitHub incident and no header names it"
        );
        assert_eq!(p.status, ProbeStatus::Ok);
    }
    assert_eq!(l.unknown_lines, 0);
}

#[test]
fn seed_icmp_lines_with_split_fields() {
    // `icmp_ seq=4023` and `id= 49452` (inserted spaces, some non-breaking).
    let line = SEED.lines().nth(2).unwrap();
    let l = parse_str(line);
    assert_eq!(
        seqs(&l),
        vec![104, 4022, 4023, 4024, 4025, 4026, 4343, 4344, 4345, 9836]
    );
    assert_eq!(
        rtts_ms(&l),
        vec![110.0, 141.3, 131.3, 121.2, 111.2, 101.1, 126.8, 116.8, 106.8, 106.1]
    );
    assert!(l
        .probes
        .iter()
        .all(|p| p.proto == ProbeProto::Icmp && p.wire_ident.is_none()));
    // hping3 prints host-order sequences: the wire (big-endian) reading is swapped.
    assert_eq!(l.probes[1].wire_seq, Some(4022u16.swap_bytes()));
    assert_eq!(l.probes[1].wire_seq, Some(0xB60F));
}

#[test]
fn whole_seed_excerpt() {
    let l = parse_str(SEED);
    assert_eq!(l.probes.len(), 6 + 3 + 10 + 9 + 4 + 1 + 7);
    // Line 2: `sport=0 flags=RA` (hping3 -S without -p).
    let ra: Vec<_> = l
        .probes
        .iter()
        .filter(|p| p.wire_seq == Some(0))
        .map(|p| p.seq)
        .collect();
    assert_eq!(ra, vec![7346, 7347, 7348]);
    // The record cut by a line break: `…icmp_seq=1953 rtt=99.3 mslen=46 ip=` / blank /
    // `ttl=61 id=29574 icmp_seq=1954 rtt=89.3 ms…`: 1954 is kept (its fields are all on
    // its line); nothing is invented for the dangling `len=46 ip=`.
    let stair: Vec<_> = l
        .probes
        .iter()
        .filter(|p| (1953..=2072).contains(&p.seq))
        .map(|p| (p.seq, p.rtt_ns.unwrap() / 100_000))
        .collect();
    assert_eq!(
        stair,
        vec![
            (1953, 993),
            (1954, 893),
            (1955, 792),
            (1956, 691),
            (1957, 591),
            (2070, 757),
            (2071, 656),
            (2072, 555)
        ]
    );
    // The glued statistics block: `^C--- hping statistic ---22352 packets …lossround-trip …`.
    assert_eq!(l.stats.len(), 1);
    let s = &l.stats[0];
    assert_eq!((s.tool.as_str(), s.target.as_deref()), ("hping3", None));
    assert_eq!((s.transmitted, s.received, s.loss_pct), (22352, 22350, 1.0));
    assert_eq!(
        (s.rtt_min_ms, s.rtt_avg_ms, s.rtt_max_ms),
        (Some(0.2), Some(7.6), Some(1010.6))
    );
    assert_eq!(l.unknown_lines, 0);
}

/// The byte-order finding, on a real capture: hping3's printed icmp_seq N appears on
/// the wire as the little-endian bytes of N, i.e. tcpdump (big-endian) shows
/// `N.swap_bytes()`; the parser's wire_seq must equal what tcpdump printed.
#[test]
fn hping3_wire_seq_matches_tcpdump_capture() {
    let l = parse_str(HPING_ICMP);
    assert_eq!(seqs(&l), vec![0, 1, 2]);
    let wire: Vec<u16> = TCPDUMP_HPING_ICMP
        .lines()
        .filter(|x| x.contains("ICMP echo request"))
        .map(|x| {
            x.split("seq ")
                .nth(1)
                .unwrap()
                .split(',')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(wire, vec![0, 256, 512]);
    let parsed: Vec<u16> = l.probes.iter().map(|p| p.wire_seq.unwrap()).collect();
    assert_eq!(parsed, wire);
    // And the raw bytes agree: seq field of the second request is `01 00`.
    assert!(TCPDUMP_HPING_ICMP.contains("0x0020:  0002 0800 84d7 7228 0100"));
    assert!(l
        .probes
        .iter()
        .all(|p| p.target == "10.214.0.2" && p.source == "hping3"));
    assert_eq!(l.stats[0].transmitted, 3);
    assert_eq!(l.stats[0].target.as_deref(), Some("10.214.0.2"));
    assert_eq!(l.unknown_lines, 0);
}

#[test]
fn hping3_captured_loss_run() {
    let l = parse_str(HPING_LOSS);
    assert_eq!(seqs(&l), (5..=15).collect::<Vec<_>>());
    let s = &l.stats[0];
    assert_eq!((s.transmitted, s.received, s.loss_pct), (16, 11, 32.0));
    // The block's numbers agree with the lines.
    assert_eq!(s.received as usize, l.probes.len());
    let r = rtts_ms(&l);
    assert_eq!(
        r.iter().cloned().fold(f64::MAX, f64::min),
        s.rtt_min_ms.unwrap()
    );
    assert_eq!(r.iter().cloned().fold(0.0, f64::max), s.rtt_max_ms.unwrap());
}

#[test]
fn hping3_captured_tcp_rst_and_synack() {
    let l = parse_str(HPING_TCP_RST);
    assert_eq!(seqs(&l), vec![0, 1, 2]);
    assert!(l.probes.iter().all(|p| p.proto == ProbeProto::Tcp
        && p.wire_seq == Some(9876)
        && p.target == "10.214.0.2"));
    let l = parse_str(HPING_TCP_SA);
    assert_eq!(seqs(&l), vec![0, 1, 2]);
    assert!(l.probes.iter().all(|p| p.wire_seq == Some(8080)));
    assert_eq!(rtts_ms(&l), vec![1.0, 0.8, 0.7]);
}

#[test]
fn hping3_dup_marker() {
    let l = parse_str(
        "len=28 ip=10.0.0.2 ttl=64 id=1 icmp_seq=7 rtt=0.3 ms\nDUP! len=28 ip=10.0.0.2 ttl=64 id=2 icmp_seq=7 rtt=0.9 ms\n",
    );
    assert_eq!(
        l.probes.iter().map(|p| p.status).collect::<Vec<_>>(),
        vec![ProbeStatus::Ok, ProbeStatus::Dup]
    );
    assert_eq!(l.probes[1].rtt_ns, Some(900_000));
}

#[test]
fn ping_captured_with_timestamps() {
    let l = parse_str(PING_D);
    assert_eq!(seqs(&l), vec![1, 2, 3]);
    assert_eq!(l.probes[0].rtt_ns, Some(126_000));
    assert!(l.probes.iter().all(|p| p.source == "ping"
        && p.wire_seq == Some(p.seq as u16)
        && p.target == "10.214.0.2"));
    let s = &l.stats[0];
    assert_eq!(
        (s.tool.as_str(), s.transmitted, s.received, s.duplicates),
        ("ping", 3, 3, Some(0))
    );
    assert_eq!((s.rtt_min_ms, s.rtt_max_ms), (Some(0.048), Some(0.126)));
    assert_eq!(l.unknown_lines, 0);
}

#[test]
fn ping_captured_no_answer_yet() {
    let l = parse_str(PING_DO);
    let ok: Vec<u32> = l
        .probes
        .iter()
        .filter(|p| p.status == ProbeStatus::Ok)
        .map(|p| p.seq)
        .collect();
    let lost: Vec<u32> = l
        .probes
        .iter()
        .filter(|p| p.status == ProbeStatus::Lost)
        .map(|p| p.seq)
        .collect();
    assert_eq!(ok, vec![1, 2, 3, 4, 5]);
    assert_eq!(lost, (6..=15).collect::<Vec<_>>());
    assert!(l.probes.iter().all(|p| p.target == "10.214.0.2"));
    assert_eq!(
        (
            l.stats[0].transmitted,
            l.stats[0].received,
            l.stats[0].loss_pct
        ),
        (16, 5, 68.75)
    );
}

#[test]
fn ping_variants() {
    let log = "\
PING fd00:213:1::2(fd00:213:1::2) 56 data bytes
64 bytes from 10.0.0.2: icmp_seq=1 ttl=64 time=0.045 ms
64 bytes from 10.0.0.2: icmp_seq=2 ttl=64 time=12.3 ms
64 bytes from 10.0.0.2: icmp_seq=3 ttl=64 time=1001 ms
64 bytes from 10.0.0.2: icmp_seq=3 ttl=64 time=1002 ms (DUP!)
[1700000000.123456] no answer yet for icmp_seq=4
[1700000000.223456] 64 bytes from 10.0.0.2: icmp_seq=4 ttl=64 time=150 ms
no answer yet for icmp_seq=5
64 bytes from fd00:213:1::2: icmp_seq=6 ttl=64 time=0.050 ms
64 bytes from host.example (10.0.0.9): icmp_seq=7 ident=4660 ttl=64 time=0.1 ms
From 10.0.0.1 icmp_seq=8 Destination Host Unreachable
this line is not from a prober
--- 10.0.0.2 ping statistics ---
8 packets transmitted, 6 received, +1 duplicates, 25% packet loss, time 7010ms
rtt min/avg/max/mdev = 0.045/194.521/1002.000/300.111 ms
";
    let l = parse_str(log);
    let got: Vec<(u32, ProbeStatus, Option<u64>)> = l
        .probes
        .iter()
        .map(|p| (p.seq, p.status, p.rtt_ns))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, ProbeStatus::Ok, Some(45_000)),
            (2, ProbeStatus::Ok, Some(12_300_000)),
            (3, ProbeStatus::Ok, Some(1_001_000_000)),
            (3, ProbeStatus::Dup, Some(1_002_000_000)),
            // seq 4 answered after "no answer yet": late, not lost.
            (4, ProbeStatus::Ok, Some(150_000_000)),
            (5, ProbeStatus::Lost, None),
            (6, ProbeStatus::Ok, Some(50_000)),
            (7, ProbeStatus::Ok, Some(100_000)),
        ]
    );
    assert_eq!(l.probes[5].target, "fd00:213:1::2");
    assert_eq!(l.probes[5].proto, ProbeProto::Icmpv6);
    assert_eq!(l.probes[6].proto, ProbeProto::Icmpv6);
    assert_eq!(l.probes[7].target, "10.0.0.9");
    assert_eq!(l.probes[7].wire_ident, Some(4660));
    assert_eq!(l.probes[0].wire_ident, None);
    assert_eq!(l.unknown_lines, 1);
    assert_eq!(l.stats[0].duplicates, Some(1));
    assert_eq!(l.stats[0].loss_pct, 25.0);
}

#[test]
fn sequences_beyond_16_bits_keep_no_wire_value() {
    let l = parse_str("64 bytes from 10.0.0.2: icmp_seq=70000 ttl=64 time=1 ms\nlen=28 ip= ttl=64 id=1 icmp_seq=70000 rtt=1.0 ms\n");
    assert_eq!(l.probes.len(), 2);
    assert!(l
        .probes
        .iter()
        .all(|p| p.seq == 70000 && p.wire_seq.is_none()));
}

#[test]
fn never_panics_on_garbage() {
    let mut s = String::new();
    for i in 0..2000u32 {
        let c = char::from_u32((i.wrapping_mul(2_654_435_761) >> 20) % 0x3000).unwrap_or('?');
        s.push(c);
        if i % 37 == 0 {
            s.push_str(
                [
                    "rtt=",
                    " ms",
                    "icmp_seq=",
                    "seq=99999999999 ",
                    "bytes from ",
                    ": icmp_seq=1 time=",
                    "---",
                    "\n",
                ][(i % 8) as usize],
            );
        }
    }
    let l = parse_str(&s);
    assert!(l.unknown_lines > 0);
    let _ = parse_reader(&[0xffu8, 0xfe, b'\n', b'x'][..]).unwrap();
}

#[test]
fn file_without_probes_is_an_error_naming_it() {
    let dir = std::env::temp_dir().join(format!("stalltrace-log-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("empty.log");
    std::fs::write(&f, "hello\nworld\n").unwrap();
    let e = parse_file(&f).unwrap_err();
    assert!(matches!(e, ProbeLogError::NoProbes { line: 1, .. }));
    assert!(
        e.to_string()
            .ends_with("empty.log:1: no probe line found (expected hping3 or ping output): line 1 is not one: hello"),
        "{e}"
    );
    // The first line not understood, after blank and header lines; escaped.
    std::fs::write(
        &f,
        "\nPING 10.0.0.2 (10.0.0.2) 56(84) bytes of data.\n\x1b[31mred\nx\n",
    )
    .unwrap();
    let e = parse_file(&f).unwrap_err().to_string();
    assert!(
        e.contains("empty.log:3: ") && e.ends_with("line 3 is not one: \\x1b[31mred"),
        "{e}"
    );
    // Headers and statistics only: the last line.
    std::fs::write(
        &f,
        "PING 10.0.0.2 (10.0.0.2) 56(84) bytes of data.\n\n--- 10.0.0.2 ping statistics ---\n",
    )
    .unwrap();
    let e = parse_file(&f).unwrap_err().to_string();
    assert!(
        e.contains("empty.log:3: ") && e.ends_with("headers and statistics only"),
        "{e}"
    );
    std::fs::write(&f, "").unwrap();
    let e = parse_file(&f).unwrap_err();
    assert!(matches!(e, ProbeLogError::Empty { .. }), "{e}");
    let e = parse_file(&dir.join("missing.log")).unwrap_err();
    assert!(matches!(e, ProbeLogError::Io { .. }));
    std::fs::write(&f, HPING_ICMP).unwrap();
    assert_eq!(parse_file(&f).unwrap().probes.len(), 3);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Odd values are left unknown, not turned into probes: a negative or infinite RTT, a
/// host name with its parentheses the wrong way round; a TCP answer is known by
/// `flags=` or by `sport=` alone. The summary line counts what was found.
#[test]
fn odd_values_and_the_summary_line() {
    let log = "\
len=46 ip=10.0.0.2 ttl=64 id=1 icmp_seq=1 rtt=-5.0 ms
len=46 ip=10.0.0.2 ttl=64 id=2 icmp_seq=2 rtt=inf ms
len=46 ip=10.0.0.2 ttl=64 id=3 icmp_seq=3 rtt=1.5 ms
len=40 ip=10.0.0.2 ttl=64 DF id=0 sport=80 win=0 seq=4 rtt=2.0 ms
len=40 ip=10.0.0.2 ttl=64 DF id=0 win=0 flags=RA seq=5 rtt=2.5 ms
64 bytes from x)y(z: icmp_seq=6 ttl=64 time=1.0 ms
";
    let l = parse_str(log);
    let got: Vec<(u32, ProbeProto, Option<u64>)> = l
        .probes
        .iter()
        .map(|p| (p.seq, p.proto, p.rtt_ns))
        .collect();
    assert_eq!(
        got,
        vec![
            (3, ProbeProto::Icmp, Some(1_500_000)),
            (4, ProbeProto::Tcp, Some(2_000_000)),
            (5, ProbeProto::Tcp, Some(2_500_000)),
            (6, ProbeProto::Icmp, Some(1_000_000)),
        ]
    );
    assert_eq!(
        l.probes[3].target, "x)y(z",
        "no parenthesised address to take"
    );
    assert_eq!(l.unknown_lines, 2);
    assert_eq!(
        l.summary_line(),
        "log: 4 probes (4 ok, 0 dup, 0 lost), 2 unknown lines"
    );
    let with_stats = parse_str(PING_D);
    let line = with_stats.summary_line();
    assert!(
        line.contains("; ping statistics: ") && line.contains(" transmitted, "),
        "{line}"
    );
}

/// A log of one endless line (64 MiB, produced as it is read, never stored) costs no
/// memory: its first 64 KiB are parsed, the rest skipped, and the next lines count.
#[test]
fn an_endless_line_is_read_no_further_than_its_start() {
    use std::io::Read as _;
    let head = b"64 bytes from 10.0.0.2: icmp_seq=1 ttl=64 time=0.5 ms".to_vec();
    let endless = std::io::repeat(b'x').take(1 << 26);
    let tail = &b"\n64 bytes from 10.0.0.2: icmp_seq=2 ttl=64 time=0.6 ms\n"[..];
    let r = std::io::BufReader::with_capacity(1 << 20, head.as_slice().chain(endless).chain(tail));
    let l = parse_reader(r).unwrap();
    let got: Vec<(u32, Option<u64>)> = l.probes.iter().map(|p| (p.seq, p.rtt_ns)).collect();
    // The first line's fields are at its start: still a probe; the next line too.
    assert_eq!(got, vec![(1, Some(500_000)), (2, Some(600_000))]);
}

/// Statistics whose title line was lost open a block of their own, named by the tool
/// their wording belongs to; the lines after it fill the same block.
#[test]
fn statistics_without_their_title_are_one_block_of_their_tool() {
    let l = parse_str(
        "\
64 bytes from 10.0.0.2: icmp_seq=1 ttl=64 time=1.0 ms
3 packets transmitted, 3 received, 0% packet loss, time 33ms
rtt min/avg/max/mdev = 0.048/0.075/0.126/0.036 ms
",
    );
    assert_eq!(l.stats.len(), 1);
    let s = &l.stats[0];
    assert_eq!(
        (s.tool.as_str(), s.transmitted, s.rtt_min_ms),
        ("ping", 3, Some(0.048))
    );
}

/// An RTT too large for a float (here 1e400 ms) is no RTT: the line is not a probe.
#[test]
fn an_rtt_beyond_a_float_is_not_a_probe() {
    let huge = format!("1{}", "0".repeat(400));
    let l = parse_str(&format!(
        "len=46 ip=10.0.0.2 ttl=64 id=1 icmp_seq=1 rtt={huge} ms\n"
    ));
    assert!(l.probes.is_empty(), "{:?}", l.probes);
    assert_eq!(l.unknown_lines, 1);
}

/// `stalltrace probe`'s own log (as printed across the field harness's link): the
/// header names the echo id, the sequence is the wire's (network order), unlike
/// hping3's lines of the same shape.
#[test]
fn stalltrace_probe_logs_carry_their_echo_id_and_wire_sequence() {
    let l = parse_str(
        "\
PROBE 10.199.0.2 (10.199.0.2): icmp echo, raw socket, echo id 30017, interval 10ms, timeout 1s
len=36 ip=10.199.0.2 ttl=64 id=28035 icmp_seq=0 rtt=3.298 ms
len=36 ip=10.199.0.2 ttl=64 id=28038 icmp_seq=1 rtt=2.474 ms
len=36 ip=10.199.0.2 ttl=64 id=28039 icmp_seq=258 rtt=91.5 ms

--- 10.199.0.2 stalltrace probe statistic ---
3 packets transmitted, 3 packets received, 0 lost, 0% packet loss, 0 duplicates, 0 reordered, 0 late
round-trip min/avg/max = 2.474/32.424/91.500 ms
",
    );
    let got: Vec<(&str, u32, Option<u16>, Option<u16>)> = l
        .probes
        .iter()
        .map(|p| (p.source.as_str(), p.seq, p.wire_ident, p.wire_seq))
        .collect();
    assert_eq!(
        got,
        vec![
            ("stalltrace", 0, Some(30017), Some(0)),
            ("stalltrace", 1, Some(30017), Some(1)),
            ("stalltrace", 258, Some(30017), Some(258)),
        ]
    );
    assert_eq!(l.probes[0].target, "10.199.0.2");
    assert_eq!(l.unknown_lines, 0, "{:?}", l.first_unknown);
    assert_eq!(l.stats.len(), 1);
    assert_eq!((l.stats[0].transmitted, l.stats[0].received), (3, 3));
    // IPv6, and TCP: probe i from the first source port + i (mod the span).
    let l = parse_str(
        "\
PROBE fd99::2 (fd99::2): icmpv6 echo, unprivileged ping socket, echo id 7, interval 10ms, timeout 1s
len=16 ip=fd99::2 icmp_seq=4 rtt=1.0 ms
PROBE 10.0.0.2 (10.0.0.2): tcp SYN to port 8080, source ports 40000-48191, interval 10ms, timeout 1s
len=40 ip=10.0.0.2 ttl=64 DF id=0 sport=8080 flags=SA seq=8193 win=64240 rtt=1.2 ms
HPING 10.0.0.2 (eth0 10.0.0.2): icmp mode set, 28 headers + 0 data bytes
len=28 ip=10.0.0.2 ttl=64 id=1 icmp_seq=1 rtt=1.0 ms
",
    );
    let p = &l.probes;
    assert_eq!(
        (p[0].proto, p[0].wire_ident, p[0].wire_seq),
        (ProbeProto::Icmpv6, Some(7), Some(4))
    );
    assert_eq!(
        (p[1].proto, p[1].wire_ident, p[1].wire_seq),
        (ProbeProto::Tcp, Some(40001), Some(8080))
    );
    // hping3 again after it: host order, no id.
    assert_eq!(
        (p[2].source.as_str(), p[2].wire_ident, p[2].wire_seq),
        ("hping3", None, Some(256))
    );
}
