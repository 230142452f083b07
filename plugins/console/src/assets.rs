//! The style sheet and the script, embedded in the binary: the console works on an isolated
//! network, and a page names each asset with a hash of its content, so a browser may keep it for
//! a year and still never runs a stale script after an upgrade.

use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::sync::LazyLock;

use actix_web::HttpResponse;
use actix_web::http::header;

const CSS: &str = include_str!("../assets/console.css");
const JS: &str = include_str!("../assets/console.js");

/// `?v=` and a hash of `content`: a new build with a changed asset gets a new URL.
fn versioned(path: &str, content: &str) -> String {
    format!("{path}?v={}", fingerprint(content))
}

/// A stable 64-bit hash of `content`, in hex (the same in every process of one build: entity tags
/// agree across instances behind a load balancer).
pub(crate) fn fingerprint(content: &str) -> String {
    let mut hasher = DefaultHasher::new();
    content.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// The style sheet's URL.
pub(crate) static CSS_URL: LazyLock<String> = LazyLock::new(|| versioned("/console/assets/console.css", CSS));
/// The script's URL.
pub(crate) static JS_URL: LazyLock<String> = LazyLock::new(|| versioned("/console/assets/console.js", JS));

fn asset(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, content_type))
        .insert_header((header::CACHE_CONTROL, "public, max-age=31536000, immutable"))
        .insert_header((header::CONTENT_SECURITY_POLICY, crate::pages::CSP))
        .body(body)
}

/// `GET /console/assets/console.css`.
pub(crate) async fn css() -> HttpResponse {
    asset("text/css; charset=utf-8", CSS)
}

/// `GET /console/assets/console.js`.
pub(crate) async fn js() -> HttpResponse {
    asset("text/javascript; charset=utf-8", JS)
}
