//! Group commit: many writers hand their rows to one writer thread, which commits everything
//! queued so far (up to [`MAX_BATCH`]) in one transaction and tells every owner whether theirs is
//! in. A plugin says how a batch is written ([`Batched`]: SQL for SQLite's own connection and for
//! the pool); this module owns the rest: the queue, the thread, batching, retries and telling a
//! broken connection from a bad row from a database that cannot take writes.
//!
//! A batch is what arrived while the previous commit ran, and a small one is given a moment to
//! grow ([`gather`]): the writer yields its CPU to the HTTP workers once, and commits start at
//! least [`PACE`] apart. One item after a quiet spell commits at once; under load an item waits
//! for at most the commit in progress, the rest of the pace and its own commit. The writer has its
//! own thread so that its work never queues behind HTTP requests on a worker.

use std::cmp::Ordering;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::{Db, SqliteWriter};

/// The most items one transaction commits.
pub const MAX_BATCH: usize = 256;
/// Items waiting for the writer; an owner that finds the queue full waits (within its own
/// timeout) and gives up when that runs out.
const QUEUE: usize = 4096;
/// A batch smaller than this is worth waiting for, see [`gather`].
const GATHER_BELOW: usize = 32;
/// How many times the writer yields its CPU for a small batch, see [`gather`].
const GATHER_YIELDS: usize = 1;
/// The least time from one commit's start to the next one's while batches are small, see
/// [`gather`].
const PACE: Duration = Duration::from_millis(1);

/// A pool write in progress.
pub type PoolWrite<'a> = Pin<Box<dyn Future<Output = Result<(), sqlx::Error>> + 'a>>;

/// How a batch of items is written. Writing an item twice must change nothing: a batch whose
/// commit did not answer may be written again by its owner (from a spool, say).
pub trait Batched: Send + Sync + 'static {
    /// Writes `batch` in one transaction on the writer's own SQLite connection.
    ///
    /// # Errors
    /// A SQLite error; nothing is committed then.
    fn write_sqlite(conn: &mut rusqlite::Connection, batch: &[&Self]) -> rusqlite::Result<()>;

    /// Writes `batch` in one transaction through the pool (PostgreSQL, or SQLite in memory), with
    /// [`Db::run`] like every query.
    fn write_pool<'a>(db: &'a Db, batch: &'a [&'a Self]) -> PoolWrite<'a>;

    /// The order in which a batch is written: batches sharing keys lock their rows in the same
    /// order in every instance, and cannot deadlock each other.
    fn order(&self, other: &Self) -> Ordering;
}

/// A queue of items and the thread that commits them; clones share both.
pub struct GroupCommit<T: Batched> {
    db: Db,
    name: &'static str,
    timeout: Duration,
    on_batch: Arc<dyn Fn(usize) + Send + Sync>,
    /// Started on first use: commands that never write start no thread.
    writer: Arc<Mutex<Option<mpsc::Sender<Pending<T>>>>>,
}

impl<T: Batched> Clone for GroupCommit<T> {
    fn clone(&self) -> Self {
        Self {
            db: self.db.clone(),
            name: self.name,
            timeout: self.timeout,
            on_batch: self.on_batch.clone(),
            writer: self.writer.clone(),
        }
    }
}

impl<T: Batched> std::fmt::Debug for GroupCommit<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// What became of an item handed to [`GroupCommit::write`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// In the database.
    Committed,
    /// The database refuses this item's data (a constraint, a value it cannot store): writing it
    /// again will fail again. The reason is the database's message.
    Refused(String),
    /// Not committed now (the database is away, slow, or cannot take writes): it may or may not
    /// be in the database; keep it elsewhere and write it again later (writing twice is harmless).
    Failed,
}

/// An item waiting for the writer.
struct Pending<T> {
    item: T,
    /// The answer, with the item: its owner frees it on the thread that allocated it, not on the
    /// writer's, which every owner waits for (freeing another thread's memory also takes that
    /// thread's allocator lock). `None` for an item [submitted](GroupCommit::submit) without
    /// waiting.
    committed: Option<oneshot::Sender<(Written, T)>>,
}

impl<T> Pending<T> {
    fn answer(self, written: Written) {
        if let Some(committed) = self.committed {
            let _ = committed.send((written, self.item));
        }
    }

    /// Whether its owner stopped waiting (its timeout ran out): it has kept its item already.
    fn abandoned(&self) -> bool {
        self.committed.as_ref().is_some_and(oneshot::Sender::is_closed)
    }
}

/// Where the writer commits.
enum Store {
    /// A SQLite file, through the writer's own connection.
    Sqlite(SqliteWriter),
    /// PostgreSQL (or an in-memory SQLite database), through the pool.
    Pool(Db),
}

/// Why a batch was not committed.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    /// A statement failed: one item of the batch may be at fault. `refused` when the database
    /// refused the data itself ([`Written::Refused`]).
    #[error("{message}")]
    Statement {
        /// The database's message.
        message: String,
        /// Whether the data was refused (a constraint or data exception), not the statement.
        refused: bool,
    },
    /// The database cannot take writes now (unreachable, connection lost, locked, disk full, pool
    /// exhausted, …).
    #[error("{0}")]
    Unavailable(String),
    /// No answer within the commit timeout.
    #[error("timed out")]
    TimedOut,
}

impl<T: Batched> GroupCommit<T> {
    /// A group commit into `db`, its thread named `name`; a pool write that takes longer than
    /// `timeout` counts as failed; `on_batch` hears the size of every batch (for a histogram).
    pub fn new(
        db: Db,
        name: &'static str,
        timeout: Duration,
        on_batch: impl Fn(usize) + Send + Sync + 'static,
    ) -> Self {
        Self {
            db,
            name,
            timeout,
            on_batch: Arc::new(on_batch),
            writer: Arc::default(),
        }
    }

    /// What became of `item` (see [`Written`]; a caller's own timeout means [`Written::Failed`]).
    pub async fn write(&self, item: T) -> Written {
        let Some(writer) = self.writer() else {
            return Written::Failed;
        };
        let (committed, done) = oneshot::channel();
        let pending = Pending {
            item,
            committed: Some(committed),
        };
        if writer.send(pending).await.is_err() {
            return Written::Failed;
        }
        done.await.map_or(Written::Failed, |(written, _item)| written)
    }

    /// Queues `item` for the next batch without waiting for it; `false` when the queue is full
    /// (the item is dropped). For what may be lost under load, such as evidence of refused
    /// requests, never for call records.
    pub fn submit(&self, item: T) -> bool {
        self.writer()
            .is_some_and(|writer| writer.try_send(Pending { item, committed: None }).is_ok())
    }

    fn writer(&self) -> Option<mpsc::Sender<Pending<T>>> {
        let mut slot = self.writer.lock().ok()?;
        if slot.as_ref().is_none_or(mpsc::Sender::is_closed) {
            let (tx, rx) = mpsc::channel(QUEUE);
            let store = match self.db.open_sqlite_writer() {
                Some(Ok(conn)) => Store::Sqlite(conn),
                Some(Err(error)) => {
                    tracing::warn!(writer = self.name, error = %error, "[STORAGE] the group-commit writer cannot open its SQLite connection; writing through the pool");
                    Store::Pool(self.db.clone())
                }
                None => Store::Pool(self.db.clone()),
            };
            // No I/O driver: a pool write's sockets belong to the database runtime ([`Db::run`]);
            // this thread sleeps on a futex, not in epoll.
            let mut runtime = tokio::runtime::Builder::new_current_thread();
            runtime.enable_time();
            let writer = Writer {
                store,
                name: self.name,
                timeout: self.timeout,
                on_batch: self.on_batch.clone(),
            };
            let spawned = runtime.build().and_then(|runtime| {
                std::thread::Builder::new()
                    .name(self.name.to_owned())
                    .spawn(move || runtime.block_on(writer.run(rx)))
            });
            if let Err(error) = spawned {
                tracing::error!(writer = self.name, error = %error, "[STORAGE] the group-commit writer cannot start");
                return None;
            }
            *slot = Some(tx);
        }
        slot.clone()
    }
}

/// The writer thread's side.
struct Writer {
    store: Store,
    name: &'static str,
    timeout: Duration,
    on_batch: Arc<dyn Fn(usize) + Send + Sync>,
}

impl Writer {
    /// Takes what is queued, commits it as one batch, answers, repeats.
    async fn run<T: Batched>(mut self, mut queue: mpsc::Receiver<Pending<T>>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut last_commit: Option<Instant> = None;
        while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
            gather(&mut queue, &mut batch, last_commit);
            batch.retain(|p: &Pending<T>| !p.abandoned());
            if batch.is_empty() {
                continue;
            }
            last_commit = Some(Instant::now());
            (self.on_batch)(batch.len());
            self.commit(std::mem::take(&mut batch)).await;
        }
    }

    async fn write<T: Batched>(&mut self, items: &[&T]) -> Result<(), WriteError> {
        match &mut self.store {
            Store::Sqlite(conn) => T::write_sqlite(conn, items).map_err(|error| {
                use rusqlite::ErrorCode as Code;
                match error.sqlite_error_code() {
                    Some(
                        Code::DatabaseBusy
                        | Code::DatabaseLocked
                        | Code::DiskFull
                        | Code::SystemIoFailure
                        | Code::CannotOpen
                        | Code::ReadOnly
                        | Code::OutOfMemory,
                    ) => WriteError::Unavailable(error.to_string()),
                    code => WriteError::Statement {
                        message: error.to_string(),
                        refused: matches!(
                            code,
                            Some(Code::ConstraintViolation | Code::TypeMismatch | Code::TooBig)
                        ),
                    },
                }
            }),
            Store::Pool(db) => match tokio::time::timeout(self.timeout, T::write_pool(db, items)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(sqlx::Error::Database(error))) => Err(WriteError::Statement {
                    message: error.to_string(),
                    refused: refuses_data(&*error),
                }),
                Ok(Err(error)) => Err(WriteError::Unavailable(error.to_string())),
                Err(_) => Err(WriteError::TimedOut),
            },
        }
    }

    /// Commits `batch` in one transaction. When a statement fails, each item is retried alone so
    /// that one bad item cannot sink the others; any other failure leaves every item with its
    /// owner.
    async fn commit<T: Batched>(&mut self, mut batch: Vec<Pending<T>>) {
        batch.sort_by(|a, b| a.item.order(&b.item));
        let items: Vec<&T> = batch.iter().map(|p| &p.item).collect();
        let result = self.write(&items).await;
        drop(items);
        match result {
            Ok(()) => {
                for pending in batch {
                    pending.answer(Written::Committed);
                }
            }
            Err(WriteError::Statement { message, .. }) if batch.len() > 1 => {
                tracing::warn!(writer = self.name, error = %message, items = batch.len(), "[STORAGE] batch failed; writing its items one by one");
                for pending in batch {
                    let written = match self.write(&[&pending.item]).await {
                        Ok(()) => Written::Committed,
                        Err(WriteError::Statement { message, refused: true }) => Written::Refused(message),
                        Err(_) => Written::Failed,
                    };
                    pending.answer(written);
                }
            }
            Err(WriteError::Statement { message, refused: true }) => {
                for pending in batch {
                    pending.answer(Written::Refused(message.clone()));
                }
            }
            Err(error) => {
                tracing::warn!(writer = self.name, error = %error, items = batch.len(), "[STORAGE] database write failed");
                for pending in batch {
                    pending.answer(Written::Failed);
                }
            }
        }
    }
}

/// Whether the database refused the data of a statement rather than the statement: a constraint
/// (unique, foreign key, not null, check) or, on PostgreSQL, a data exception (SQLSTATE class 22:
/// a NUL byte in a text value, a number out of range, …). Writing the same data again fails again.
/// Anything else (a missing table, a permission, a shutdown) concerns every item alike.
fn refuses_data(error: &dyn sqlx::error::DatabaseError) -> bool {
    !matches!(error.kind(), sqlx::error::ErrorKind::Other) || error.code().is_some_and(|code| code.starts_with("22"))
}

/// Lets a small batch grow before it is committed. Much of a commit's cost is the same for one
/// item as for many (the write lock, the pages every commit rewrites, waking the writer), so a
/// batch of fewer than [`GATHER_BELOW`] items first lets the HTTP workers that are ready to run
/// hand over theirs (the writer yields its CPU [`GATHER_YIELDS`] times: this saved the
/// call-record writer 15–25 % of its CPU per event under load), then waits until [`PACE`] has
/// passed since the previous commit started, and takes what was queued meanwhile. While it waits
/// the workers' hand-overs wake nobody. After a quiet spell (the previous commit started more
/// than [`PACE`] ago) nothing waits: a lone item is not held up. See docs/performance.md.
fn gather<T>(queue: &mut mpsc::Receiver<Pending<T>>, batch: &mut Vec<Pending<T>>, last_commit: Option<Instant>) {
    let take = |queue: &mut mpsc::Receiver<Pending<T>>, batch: &mut Vec<Pending<T>>| {
        while batch.len() < MAX_BATCH {
            let Ok(pending) = queue.try_recv() else { break };
            batch.push(pending);
        }
    };
    for _ in 0..GATHER_YIELDS {
        if batch.len() >= GATHER_BELOW {
            return;
        }
        std::thread::yield_now();
        take(queue, batch);
    }
    if let Some(rest) = pause(last_commit, batch.len()) {
        std::thread::sleep(rest);
        take(queue, batch);
    }
}

/// How long a batch of `len` items waits before it is committed, the previous commit having
/// started at `last_commit` (see [`gather`]).
fn pause(last_commit: Option<Instant>, len: usize) -> Option<Duration> {
    if len >= GATHER_BELOW {
        return None;
    }
    PACE.checked_sub(last_commit?.elapsed()).filter(|rest| !rest.is_zero())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};

    use sqlx::Row as _;

    use super::*;

    /// A row of a test table; the value 13 is refused by a CHECK (a bad row in a batch).
    #[derive(Debug)]
    struct Row(i64);

    impl Batched for Row {
        fn write_sqlite(conn: &mut rusqlite::Connection, batch: &[&Self]) -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            for row in batch {
                tx.execute("INSERT INTO t (n) VALUES (?1) ON CONFLICT DO NOTHING", [row.0])?;
            }
            tx.commit()
        }

        fn write_pool<'a>(db: &'a Db, batch: &'a [&'a Self]) -> PoolWrite<'a> {
            Box::pin(db.run(|pool| async move {
                let mut tx = pool.begin().await?;
                for row in batch {
                    sqlx::query("INSERT INTO t (n) VALUES ($1) ON CONFLICT DO NOTHING")
                        .bind(row.0)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await
            }))
        }

        fn order(&self, other: &Self) -> Ordering {
            self.0.cmp(&other.0)
        }
    }

    async fn rows(db: &Db) -> Vec<i64> {
        db.run(|pool| sqlx::query("SELECT n FROM t ORDER BY n").fetch_all(pool))
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    fn pending(n: i64) -> Pending<Row> {
        Pending {
            item: Row(n),
            committed: Some(oneshot::channel().0),
        }
    }

    #[test]
    fn a_small_batch_takes_what_is_queued_and_a_large_one_is_left_alone() {
        let below = i64::try_from(GATHER_BELOW).unwrap();
        let (tx, mut rx) = mpsc::channel(QUEUE);
        for n in 0..below + 10 {
            tx.try_send(pending(n)).unwrap();
        }
        let mut batch = vec![rx.try_recv().unwrap()];
        gather(&mut rx, &mut batch, None);
        assert_eq!(batch.len(), GATHER_BELOW + 10, "everything queued joins a small batch");

        for n in 0..5 {
            tx.try_send(pending(n)).unwrap();
        }
        let mut large: Vec<Pending<Row>> = (0..below).map(pending).collect();
        gather(&mut rx, &mut large, Some(Instant::now()));
        assert_eq!(large.len(), GATHER_BELOW, "a batch of {GATHER_BELOW} commits as it is");
        assert_eq!(rx.len(), 5);
    }

    #[test]
    fn small_batches_are_paced_and_a_lone_item_after_a_quiet_spell_is_not() {
        assert_eq!(pause(None, 1), None, "the first commit waits for nothing");
        let long_ago = Instant::now().checked_sub(PACE * 2).unwrap();
        assert_eq!(pause(Some(long_ago), 1), None, "nor one after a quiet spell");
        let rest = pause(Some(Instant::now()), 1).expect("a small batch right after a commit waits");
        assert!(rest <= PACE && rest > PACE / 2, "{rest:?}");
        assert_eq!(pause(Some(Instant::now()), GATHER_BELOW), None, "a full one does not");

        // A small batch right after a commit waits out the pace and takes what is queued.
        let (tx, mut rx) = mpsc::channel(QUEUE);
        let mut batch = vec![pending(0)];
        for n in 1..4 {
            tx.try_send(pending(n)).unwrap();
        }
        let started = Instant::now();
        gather(&mut rx, &mut batch, Some(started));
        assert!(started.elapsed() >= PACE, "{:?}", started.elapsed());
        assert_eq!(batch.len(), 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_commit_in_batches_and_a_bad_row_sinks_only_itself() {
        let dir = tempfile::tempdir().unwrap();
        for url in [format!("sqlite://{}/g.db", dir.path().display())] {
            let db = Db::connect_lazy(&url).unwrap();
            db.prepare().unwrap();
            db.run(|pool| {
                sqlx::raw_sql("CREATE TABLE IF NOT EXISTS t (n BIGINT PRIMARY KEY CHECK (n <> 13))").execute(pool)
            })
            .await
            .unwrap();
            let batches = Arc::new(AtomicUsize::new(0));
            let counted = batches.clone();
            let group = GroupCommit::new(db.clone(), "test-writer", Duration::from_secs(5), move |_| {
                counted.fetch_add(1, AtomicOrdering::Relaxed);
            });
            let writes = (0..40).map(|n| {
                let group = group.clone();
                tokio::spawn(async move { (n, group.write(Row(n)).await) })
            });
            let mut outcomes = Vec::new();
            for write in writes {
                outcomes.push(write.await.unwrap());
            }
            for (n, written) in &outcomes {
                if *n == 13 {
                    assert!(
                        matches!(written, Written::Refused(m) if m.contains("CHECK")),
                        "{url}: the database refuses row 13's data: {written:?}"
                    );
                } else {
                    assert_eq!(*written, Written::Committed, "{url}: row {n}");
                }
            }
            let stored = rows(&db).await;
            assert_eq!(stored.len(), 39, "{url}: {stored:?}");
            assert!(!stored.contains(&13));
            assert_eq!(
                group.write(Row(5)).await,
                Written::Committed,
                "{url}: writing a row twice is harmless"
            );
            let batches = batches.load(AtomicOrdering::Relaxed);
            assert!((1..=41).contains(&batches), "{batches} batches");
            // A table that is gone concerns every row alike: not a refusal of one row's data.
            db.run(|pool| sqlx::raw_sql("DROP TABLE t").execute(pool))
                .await
                .unwrap();
            assert_eq!(group.write(Row(50)).await, Written::Failed);
        }
    }
}
