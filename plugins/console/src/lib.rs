//! `callplane-plugin-console`: the operator console. A business's calls arriving live, any call's
//! timeline and verdict (what `callplane trace` shows, in a page), and outbound calls placed from
//! a form.
//!
//! * Pages are rendered on the server with [`maud`] (compile-time templates, every value escaped)
//!   and read without JavaScript; one small script, embedded in the binary like the style sheet,
//!   signs in and out, refreshes the live list and an open call, places calls, and shows times in
//!   the browser's time zone. Nothing is fetched from another origin.
//! * Every page but the sign-in page is behind `PageAccess("calls")`: a visit without a session is
//!   redirected to `/console/login`, a role without the page gets 403, and another business's
//!   call is 404, like one that does not exist.
//! * The calls come from the [`CallBook`] the twilio plugin offers (this crate imports nothing
//!   from it); outbound calls go through the twilio plugin's own `POST /api/calls/outbound`,
//!   called by the page with the session cookie.
//! * Every answer carries a Content-Security-Policy that allows scripts, styles and connections
//!   from this origin only (no inline script), and `X-Frame-Options: DENY`.

mod assets;
mod handlers;
mod pages;

pub use pages::CSP;

use callplane_plugin_api::openapi::RouteDoc;
use callplane_plugin_api::{Access, CallBook, RegisterError, Registrar, RoutePlugin};

/// The plugin, as the host links it (and as tests mount it with `testing::TestHost`).
pub const PLUGIN: RoutePlugin = RoutePlugin {
    name: "console",
    version: env!("CARGO_PKG_VERSION"),
    summary: "operator console at /console/calls",
    requires: &["permissions", "twilio"],
    critical: false,
    register,
    commands: &[],
    config: &[],
    deploy_checks: &[],
};

inventory::submit! { PLUGIN }

/// The page every console page belongs to.
pub const PAGE: &str = "calls";
/// The sign-in page.
pub const SIGN_IN: &str = "/console/login";

/// Declares the pages, the fragments the script refreshes them with, and the two assets.
///
/// # Errors
/// Never: the plugin has no configuration.
pub fn register(reg: &mut Registrar<'_>) -> Result<(), RegisterError> {
    let book = reg.need::<dyn CallBook>();
    reg.state(handlers::Console { book });
    let page = Access::PageAccess(PAGE);
    let html = |summary: &str| RouteDoc::new(summary).text(200, "the page", "text/html");
    let to_sign_in = "no session: to the sign-in page, with the page asked for in ?next=";
    let unavailable = "the calls cannot be read right now: a page saying so (Retry-After)";
    reg.get("/console", Access::Public, handlers::home)
        .doc(RouteDoc::new("The console: to its live list").empty(308, "to /console/calls"))
        .get(SIGN_IN, Access::Public, handlers::sign_in)
        .doc(html(
            "The console's sign-in page (it signs in through POST /api/auth/login)",
        ))
        .get("/console/assets/console.css", Access::Public, assets::css)
        .doc(RouteDoc::new("The console's style sheet").text(200, "the style sheet", "text/css"))
        .get("/console/assets/console.js", Access::Public, assets::js)
        .doc(RouteDoc::new("The console's script").text(200, "the script", "text/javascript"))
        .get("/console/calls", page, handlers::live)
        .sign_in(SIGN_IN)
        .doc(
            html("The console's live list: the business's recent calls with their verdicts")
                .text(400, "a filter is refused: the page again, saying which", "text/html")
                .text(503, unavailable, "text/html")
                .empty(303, to_sign_in),
        )
        .get("/console/live", page, handlers::live_rows)
        .doc(
            RouteDoc::new("The live list's rows (the page's script refreshes the list with them)")
                .text(200, "the rows, tagged (ETag)", "text/html")
                .empty(304, "the rows have not changed since the If-None-Match tag"),
        )
        .get("/console/calls/{call}", page, handlers::call)
        .sign_in(SIGN_IN)
        .doc(
            html("The console's page of a call (CallSid or REQ id): its timeline and verdict")
                .text(404, "not one of the business's calls: a page saying so", "text/html")
                .text(503, unavailable, "text/html")
                .empty(303, to_sign_in),
        )
        .get("/console/calls/{call}/trace", page, handlers::call_trace)
        .doc(
            RouteDoc::new("The changing part of a call's page (the page's script refreshes it)")
                .text(200, "the timeline and verdict, tagged (ETag)", "text/html")
                .empty(304, "nothing has changed since the If-None-Match tag"),
        )
        .get("/console/outbound", page, handlers::outbound)
        .sign_in(SIGN_IN)
        .doc(
            html("The console's form that places an outbound call (through POST /api/calls/outbound)")
                .empty(303, to_sign_in),
        );
    Ok(())
}
