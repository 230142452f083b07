//! The [`CallBook`] this plugin offers: a business's calls and their traces, for plugins that show
//! them (the console), read exactly as `callplane calls` and `callplane trace` read them.

use callplane_plugin_api::storage::{Db, sqlx};
use callplane_plugin_api::{ApiError, CallBook, CallLine, CallQuery, Trace};
use futures_util::future::LocalBoxFuture;

use crate::cli::{Filter, MAX_LINES, recent};
use crate::trace::{self, CallId, Viewer};

/// The calls in the database, one business at a time.
#[derive(Debug, Clone)]
pub(crate) struct Book {
    db: Db,
}

impl Book {
    pub(crate) fn new(db: Db) -> Self {
        Self { db }
    }
}

fn db_error(e: &sqlx::Error) -> ApiError {
    ApiError::database("[TWILIO] call book", e)
}

impl CallBook for Book {
    fn recent<'a>(
        &'a self,
        business_id: i64,
        query: &'a CallQuery,
    ) -> LocalBoxFuture<'a, Result<Vec<CallLine>, ApiError>> {
        Box::pin(async move {
            if let Some(number) = &query.number
                && (number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit() || b == b'+'))
            {
                return Err(ApiError::unprocessable(
                    "number must be digits, with or without a leading +",
                ));
            }
            let wanted = i64::try_from(query.limit).unwrap_or(MAX_LINES);
            let filter = Filter {
                business: Some(business_id),
                number: query.number.as_deref(),
                // A verdict is computed per call: filter a full page of calls, then cut.
                limit: if query.verdict.is_some() { MAX_LINES } else { wanted },
                ..Filter::since(query.since_ms)
            };
            let mut lines = recent(&self.db, &filter).await.map_err(|e| db_error(&e))?;
            if let Some(verdict) = &query.verdict {
                lines.retain(|line| &line.verdict == verdict);
            }
            lines.truncate(query.limit);
            Ok(lines)
        })
    }

    fn trace<'a>(&'a self, business_id: i64, id: &'a str) -> LocalBoxFuture<'a, Result<Option<Trace>, ApiError>> {
        Box::pin(async move {
            let Ok(id) = CallId::parse(id) else {
                return Ok(None);
            };
            trace::load(&self.db, &id, Viewer::Tenant(business_id), None)
                .await
                .map_err(|e| db_error(&e))
        })
    }
}
