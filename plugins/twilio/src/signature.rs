//! `X-Twilio-Signature` validation, exactly as Twilio's SDKs do it (twilio-python
//! `RequestValidator`), checked against the SDK-generated vectors in
//! `testdata/twilio_signature_vectors.json`.
//!
//! The signed string is the URL Twilio called (literally: scheme, host, port as configured, path,
//! raw query) followed by every distinct POST parameter as `key + value`, keys in code-point order
//! and, for a repeated key, its distinct values in code-point order. The signature is
//! base64(HMAC-SHA1(auth token, that string)). A request is valid when the signature matches the
//! URL either without its port or with the scheme's default port (an explicit port is kept).
//! JSON bodies are covered by a `bodySHA256` query parameter instead: the URL alone is signed and
//! the body's SHA-256 must match.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::{digest, hmac};

/// The outcome of a check, for the log line and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The signature matches.
    Valid,
    /// A signature was sent and does not match.
    Invalid,
    /// No `X-Twilio-Signature` header.
    Missing,
}

impl Outcome {
    /// `valid`, `invalid` or `missing`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Valid => "valid",
            Self::Invalid => "invalid",
            Self::Missing => "missing",
        }
    }
}

/// A form parameter as the signature functions take it: a `(name, value)` pair of string slices,
/// or a reference to a pair of (owned or borrowed) strings.
pub trait Param<'a> {
    /// The name and the value.
    fn pair(self) -> (&'a str, &'a str);
}

impl<'a> Param<'a> for (&'a str, &'a str) {
    fn pair(self) -> (&'a str, &'a str) {
        self
    }
}

impl<'a, N: AsRef<str>, V: AsRef<str>> Param<'a> for &'a (N, V) {
    fn pair(self) -> (&'a str, &'a str) {
        (self.0.as_ref(), self.1.as_ref())
    }
}

/// The parameters in signing order: sorted by name, then by value; a pair sent twice counts once
/// (the SDK sorts sets).
fn sorted<'a, P: Param<'a>>(params: impl IntoIterator<Item = P>) -> Vec<(&'a str, &'a str)> {
    let mut pairs: Vec<(&str, &str)> = params.into_iter().map(Param::pair).collect();
    pairs.sort_unstable();
    pairs.dedup();
    pairs
}

/// `url` then each of the sorted pairs as `name + value`.
fn concatenated(url: &str, sorted: &[(&str, &str)]) -> String {
    let len = url.len() + sorted.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
    let mut out = String::with_capacity(len);
    out.push_str(url);
    for (key, value) in sorted {
        out.push_str(key);
        out.push_str(value);
    }
    out
}

/// The string Twilio signs: `url` then each distinct `key + value`, sorted.
pub fn signed_string<'a, P: Param<'a>>(url: &str, params: impl IntoIterator<Item = P>) -> String {
    concatenated(url, &sorted(params))
}

/// The signature Twilio would send for `url` and `params` (standard base64, padded, 28 chars).
pub fn compute<'a, P: Param<'a>>(auth_token: &str, url: &str, params: impl IntoIterator<Item = P>) -> String {
    let key = AuthKey::new(auth_token);
    B64.encode(hmac::sign(&key.0, signed_string(url, params).as_bytes()).as_ref())
}

/// The two URLs a request may have been signed for: without any explicit port, and with the port
/// (the explicit one, else 443 for https and 80 otherwise). The URL is treated as text, like the
/// SDK: nothing is re-encoded or re-ordered.
pub fn url_candidates(url: &str) -> [String; 2] {
    let Some((scheme, rest)) = url.split_once("://") else {
        return [url.to_owned(), url.to_owned()];
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (netloc, tail) = rest.split_at(end);
    let scheme_lower = scheme.to_ascii_lowercase();
    let host = netloc.split_once(':').map_or(netloc, |(h, _)| h);
    let without = format!("{scheme_lower}://{host}{tail}");
    let with = if netloc.contains(':') {
        format!("{scheme_lower}://{netloc}{tail}")
    } else {
        let port = if scheme_lower == "https" { 443 } else { 80 };
        format!("{scheme_lower}://{netloc}:{port}{tail}")
    };
    [without, with]
}

/// The URL a WebSocket handshake to `url` is signed over: Twilio signs the `<Stream>` URL as the
/// TwiML names it, `wss://` (or `ws://`), where the server behind TLS termination sees `https://`
/// (`http://`). See `testdata/README.md` for the sources.
pub fn websocket_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => format!("ws://{rest}"),
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => format!("wss://{rest}"),
        _ => url.to_owned(),
    }
}

/// An auth token as the HMAC key webhooks are checked with, derived once (deriving it hashes the
/// token: about 3 % of a webhook's work when done for every request). Its `Debug` shows nothing of
/// the token.
#[derive(Clone)]
pub struct AuthKey(hmac::Key);

impl AuthKey {
    /// The key of `auth_token`.
    pub fn new(auth_token: &str) -> Self {
        Self(hmac::Key::new(
            hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            auth_token.as_bytes(),
        ))
    }
}

impl std::fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthKey(..)")
    }
}

/// Checks a request with the key of `auth_token` ([`validate_with`] for a key derived once).
pub fn validate<'a, P: Param<'a>>(
    auth_token: &str,
    url: &str,
    params: impl IntoIterator<Item = P>,
    json_body: Option<&str>,
    signature: Option<&str>,
) -> Outcome {
    validate_with(&AuthKey::new(auth_token), url, params, json_body, signature)
}

/// Checks a request. `params` are the decoded form fields (empty for JSON bodies); `json_body` is
/// the raw body when it is JSON. A JSON request is valid only when the URL carries `bodySHA256`
/// matching the body (lower-case hex) and the URL alone is signed.
pub fn validate_with<'a, P: Param<'a>>(
    key: &AuthKey,
    url: &str,
    params: impl IntoIterator<Item = P>,
    json_body: Option<&str>,
    signature: Option<&str>,
) -> Outcome {
    let Some(signature) = signature else {
        return Outcome::Missing;
    };
    // The SDK compares base64 strings; decoding strictly (canonical, padded, standard alphabet)
    // and comparing the bytes in constant time accepts exactly the same strings.
    let Some(tag) = (signature.len() == 28).then(|| B64.decode(signature).ok()).flatten() else {
        return Outcome::Invalid;
    };
    let body_hash = query_value(url, "bodySHA256");
    let params = match (json_body, body_hash) {
        (Some(body), Some(expected)) => {
            if hex_sha256(body) != expected {
                return Outcome::Invalid;
            }
            Vec::new()
        }
        (Some(_), None) => return Outcome::Invalid,
        (None, _) => sorted(params),
    };
    let valid = url_candidates(url)
        .iter()
        .any(|candidate| hmac::verify(&key.0, concatenated(candidate, &params).as_bytes(), &tag).is_ok());
    if valid { Outcome::Valid } else { Outcome::Invalid }
}

/// The first non-blank value of `name` in the URL's query, decoded.
fn query_value(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    let query = query.split_once('#').map_or(query, |(q, _)| q);
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, v)| k == name && !v.trim().is_empty())
        .map(|(_, v)| v.into_owned())
}

fn hex_sha256(body: &str) -> String {
    digest::digest(&digest::SHA256, body.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Deserialize)]
    struct Vectors {
        count: usize,
        vectors: Vec<Vector>,
    }

    #[derive(Deserialize)]
    struct Vector {
        id: String,
        auth_token: String,
        url: String,
        params: Option<Vec<(String, String)>>,
        body: Option<String>,
        signature: String,
        valid: bool,
    }

    #[derive(Deserialize)]
    struct SocketVectors {
        auth_token: String,
        signed_url: String,
        vectors: Vec<SocketVector>,
    }

    #[derive(Deserialize)]
    struct SocketVector {
        name: String,
        url: String,
        signature: String,
        valid: bool,
    }

    const NO_PARAMS: [(&str, &str); 0] = [];

    /// The WebSocket handshake rule, on vectors made with Twilio's SDK: the `wss://` URL is
    /// signed, with no parameters; its `https://` spelling (what the server sees) is not.
    #[test]
    fn websocket_handshakes_are_signed_over_the_wss_url() {
        let all: SocketVectors =
            serde_json::from_str(include_str!("../testdata/twilio_websocket_vectors.json")).unwrap();
        assert!(all.vectors.len() >= 4);
        for v in &all.vectors {
            let outcome = validate(&all.auth_token, &v.url, NO_PARAMS, None, Some(&v.signature));
            assert_eq!(outcome == Outcome::Valid, v.valid, "{}", v.name);
        }
        let served = "https://voice.example.com";
        assert_eq!(websocket_url(served), "wss://voice.example.com");
        assert_eq!(websocket_url("http://localhost:8080"), "ws://localhost:8080");
        let key = AuthKey::new(&all.auth_token);
        let signature = &all.vectors[0].signature;
        let url = format!("{}/ws/twilio/media", websocket_url(served));
        assert_eq!(url, all.signed_url);
        assert_eq!(
            validate_with(&key, &url, NO_PARAMS, None, Some(signature)),
            Outcome::Valid
        );
        let seen = format!("{served}/ws/twilio/media");
        assert_ne!(
            validate_with(&key, &seen, NO_PARAMS, None, Some(signature)),
            Outcome::Valid
        );
    }

    /// The vectors generated with Twilio's own SDK (testdata/README.md says how).
    fn vectors() -> Vectors {
        serde_json::from_str(include_str!("../testdata/twilio_signature_vectors.json")).unwrap()
    }

    #[test]
    fn every_sdk_vector() {
        let all = vectors();
        assert_eq!(all.vectors.len(), all.count);
        assert!(all.vectors.iter().any(|v| v.valid) && all.vectors.iter().any(|v| !v.valid));
        for v in &all.vectors {
            let params = v.params.clone().unwrap_or_default();
            let outcome = validate(&v.auth_token, &v.url, &params, v.body.as_deref(), Some(&v.signature));
            assert_eq!(outcome == Outcome::Valid, v.valid, "vector {}", v.id);
        }
    }

    #[test]
    fn computed_signatures_match_the_valid_vectors() {
        for v in vectors().vectors.iter().filter(|v| v.valid && v.body.is_none()) {
            let params = v.params.clone().unwrap_or_default();
            let candidates = url_candidates(&v.url);
            assert!(
                candidates
                    .iter()
                    .any(|u| compute(&v.auth_token, u, &params) == v.signature),
                "vector {}",
                v.id
            );
        }
    }

    #[test]
    fn a_key_derived_once_checks_as_the_token_does_and_hides_it() {
        let params = vec![("CallSid".to_owned(), "CA1".to_owned())];
        let url = "https://voice.example.com/webhook/incoming_call";
        let key = AuthKey::new("secret-token");
        let good = compute("secret-token", url, &params);
        assert_eq!(validate_with(&key, url, &params, None, Some(&good)), Outcome::Valid);
        let other = compute("other-token", url, &params);
        assert_eq!(validate_with(&key, url, &params, None, Some(&other)), Outcome::Invalid);
        assert_eq!(format!("{key:?}"), "AuthKey(..)");
    }

    #[test]
    fn missing_and_malformed_headers() {
        let params = vec![("CallSid".to_owned(), "CA1".to_owned())];
        let url = "https://voice.example.com/webhook/incoming_call";
        assert_eq!(validate("t", url, &params, None, None), Outcome::Missing);
        let good = compute("t", url, &params);
        assert_eq!(validate("t", url, &params, None, Some(&good)), Outcome::Valid);
        for bad in [
            "",
            "x",
            &good[..27],
            &format!("{good}="),
            &good.replace('+', "-").replace('/', "_"),
            "é".repeat(14).as_str(),
        ] {
            if bad != good {
                assert_eq!(
                    validate("t", url, &params, None, Some(bad)),
                    Outcome::Invalid,
                    "{bad:?}"
                );
            }
        }
        assert_eq!(validate("t", "not a url", &params, None, Some(&good)), Outcome::Invalid);
        assert_eq!(
            validate("t", url, &params, Some("{}"), Some(&good)),
            Outcome::Invalid,
            "JSON needs bodySHA256"
        );
    }

    #[test]
    fn port_candidates_follow_the_sdk() {
        assert_eq!(
            url_candidates("https://h/p?q=1"),
            ["https://h/p?q=1", "https://h:443/p?q=1"]
        );
        assert_eq!(url_candidates("https://h:8443/p"), ["https://h/p", "https://h:8443/p"]);
        assert_eq!(url_candidates("http://h"), ["http://h", "http://h:80"]);
    }
}
