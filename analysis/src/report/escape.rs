//! Names that come from the machine (task names, file paths, cgroup paths, a dump from
//! elsewhere) are chosen by whoever runs there: a tenant can name a thread
//! `\nepisode 1: … culprit nobody` or add terminal escapes. Everything printed goes
//! through here: control characters and bidirectional overrides are written as
//! `\xNN` / `\u{NNNN}`, so one record is one line and reads as what it is.
use std::borrow::Cow;

fn unsafe_char(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every control character and bidi override escaped.
pub fn line(s: &str) -> Cow<'_, str> {
    // Printable ASCII, nearly every name: nothing to decode.
    if s.bytes().all(|b| (0x20..0x7f).contains(&b)) || !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !unsafe_char(c) {
            out.push(c);
        } else if (c as u32) < 0x80 {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push_str(&format!("\\u{{{:04x}}}", c as u32));
        }
    }
    Cow::Owned(out)
}

/// Escapes in place (a field of a record).
pub fn field(s: &mut String) {
    if let Cow::Owned(e) = line(s) {
        *s = e;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_and_bidi_overrides_are_escaped() {
        assert_eq!(line("cadvisor"), "cadvisor");
        assert_eq!(line("napi/eth0-8 ← ok"), "napi/eth0-8 ← ok");
        assert_eq!(line("x\nepisode 1: y"), "x\\x0aepisode 1: y");
        assert_eq!(line("\x1b[2J"), "\\x1b[2J");
        assert_eq!(line("a\u{202e}b"), "a\\u{202e}b");
        assert_eq!(line("\u{85}"), "\\u{0085}");
        // The first C1 control (0x80) is past ASCII: \u, not \x; DEL (0x7f) is ASCII.
        assert_eq!(line("\u{80}\u{7f}"), "\\u{0080}\\x7f");
        let mut s = String::from("t\tab");
        field(&mut s);
        assert_eq!(s, "t\\x09ab");
    }
}
