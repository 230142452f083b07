//! Appointment queries. Every one takes the caller's business id.

use callplane_plugin_api::storage::sqlx::{self, Connection, Row};
use callplane_plugin_api::storage::{Db, DbKind};

/// A stored appointment (times in Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Appointment {
    pub(crate) id: i64,
    pub(crate) title: String,
    pub(crate) starts_at: i64,
    pub(crate) ends_at: i64,
    pub(crate) lead_id: Option<String>,
    pub(crate) call_sid: Option<String>,
    pub(crate) notes: Option<String>,
    pub(crate) status: String,
    pub(crate) created_by: i64,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
    pub(crate) version: i64,
}

/// Why a write did not happen.
#[derive(Debug)]
pub(crate) enum WriteError {
    /// Overlaps this scheduled appointment.
    Overlap(i64),
    /// No such appointment in the business.
    NotFound,
    /// `If-Match` named an older version; the current one is given.
    Stale(i64),
    /// The changed appointment is not valid (the message says why).
    Invalid(String),
    /// The database failed.
    Database(sqlx::Error),
}

impl From<sqlx::Error> for WriteError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(e)
    }
}

const COLUMNS: &str =
    "id, title, starts_at, ends_at, lead_id, call_sid, notes, status, created_by, created_at, updated_at, version";

fn from_row(r: &sqlx::any::AnyRow) -> Result<Appointment, sqlx::Error> {
    Ok(Appointment {
        id: r.try_get(0)?,
        title: r.try_get(1)?,
        starts_at: r.try_get(2)?,
        ends_at: r.try_get(3)?,
        lead_id: r.try_get(4)?,
        call_sid: r.try_get(5)?,
        notes: r.try_get(6)?,
        status: r.try_get(7)?,
        created_by: r.try_get(8)?,
        created_at: r.try_get(9)?,
        updated_at: r.try_get(10)?,
        version: r.try_get(11)?,
    })
}

/// The plugin's queries.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    db: Db,
}

/// A filter for [`Store::list`].
#[derive(Debug, Clone)]
pub(crate) struct Range {
    pub(crate) from: i64,
    pub(crate) to: i64,
    pub(crate) status: Option<String>,
    pub(crate) limit: i64,
    pub(crate) offset: i64,
}

impl Store {
    pub(crate) fn new(db: Db) -> Self {
        Self { db }
    }

    /// Appointments of `business` that intersect `[from, to)`, by start time.
    pub(crate) async fn list(&self, business: i64, range: &Range) -> Result<Vec<Appointment>, sqlx::Error> {
        let sql = format!(
            "SELECT {COLUMNS} FROM appointments WHERE business_id = $1 AND starts_at < $2 AND ends_at > $3
               AND ($4 IS NULL OR status = $4) ORDER BY starts_at, id LIMIT $5 OFFSET $6"
        );
        let rows = self
            .db
            .run(|pool| {
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(business)
                    .bind(range.to)
                    .bind(range.from)
                    .bind(range.status.clone())
                    .bind(range.limit)
                    .bind(range.offset)
                    .fetch_all(pool)
            })
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// One appointment of `business`.
    pub(crate) async fn get(&self, business: i64, id: i64) -> Result<Option<Appointment>, sqlx::Error> {
        let sql = format!("SELECT {COLUMNS} FROM appointments WHERE id = $1 AND business_id = $2");
        let row = self
            .db
            .run(|pool| {
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(id)
                    .bind(business)
                    .fetch_optional(pool)
            })
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Runs `write` in a transaction that holds the business's calendar write lock, so the
    /// overlap check and the write cannot interleave with another writer's.
    async fn locked<T, F>(&self, business: i64, write: F) -> Result<T, WriteError>
    where
        F: for<'c> FnOnce(
            &'c mut sqlx::Transaction<'_, sqlx::Any>,
        ) -> futures_util_box::BoxFuture<'c, Result<T, WriteError>>,
    {
        self.db
            .run(|pool| async move {
                let mut conn = pool.acquire().await?;
                let mut tx = match self.db.kind() {
                    DbKind::Sqlite => conn.begin_with("BEGIN IMMEDIATE").await?,
                    DbKind::Postgres => {
                        let mut tx = conn.begin().await?;
                        // Key: the business id in the calendar's own lock space (folded into 31 bits; a
                        // collision only serialises two businesses' writes).
                        sqlx::query("SELECT pg_advisory_xact_lock(7100, CAST(($1 % 2147483647) AS INTEGER))")
                            .bind(business)
                            .execute(&mut *tx)
                            .await?;
                        tx
                    }
                };
                let result = write(&mut tx).await?;
                tx.commit().await?;
                Ok(result)
            })
            .await
    }

    /// Creates an appointment after the overlap check (scheduled ones only).
    pub(crate) async fn create(&self, business: i64, new: Appointment) -> Result<Appointment, WriteError> {
        self.locked(business, move |tx| {
            Box::pin(async move {
                if new.status == "scheduled" {
                    check_overlap(tx, business, new.starts_at, new.ends_at, None).await?;
                }
                let id: i64 = sqlx::query(
                    "INSERT INTO appointments (business_id, title, starts_at, ends_at, lead_id, call_sid, notes, status, created_by, created_at, updated_at, version)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, 1) RETURNING id",
                )
                .bind(business)
                .bind(&new.title)
                .bind(new.starts_at)
                .bind(new.ends_at)
                .bind(&new.lead_id)
                .bind(&new.call_sid)
                .bind(&new.notes)
                .bind(&new.status)
                .bind(new.created_by)
                .bind(new.created_at)
                .fetch_one(&mut **tx)
                .await?
                .try_get(0)?;
                Ok(Appointment { id, version: 1, updated_at: new.created_at, ..new })
            })
        })
        .await
    }

    /// Applies `change` to an appointment of `business` (when `if_match` is current).
    pub(crate) async fn update<C>(
        &self,
        business: i64,
        id: i64,
        if_match: Option<i64>,
        change: C,
    ) -> Result<Appointment, WriteError>
    where
        C: FnOnce(Appointment) -> Result<Appointment, WriteError> + Send + 'static,
    {
        self.locked(business, move |tx| {
            Box::pin(async move {
                let current = load(tx, business, id).await?;
                if if_match.is_some_and(|v| v != current.version) {
                    return Err(WriteError::Stale(current.version));
                }
                let version = current.version;
                let next = change(current)?;
                if next.status == "scheduled" {
                    check_overlap(tx, business, next.starts_at, next.ends_at, Some(id)).await?;
                }
                sqlx::query(
                    "UPDATE appointments SET title = $1, starts_at = $2, ends_at = $3, lead_id = $4, call_sid = $5, notes = $6,
                       status = $7, updated_at = $8, version = version + 1 WHERE id = $9 AND business_id = $10 AND version = $11",
                )
                .bind(&next.title)
                .bind(next.starts_at)
                .bind(next.ends_at)
                .bind(&next.lead_id)
                .bind(&next.call_sid)
                .bind(&next.notes)
                .bind(&next.status)
                .bind(next.updated_at)
                .bind(id)
                .bind(business)
                .bind(version)
                .execute(&mut **tx)
                .await?;
                Ok(Appointment { version: version + 1, ..next })
            })
        })
        .await
    }

    /// Deletes an appointment of `business` (when `if_match` is current).
    pub(crate) async fn delete(&self, business: i64, id: i64, if_match: Option<i64>) -> Result<(), WriteError> {
        self.locked(business, move |tx| {
            Box::pin(async move {
                let current = load(tx, business, id).await?;
                if if_match.is_some_and(|v| v != current.version) {
                    return Err(WriteError::Stale(current.version));
                }
                sqlx::query("DELETE FROM appointments WHERE id = $1 AND business_id = $2")
                    .bind(id)
                    .bind(business)
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            })
        })
        .await
    }
}

async fn load(tx: &mut sqlx::Transaction<'_, sqlx::Any>, business: i64, id: i64) -> Result<Appointment, WriteError> {
    let sql = format!("SELECT {COLUMNS} FROM appointments WHERE id = $1 AND business_id = $2");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(business)
        .fetch_optional(&mut **tx)
        .await?;
    row.as_ref().map(from_row).transpose()?.ok_or(WriteError::NotFound)
}

/// Fails with the first scheduled appointment of `business` overlapping `[start, end)`
/// (touching intervals do not overlap).
async fn check_overlap(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    business: i64,
    start: i64,
    end: i64,
    except: Option<i64>,
) -> Result<(), WriteError> {
    let row = sqlx::query(
        "SELECT id FROM appointments WHERE business_id = $1 AND status = 'scheduled' AND starts_at < $2 AND ends_at > $3
           AND id <> $4 ORDER BY starts_at, id LIMIT 1",
    )
    .bind(business)
    .bind(end)
    .bind(start)
    .bind(except.unwrap_or(-1))
    .fetch_optional(&mut **tx)
    .await?;
    match row {
        Some(row) => Err(WriteError::Overlap(row.try_get(0)?)),
        None => Ok(()),
    }
}

mod futures_util_box {
    pub(crate) type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
}
