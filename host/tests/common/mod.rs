//! Helpers shared by the real-binary tests: Twilio signing, form bodies, row counts.

// Each test file uses its own subset.
#![allow(dead_code)]

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
