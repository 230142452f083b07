//! The HTTP handlers. Access is enforced by the host before any of these runs; each handler scopes
//! its queries to the caller's business.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};

use actix_web::http::StatusCode;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use callplane_plugin_api::telemetry::{ClientOrigin, Scheme};
use callplane_plugin_api::{ApiError, Principal};
use serde::Deserialize;
use serde_json::json;

use crate::password::{self, MAX_PASSWORD_LEN, MIN_PASSWORD_LEN, Verified};
use crate::session::{self, SESSION_TTL_SECS, SessionTokenHash};
use crate::store::{Store, StoreError};
use crate::{Level, PAGES, ROLES, normalise_email};

/// Failed logins allowed per account within [`THROTTLE_WINDOW_SECS`].
pub const ACCOUNT_FAILURES: i64 = 5;
/// Failed logins allowed per client address within [`THROTTLE_WINDOW_SECS`].
pub const CLIENT_FAILURES: i64 = 20;
/// The throttling window.
pub const THROTTLE_WINDOW_SECS: i64 = 15 * 60;

const BAD_CREDENTIALS: &str = "invalid e-mail address or password";

/// Handler state.
#[derive(Debug, Clone)]
pub(crate) struct AuthState {
    pub(crate) store: Store,
    /// The public base URL is https: cookies are always `Secure`.
    pub(crate) secure_cookie: bool,
}

impl AuthState {
    /// Whether the session cookie gets `Secure`: always behind an https public URL, and also when a
    /// trusted proxy says this client came over https.
    fn secure_cookie_for(&self, req: &HttpRequest) -> bool {
        self.secure_cookie
            || req
                .extensions()
                .get::<ClientOrigin>()
                .is_some_and(|o| o.scheme == Scheme::Https)
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Duplicate(what) => ApiError::conflict(format!("{what} already exists")),
            StoreError::NotFound => ApiError::not_found("no such resource"),
            StoreError::Database(e) => ApiError::database("[AUTH] sessions and accounts", &e),
        }
    }
}

/// `POST /api/auth/login`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoginBody {
    #[schema(format = Email)]
    email: String,
    password: String,
}

/// The client's throttling bucket: its address (under the trusted-proxy rules), an IPv6 address
/// by its /64 (one subscriber line or host usually holds a whole /64, so per-address buckets would
/// be unlimited).
fn client_of(req: &HttpRequest) -> String {
    let ip = req
        .extensions()
        .get::<ClientOrigin>()
        .map(|c| c.ip)
        .or_else(|| req.peer_addr().map(|a| a.ip()));
    ip.map_or_else(|| "unknown".to_owned(), throttle_bucket)
}

/// The throttling bucket of `ip`: an IPv4 address itself, an IPv6 address its /64.
pub fn throttle_bucket(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let prefix = Ipv6Addr::from(u128::from(v6) & !(u128::from(u64::MAX)));
            format!("{prefix}/64")
        }
    }
}

/// Records a failed attempt of `subject` (counted as failed until the password check succeeds)
/// and refuses with 429, forgetting the rows `recorded` and its own, when it is over `limit`.
async fn count_attempt(
    store: &Store,
    scope: &str,
    subject: &str,
    limit: i64,
    now: i64,
    recorded: &[i64],
) -> Result<i64, ApiError> {
    let attempt = store
        .record_failure(scope, subject, now, now - THROTTLE_WINDOW_SECS)
        .await?;
    if attempt.failures > limit {
        // A refused attempt is not a failure: it tried no password.
        store.forget_attempts(&[recorded, &[attempt.id]].concat()).await?;
        let retry = attempt
            .oldest
            .map_or(THROTTLE_WINDOW_SECS, |t| t + THROTTLE_WINDOW_SECS - now)
            .max(1);
        tracing::warn!(scope, subject = %subject, failures = attempt.failures - 1, "[AUTH] login throttled");
        return Err(ApiError::too_many_requests(
            "too many failed sign-in attempts; try again later",
            u64::try_from(retry).unwrap_or(1),
        ));
    }
    Ok(attempt.id)
}

/// `POST /api/auth/login {email, password}`: a session as an `HttpOnly` cookie and a bearer token.
pub(crate) async fn login(
    req: HttpRequest,
    state: web::Data<AuthState>,
    body: web::Json<LoginBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let now = session::now();
    let client = client_of(&req);
    let Some(email) = normalise_email(&body.email) else {
        return Err(ApiError::unprocessable("email is not a valid e-mail address"));
    };
    if body.password.len() > MAX_PASSWORD_LEN {
        return Err(ApiError::unprocessable(format!(
            "password is longer than {MAX_PASSWORD_LEN} bytes"
        )));
    }
    // Counted as a failure before the (slow) check, and the row forgiven by id on success:
    // parallel guesses cannot all slip under the limit while their checks run, and a success
    // forgives nothing but itself.
    let client_attempt = count_attempt(&state.store, "client", &client, CLIENT_FAILURES, now, &[]).await?;
    // (A success clears the account's failures, this one among them.)
    count_attempt(
        &state.store,
        "account",
        &email,
        ACCOUNT_FAILURES,
        now,
        &[client_attempt],
    )
    .await?;

    let credentials = state.store.credentials(&email).await?;
    let password = body.password;
    let check = credentials.clone();
    // 600,000 PBKDF2 rounds: off the worker thread. Unknown accounts cost the same time.
    // A hash with weaker parameters than today's is replaced on the way (same thread, same secret).
    let (verified, rehashed) = web::block(move || match &check {
        Some(c) => {
            let verified = password::verify(&password, &c.password_hash);
            (
                verified,
                (verified == Verified::YesRehash).then(|| password::hash(&password)),
            )
        }
        None => {
            password::burn(&password);
            (Verified::No, None)
        }
    })
    .await
    .map_err(|e| ApiError::internal(format!("password check: {e}")))?;
    let user = match credentials {
        Some(c) if c.active && verified != Verified::No => c,
        _ => {
            tracing::warn!(email = %email, "[AUTH] login failed");
            return Err(ApiError::unauthorized(BAD_CREDENTIALS));
        }
    };
    if let Some(hash) = rehashed {
        state.store.set_password_hash(user.user_id, &hash).await?;
        tracing::info!(
            user_id = user.user_id,
            "[AUTH] password hash upgraded to current parameters"
        );
    }
    // The account's owner proved the password: its failures are forgiven. The client's other
    // attempts (guesses at other accounts, say) stay counted.
    state
        .store
        .clear_failures("account", &email, now - THROTTLE_WINDOW_SECS)
        .await?;
    state.store.forget_attempts(&[client_attempt]).await?;
    let token = session::new_token();
    let expires_at = now + SESSION_TTL_SECS;
    state
        .store
        .create_session(&session::token_hash(&token), user.user_id, now, expires_at)
        .await?;
    let principal = state
        .store
        .session_principal(&session::token_hash(&token), now)
        .await?
        .ok_or_else(|| ApiError::internal("a session just created cannot be read back"))?;
    tracing::info!(
        user_id = principal.user_id,
        business_id = principal.business_id,
        "[AUTH] login"
    );
    Ok(HttpResponse::Ok()
        .cookie(session::cookie(Some(&token), state.secure_cookie_for(&req)))
        .json(json!({
            "token": token,
            "token_type": "Bearer",
            "expires_at": expires_at,
            "user": { "id": principal.user_id, "email": principal.email, "role": principal.role },
            "business_id": principal.business_id,
            "pages": principal.pages,
            "write_pages": principal.write_pages,
        })))
}

/// `POST /api/auth/logout`: revokes the session the request was authenticated with.
pub(crate) async fn logout(
    req: HttpRequest,
    who: Principal,
    state: web::Data<AuthState>,
) -> Result<HttpResponse, ApiError> {
    let hash = req.extensions().get::<SessionTokenHash>().cloned();
    if let Some(SessionTokenHash(hash)) = hash {
        state.store.revoke_session(&hash, session::now()).await?;
    }
    tracing::info!(user_id = who.user_id, business_id = who.business_id, "[AUTH] logout");
    Ok(HttpResponse::NoContent()
        .cookie(session::cookie(None, state.secure_cookie_for(&req)))
        .finish())
}

/// `GET /api/me`: the caller, their business, role and pages.
pub(crate) async fn me(who: Principal, state: web::Data<AuthState>) -> Result<HttpResponse, ApiError> {
    let business = state.store.business(who.business_id).await?;
    Ok(HttpResponse::Ok().json(json!({
        "user": { "id": who.user_id, "email": who.email },
        "business": { "id": business.id, "name": business.name, "phone_number": business.phone_number },
        "role": who.role,
        "pages": who.pages,
        "write_pages": who.write_pages,
        "admin": who.admin,
    })))
}

/// `GET /api/users`: the users of the caller's business.
pub(crate) async fn list_users(who: Principal, state: web::Data<AuthState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(json!({ "users": state.store.list_users(who.business_id).await? })))
}

/// `POST /api/users`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewUser {
    #[schema(format = Email)]
    email: String,
    password: String,
    #[schema(pattern = "^(owner|admin|agent|viewer)$")]
    role: String,
}

/// Validates a new password.
pub(crate) fn check_password(password: &str) -> Result<(), ApiError> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_LEN || password.len() > MAX_PASSWORD_LEN {
        return Err(ApiError::unprocessable(format!(
            "password must be {MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} bytes long"
        )));
    }
    Ok(())
}

/// `POST /api/users {email, password, role}`: a user in the caller's business.
pub(crate) async fn create_user(
    who: Principal,
    state: web::Data<AuthState>,
    body: web::Json<NewUser>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let email =
        normalise_email(&body.email).ok_or_else(|| ApiError::unprocessable("email is not a valid e-mail address"))?;
    if !ROLES.contains(&body.role.as_str()) {
        return Err(ApiError::unprocessable(format!(
            "role must be one of {}",
            ROLES.join(", ")
        )));
    }
    if body.role == "owner" && who.role != "owner" {
        return Err(ApiError::forbidden("only an owner may create another owner"));
    }
    check_password(&body.password)?;
    let password = body.password;
    let hash = web::block(move || password::hash(&password))
        .await
        .map_err(|e| ApiError::internal(format!("password hashing: {e}")))?;
    let user = state
        .store
        .create_user(who.business_id, &email, &hash, &body.role, session::now())
        .await?;
    tracing::info!(by = who.user_id, user_id = user.id, business_id = who.business_id, role = %user.role, "[AUTH] user created");
    Ok(HttpResponse::Created().json(user))
}

/// `POST /api/users/{user_id}/deactivate`: the user can no longer sign in; their sessions end.
pub(crate) async fn deactivate_user(
    who: Principal,
    state: web::Data<AuthState>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let user_id = path.into_inner();
    if user_id == who.user_id {
        return Err(ApiError::unprocessable("you cannot deactivate yourself"));
    }
    if who.role != "owner" {
        let target = state
            .store
            .list_users(who.business_id)
            .await?
            .into_iter()
            .find(|u| u.id == user_id);
        if target.is_some_and(|u| u.role == "owner") {
            return Err(ApiError::forbidden("only an owner may deactivate an owner"));
        }
    }
    state
        .store
        .deactivate_user(who.business_id, user_id, session::now())
        .await?;
    tracing::info!(
        by = who.user_id,
        user_id,
        business_id = who.business_id,
        "[AUTH] user deactivated"
    );
    Ok(HttpResponse::NoContent().finish())
}

/// `GET /api/permissions/roles`: every role's pages in the caller's business.
/// `{"roles": {role: [page…]}, "levels": {role: {page: "read"|"write"}}, "pages": [every page]}`.
pub(crate) async fn list_grants(who: Principal, state: web::Data<AuthState>) -> Result<HttpResponse, ApiError> {
    let levels = state.store.grants(who.business_id).await?;
    let roles: BTreeMap<&String, Vec<&String>> = levels
        .iter()
        .map(|(role, pages)| (role, pages.keys().collect()))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "roles": roles, "levels": levels, "pages": PAGES })))
}

/// `PUT /api/permissions/roles/{role}`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Grants {
    pages: Vec<Grant>,
}

/// One grant in `PUT /api/permissions/roles/{role}`: a page name (read and write), or
/// `{"page": …, "level": "read"|"write"}`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
enum Grant {
    Page(String),
    Level { page: String, level: Level },
}

/// `PUT /api/permissions/roles/{role} {pages}`: replaces a role's pages in the caller's business.
pub(crate) async fn set_grants(
    who: Principal,
    state: web::Data<AuthState>,
    path: web::Path<String>,
    body: web::Json<Grants>,
) -> Result<HttpResponse, ApiError> {
    let role = path.into_inner();
    if !ROLES.contains(&role.as_str()) {
        return Err(ApiError::not_found(format!(
            "no role {role:?}; roles are {}",
            ROLES.join(", ")
        )));
    }
    if role == "owner" && who.role != "owner" {
        // An admin could otherwise lock the owners out of their own settings.
        return Err(ApiError::forbidden("only an owner may change the owner role's pages"));
    }
    let mut grants: BTreeMap<String, Level> = BTreeMap::new();
    for grant in body.into_inner().pages {
        let (page, level) = match grant {
            Grant::Page(page) => (page, Level::Write),
            Grant::Level { page, level } => (page, level),
        };
        if !PAGES.contains(&page.as_str()) {
            return Err(ApiError::unprocessable(format!(
                "unknown page {page:?}; pages are {}",
                PAGES.join(", ")
            )));
        }
        // Listed twice: the wider grant counts.
        let kept = grants.entry(page).or_insert(level);
        *kept = (*kept).max(level);
    }
    let list: Vec<(String, Level)> = grants.iter().map(|(p, l)| (p.clone(), *l)).collect();
    state.store.set_grants(who.business_id, &role, &list).await?;
    let shown: Vec<String> = list.iter().map(|(p, l)| format!("{p}:{}", l.as_str())).collect();
    tracing::info!(by = who.user_id, business_id = who.business_id, role = %role, pages = %shown.join(","), "[AUTH] pages granted");
    let pages: Vec<&String> = grants.keys().collect();
    Ok(HttpResponse::build(StatusCode::OK).json(json!({ "role": role, "pages": pages, "levels": grants })))
}
