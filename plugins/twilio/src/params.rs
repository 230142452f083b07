//! Decoded `application/x-www-form-urlencoded` parameters, held compactly.
//!
//! A Twilio webhook carries about 25 parameters. Decoded into a `Vec<(String, String)>`, that is
//! some 50 allocations to make and free on every request; [`Params`] keeps every decoded name and
//! value in one string and their boundaries in one vector, so a webhook's parameters cost two.

use std::fmt;

use serde::de::Deserializer;
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

/// Name/value pairs in arrival order (repeated names kept), decoded as `url::form_urlencoded`
/// decodes them: `+` is a space, percent escapes are bytes, invalid UTF-8 becomes U+FFFD.
///
/// Serialises as a list of `[name, value]` pairs, as a `Vec<(String, String)>` would.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Params {
    /// Every name and value, one after the other.
    text: String,
    /// Per pair, where its name ends and where its value ends in `text`; the name starts where
    /// the previous value ended.
    ends: Vec<(usize, usize)>,
}

impl Params {
    /// Decodes a form body or a query string.
    ///
    /// Every name and value is percent-decoded straight into one buffer, which is then checked
    /// for UTF-8 once. Should that fail, or a character straddle a name and its value (`%C3=%A9`)
    /// or two pairs (`a=%C3&%A9`), the input is decoded again pair by pair by
    /// `url::form_urlencoded`, which replaces each name's and value's invalid sequences with
    /// U+FFFD: the result is the same either way, and the usual input costs one pass.
    pub fn parse(input: &[u8]) -> Self {
        Self::decode(input, false).unwrap_or_else(|_| url::form_urlencoded::parse(input).collect())
    }

    /// Decodes a form body as Twilio writes it, or says why it is not one: raw bytes that are
    /// not UTF-8, a `%` not followed by two hex digits, or escapes that decode to invalid UTF-8
    /// (within a name or value, or a character split between two). Twilio never sends such a
    /// body, and two different raw bodies that a lenient decoder maps to the same parameters are a
    /// parser differential; so such a body is refused whatever its signature says.
    ///
    /// # Errors
    /// What is wrong with the body.
    pub fn parse_strict(input: &[u8]) -> Result<Self, Malformed> {
        if !input.is_ascii() && std::str::from_utf8(input).is_err() {
            return Err(Malformed::RawNotUtf8);
        }
        Self::decode(input, true)
    }

    /// Percent-decodes every name and value straight into one buffer, then checks it for UTF-8
    /// once (and, with `strict`, every escape for its two hex digits). Fails where the pair-by-pair
    /// decoding would differ: invalid UTF-8, or a character straddling a name and its value or two
    /// pairs.
    fn decode(input: &[u8], strict: bool) -> Result<Self, Malformed> {
        let mut bytes = Vec::with_capacity(input.len());
        // A pair takes at least two bytes (`a&`).
        let mut ends = Vec::with_capacity(input.len().div_ceil(16).min(64));
        for pair in input.split(|&b| b == b'&').filter(|pair| !pair.is_empty()) {
            let (name, value) = match pair.iter().position(|&b| b == b'=') {
                Some(at) => (&pair[..at], &pair[at + 1..]),
                None => (pair, &[][..]),
            };
            if strict && !(escapes_are_whole(name) && escapes_are_whole(value)) {
                return Err(Malformed::BadEscape);
            }
            decode_into(&mut bytes, name);
            let name_end = bytes.len();
            decode_into(&mut bytes, value);
            ends.push((name_end, bytes.len()));
        }
        match String::from_utf8(bytes) {
            Ok(text)
                if ends.iter().all(|&(name_end, value_end)| {
                    text.is_char_boundary(name_end) && text.is_char_boundary(value_end)
                }) =>
            {
                Ok(Self { text, ends })
            }
            _ => Err(Malformed::EscapesNotUtf8),
        }
    }

    /// Appends a pair.
    pub fn push(&mut self, name: &str, value: &str) {
        self.text.push_str(name);
        let name_end = self.text.len();
        self.text.push_str(value);
        self.ends.push((name_end, self.text.len()));
    }

    /// The pairs, in arrival order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + Clone + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&(name_end, value_end)| {
            let pair = (&self.text[start..name_end], &self.text[name_end..value_end]);
            start = value_end;
            pair
        })
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        let bytes = self.text.as_bytes();
        let mut start = 0;
        for &(name_end, value_end) in &self.ends {
            if &bytes[start..name_end] == name.as_bytes() {
                return Some(&self.text[name_end..value_end]);
            }
            start = value_end;
        }
        None
    }

    /// How many pairs there are.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The pairs as JSON, exactly as `serde_json` writes them (`[["name","value"],…]`, what
    /// `call_events.payload` holds), in one buffer of the right size: `serde_json` starts small
    /// and grows its buffer through every size up to a webhook's kilobyte, and looks every byte
    /// up in its escape table, while Twilio's names and values (almost) never need an escape and
    /// are copied whole.
    pub fn to_json(&self) -> String {
        // `["",""]` and a comma per pair, and the outer brackets.
        let mut out = String::with_capacity(self.text.len() + 8 * self.ends.len() + 2);
        out.push('[');
        for (i, (name, value)) in self.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push('[');
            push_json_str(&mut out, name);
            out.push(',');
            push_json_str(&mut out, value);
            out.push(']');
        }
        out.push(']');
        out
    }
}

/// Appends `s` as a JSON string, escaped as `serde_json` escapes: `"`, `\` and the control
/// characters below U+0020 (`\b`, `\t`, `\n`, `\f`, `\r` by name, the others as `\u00xx`).
fn push_json_str(out: &mut String, s: &str) {
    let escape = |b: u8| b < 0x20 || b == b'"' || b == b'\\';
    out.push('"');
    // A branch-free scan first: most strings are copied whole.
    if !s.bytes().fold(false, |any, b| any | escape(b)) {
        out.push_str(s);
    } else {
        let mut plain = 0;
        for (at, b) in s.bytes().enumerate() {
            if !escape(b) {
                continue;
            }
            out.push_str(&s[plain..at]);
            plain = at + 1;
            match b {
                b'"' => out.push_str("\\\""),
                b'\\' => out.push_str("\\\\"),
                b'\n' => out.push_str("\\n"),
                b'\r' => out.push_str("\\r"),
                b'\t' => out.push_str("\\t"),
                0x08 => out.push_str("\\b"),
                0x0c => out.push_str("\\f"),
                _ => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    out.push_str("\\u00");
                    out.push(char::from(HEX[usize::from(b >> 4)]));
                    out.push(char::from(HEX[usize::from(b & 0xf)]));
                }
            }
        }
        out.push_str(&s[plain..]);
    }
    out.push('"');
}

/// Why a form body is not one Twilio would send ([`Params::parse_strict`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// Raw bytes that are not UTF-8.
    #[error("the body holds bytes that are not UTF-8")]
    RawNotUtf8,
    /// A `%` not followed by two hex digits.
    #[error("the body holds an invalid percent escape")]
    BadEscape,
    /// Escapes that decode to invalid UTF-8.
    #[error("the body's escapes decode to invalid UTF-8")]
    EscapesNotUtf8,
}

/// Whether every `%` in `encoded` starts an escape of two hex digits.
fn escapes_are_whole(encoded: &[u8]) -> bool {
    let mut rest = encoded;
    while let Some(at) = rest.iter().position(|&b| b == b'%') {
        match rest.get(at + 1..at + 3) {
            Some([a, b]) if a.is_ascii_hexdigit() && b.is_ascii_hexdigit() => rest = &rest[at + 3..],
            _ => return false,
        }
    }
    true
}

/// Appends `encoded` decoded as a form does: `+` is a space, `%XX` a byte.
fn decode_into(out: &mut Vec<u8>, encoded: &[u8]) {
    for (i, part) in encoded.split(|&b| b == b'+').enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        if part.contains(&b'%') {
            out.extend(percent_encoding::percent_decode(part));
        } else {
            // Most parts have no escape: copied at once rather than byte by byte.
            out.extend_from_slice(part);
        }
    }
}

impl<N: AsRef<str>, V: AsRef<str>> FromIterator<(N, V)> for Params {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(pairs: I) -> Self {
        let mut params = Self::default();
        for (name, value) in pairs {
            params.push(name.as_ref(), value.as_ref());
        }
        params
    }
}

impl fmt::Debug for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Serialize for Params {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.len()))?;
        for pair in self.iter() {
            seq.serialize_element(&pair)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Params {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Only spooled events are read back, rarely: the plain form is good enough here.
        Vec::<(String, String)>::deserialize(deserializer).map(Self::from_iter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_as_form_urlencoded_does() {
        let body = b"CallSid=CA1&From=%2B15550001111&To=+1555&Caller+Name=J%C3%BCrgen&Bad=%FF&Empty=&=novalue&CallSid=CA2&flag";
        let params = Params::parse(body);
        let expected: Vec<(String, String)> = url::form_urlencoded::parse(body).into_owned().collect();
        let got: Vec<(&str, &str)> = params.iter().collect();
        let expected_refs: Vec<(&str, &str)> = expected.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        assert_eq!(got, expected_refs);
        assert_eq!(params.len(), 9);
        assert_eq!(params.get("From"), Some("+15550001111"));
        assert_eq!(params.get("To"), Some(" 1555"), "an unencoded + is a space");
        assert_eq!(params.get("Caller Name"), Some("Jürgen"));
        assert_eq!(params.get("Bad"), Some("\u{fffd}"));
        assert_eq!(params.get("Empty"), Some(""));
        assert_eq!(params.get(""), Some("novalue"));
        assert_eq!(params.get("CallSid"), Some("CA1"), "the first of a repeated name");
        assert_eq!(params.get("flag"), Some(""));
        assert_eq!(params.get("Missing"), None);
    }

    #[test]
    fn invalid_utf8_is_replaced_per_name_and_value() {
        // Valid UTF-8 as a whole, but a character straddles a name and its value, or two pairs;
        // and bytes that are invalid anywhere.
        for body in [
            &b"%C3=%A9"[..],
            b"\xC3=\xA9",
            b"a%C3&%A9=b",
            b"a=%C3&%A9=b",
            b"a=\xC3&\xA9",
            b"x=%E2%82&y=%AC",
            b"caf%C3%A9=cr%C3%A8me&%FF%FE=1",
        ] {
            let expected: Vec<(String, String)> = url::form_urlencoded::parse(body).into_owned().collect();
            let got: Vec<(String, String)> = Params::parse(body)
                .iter()
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                .collect();
            assert_eq!(got, expected, "{}", String::from_utf8_lossy(body));
        }
        assert_eq!(Params::parse(b"%C3=%A9").get("\u{fffd}"), Some("\u{fffd}"));
        assert_eq!(
            Params::parse(b"caf%C3%A9=cr%C3%A8me").get("caf\u{e9}"),
            Some("cr\u{e8}me")
        );
    }

    #[test]
    fn strict_decoding_takes_what_twilio_sends_and_refuses_the_rest() {
        let twilio = b"CallSid=CA1&From=%2B15550001111&CallerName=Jos%C3%A9+Pe%C3%B1a&Empty=";
        let strict = Params::parse_strict(twilio).unwrap();
        assert_eq!(
            strict,
            Params::parse(twilio),
            "the same parameters as the lenient decoder"
        );
        assert_eq!(strict.get("CallerName"), Some("José Peña"));
        assert_eq!(
            Params::parse_strict("Name=José".as_bytes()).unwrap().get("Name"),
            Some("José")
        );
        for (body, problem) in [
            (&b"CallSid=CA%ZZ"[..], Malformed::BadEscape),
            (b"CallSid=CA%2", Malformed::BadEscape),
            (b"To=%", Malformed::BadEscape),
            (b"CallSid=\xff\xfe", Malformed::RawNotUtf8),
            (b"To=\xc3%A9", Malformed::RawNotUtf8),
            (b"To=%C3%28", Malformed::EscapesNotUtf8),
            (b"a=%C3&%A9=b", Malformed::EscapesNotUtf8),
            (b"%C3=%A9", Malformed::EscapesNotUtf8),
        ] {
            assert_eq!(
                Params::parse_strict(body),
                Err(problem),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn empty_input_has_no_pairs() {
        let params = Params::parse(b"");
        assert!(params.is_empty());
        assert_eq!(params.iter().count(), 0);
        assert_eq!(params, Params::default());
    }

    #[test]
    fn serialises_as_a_list_of_pairs_and_reads_back() {
        let params: Params = [("CallSid", "CA1"), ("Digits", "1 2\"3")].into_iter().collect();
        let json = serde_json::to_string(&params).unwrap();
        let plain = vec![
            ("CallSid".to_owned(), "CA1".to_owned()),
            ("Digits".to_owned(), "1 2\"3".to_owned()),
        ];
        assert_eq!(json, serde_json::to_string(&plain).unwrap());
        assert_eq!(serde_json::from_str::<Params>(&json).unwrap(), params);
        assert_eq!(format!("{params:?}"), r#"[("CallSid", "CA1"), ("Digits", "1 2\"3")]"#);
    }

    #[test]
    fn json_is_what_serde_json_writes() {
        let mut awkward: Vec<String> = (0u8..0x80).map(|b| format!("a{}b", char::from(b))).collect();
        awkward.extend(
            [
                "",
                "\"",
                "\\",
                "\"\"",
                "\u{7f}",
                "\u{2028}",
                "Jürgen",
                "José Peña",
                "日本",
                "\u{1F600}",
                "end\\",
                "\u{0}start",
                "\n\r\t\u{8}\u{c}\u{1f}",
                "+15005550006",
                "<Say>x</Say>",
            ]
            .map(str::to_owned),
        );
        for value in &awkward {
            let params: Params = [("Name", value.as_str()), (value.as_str(), "v"), ("CallSid", "CA1")]
                .into_iter()
                .collect();
            assert_eq!(params.to_json(), serde_json::to_string(&params).unwrap(), "{value:?}");
        }
        assert_eq!(Params::default().to_json(), "[]");
        let body = b"CallSid=CA1&From=%2B15550001111&CallerName=Jos%C3%A9+Pe%C3%B1a&Empty=&Note=%22q%22%0A";
        let params = Params::parse(body);
        assert_eq!(params.to_json(), serde_json::to_string(&params).unwrap());
        assert_eq!(serde_json::from_str::<Params>(&params.to_json()).unwrap(), params);
    }

    #[test]
    fn pairs_with_the_same_text_differently_split_differ() {
        let a: Params = [("ab", "c")].into_iter().collect();
        let b: Params = [("a", "bc")].into_iter().collect();
        assert_ne!(a, b);
    }
}
