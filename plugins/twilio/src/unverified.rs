//! Refused webhooks kept as evidence: a request whose signature is missing or wrong but that names
//! a CallSid is stored in `unverified_webhooks` (never in the call record, never under a tenant),
//! with the likely cause when the signed URL is the problem, so that `callplane trace` can say
//! "Twilio called, we answered 403, because …" — the most common misconfiguration.
//!
//! Forged traffic must not fill the disk nor slow valid webhooks down: at most
//! [`STORED_PER_SECOND`] attempts a second are stored (the rest only counted), and the table is
//! capped in rows and per client (`unverified_max_rows`, `unverified_per_client`), the oldest
//! pruned in the transaction that adds new ones. The cap in rows keeps the newest
//! `unverified_max_rows` ids (one cheap statement, whatever the table's size): rows a client's cap
//! removed in between are not made up for, so the table holds at most, not always exactly, that
//! many.

use std::sync::Mutex;
use std::time::Instant;

use crate::signature::{self, AuthKey, Outcome};

/// How many refused webhooks a second an instance stores at most.
pub const STORED_PER_SECOND: u32 = 200;

/// The bounds of the table: rows in all and rows per client address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Rows in all (`unverified_max_rows`).
    pub max_rows: i64,
    /// Rows per client address (`unverified_per_client`).
    pub per_client: i64,
}

/// One refused webhook, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// When it arrived (Unix milliseconds).
    pub received_ms: i64,
    /// The instance that refused it.
    pub instance_id: String,
    /// The webhook route.
    pub route: String,
    /// The CallSid it names.
    pub call_sid: String,
    /// The client's address under the trusted-proxy rules.
    pub client: String,
    /// The request id.
    pub request_id: Option<String>,
    /// `missing` or `invalid`.
    pub signature: &'static str,
    /// Why, when it can be told: which URL Twilio signed instead of ours.
    pub likely_cause: Option<String>,
    /// The table's bounds, applied when it is written.
    pub caps: Caps,
}

/// Admits at most [`STORED_PER_SECOND`] attempts a second.
#[derive(Debug)]
pub struct Budget {
    window: Mutex<(Instant, u32)>,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            window: Mutex::new((Instant::now(), 0)),
        }
    }
}

impl Budget {
    /// Whether one more attempt may be stored now.
    pub fn admit(&self) -> bool {
        let Ok(mut window) = self.window.lock() else {
            return false;
        };
        let now = Instant::now();
        if now.duration_since(window.0).as_secs() >= 1 {
            *window = (now, 0);
        }
        window.1 += 1;
        window.1 <= STORED_PER_SECOND
    }
}

/// Why a request signed for another URL fails: when the same parameters and signature verify under
/// the other scheme, another port or the `Host` the request named, Twilio signed that URL, and the
/// configured public URL (or a proxy's rewriting) is the cause. `configured` is the public base
/// URL, `host` the request's `Host` header, `rest` the path and query as called.
pub fn likely_cause<'a>(
    key: &AuthKey,
    configured: &str,
    host: Option<&str>,
    rest: &str,
    params: impl IntoIterator<Item = (&'a str, &'a str)> + Clone,
    signature: Option<&str>,
) -> Option<String> {
    let Some(signature) = signature else {
        return Some(
            "no X-Twilio-Signature header: not sent by Twilio, or a proxy in front removes the header".to_owned(),
        );
    };
    let parsed = url::Url::parse(configured).ok()?;
    let configured_host = parsed.host_str()?;
    let mut authorities = vec![configured_host.to_owned()];
    if let Some(port) = parsed.port() {
        authorities.push(format!("{configured_host}:{port}"));
    }
    if let Some(host) = host.filter(|h| !authorities.iter().any(|a| a == h)) {
        authorities.push(host.to_owned());
    }
    let base_path = parsed.path().trim_end_matches('/');
    for scheme in ["https", "http"] {
        for authority in &authorities {
            let candidate = format!("{scheme}://{authority}{base_path}");
            if candidate == configured {
                continue;
            }
            let url = format!("{candidate}{rest}");
            if signature::validate_with(key, &url, params.clone(), None, Some(signature)) == Outcome::Valid {
                return Some(format!(
                    "CALLPLANE_PUBLIC_BASE_URL is probably wrong: Twilio signed {candidate}{path}, this instance checks {configured}{path}",
                    path = rest.split('?').next().unwrap_or_default()
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(key: &str, url: &str, params: &[(&str, &str)]) -> String {
        use base64::Engine as _;
        let mut data = url.to_owned();
        let mut sorted = params.to_vec();
        sorted.sort_unstable();
        for (k, v) in sorted {
            data.push_str(k);
            data.push_str(v);
        }
        let tag = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key.as_bytes()),
            data.as_bytes(),
        );
        base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
    }

    #[test]
    fn a_signature_for_the_other_scheme_or_port_names_the_url_twilio_signed() {
        let key = AuthKey::new("token");
        let params = [("CallSid", "CA0123"), ("To", "+15550001111")];
        let rest = "/webhook/incoming_call";
        let signed = sign("token", "https://calls.example.com/webhook/incoming_call", &params);
        let cause = likely_cause(&key, "http://calls.example.com", None, rest, params, Some(&signed)).unwrap();
        assert_eq!(
            cause,
            "CALLPLANE_PUBLIC_BASE_URL is probably wrong: Twilio signed https://calls.example.com/webhook/incoming_call, this instance checks http://calls.example.com/webhook/incoming_call"
        );
        let port = sign("token", "https://calls.example.com:8443/webhook/incoming_call", &params);
        let cause = likely_cause(
            &key,
            "https://calls.example.com",
            Some("calls.example.com:8443"),
            rest,
            params,
            Some(&port),
        );
        assert!(
            cause
                .unwrap()
                .contains("Twilio signed https://calls.example.com:8443/webhook/incoming_call")
        );
        // A signature made with another key matches no URL: nothing to say.
        let forged = sign("other", "https://calls.example.com/webhook/incoming_call", &params);
        assert_eq!(
            likely_cause(&key, "http://calls.example.com", None, rest, params, Some(&forged)),
            None
        );
        assert!(
            likely_cause(&key, "http://calls.example.com", None, rest, params, None)
                .unwrap()
                .starts_with("no X-Twilio-Signature")
        );
    }

    #[test]
    fn the_budget_admits_a_bounded_number_a_second() {
        let budget = Budget::default();
        let admitted = (0..STORED_PER_SECOND * 3).filter(|_| budget.admit()).count();
        assert_eq!(admitted, STORED_PER_SECOND as usize);
    }
}
