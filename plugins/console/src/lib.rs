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
    reg.get("/console", Access::Public, handlers::home)
        .get(SIGN_IN, Access::Public, handlers::sign_in)
        .get("/console/assets/console.css", Access::Public, assets::css)
        .get("/console/assets/console.js", Access::Public, assets::js)
        .get("/console/calls", page, handlers::live)
        .sign_in(SIGN_IN)
        .get("/console/live", page, handlers::live_rows)
        .get("/console/calls/{id}", page, handlers::call)
        .sign_in(SIGN_IN)
        .get("/console/calls/{id}/trace", page, handlers::call_trace)
        .get("/console/outbound", page, handlers::outbound)
        .sign_in(SIGN_IN);
    Ok(())
}
