//! Every query of the plugin. Each one that a request handler runs takes the caller's business id,
//! so a tenant never reaches another tenant's rows.

use std::collections::BTreeMap;

use callplane_plugin_api::Principal;
use callplane_plugin_api::storage::sqlx::{self, Row};
use callplane_plugin_api::storage::{Db, StorageError};
use serde::Serialize;

use crate::{ADMIN_ROLES, Level, ROLES, default_pages};

/// Failures of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique value (e-mail, phone number) is taken.
    #[error("{0} already exists")]
    Duplicate(&'static str),
    /// The row does not exist (in this business).
    #[error("not found")]
    NotFound,
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl From<StorageError> for StoreError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Sqlx(e) => Self::Database(e),
            other => Self::Database(sqlx::Error::Protocol(other.to_string())),
        }
    }
}

fn unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// A business (tenant).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Business {
    /// Id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// The E.164 number Twilio calls.
    pub phone_number: String,
    /// What callers hear when no media stream is configured.
    pub greeting: String,
    /// Optional media-stream (WebSocket) URL.
    pub media_stream_url: Option<String>,
}

/// A user as the admin API shows it (never the hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    /// Id.
    pub id: i64,
    /// Business.
    pub business_id: i64,
    /// E-mail (lowercase).
    pub email: String,
    /// Role.
    pub role: String,
    /// Whether the user may sign in.
    pub active: bool,
}

/// What login needs about an account.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// User id.
    pub user_id: i64,
    /// Stored password hash.
    pub password_hash: String,
    /// Whether the user may sign in.
    pub active: bool,
}

/// One failed-login row as [`Store::record_failure`] recorded and counted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// The row's id: what a successful (or refused) attempt forgets.
    pub id: i64,
    /// Failures of the subject in the window, this one included.
    pub failures: i64,
    /// When the oldest of them was recorded.
    pub oldest: Option<i64>,
}

/// The plugin's queries over the shared pool.
#[derive(Debug, Clone)]
pub struct Store {
    db: Db,
}

impl Store {
    /// A store over `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Creates a business with the default role → page grants.
    ///
    /// # Errors
    /// [`StoreError::Duplicate`] when the phone number is taken.
    pub async fn create_business(
        &self,
        name: &str,
        phone: &str,
        greeting: &str,
        stream: Option<&str>,
        now: i64,
    ) -> Result<i64, StoreError> {
        self.db.run(|pool| async move {
            let mut tx = pool.begin().await?;
            let id: i64 = sqlx::query(
                "INSERT INTO businesses (name, phone_number, greeting, media_stream_url, created_at) VALUES ($1, $2, $3, $4, $5) RETURNING id",
            )
            .bind(name)
            .bind(phone)
            .bind(greeting)
            .bind(stream)
            .bind(now)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| if unique_violation(&e) { StoreError::Duplicate("a business with this phone number") } else { e.into() })?
            .try_get(0)?;
            for role in ROLES {
                for page in default_pages(role) {
                    sqlx::query("INSERT INTO role_pages (business_id, role, page, level) VALUES ($1, $2, $3, $4)")
                        .bind(id)
                        .bind(role)
                        .bind(*page)
                        .bind(Level::default_for(role).as_str())
                        .execute(&mut *tx)
                        .await?;
                }
            }
            tx.commit().await?;
            Ok(id)
        })
        .await
    }

    /// Every business, by id.
    ///
    /// # Errors
    /// A database error.
    pub async fn list_businesses(&self) -> Result<Vec<Business>, StoreError> {
        let rows = self
            .db
            .run(|pool| {
                sqlx::query("SELECT id, name, phone_number, greeting, media_stream_url FROM businesses ORDER BY id")
                    .fetch_all(pool)
            })
            .await?;
        rows.iter().map(business_from_row).collect()
    }

    /// One business.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], or a database error.
    pub async fn business(&self, id: i64) -> Result<Business, StoreError> {
        let row = self
            .db
            .run(|pool| {
                sqlx::query("SELECT id, name, phone_number, greeting, media_stream_url FROM businesses WHERE id = $1")
                    .bind(id)
                    .fetch_optional(pool)
            })
            .await?
            .ok_or(StoreError::NotFound)?;
        business_from_row(&row)
    }

    /// Creates a user in `business_id`.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown business, [`StoreError::Duplicate`] for a taken
    /// e-mail, or a database error.
    pub async fn create_user(
        &self,
        business_id: i64,
        email: &str,
        password_hash: &str,
        role: &str,
        now: i64,
    ) -> Result<User, StoreError> {
        self.business(business_id).await?;
        let id: i64 = self.db.run(|pool| sqlx::query(
            "INSERT INTO users (business_id, email, password_hash, role, active, created_at) VALUES ($1, $2, $3, $4, 1, $5) RETURNING id",
        )
        .bind(business_id)
        .bind(email)
        .bind(password_hash)
        .bind(role)
        .bind(now)
        .fetch_one(pool))
        .await
        .map_err(|e| if unique_violation(&e) { StoreError::Duplicate("a user with this e-mail address") } else { e.into() })?
        .try_get(0)?;
        Ok(User {
            id,
            business_id,
            email: email.to_owned(),
            role: role.to_owned(),
            active: true,
        })
    }

    /// The users of one business.
    ///
    /// # Errors
    /// A database error.
    pub async fn list_users(&self, business_id: i64) -> Result<Vec<User>, StoreError> {
        let rows = self
            .db
            .run(|pool| {
                sqlx::query("SELECT id, business_id, email, role, active FROM users WHERE business_id = $1 ORDER BY id")
                    .bind(business_id)
                    .fetch_all(pool)
            })
            .await?;
        rows.iter()
            .map(|r| {
                Ok(User {
                    id: r.try_get(0)?,
                    business_id: r.try_get(1)?,
                    email: r.try_get(2)?,
                    role: r.try_get(3)?,
                    active: r.try_get::<i64, _>(4)? != 0,
                })
            })
            .collect()
    }

    /// Deactivates a user of `business_id` and revokes their sessions.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when the user is not in that business, or a database error.
    pub async fn deactivate_user(&self, business_id: i64, user_id: i64, now: i64) -> Result<(), StoreError> {
        self.db
            .run(|pool| async move {
                let mut tx = pool.begin().await?;
                let changed = sqlx::query("UPDATE users SET active = 0 WHERE id = $1 AND business_id = $2")
                    .bind(user_id)
                    .bind(business_id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if changed == 0 {
                    return Err(StoreError::NotFound);
                }
                sqlx::query("UPDATE sessions SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL")
                    .bind(now)
                    .bind(user_id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            })
            .await
    }

    /// What login needs about the account with this (normalised) e-mail address.
    ///
    /// # Errors
    /// A database error.
    pub async fn credentials(&self, email: &str) -> Result<Option<Credentials>, StoreError> {
        let row = self
            .db
            .run(|pool| {
                sqlx::query("SELECT id, password_hash, active FROM users WHERE email = $1")
                    .bind(email)
                    .fetch_optional(pool)
            })
            .await?;
        row.map(|r| {
            Ok(Credentials {
                user_id: r.try_get(0)?,
                password_hash: r.try_get(1)?,
                active: r.try_get::<i64, _>(2)? != 0,
            })
        })
        .transpose()
    }

    /// Replaces a user's password hash (rehash on login with stronger parameters).
    ///
    /// # Errors
    /// A database error.
    pub async fn set_password_hash(&self, user_id: i64, password_hash: &str) -> Result<(), StoreError> {
        self.db
            .run(|pool| {
                sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
                    .bind(password_hash)
                    .bind(user_id)
                    .execute(pool)
            })
            .await?;
        Ok(())
    }

    /// Stores a new session (by token hash), and forgets sessions that ended over a day ago.
    ///
    /// # Errors
    /// A database error.
    pub async fn create_session(
        &self,
        token_hash: &str,
        user_id: i64,
        now: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.db
            .run(|pool| {
                sqlx::query("DELETE FROM sessions WHERE expires_at < $1 OR revoked_at < $1")
                    .bind(now - 24 * 60 * 60)
                    .execute(pool)
            })
            .await?;
        self.db
            .run(|pool| {
                sqlx::query(
                    "INSERT INTO sessions (token_hash, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
                )
                .bind(token_hash)
                .bind(user_id)
                .bind(now)
                .bind(expires_at)
                .execute(pool)
            })
            .await?;
        Ok(())
    }

    /// The principal of a live session: not revoked, not expired, user active.
    ///
    /// # Errors
    /// A database error.
    pub async fn session_principal(&self, token_hash: &str, now: i64) -> Result<Option<Principal>, StoreError> {
        let row = self
            .db
            .run(|pool| {
                sqlx::query(
                    "SELECT u.id, u.business_id, u.email, u.role FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE s.token_hash = $1 AND s.revoked_at IS NULL AND s.expires_at > $2 AND u.active = 1",
                )
                .bind(token_hash)
                .bind(now)
                .fetch_optional(pool)
            })
            .await?;
        let Some(row) = row else { return Ok(None) };
        let (user_id, business_id, email, role): (i64, i64, String, String) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?);
        let grants = self.page_levels(business_id, &role).await?;
        let write_pages = grants
            .iter()
            .filter(|(_, level)| *level == Level::Write)
            .map(|(page, _)| page.clone())
            .collect();
        let pages = grants.into_iter().map(|(page, _)| page).collect();
        let admin = ADMIN_ROLES.contains(&role.as_str());
        Ok(Some(Principal {
            user_id,
            business_id,
            email,
            role,
            pages,
            write_pages,
            admin,
        }))
    }

    /// Revokes one session.
    ///
    /// # Errors
    /// A database error.
    pub async fn revoke_session(&self, token_hash: &str, now: i64) -> Result<(), StoreError> {
        self.db
            .run(|pool| {
                sqlx::query("UPDATE sessions SET revoked_at = $1 WHERE token_hash = $2 AND revoked_at IS NULL")
                    .bind(now)
                    .bind(token_hash)
                    .execute(pool)
            })
            .await?;
        Ok(())
    }

    /// The pages `role` is granted in `business_id`, sorted.
    ///
    /// # Errors
    /// A database error.
    pub async fn pages(&self, business_id: i64, role: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .page_levels(business_id, role)
            .await?
            .into_iter()
            .map(|(page, _)| page)
            .collect())
    }

    /// The pages `role` is granted in `business_id` and the level of each, sorted by page.
    ///
    /// # Errors
    /// A database error.
    pub async fn page_levels(&self, business_id: i64, role: &str) -> Result<Vec<(String, Level)>, StoreError> {
        let rows = self
            .db
            .run(|pool| {
                sqlx::query("SELECT page, level FROM role_pages WHERE business_id = $1 AND role = $2 ORDER BY page")
                    .bind(business_id)
                    .bind(role)
                    .fetch_all(pool)
            })
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, Level::parse(&r.try_get::<String, _>(1)?))))
            .collect()
    }

    /// Every role's pages and their levels in `business_id` (every role listed, even with no
    /// page).
    ///
    /// # Errors
    /// A database error.
    pub async fn grants(&self, business_id: i64) -> Result<BTreeMap<String, BTreeMap<String, Level>>, StoreError> {
        let mut grants: BTreeMap<String, BTreeMap<String, Level>> =
            ROLES.iter().map(|r| (r.to_string(), BTreeMap::new())).collect();
        let rows = self
            .db
            .run(|pool| {
                sqlx::query("SELECT role, page, level FROM role_pages WHERE business_id = $1")
                    .bind(business_id)
                    .fetch_all(pool)
            })
            .await?;
        for row in rows {
            grants
                .entry(row.try_get(0)?)
                .or_default()
                .insert(row.try_get(1)?, Level::parse(&row.try_get::<String, _>(2)?));
        }
        Ok(grants)
    }

    /// Replaces the pages of `role` in `business_id`, each at the write level.
    ///
    /// # Errors
    /// A database error.
    pub async fn set_pages(&self, business_id: i64, role: &str, pages: &[String]) -> Result<(), StoreError> {
        let grants: Vec<(String, Level)> = pages.iter().map(|p| (p.clone(), Level::Write)).collect();
        self.set_grants(business_id, role, &grants).await
    }

    /// Replaces the grants of `role` in `business_id`.
    ///
    /// # Errors
    /// A database error.
    pub async fn set_grants(&self, business_id: i64, role: &str, grants: &[(String, Level)]) -> Result<(), StoreError> {
        self.db.run(|pool| async move {
            let mut tx = pool.begin().await?;
            sqlx::query("DELETE FROM role_pages WHERE business_id = $1 AND role = $2")
                .bind(business_id)
                .bind(role)
                .execute(&mut *tx)
                .await?;
            for (page, level) in grants {
                // A concurrent replacement may have inserted it already.
                sqlx::query(
                    "INSERT INTO role_pages (business_id, role, page, level) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                )
                .bind(business_id)
                .bind(role)
                .bind(page)
                .bind(level.as_str())
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Grants `role` in `business_id` one page at `level` (added, or its level changed).
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown business, or a database error.
    pub async fn grant_page(&self, business_id: i64, role: &str, page: &str, level: Level) -> Result<(), StoreError> {
        self.business(business_id).await?;
        let mut grants = self.page_levels(business_id, role).await?;
        grants.retain(|(p, _)| p != page);
        grants.push((page.to_owned(), level));
        self.set_grants(business_id, role, &grants).await
    }

    /// Records a failed login of `subject` (an account or a client address) under `scope`, then
    /// counts the failures of `subject` since `since`, this one included.
    ///
    /// Recording before counting makes the pair atomic in effect: whatever the interleaving of
    /// concurrent attempts (on one instance or many), each one counts every attempt recorded
    /// before it, so at most `limit` of them can see a count of `limit` or less.
    ///
    /// # Errors
    /// A database error.
    pub async fn record_failure(
        &self,
        scope: &str,
        subject: &str,
        now: i64,
        since: i64,
    ) -> Result<Attempt, StoreError> {
        let id: i64 = self
            .db
            .run(|pool| {
                sqlx::query("INSERT INTO login_failures (scope, subject, failed_at) VALUES ($1, $2, $3) RETURNING id")
                    .bind(scope)
                    .bind(subject)
                    .bind(now)
                    .fetch_one(pool)
            })
            .await?
            .try_get(0)?;
        let row = self
            .db
            .run(|pool| {
                sqlx::query(
            "SELECT COUNT(*), MIN(failed_at) FROM login_failures WHERE scope = $1 AND subject = $2 AND failed_at > $3",
        )
        .bind(scope)
        .bind(subject)
        .bind(since)
        .fetch_one(pool)
            })
            .await?;
        Ok(Attempt {
            id,
            failures: row.try_get(0)?,
            oldest: row.try_get(1)?,
        })
    }

    /// Forgets the failure rows `ids` (an attempt that was refused, or that succeeded), and no
    /// other.
    ///
    /// # Errors
    /// A database error.
    pub async fn forget_attempts(&self, ids: &[i64]) -> Result<(), StoreError> {
        for id in ids {
            self.db
                .run(|pool| {
                    sqlx::query("DELETE FROM login_failures WHERE id = $1")
                        .bind(id)
                        .execute(pool)
                })
                .await?;
        }
        Ok(())
    }

    /// How many failures `subject` has since `since`.
    ///
    /// # Errors
    /// A database error.
    pub async fn failures(&self, scope: &str, subject: &str, since: i64) -> Result<i64, StoreError> {
        let row = self
            .db
            .run(|pool| {
                sqlx::query("SELECT COUNT(*) FROM login_failures WHERE scope = $1 AND subject = $2 AND failed_at > $3")
                    .bind(scope)
                    .bind(subject)
                    .bind(since)
                    .fetch_one(pool)
            })
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Forgets every failure of `subject` (an operator lifting a lock); returns how many.
    ///
    /// # Errors
    /// A database error.
    pub async fn unlock(&self, scope: &str, subject: &str) -> Result<u64, StoreError> {
        Ok(self
            .db
            .run(|pool| {
                sqlx::query("DELETE FROM login_failures WHERE scope = $1 AND subject = $2")
                    .bind(scope)
                    .bind(subject)
                    .execute(pool)
            })
            .await?
            .rows_affected())
    }

    /// Forgets the failures of `subject` (after a successful login) and any older than `before`.
    ///
    /// # Errors
    /// A database error.
    pub async fn clear_failures(&self, scope: &str, subject: &str, before: i64) -> Result<(), StoreError> {
        self.db
            .run(|pool| {
                sqlx::query("DELETE FROM login_failures WHERE (scope = $1 AND subject = $2) OR failed_at <= $3")
                    .bind(scope)
                    .bind(subject)
                    .bind(before)
                    .execute(pool)
            })
            .await?;
        Ok(())
    }
}

fn business_from_row(row: &sqlx::any::AnyRow) -> Result<Business, StoreError> {
    Ok(Business {
        id: row.try_get(0)?,
        name: row.try_get(1)?,
        phone_number: row.try_get(2)?,
        greeting: row.try_get(3)?,
        media_stream_url: row.try_get(4)?,
    })
}
