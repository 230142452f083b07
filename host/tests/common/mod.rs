//! Helpers shared by the real-binary tests: Twilio signing, form bodies, row counts.

// Each test file uses its own subset.
#![allow(dead_code)]

use actix_web::{App, HttpResponse, HttpServer, web};
use callplane_e2e::harness::{Reply, Sandbox, Server};
use callplane_plugin_api::storage::{Db, sqlx};

/// The signature Twilio would send for `url` and `params`.
pub(crate) fn sign(token: &str, url: &str, params: &[(&str, &str)]) -> String {
    let params: Vec<(String, String)> = params.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    callplane_plugin_twilio::signature::compute(token, url, &params)
}

/// `params` as an `application/x-www-form-urlencoded` body.
pub(crate) fn form(params: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish()
}

/// Posts a webhook to `server`, signed over `public` + `path` with `token`, as Twilio does.
///
/// # Errors
/// A transport error.
pub(crate) fn post_signed(
    server: &Server,
    public: &str,
    token: &str,
    path: &str,
    params: &[(&str, &str)],
) -> Result<Reply, ureq::Error> {
    let signature = sign(token, &format!("{public}{path}"), params);
    server.try_request(
        "POST",
        path,
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("x-twilio-signature", &signature),
        ],
        Some(&form(params)),
    )
}

/// Rows in `table` of the sandbox's SQLite database.
pub(crate) fn sqlite_rows(sandbox: &Sandbox, table: &str) -> i64 {
    let url = format!("sqlite://{}/callplane.db", sandbox.path().display());
    let sql = format!("SELECT COUNT(*) FROM {table}");
    actix_web::rt::System::new().block_on(async move {
        let db = Db::connect_lazy(&url).expect("a SQLite URL");
        let (n,): (i64,) = db
            .run(|pool| sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_one(pool))
            .await
            .expect("count rows");
        db.close().await;
        n
    })
}

/// The CallSid [`fake_twilio`] gives every call it places.
pub(crate) const PLACED: &str = "CAe2ee2ee2ee2ee2ee2ee2ee2ee2ee2ee2";

/// A fake Twilio REST API on its own thread: a call to `+15005550001` is refused with 21211 (an
/// invalid number, as Twilio's test credentials answer it), any other is placed as [`PLACED`].
/// Returns its base URL.
pub(crate) fn fake_twilio() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port for the fake");
    let addr = listener.local_addr().expect("the fake's address");
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            HttpServer::new(|| {
                App::new().default_service(web::to(|body: web::Bytes| async move {
                    if String::from_utf8_lossy(&body).contains("To=%2B15005550001") {
                        HttpResponse::BadRequest().json(serde_json::json!({
                            "code": 21211,
                            "message": "The 'To' number +15005550001 is not a valid phone number.",
                            "more_info": "https://www.twilio.com/docs/errors/21211",
                            "status": 400
                        }))
                    } else {
                        HttpResponse::Created().json(serde_json::json!({ "sid": PLACED, "status": "queued" }))
                    }
                }))
            })
            .workers(1)
            .listen(listener)
            .expect("the fake listens")
            .run()
            .await
            .expect("the fake runs");
        });
    });
    format!("http://{addr}")
}
