//! External probers' logs (ping, hping3) matched through the whole correlator to dumps
//! that hold other echo traffic too: the counts the report gives (`probes_matched` of
//! `probes_answered`), against what the synthetic dump is known to hold.
use stalltrace_analysis::correlate::{Config, Correlator, Report};
use stalltrace_analysis::dump::*;
use stalltrace_analysis::probelog::parse_str;
use stalltrace_testkit::records::{echo_request, footer, header, tally, MS, US};

const T0: u64 = 1_000_000_000_000;

fn run(recs: &[Record], log: &str) -> Report {
    let Record::Header(h) = &recs[0] else {
        panic!("no header")
    };
    let mut c = Correlator::new(Config::from_header(h, None));
    c.set_probe_log(parse_str(log).probes);
    for r in recs {
        c.push(r);
    }
    c.finish()
}

fn dump(packets: Vec<PacketRec>) -> Vec<Record> {
    let mut recs = vec![Record::Header(header("node", "6.1.0", 2, T0, None))];
    let end = packets.last().map_or(T0, |p| p.ts_ns);
    recs.extend(packets.into_iter().map(Record::Packet));
    let counts = tally(&recs);
    recs.push(Record::Footer(footer(counts, end - T0)));
    recs
}

fn echo(at: u64, ident: u16, seq: u16) -> PacketRec {
    echo_request(
        at,
        at - 20 * US,
        1,
        (0, 0, "swapper/1", RxContext::Idle),
        ident,
        seq,
    )
}

/// ping -D output for seqs `1..=n` (ping prints the wire sequence).
fn ping_log(n: u32) -> String {
    let mut s = String::from("PING 10.0.0.11 (10.0.0.11) 56(84) bytes of data.\n");
    for i in 1..=n {
        s.push_str(&format!(
            "[1795837535.{:06}] 64 bytes from 10.0.0.11: icmp_seq={i} ttl=64 time=0.126 ms\n",
            i * 10
        ));
    }
    s
}

/// The field run's shape: ping (id 125, seq 1..=654) and, from seq 155 on, 202 echoes
/// of an hping3 flood from the same host (its sequence in host order). Every probe of
/// the log must match its echo; the flood's must not count.
#[test]
fn a_ping_log_matches_every_probe_beside_an_hping3_flood() {
    let mut packets = vec![];
    let mut flood = 0u16..202;
    for s in 1u16..=654 {
        let at = T0 + u64::from(s) * 10 * MS;
        packets.push(echo(at, 125, s));
        if s >= 155 {
            for (k, i) in flood.by_ref().take(4).enumerate() {
                packets.push(echo(at + (k as u64 + 1) * MS, 0x7b2a, i.swap_bytes()));
            }
        }
    }
    let r = run(&dump(packets), &ping_log(654));
    assert_eq!(r.totals.probes_answered, 654, "{:?}", r.totals);
    assert_eq!(r.totals.probes_matched, 654, "{:?}", r.totals);
}

/// hping3 -S -p 8080 -i u10000: the node's dump holds the SYNs (source port base + i)
/// among other clients' SYNs to the port; the log has `seq=i` and no source port.
#[test]
fn an_hping3_syn_log_matches_through_the_learnt_port_base() {
    let mut packets = vec![];
    let mut log =
        String::from("HPING 10.0.0.11 (eth0 10.0.0.11): S set, 40 headers + 0 data bytes\n");
    for i in 0u16..800 {
        let at = T0 + u64::from(i) * 10 * MS;
        let mut syn = echo(at, 0, 0);
        syn.proto = "tcp".into();
        syn.kind = PacketKind::Syn;
        syn.ident = 2000 + i;
        syn.seq = 8080;
        packets.push(syn.clone());
        if i % 50 == 7 {
            syn.ident = 33_000 + i * 3;
            syn.ts_ns += MS;
            packets.push(syn);
        }
        let flags = if i % 2 == 0 { "SA" } else { "RA" };
        log.push_str(&format!(
            "len=44 ip=10.0.0.11 ttl=64 DF id=0 sport=8080 flags={flags} seq={i} win=64240 rtt=1.0 ms\n"
        ));
    }
    let r = run(&dump(packets), &log);
    assert_eq!(r.totals.probes_answered, 800, "{:?}", r.totals);
    assert_eq!(r.totals.probes_matched, 800, "{:?}", r.totals);
}

/// What the header and footer say about the packet path reaches the text and JSON
/// reports: why that hook, what the recorder warned about live, and answered probes
/// none of which matched a packet.
#[test]
fn the_report_says_why_that_hook_and_what_the_recorder_warned() {
    let mut recs = dump(vec![echo(T0 + MS, 7, 99)]);
    if let Some(Record::Header(h)) = recs.first_mut() {
        h.options.packet_hook_reason =
            Some("--probe receives echo replies, which kprobe:icmp_echo never sees".into());
    }
    let warning = "300 answered probes in 3.0 s and the packet hook saw none of their packets";
    if let Some(Record::Footer(f)) = recs.last_mut() {
        f.warnings = vec![warning.into()];
    }
    let r = run(&recs, &ping_log(5));
    let text = stalltrace_analysis::report::text::render(&r);
    assert!(
        text.contains(
            "  packets via tracepoint:net:netif_receive_skb: --probe receives echo replies, \
             which kprobe:icmp_echo never sees\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!("  the recorder warned: {warning}\n")),
        "{text}"
    );
    assert!(
        text.contains(
            "0 of 5 answered probes matched to a packet the kernel saw: the packet hook saw none"
        ),
        "{text}"
    );
    let json = serde_json::to_value(&r.input).unwrap();
    assert_eq!(
        json["packet_hook_reason"],
        "--probe receives echo replies, which kprobe:icmp_echo never sees"
    );
    assert_eq!(json["recorder_warnings"][0], warning);
}
