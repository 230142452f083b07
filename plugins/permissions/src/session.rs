//! Session tokens and the `Sessions` access provider.

use actix_web::cookie::{Cookie, SameSite};
use actix_web::dev::ServiceRequest;
use actix_web::http::{StatusCode, header};
use actix_web::{HttpMessage, HttpResponse, ResponseError as _};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use callplane_plugin_api::{Access, AccessProvider, ApiError};
use futures_util::future::LocalBoxFuture;
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};

use crate::Store;

/// The session cookie.
pub const COOKIE: &str = "callplane_session";
/// How long a session lasts.
pub const SESSION_TTL_SECS: i64 = 12 * 60 * 60;

/// Seconds since the Unix epoch.
pub use callplane_plugin_api::timestamps::now;

/// A new session token: 256 random bits, URL-safe base64 (43 characters).
///
/// # Panics
/// When the operating system's random generator fails.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the OS random generator works");
    B64URL.encode(bytes)
}

/// What the database stores instead of the token: its SHA-256, hex.
pub fn token_hash(token: &str) -> String {
    digest::digest(&digest::SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The session cookie carrying `token` (`HttpOnly`, `SameSite=Strict`, `Secure` when served over
/// https), or an expired one that clears it when `token` is `None`.
pub fn cookie(token: Option<&str>, secure: bool) -> Cookie<'static> {
    let mut cookie = Cookie::build(COOKIE, token.unwrap_or_default().to_owned())
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure)
        .finish();
    match token {
        Some(_) => cookie.set_max_age(actix_web::cookie::time::Duration::seconds(SESSION_TTL_SECS)),
        None => cookie.make_removal(),
    }
    cookie
}

/// `scheme://host[:port]` of the public base URL: the only origin allowed to send cookie-authenticated
/// state-changing requests.
pub fn origin_of(public_base_url: &str) -> String {
    url::Url::parse(public_base_url).map_or_else(|_| public_base_url.to_owned(), |u| u.origin().ascii_serialization())
}

/// The hash of the session token a request was authenticated with (request extension).
#[derive(Debug, Clone)]
pub struct SessionTokenHash(pub String);

/// Resolves `Authorization: Bearer <token>` or the session cookie into a
/// [`callplane_plugin_api::Principal`], and enforces the policy: 401 without a valid session, 403
/// when the role lacks the page (or is not an admin). A cookie-authenticated request that changes
/// state must come from the public origin (`Origin` header); bearer requests are exempt.
#[derive(Debug, Clone)]
pub struct SessionProvider {
    store: Store,
    origin: String,
}

impl SessionProvider {
    /// A provider over `store`, accepting cookie requests from `origin`.
    pub fn new(store: Store, origin: String) -> Self {
        Self { store, origin }
    }
}

fn deny(status: StatusCode, code: &str, message: &str) -> HttpResponse {
    ApiError::response(status, code, message)
}

impl AccessProvider for SessionProvider {
    fn authorize<'a>(
        &'a self,
        req: &'a mut ServiceRequest,
        access: Access,
    ) -> LocalBoxFuture<'a, Result<(), HttpResponse>> {
        Box::pin(async move {
            let bearer = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
                .map(|t| t.trim().to_owned());
            let (token, from_cookie) = match bearer {
                Some(token) => (token, false),
                None => match req.cookie(COOKIE) {
                    Some(c) if !c.value().is_empty() => (c.value().to_owned(), true),
                    _ => {
                        return Err(deny(
                            StatusCode::UNAUTHORIZED,
                            "unauthenticated",
                            "a valid session is required",
                        ));
                    }
                },
            };
            if token.len() != 43 {
                return Err(deny(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "a valid session is required",
                ));
            }
            let changes_state = callplane_plugin_api::changes_state(req.method());
            if from_cookie && changes_state {
                // Exactly one Origin, and ours: with two, which one a check reads is arbitrary.
                let mut origins = req.headers().get_all(header::ORIGIN);
                let origin = match (origins.next(), origins.next()) {
                    (Some(one), None) => one.to_str().ok(),
                    _ => None,
                };
                if origin != Some(self.origin.as_str()) {
                    return Err(deny(
                        StatusCode::FORBIDDEN,
                        "bad_origin",
                        "cookie-authenticated requests that change state must come from the application's origin",
                    ));
                }
            }
            let hash = token_hash(&token);
            let principal = match self.store.session_principal(&hash, now()).await {
                Ok(Some(principal)) => principal,
                Ok(None) => {
                    return Err(deny(
                        StatusCode::UNAUTHORIZED,
                        "unauthenticated",
                        "the session is invalid or expired",
                    ));
                }
                Err(error) => return Err(ApiError::from(error).error_response()),
            };
            // A page route that changes state needs the page at the write level.
            let allowed = match access {
                Access::PageAccess(page) if changes_state => principal.write_pages.iter().any(|p| p == page),
                Access::PageAccess(page) => principal.pages.iter().any(|p| p == page),
                Access::Admin => principal.admin,
                Access::Authenticated => true,
                Access::Public | Access::TwilioSignature => false,
            };
            if !allowed {
                let message = match access {
                    Access::PageAccess(page) if principal.pages.iter().any(|p| p == page) => {
                        format!(
                            "your role ({}) may read the {page} page but not change it",
                            principal.role
                        )
                    }
                    Access::PageAccess(page) => {
                        format!("your role ({}) has no access to the {page} page", principal.role)
                    }
                    _ => format!("your role ({}) may not use the admin API", principal.role),
                };
                return Err(deny(StatusCode::FORBIDDEN, "forbidden", &message));
            }
            req.extensions_mut().insert(SessionTokenHash(hash));
            req.extensions_mut().insert(principal);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_256_bit_and_stored_hashed() {
        let a = new_token();
        assert_eq!(a.len(), 43);
        assert_ne!(a, new_token());
        let hash = token_hash(&a);
        assert_eq!(hash.len(), 64);
        assert!(!hash.contains(&a));
    }

    #[test]
    fn cookies_are_locked_down() {
        let set = cookie(Some("tok"), true).to_string();
        for part in [
            "callplane_session=tok",
            "HttpOnly",
            "SameSite=Strict",
            "Secure",
            "Path=/",
            "Max-Age=43200",
        ] {
            assert!(set.contains(part), "{part} missing in {set}");
        }
        assert!(!cookie(Some("tok"), false).to_string().contains("Secure"));
        assert!(cookie(None, false).to_string().contains("Max-Age=0"));
    }

    #[test]
    fn origins() {
        assert_eq!(origin_of("https://voice.example.com/base"), "https://voice.example.com");
        assert_eq!(origin_of("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
        assert_eq!(origin_of("https://x.example.com:443"), "https://x.example.com");
    }
}
