//! Access policies, the capabilities that enforce them, and the authenticated principal.

use std::fmt;
use std::future::{Ready, ready};

use actix_web::dev::{Payload, ServiceRequest};
use actix_web::{FromRequest, HttpMessage, HttpRequest, HttpResponse};
use futures_util::future::LocalBoxFuture;

use crate::ApiError;

/// Who may call a route. Every route declares exactly one; the host enforces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Access {
    /// Anyone (health probes, login). Under `/api/` only for allow-listed routes (CP009).
    Public,
    /// Requests signed by Twilio (`X-Twilio-Signature`). Required under `/webhook/` (CP007).
    TwilioSignature,
    /// A session whose role is granted this page (`calendar`, `calls`, `leads`, `settings`, …).
    PageAccess(&'static str),
    /// Any valid session.
    Authenticated,
    /// A session with an administrative role in its business.
    Admin,
}

impl Access {
    /// The capability that enforces this policy; `None` for [`Access::Public`].
    pub fn capability(&self) -> Option<Capability> {
        match self {
            Self::Public => None,
            Self::TwilioSignature => Some(Capability::TwilioSignature),
            Self::PageAccess(_) | Self::Authenticated | Self::Admin => Some(Capability::Sessions),
        }
    }

    /// The page of a [`Access::PageAccess`] policy.
    pub fn page(&self) -> Option<&'static str> {
        match self {
            Self::PageAccess(page) => Some(page),
            _ => None,
        }
    }
}

/// Whether a request with `method` changes state: anything but `GET`, `HEAD` and `OPTIONS`. Such a
/// request needs its `PageAccess` page at the write level (a grant can be read-only), and a
/// cookie-authenticated one must come from the application's origin.
pub fn changes_state(method: &actix_web::http::Method) -> bool {
    use actix_web::http::Method;
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Public => f.write_str("Public"),
            Self::TwilioSignature => f.write_str("TwilioSignature"),
            Self::PageAccess(page) => write!(f, "PageAccess({page})"),
            Self::Authenticated => f.write_str("Authenticated"),
            Self::Admin => f.write_str("Admin"),
        }
    }
}

/// A kind of access check that exactly one plugin provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Capability {
    /// Verifies Twilio webhook signatures ([`Access::TwilioSignature`]).
    TwilioSignature,
    /// Resolves sessions and page grants ([`Access::Authenticated`], [`Access::Admin`],
    /// [`Access::PageAccess`]).
    Sessions,
}

impl Capability {
    /// A human description, used in findings.
    pub fn describe(self) -> &'static str {
        match self {
            Self::TwilioSignature => "Twilio signature verification",
            Self::Sessions => "session and page-access resolution",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::TwilioSignature => "twilio_signature",
            Self::Sessions => "sessions",
        })
    }
}

/// Enforces the access policies of one [`Capability`]. The host calls it before the handler of
/// every route whose policy needs the capability.
///
/// On success the provider may leave what it learned in the request extensions (for sessions, a
/// [`Principal`]). On refusal it returns the complete response to send (401/403 JSON for APIs, 403
/// TwiML for webhooks); the handler is not called.
pub trait AccessProvider: Send + Sync + 'static {
    /// Decides whether `req` satisfies `access`. May read the body, as long as it puts it back
    /// (`ServiceRequest::set_payload`).
    fn authorize<'a>(
        &'a self,
        req: &'a mut ServiceRequest,
        access: Access,
    ) -> LocalBoxFuture<'a, Result<(), HttpResponse>>;
}

/// The authenticated caller of a session-protected route, placed in the request extensions by the
/// `Sessions` provider. Extract it in a handler: `async fn h(who: Principal) -> …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user's id.
    pub user_id: i64,
    /// The user's business (tenant). Every query a handler runs is scoped to it.
    pub business_id: i64,
    /// The user's e-mail address.
    pub email: String,
    /// The user's role (`owner`, `admin`, `agent`, `viewer`).
    pub role: String,
    /// The pages the role is granted, to read or to change.
    pub pages: Vec<String>,
    /// The pages among `pages` the role may change (a `POST`, `PUT`, `PATCH` or `DELETE` route
    /// under `PageAccess(page)` needs the page here; a `GET` needs it in `pages`).
    pub write_pages: Vec<String>,
    /// Whether the role may use the admin API.
    pub admin: bool,
}

impl FromRequest for Principal {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(
            req.extensions()
                .get::<Principal>()
                .cloned()
                .ok_or_else(|| ApiError::unauthorized("a valid session is required")),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_map_to_capabilities() {
        assert_eq!(Access::Public.capability(), None);
        assert_eq!(Access::TwilioSignature.capability(), Some(Capability::TwilioSignature));
        assert_eq!(Access::PageAccess("calendar").capability(), Some(Capability::Sessions));
        assert_eq!(Access::Admin.capability(), Some(Capability::Sessions));
        assert_eq!(Access::PageAccess("calendar").to_string(), "PageAccess(calendar)");
        assert_eq!(Access::PageAccess("calendar").page(), Some("calendar"));
    }
}
