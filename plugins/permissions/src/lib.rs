//! `callplane-plugin-permissions`: tenants (businesses), users, roles → pages, sessions, and the
//! session provider the host uses to enforce `Authenticated`, `Admin` and `PageAccess(page)`.
//!
//! * Passwords: PBKDF2-HMAC-SHA256 through `ring` ([`password`]), per-user random salt, 600,000
//!   iterations, parameters stored with the hash and raised on the next successful login.
//! * Sessions: 256-bit random tokens, stored only as their SHA-256, with an expiry, revoked on
//!   logout ([`session`]). Sent as an `HttpOnly`, `SameSite=Strict` cookie (and `Secure` behind
//!   https) and returned for `Authorization: Bearer`.
//! * Every query a handler runs is scoped to the caller's business: another tenant's ids are 404.
//! * Failed logins are throttled per account and per client address, across instances (the
//!   counters live in the database).

pub mod cli;
mod handlers;
mod migrations;
pub mod password;
pub mod session;
mod store;

use callplane_plugin_api::openapi::RouteDoc;
use callplane_plugin_api::{Access, Capability, RegisterError, Registrar, RoutePlugin};

pub use handlers::{ACCOUNT_FAILURES, CLIENT_FAILURES, THROTTLE_WINDOW_SECS, throttle_bucket};
pub use store::{Attempt, Store};

/// The plugin, as the host links it (and as tests mount it with `testing::TestHost`).
pub const PLUGIN: RoutePlugin = RoutePlugin {
    name: "permissions",
    version: env!("CARGO_PKG_VERSION"),
    summary: "tenants, users, page access",
    requires: &[],
    critical: true,
    register,
    commands: &[cli::ADMIN],
    config: &[],
    deploy_checks: &[],
};

inventory::submit! { PLUGIN }

/// The roles, most powerful first.
pub const ROLES: [&str; 4] = ["owner", "admin", "agent", "viewer"];

/// The pages a role can be granted.
pub const PAGES: [&str; 4] = ["calendar", "calls", "leads", "settings"];

/// Roles that may use the admin API (`Access::Admin`).
pub const ADMIN_ROLES: [&str; 2] = ["owner", "admin"];

/// The grants a new business starts with.
pub fn default_pages(role: &str) -> &'static [&'static str] {
    match role {
        "owner" | "admin" => &PAGES,
        "agent" => &["calendar", "calls", "leads"],
        _ => &["calendar", "leads"],
    }
}

/// What a grant of a page allows: reading it (`GET`), or changing it too (`POST`, `PUT`,
/// `PATCH`, `DELETE` under `PageAccess(page)`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Read only.
    Read,
    /// Read and change.
    Write,
}

impl Level {
    /// `read` or `write`, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
        }
    }

    /// The stored text back as a level (anything unknown reads as `read`: never more than granted).
    pub fn parse(text: &str) -> Self {
        if text == "write" { Self::Write } else { Self::Read }
    }

    /// The level a new business grants `role` its default pages at: viewers read, others write.
    pub fn default_for(role: &str) -> Self {
        if role == "viewer" { Self::Read } else { Self::Write }
    }
}

/// Declares the routes, the session provider and the migrations (the `admin` command is
/// [`cli::ADMIN`], in the submission).
///
/// # Errors
/// Never: everything it needs is validated configuration.
pub fn register(reg: &mut Registrar<'_>) -> Result<(), RegisterError> {
    let store = Store::new(reg.db().clone());
    let secure_cookie = reg.settings().public_base_url.starts_with("https://");
    let origin = session::origin_of(&reg.settings().public_base_url);
    reg.migrations(migrations::MIGRATIONS);
    reg.provide_access(
        Capability::Sessions,
        session::SessionProvider::new(store.clone(), origin),
    );
    reg.state(handlers::AuthState {
        store: store.clone(),
        secure_cookie,
    });
    reg.post("/api/auth/login", Access::Public, handlers::login)
        .doc(
            RouteDoc::new("Sign in: a session token (also set as the session cookie)")
                .json_body::<handlers::LoginBody>()
                .object(200, "the session: token, expiry, user")
                .error(401, "wrong e-mail or password")
                .error(415, "the body is not JSON")
                .error(422, "the values are refused")
                .error(429, "too many failed sign-ins: wait Retry-After"),
        )
        .post("/api/auth/logout", Access::Authenticated, handlers::logout)
        .doc(RouteDoc::new("Sign out: ends the session").empty(204, "signed out"))
        .get("/api/me", Access::Authenticated, handlers::me)
        .doc(RouteDoc::new("The signed-in user, their business, role and pages").object(200, "the user"))
        .get("/api/users", Access::Admin, handlers::list_users)
        .doc(RouteDoc::new("The business's users").object(200, "{\"users\": […]}"))
        .post("/api/users", Access::Admin, handlers::create_user)
        .doc(
            RouteDoc::new("Create a user of the business")
                .json_body::<handlers::NewUser>()
                .object(201, "the user")
                .link(
                    201,
                    ("POST", "/api/users/{user_id}/deactivate"),
                    "user_id",
                    "$response.body#/id",
                )
                .error(409, "the e-mail is taken"),
        )
        .post(
            "/api/users/{user_id}/deactivate",
            Access::Admin,
            handlers::deactivate_user,
        )
        .doc(RouteDoc::new("Deactivate a user and end their sessions").empty(204, "deactivated"))
        .get("/api/permissions/roles", Access::Admin, handlers::list_grants)
        .doc(RouteDoc::new("Each role's pages and levels").object(200, "roles, levels and pages"))
        .put("/api/permissions/roles/{role}", Access::Admin, handlers::set_grants)
        .doc(
            RouteDoc::new("Set a role's pages (each read or write)")
                .json_body::<handlers::Grants>()
                .object(200, "the role's pages"),
        );
    Ok(())
}

/// Whether `number` is an E.164 phone number: `+`, a non-zero digit, at most 15 digits in all.
pub fn is_e164(number: &str) -> bool {
    number
        .strip_prefix('+')
        .is_some_and(|d| (2..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()) && !d.starts_with('0'))
}

/// Normalises and checks an e-mail address (lowercase, one `@`, a dotted domain, no spaces).
pub fn normalise_email(raw: &str) -> Option<String> {
    let email = raw.trim().to_lowercase();
    let (local, domain) = email.split_once('@')?;
    let ok = !local.is_empty()
        && email.len() <= 254
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    ok.then_some(email)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e164_numbers() {
        for ok in ["+972501234567", "+14155550100", "+44"] {
            assert!(is_e164(ok), "{ok}");
        }
        for bad in [
            "972501234567",
            "+0123",
            "+1",
            "+1234567890123456",
            "+1 415",
            "+1-415",
            "",
            "+",
        ] {
            assert!(!is_e164(bad), "{bad}");
        }
    }

    #[test]
    fn emails() {
        assert_eq!(
            normalise_email(" Dana@Example.COM ").as_deref(),
            Some("dana@example.com")
        );
        for bad in ["", "no-at", "@x.com", "a@b", "a@.com", "a@b.", "a b@c.com", "a@b@c.com"] {
            assert!(normalise_email(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn default_grants() {
        assert_eq!(default_pages("owner"), PAGES);
        assert!(!default_pages("agent").contains(&"settings"));
        assert!(!default_pages("viewer").contains(&"calls"));
        assert_eq!(Level::default_for("viewer"), Level::Read);
        assert_eq!(Level::default_for("agent"), Level::Write);
        assert_eq!(Level::parse("nonsense"), Level::Read, "never more than granted");
    }
}
