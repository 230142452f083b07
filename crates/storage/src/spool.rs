//! The durable local spool: what could not reach the database waits here, one JSON line per
//! record, each `fsync`ed before the caller answers, until [`Spool::replay`] moves it in.
//!
//! The spool is per instance (a file on local disk). Appends and replays share one async lock, so
//! a line is never lost between reading the file and rewriting it.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use tokio::sync::Mutex;

/// A spool file.
#[derive(Debug)]
pub struct Spool {
    path: PathBuf,
    lock: Mutex<()>,
}

impl Spool {
    /// Opens (creating the directory and file) the spool at `path`.
    ///
    /// # Errors
    /// When the directory or file cannot be created.
    pub fn open(path: impl Into<PathBuf>) -> std::io::Result<Self> {
        let path = path.into();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(Self {
            path,
            lock: Mutex::new(()),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record (a single line of JSON) and `fsync`s it.
    ///
    /// # Errors
    /// An I/O error (disk full, …): the record is not durable and the caller must say so.
    pub async fn append(&self, line: &str) -> std::io::Result<()> {
        debug_assert!(!line.contains('\n'), "one record per line");
        let _guard = self.lock.lock().await;
        let mut file = OpenOptions::new().append(true).open(&self.path)?;
        file.write_all(format!("{line}\n").as_bytes())?;
        file.sync_data()
    }

    /// How many records wait.
    ///
    /// # Errors
    /// When the file cannot be read.
    pub async fn backlog(&self) -> std::io::Result<usize> {
        let _guard = self.lock.lock().await;
        Ok(read_lines(&self.path)?.len())
    }

    /// Offers each waiting record, oldest first, to `apply`; stops at the first failure. The
    /// records applied are removed (the file is rewritten atomically with the rest). Returns how
    /// many were applied.
    ///
    /// # Errors
    /// An I/O error reading or rewriting the spool (nothing is lost: the old file stays).
    pub async fn replay<F, Fut, E>(&self, mut apply: F) -> std::io::Result<usize>
    where
        F: FnMut(String) -> Fut,
        Fut: std::future::Future<Output = Result<(), E>>,
    {
        let _guard = self.lock.lock().await;
        let lines = read_lines(&self.path)?;
        let mut applied = 0;
        for line in &lines {
            if apply(line.clone()).await.is_err() {
                break;
            }
            applied += 1;
        }
        if applied > 0 {
            let tmp = self.path.with_extension("replaying");
            let mut file = File::create(&tmp)?;
            for line in &lines[applied..] {
                writeln!(file, "{line}")?;
            }
            file.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir)?.sync_all()?;
            }
        }
        Ok(applied)
    }
}

fn read_lines(path: &Path) -> std::io::Result<Vec<String>> {
    let file = File::open(path)?;
    BufReader::new(file)
        .lines()
        .filter(|l| l.as_ref().map_or(true, |l| !l.trim().is_empty()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn appended_records_survive_until_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool/calls.jsonl");
        let spool = Spool::open(&path).unwrap();
        for i in 0..5 {
            spool.append(&format!("{{\"n\":{i}}}")).await.unwrap();
        }
        assert_eq!(spool.backlog().await.unwrap(), 5);
        // A reopened spool (a restarted process) sees the same records.
        let reopened = Spool::open(&path).unwrap();
        assert_eq!(reopened.backlog().await.unwrap(), 5);

        // The database comes back for three records, then fails again.
        let mut seen = Vec::new();
        let applied = reopened
            .replay(|line| {
                seen.push(line);
                let ok = seen.len() <= 3;
                async move { if ok { Ok(()) } else { Err(()) } }
            })
            .await
            .unwrap();
        assert_eq!(applied, 3);
        assert_eq!(seen.len(), 4, "stops at the first failure");
        assert_eq!(reopened.backlog().await.unwrap(), 2);
        let rest = std::fs::read_to_string(&path).unwrap();
        assert_eq!(rest, "{\"n\":3}\n{\"n\":4}\n");
        let applied = reopened.replay(|_| async { Ok::<(), ()>(()) }).await.unwrap();
        assert_eq!(applied, 2);
        assert_eq!(reopened.backlog().await.unwrap(), 0);
    }
}
