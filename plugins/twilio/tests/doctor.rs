//! `callplane twilio doctor` against a fake Twilio REST API (a real HTTP server in the test):
//! numbers configured right, a wrong Voice URL and method, a missing status callback and fallback,
//! a number not in the account, an `http` public URL; `--fix` through the API; refused
//! credentials and an API that is down.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use actix_web::{HttpRequest, HttpResponse, HttpServer, web};
use callplane_plugin_api::Settings;
use callplane_plugin_api::storage::Db;
use callplane_plugin_api::testing::TestHost;
use callplane_plugin_permissions::Store;
use callplane_plugin_twilio::doctor::{DoctorError, Severity, examine};
use serde_json::{Value, json};

const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "doctor-test-token";
/// Refuses connections at once: the public URL's `/livez` cannot answer (a warning).
const PUBLIC: &str = "https://127.0.0.1:9";
const FALLBACK: &str = "https://handler.twilio.com/twiml/EHfallback";
const RIGHT: &str = "+15005550006";
const WRONG_URL: &str = "+15005550007";
const NO_CALLBACK: &str = "+15005550008";
const NOT_OURS: &str = "+15005550009";

type Numbers = Arc<Mutex<BTreeMap<String, Value>>>;

fn record(sid: &str, number: &str, voice: (&str, &str), callback: Option<&str>, fallback: Option<&str>) -> Value {
    json!({
        "sid": sid, "account_sid": ACCOUNT, "phone_number": number,
        "voice_method": voice.0, "voice_url": voice.1,
        "status_callback": callback, "status_callback_method": "POST",
        "voice_fallback_url": fallback, "voice_fallback_method": "POST",
        "friendly_name": number, "capabilities": {"voice": true},
    })
}

fn numbers() -> Numbers {
    let inbound = format!("{PUBLIC}/webhook/incoming_call");
    let status = format!("{PUBLIC}/webhook/call_status");
    let all = [
        record("PN01", RIGHT, ("POST", &inbound), Some(&status), Some(FALLBACK)),
        record(
            "PN02",
            WRONG_URL,
            ("GET", "http://old.example.com/voice"),
            Some(&status),
            Some(FALLBACK),
        ),
        record("PN03", NO_CALLBACK, ("POST", &inbound), None, None),
    ];
    Arc::new(Mutex::new(
        all.into_iter()
            .map(|r| (r["sid"].as_str().unwrap().to_owned(), r))
            .collect(),
    ))
}

fn authorized(req: &HttpRequest) -> bool {
    use base64::Engine as _;
    let expected = base64::engine::general_purpose::STANDARD.encode(format!("{ACCOUNT}:{TOKEN}"));
    req.headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Basic {expected}"))
}

fn refused() -> HttpResponse {
    HttpResponse::Unauthorized().json(json!({
        "code": 20003, "message": "Authenticate", "more_info": "https://www.twilio.com/docs/errors/20003", "status": 401
    }))
}

/// The fake API: `IncomingPhoneNumbers` list (filtered by `PhoneNumber`) and update, for
/// [`ACCOUNT`] with [`TOKEN`] only. Returns its base URL.
fn fake_api(numbers: Numbers) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let data = web::Data::new(numbers);
            HttpServer::new(move || {
                actix_web::App::new()
                    .app_data(data.clone())
                    .route(
                        "/2010-04-01/Accounts/{account}/IncomingPhoneNumbers.json",
                        web::get().to(
                            |req: HttpRequest,
                             path: web::Path<String>,
                             query: web::Query<BTreeMap<String, String>>,
                             numbers: web::Data<Numbers>| async move {
                                if !authorized(&req) || *path != ACCOUNT {
                                    return refused();
                                }
                                let wanted = query.get("PhoneNumber").cloned().unwrap_or_default();
                                let found: Vec<Value> = numbers
                                    .lock()
                                    .unwrap()
                                    .values()
                                    .filter(|r| r["phone_number"] == wanted.as_str())
                                    .cloned()
                                    .collect();
                                HttpResponse::Ok().json(json!({ "incoming_phone_numbers": found, "page": 0 }))
                            },
                        ),
                    )
                    .route(
                        "/2010-04-01/Accounts/{account}/IncomingPhoneNumbers/{sid}.json",
                        web::post().to(
                            |req: HttpRequest,
                             path: web::Path<(String, String)>,
                             form: web::Form<BTreeMap<String, String>>,
                             numbers: web::Data<Numbers>| async move {
                                if !authorized(&req) || path.0 != ACCOUNT {
                                    return refused();
                                }
                                let mut all = numbers.lock().unwrap();
                                let Some(record) = all.get_mut(&path.1) else {
                                    return HttpResponse::NotFound()
                                        .json(json!({"code": 20404, "message": "not found"}));
                                };
                                for (field, value) in form.iter() {
                                    let key = match field.as_str() {
                                        "VoiceUrl" => "voice_url",
                                        "VoiceMethod" => "voice_method",
                                        "StatusCallback" => "status_callback",
                                        "StatusCallbackMethod" => "status_callback_method",
                                        "VoiceFallbackUrl" => "voice_fallback_url",
                                        _ => {
                                            return HttpResponse::BadRequest()
                                                .json(json!({"code": 20001, "message": field}));
                                        }
                                    };
                                    record[key] = json!(value);
                                }
                                HttpResponse::Ok().json(record.clone())
                            },
                        ),
                    )
            })
            .workers(1)
            .listen(listener)
            .unwrap()
            .run()
            .await
            .unwrap();
        });
    });
    format!("http://{addr}")
}

struct Fixture {
    _dir: tempfile::TempDir,
    db: Db,
    settings: Settings,
}

/// A database with the four business numbers, and settings pointing at `api` with `keys`.
async fn fixture(api: &str, public: &str, keys: &[(&str, &str)]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::connect_lazy(&format!("sqlite://{}/t.db", dir.path().display())).unwrap();
    let mut settings = Settings {
        public_base_url: public.to_owned(),
        ..Settings::default()
    };
    settings
        .set("twilio", "spool_dir", dir.path().join("spool").display().to_string())
        .set("twilio", "account_sid", ACCOUNT)
        .set("twilio", "auth_token", TOKEN)
        .set("twilio", "api_base", api);
    for (key, value) in keys {
        settings.set("twilio", key, *value);
    }
    let twilio = settings.plugins.entry("twilio".to_owned()).or_default();
    for key in callplane_plugin_twilio::config::KEYS {
        twilio.fill(key);
    }
    let _host = TestHost::new(
        settings.clone(),
        db.clone(),
        &[&callplane_plugin_permissions::PLUGIN, &callplane_plugin_twilio::PLUGIN],
    )
    .await;
    let store = Store::new(db.clone());
    for (i, number) in [RIGHT, WRONG_URL, NO_CALLBACK, NOT_OURS].into_iter().enumerate() {
        store
            .create_business(&format!("B{i}"), number, "hello", None, 1)
            .await
            .unwrap();
    }
    Fixture {
        _dir: dir,
        db,
        settings,
    }
}

fn problems(report: &callplane_plugin_twilio::doctor::Report) -> Vec<(String, Severity, String)> {
    report
        .findings
        .iter()
        .map(|f| (f.number.clone().unwrap_or_default(), f.severity, f.problem.clone()))
        .collect()
}

#[actix_rt::test]
async fn every_misconfiguration_is_one_line_with_its_fix_and_fix_repairs_what_the_api_can() {
    let state = numbers();
    let api = fake_api(state.clone());
    let f = fixture(&api, PUBLIC, &[]).await;

    let report = examine(&f.db, &f.settings, None, false).await.unwrap();
    assert_eq!(report.numbers, [RIGHT, WRONG_URL, NO_CALLBACK, NOT_OURS]);
    let found = problems(&report);
    let of = |number: &str| {
        found
            .iter()
            .filter(|p| p.0 == number)
            .map(|p| p.2.as_str())
            .collect::<Vec<_>>()
    };
    assert!(of(RIGHT).is_empty(), "{found:#?}");
    assert_eq!(of(WRONG_URL).len(), 1, "{found:#?}");
    assert!(
        of(WRONG_URL)[0]
            .contains("is GET http://old.example.com/voice; expected POST https://127.0.0.1:9/webhook/incoming_call"),
        "{found:#?}"
    );
    assert_eq!(of(NO_CALLBACK).len(), 2, "{found:#?}");
    assert!(of(NO_CALLBACK)[0].starts_with("no status callback"), "{found:#?}");
    assert!(of(NO_CALLBACK)[1].starts_with("no fallback URL"), "{found:#?}");
    assert_eq!(
        of(NOT_OURS),
        [format!(
            "is not a number of account {ACCOUNT}: Twilio routes its calls elsewhere"
        )]
    );
    let livez: Vec<_> = found.iter().filter(|p| p.0.is_empty()).collect();
    assert_eq!(livez.len(), 1, "{found:#?}");
    assert_eq!(livez[0].1, Severity::Warning, "an unreachable /livez only warns");
    assert_eq!(report.errors(), 4);
    assert!(report.changes.is_empty(), "nothing changes without --fix");
    let text = report.text();
    assert!(text.contains(&format!("[DOCTOR] ✅ {RIGHT}")), "{text}");
    assert!(
        text.contains(&format!("fix: callplane twilio doctor --number {WRONG_URL} --fix")),
        "{text}"
    );
    assert!(text.contains("4 problem(s), 1 warning(s), 0 change(s)"), "{text}");

    // --fix, with a fallback to set: every number of the account is right afterwards.
    let f = fixture(&api, PUBLIC, &[("voice_fallback_url", FALLBACK)]).await;
    let report = examine(&f.db, &f.settings, None, true).await.unwrap();
    let changed: Vec<(String, &str)> = report.changes.iter().map(|c| (c.number.clone(), c.field)).collect();
    assert_eq!(
        changed,
        [
            (WRONG_URL.to_owned(), "VoiceUrl"),
            (WRONG_URL.to_owned(), "VoiceMethod"),
            (NO_CALLBACK.to_owned(), "StatusCallback"),
            (NO_CALLBACK.to_owned(), "VoiceFallbackUrl"),
        ]
    );
    let left: Vec<_> = problems(&report)
        .into_iter()
        .filter(|p| p.1 == Severity::Error)
        .collect();
    assert_eq!(left.len(), 1, "only the number of another account is left: {left:#?}");
    assert_eq!(left[0].0, NOT_OURS);
    let stored = state.lock().unwrap();
    assert_eq!(stored["PN02"]["voice_url"], format!("{PUBLIC}/webhook/incoming_call"));
    assert_eq!(stored["PN02"]["voice_method"], "POST");
    assert_eq!(
        stored["PN03"]["status_callback"],
        format!("{PUBLIC}/webhook/call_status")
    );
    assert_eq!(stored["PN03"]["voice_fallback_url"], FALLBACK);
    assert!(
        report.text().contains(&format!(
            "[DOCTOR] 🔧 {WRONG_URL} VoiceUrl changed: http://old.example.com/voice → {PUBLIC}/webhook/incoming_call"
        )),
        "{}",
        report.text()
    );
}

#[actix_rt::test]
async fn one_number_an_http_public_url_and_a_fallback_on_our_own_host() {
    let state = numbers();
    state.lock().unwrap().get_mut("PN01").unwrap()["voice_fallback_url"] = json!("http://127.0.0.1:9/sorry");
    let api = fake_api(state);
    let f = fixture(&api, "http://127.0.0.1:9", &[]).await;
    let report = examine(&f.db, &f.settings, Some(RIGHT), false).await.unwrap();
    assert_eq!(report.numbers, [RIGHT]);
    let found = problems(&report);
    assert!(
        found
            .iter()
            .any(|p| p.0.is_empty() && p.1 == Severity::Error && p.2.contains("is not https")),
        "{found:#?}"
    );
    assert!(
        found
            .iter()
            .any(|p| p.0 == RIGHT && p.2.contains("on callplane's own host")),
        "{found:#?}"
    );
}

#[actix_rt::test]
async fn refused_credentials_and_an_api_that_is_down_are_said_plainly() {
    let api = fake_api(numbers());
    let f = fixture(&api, PUBLIC, &[("auth_token", "not-the-token")]).await;
    let error = examine(&f.db, &f.settings, None, false).await.unwrap_err();
    assert!(matches!(error, DoctorError::Credentials { status: 401, .. }), "{error}");
    let message = error.to_string();
    assert!(message.contains("code 20003: Authenticate"), "{message}");
    assert!(
        message.contains("check TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN"),
        "{message}"
    );
    assert!(!message.contains("not-the-token"), "never the token: {message}");

    let f = fixture("http://127.0.0.1:9", PUBLIC, &[]).await;
    let error = examine(&f.db, &f.settings, None, false).await.unwrap_err();
    assert!(matches!(error, DoctorError::Unreachable { .. }), "{error}");
    assert!(
        error
            .to_string()
            .starts_with("Twilio's API at http://127.0.0.1:9 cannot be used"),
        "{error}"
    );
}
