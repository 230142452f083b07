//! How a value from outside (a caller's number, a caller name, an e-mail address) is written into
//! a text log line so that it stays one word of one line and reads as what it is.
//!
//! A value prints bare unless [`needs_quotes`]; then [`quote`] writes it between double quotes
//! with every character that could make the line lie escaped: line breaks and other controls,
//! Unicode format characters (bidirectional overrides, zero-width joiners: category Cf), line and
//! paragraph separators (Zl, Zp), spaces other than U+0020, default-ignorable code points and the
//! blank "filler" letters (U+3164 HANGUL FILLER and its kin), which render as nothing and could
//! make `From=x\u{3164}to=+972…` look like two fields. [`truncated`] bounds what an unverified
//! request can make the log hold.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Letters and symbols that render blank but are not format, space or control characters, so
/// `char::escape_debug` leaves them as they are: the Hangul fillers (default-ignorable, category
/// Lo) and the blank Braille pattern.
const BLANK_LETTERS: [char; 5] = ['\u{115F}', '\u{1160}', '\u{3164}', '\u{FFA0}', '\u{2800}'];

/// Whether `c` must be escaped inside a quoted value: whitespace other than the plain space,
/// controls, the quote and the backslash, and everything invisible — what Rust's debug escaping
/// treats as unprintable (categories Cc, Cf, Cs, Co, Cn, Zl, Zp, Zs) or as a grapheme extender
/// (which includes the default-ignorable marks such as U+034F and the variation selectors), and
/// [`BLANK_LETTERS`].
fn escaped(c: char) -> bool {
    match c {
        ' ' | '\'' => false,
        '"' | '\\' => true,
        c if c.is_ascii() => c.is_ascii_control(),
        c => c.escape_debug().len() > 1 || BLANK_LETTERS.contains(&c),
    }
}

/// Whether a value must be quoted (and escaped) to stay one word of one line: it is empty, or it
/// holds a space, a double quote or a character [`quote`] escapes. The log lines and the call
/// trace lines share this rule. (The bytes are looked at first: a value of ASCII letters, digits
/// and punctuation, the usual one, is not decoded character by character.)
pub fn needs_quotes(value: &str) -> bool {
    let suspect = |b: u8| !b.is_ascii() || b == b' ' || b == b'"' || b.is_ascii_control();
    value.is_empty() || (value.bytes().any(suspect) && value.chars().any(|c| c == ' ' || (c != '\\' && escaped(c))))
}

/// Appends `value` to `out` between double quotes, escaping `"` and `\` with a backslash, tab and
/// line breaks as `\t`, `\n`, `\r`, and every other character [`escaped`] as `\u{…}` (as Rust's
/// `{:?}` writes them).
pub fn quote(value: &str, out: &mut String) {
    out.reserve(value.len() + 2);
    out.push('"');
    escape_into(value, out, true);
    out.push('"');
}

/// Free text (a message at the end of a line, such as Twilio's error message) with what could
/// break or disguise the line escaped as [`quote`] escapes it, but no quotes added and `"` and `\`
/// left as they are.
pub fn plain_text(value: &str) -> Cow<'_, str> {
    if value.chars().any(|c| !matches!(c, '"' | '\\') && escaped(c)) {
        let mut out = String::with_capacity(value.len() + 8);
        escape_into(value, &mut out, false);
        out.into()
    } else {
        value.into()
    }
}

fn escape_into(value: &str, out: &mut String, quoted: bool) {
    for c in value.chars() {
        match c {
            '"' if quoted => out.push_str("\\\""),
            '\\' if quoted => out.push_str("\\\\"),
            '"' | '\\' => out.push(c),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if escaped(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
}

/// `value` as a log line shows it: bare, or quoted by [`quote`] when it [`needs_quotes`].
pub fn shown(value: &str) -> Cow<'_, str> {
    if needs_quotes(value) {
        let mut out = String::new();
        quote(value, &mut out);
        out.into()
    } else {
        value.into()
    }
}

/// At most `max` characters of `value`; a longer value is cut there and marked `…(+N)`, N being
/// the number of characters left out. (The marker needs no quoting, so a value stays bare or
/// quoted as it would be.)
pub fn truncated(value: &str, max: usize) -> Cow<'_, str> {
    match value.char_indices().nth(max) {
        None => value.into(),
        Some((cut, _)) => {
            let left_out = value[cut..].chars().count();
            format!("{}…(+{left_out})", &value[..cut]).into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_values_are_bare() {
        for bare in [
            "r-1",
            "+15550001111",
            "Jürgen",
            "a=b",
            "日本",
            "O'Brien",
            r"C:\dir",
            "☎",
        ] {
            assert!(!needs_quotes(bare), "{bare:?}");
            assert_eq!(shown(bare), bare);
        }
    }

    #[test]
    fn whitespace_controls_and_quotes_are_quoted_and_escaped() {
        for (value, written) in [
            ("", r#""""#),
            ("a b", r#""a b""#),
            ("a\tb", r#""a\tb""#),
            ("line\nbreak", r#""line\nbreak""#),
            ("a\x0bb", r#""a\u{b}b""#),
            ("say \"hi\"", r#""say \"hi\"""#),
            ("esc\x1b[31m", r#""esc\u{1b}[31m""#),
            ("del\x7f", r#""del\u{7f}""#),
            ("nul\0", r#""nul\u{0}""#),
            ("next\u{85}line", r#""next\u{85}line""#),
            ("wide\u{3000}space", r#""wide\u{3000}space""#),
            ("a b\\c", r#""a b\\c""#),
        ] {
            assert!(needs_quotes(value), "{value:?}");
            assert_eq!(shown(value), written, "{value:?}");
        }
    }

    /// Every invisible character a value could use to pass for another field: each one escaped,
    /// none written raw.
    #[test]
    fn format_filler_and_ignorable_characters_are_escaped() {
        for c in [
            '\u{00A0}',  // no-break space (Zs)
            '\u{00AD}',  // soft hyphen (Cf)
            '\u{034F}',  // combining grapheme joiner (default-ignorable, Mn)
            '\u{061C}',  // Arabic letter mark (Cf)
            '\u{115F}',  // Hangul choseong filler (Lo)
            '\u{1160}',  // Hangul jungseong filler (Lo)
            '\u{180E}',  // Mongolian vowel separator (Cf)
            '\u{200B}',  // zero width space (Cf)
            '\u{200D}',  // zero width joiner (Cf)
            '\u{202E}',  // right-to-left override (Cf)
            '\u{2028}',  // line separator (Zl)
            '\u{2029}',  // paragraph separator (Zp)
            '\u{2066}',  // left-to-right isolate (Cf)
            '\u{2800}',  // Braille pattern blank
            '\u{3164}',  // Hangul filler (Lo)
            '\u{FE0F}',  // variation selector 16 (Mn)
            '\u{FEFF}',  // zero width no-break space (Cf)
            '\u{FFA0}',  // halfwidth Hangul filler (Lo)
            '\u{E0041}', // tag latin capital A (Cf)
        ] {
            let value = format!("x{c}to=+972");
            assert!(needs_quotes(&value), "U+{:04X}", u32::from(c));
            let written = shown(&value);
            assert!(!written.contains(c), "U+{:04X} written raw: {written}", u32::from(c));
            assert_eq!(written, format!("\"x\\u{{{:x}}}to=+972\"", u32::from(c)));
        }
    }

    #[test]
    fn free_text_keeps_its_spaces_and_quotes_but_not_its_line_breaks() {
        assert_eq!(
            plain_text("The 'To' number \"x\" is not valid."),
            "The 'To' number \"x\" is not valid."
        );
        assert_eq!(plain_text("two\nlines\u{202E}"), "two\\nlines\\u{202e}");
    }

    #[test]
    fn long_values_are_cut_with_a_marker() {
        assert_eq!(truncated("short", 64), "short");
        assert_eq!(truncated(&"a".repeat(64), 64).len(), 64);
        assert_eq!(truncated(&"a".repeat(70), 64), format!("{}…(+6)", "a".repeat(64)));
        assert_eq!(truncated("日本語です", 2), "日本…(+3)", "cut at characters, not bytes");
        assert!(
            !needs_quotes(&truncated(&"a".repeat(100), 10)),
            "the marker keeps a value bare"
        );
    }
}
