//! Property tests: the signature canonicalisation against an independent reference computation
//! (Twilio's documented algorithm written out again here), form decoding, and the webhook route
//! fed random bodies and signatures through the real HTTP path.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use actix_web::dev::Service;
use actix_web::http::header;
use actix_web::test::{self as atest, TestRequest};
use base64::Engine as _;
use callplane_plugin_api::Settings;
use callplane_plugin_api::storage::{Db, sqlx};
use callplane_plugin_api::testing::TestHost;
use callplane_plugin_twilio::params::Params;
use callplane_plugin_twilio::signature::{self, Outcome};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;

const TOKEN: &str = "property-auth-token";
const BASE: &str = "https://voice.example.com";

/// Twilio's algorithm as its documentation states it: the URL, then every parameter as
/// name + value, sorted by name and then value (identical pairs once), HMAC-SHA1 with the auth
/// token, standard base64.
fn reference(url: &str, params: &[(String, String)]) -> String {
    let mut pairs: Vec<&(String, String)> = params.iter().collect();
    pairs.sort();
    pairs.dedup();
    let mut data = url.to_owned();
    for (name, value) in pairs {
        data.push_str(name);
        data.push_str(value);
    }
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, TOKEN.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(ring::hmac::sign(&key, data.as_bytes()))
}

fn params_strategy() -> impl Strategy<Value = Vec<(String, String)>> {
    // Any unicode, names often repeated (Twilio sends arrays as repeated names).
    proptest::collection::vec(("[a-cA-C]{0,2}|\\PC{0,6}", "\\PC{0,10}"), 0..12)
}

/// `Params::parse` decodes `body` exactly as the `url` crate's form decoder does.
fn decodes_as_the_url_crate(body: &[u8]) -> Result<(), TestCaseError> {
    let reference: Vec<(String, String)> = url::form_urlencoded::parse(body).into_owned().collect();
    let expected: Vec<(&str, &str)> = reference.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let decoded = Params::parse(body);
    prop_assert_eq!(decoded.iter().collect::<Vec<_>>(), expected);
    Ok(())
}

fn url_strategy() -> impl Strategy<Value = String> {
    "(http|https)://[a-z]{1,8}(\\.example)?(:[0-9]{1,5})?/[ -~]{0,30}"
}

proptest! {
    #[test]
    fn the_signature_is_the_reference_computation(url in url_strategy(), params in params_strategy()) {
        let expected = reference(&url, &params);
        prop_assert_eq!(signature::compute(TOKEN, &url, &params), expected.clone());
        prop_assert_eq!(signature::validate(TOKEN, &url, &params, None, Some(&expected)), Outcome::Valid);
    }

    #[test]
    fn any_other_signature_is_refused(url in url_strategy(), params in params_strategy(), sent in "\\PC{0,40}") {
        let outcome = signature::validate(TOKEN, &url, &params, None, Some(&sent));
        prop_assert_eq!(outcome == Outcome::Valid, sent == reference(&url, &params));
        prop_assert_eq!(signature::validate(TOKEN, &url, &params, None, None), Outcome::Missing);
    }

    #[test]
    fn a_changed_parameter_or_url_invalidates(
        url in url_strategy(),
        params in params_strategy().prop_filter("at least one", |p| !p.is_empty()),
        pick in any::<proptest::sample::Index>(),
        extra in "\\PC{1,4}",
    ) {
        let signed = reference(&url, &params);
        let mut changed = params.clone();
        let i = pick.index(changed.len());
        changed[i].1.push_str(&extra);
        // Valid again only if the change left the signed string as it was (a duplicate pair).
        let same = reference(&url, &changed) == signed;
        prop_assert_eq!(signature::validate(TOKEN, &url, &changed, None, Some(&signed)) == Outcome::Valid, same);
        let other_url = format!("{url}x");
        prop_assert_ne!(signature::validate(TOKEN, &other_url, &params, None, Some(&signed)), Outcome::Valid);
    }

    #[test]
    fn form_bodies_round_trip_and_any_bytes_decode(params in params_strategy(), junk in proptest::collection::vec(any::<u8>(), 0..300)) {
        // The webhooks' decoder (`Params`) gives back what was encoded, pair for pair.
        let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(&params).finish();
        let decoded = Params::parse(body.as_bytes());
        let pairs: Vec<(&str, &str)> = decoded.iter().collect();
        let expected: Vec<(&str, &str)> = params.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        prop_assert_eq!(pairs, expected);
        // Arbitrary bytes decode as the `url` crate decodes them, and decoding what that encodes
        // is stable.
        decodes_as_the_url_crate(&junk)?;
        let once = Params::parse(&junk);
        let again = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(once.iter()).finish();
        prop_assert_eq!(Params::parse(again.as_bytes()), once);
    }

    #[test]
    fn characters_split_by_separators_decode_as_the_url_crate_decodes_them(
        text in "\\PC{1,8}",
        cuts in proptest::collection::vec((any::<proptest::sample::Index>(), any::<bool>()), 1..4),
    ) {
        // Every byte of some text escaped, with `&` and `=` put between escapes: the decoded bytes
        // are valid UTF-8 as a whole, but the separators often split a character.
        let mut parts: Vec<String> = text.bytes().map(|b| format!("%{b:02X}")).collect();
        for (at, amp) in cuts {
            let at = at.index(parts.len() + 1);
            parts.insert(at, if amp { "&" } else { "=" }.to_owned());
        }
        decodes_as_the_url_crate(parts.concat().as_bytes())?;
    }

    #[test]
    fn form_shaped_bytes_decode_as_the_url_crate_decodes_them(
        tokens in proptest::collection::vec(
            proptest::sample::select(vec!["%C3", "%A9", "\u{e9}", "=", "&", "+", "a", "%", "%2", "\u{20ac}"]),
            0..10,
        ),
        raw in proptest::collection::vec(proptest::sample::select(b"%&=+0aCE \xc3\xa9\xff".to_vec()), 0..40),
    ) {
        // Escapes, separators and halves of characters, split anywhere (arbitrary bytes rarely
        // make a valid escape).
        decodes_as_the_url_crate(tokens.concat().as_bytes())?;
        decodes_as_the_url_crate(&raw)?;
    }
}

/// Random bodies, content types and signatures through the mounted webhook route: never a 5xx,
/// never a panic; accepted exactly when the signature is the reference one, and then recorded.
#[actix_rt::test]
async fn the_webhook_route_accepts_exactly_the_reference_signatures() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::connect_lazy(&format!("sqlite://{}/p.db", dir.path().display())).unwrap();
    let mut settings = Settings {
        public_base_url: BASE.to_owned(),
        ..Settings::default()
    };
    settings
        .set("twilio", "spool_dir", dir.path().join("spool").display().to_string())
        .set("twilio", "auth_token", TOKEN);
    let host = TestHost::new(
        settings,
        db.clone(),
        &[&callplane_plugin_permissions::PLUGIN, &callplane_plugin_twilio::PLUGIN],
    )
    .await;
    let app = atest::init_service(host.app()).await;
    let url = format!("{BASE}/webhook/incoming_call");

    let mut runner = TestRunner::deterministic();
    let random = (
        proptest::collection::vec(any::<u8>(), 0..2000),
        proptest::option::of("\\PC{0,40}"),
        prop_oneof![
            Just("application/x-www-form-urlencoded"),
            Just("application/json"),
            Just("text/plain"),
            Just("")
        ],
    );
    let signed = (params_strategy(), "[0-9a-f]{32}");
    let (mut refused, mut accepted) = (0, 0);
    for round in 0..400 {
        let (body, sig, content_type, valid) = if round % 4 == 3 {
            // A valid webhook with random extra parameters, signed as Twilio would.
            let (mut params, hex) = signed.new_tree(&mut runner).unwrap().current();
            params.retain(|(k, _)| k != "CallSid");
            params.push(("CallSid".to_owned(), format!("CA{hex}")));
            let sig = reference(&url, &params);
            let body = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(&params)
                .finish();
            (body.into_bytes(), Some(sig), "application/x-www-form-urlencoded", true)
        } else {
            let (body, sig, content_type) = random.new_tree(&mut runner).unwrap().current();
            (body, sig, content_type, false)
        };
        let mut req = TestRequest::post()
            .uri("/webhook/incoming_call")
            .set_payload(body.clone());
        if !content_type.is_empty() {
            req = req.insert_header((header::CONTENT_TYPE, content_type));
        }
        if let Some(sig) = &sig
            && header::HeaderValue::from_str(sig).is_ok()
        {
            req = req.insert_header(("x-twilio-signature", sig.as_str()));
        }
        let res = app
            .call(req.peer_addr("203.0.113.1:1".parse().unwrap()).to_request())
            .await
            .unwrap();
        let status = res.status().as_u16();
        assert!(status < 500, "round {round}: {status} for {body:?}");
        if valid {
            assert_eq!(status, 200, "round {round}: a reference-signed webhook is accepted");
            accepted += 1;
        } else {
            // Refused: a body Twilio never sends (not a form or JSON: 415; not strictly a form:
            // 400), or else the signature (403).
            let expected: &[u16] = match content_type {
                "application/json" => &[403],
                "application/x-www-form-urlencoded" if std::str::from_utf8(&body).is_err() => &[400],
                "application/x-www-form-urlencoded" => &[400, 403],
                _ => &[415],
            };
            assert!(
                expected.contains(&status),
                "round {round}: {status} for {content_type:?}, signature {sig:?}"
            );
            refused += 1;
        }
    }
    let (calls,): (i64,) = db
        .run(|pool| sqlx::query_as("SELECT COUNT(DISTINCT call_id) FROM call_events").fetch_one(pool))
        .await
        .unwrap();
    assert_eq!(calls, accepted, "every accepted webhook recorded, no refused one");
    assert_eq!(refused + accepted, 400);
}
