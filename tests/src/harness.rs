//! Runs host binaries as processes in private sandboxes.

use callplane_plugin_api::testing::ScratchPostgres;
use std::io::{BufRead, BufReader, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a process may take to become ready or to exit.
pub const PROCESS_TIMEOUT: Duration = Duration::from_secs(60);

/// How long an exited process's output may take to be read to its end.
const OUTPUT_DRAIN: Duration = Duration::from_secs(10);

/// Polls `done` every 20 ms until it holds.
///
/// Use it instead of a fixed sleep before asserting on a state that another thread or process
/// reaches in its own time (a line logged, a row stored, readiness turned off): a sleep long
/// enough on a quiet machine is too short on a busy one.
///
/// # Panics
/// When `done` still does not hold after `timeout`; the message says what was awaited.
pub fn eventually(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < timeout, "not within {timeout:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the threads reading an exited process's output have read it to its end (at most
/// [`OUTPUT_DRAIN`]: a pipe still held open elsewhere leaves the lines read so far).
fn drain(readers: &[JoinHandle<()>]) {
    let started = Instant::now();
    while !readers.iter().all(JoinHandle::is_finished) && started.elapsed() < OUTPUT_DRAIN {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Outcome {
    /// Exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Outcome {
    /// The finding ids (`CPnnn`) printed in `[BOOT] ❌`/`⚠️` lines, in order.
    pub fn finding_ids(&self) -> Vec<String> {
        finding_ids(&format!("{}\n{}", self.stdout, self.stderr))
    }
}

/// The finding ids printed in boot lines of `text`, in order.
pub fn finding_ids(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let rest = line
                .split_once("[BOOT][FATAL] ")
                .or_else(|| line.split_once("[BOOT][WARN] "))?
                .1;
            let id = rest.split_whitespace().next()?;
            (id.starts_with("CP") && id.len() == 5).then(|| id.to_owned())
        })
        .collect()
}

/// A private directory with its own database and log directory, the working directory of every
/// process started from it (so no stray `callplane.toml` is read).
#[derive(Debug)]
pub struct Sandbox {
    dir: tempfile::TempDir,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Sandbox {
    /// A fresh sandbox.
    ///
    /// # Panics
    /// When no temporary directory can be made.
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temporary directory"),
        }
    }

    /// The sandbox directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The log directory processes write to.
    pub fn log_dir(&self) -> PathBuf {
        self.path().join("logs")
    }

    /// Everything every log file in the log directory holds.
    pub fn log_text(&self) -> String {
        let Ok(entries) = std::fs::read_dir(self.log_dir()) else {
            return String::new();
        };
        let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        files.iter().filter_map(|f| std::fs::read_to_string(f).ok()).collect()
    }

    /// A command for `bin` with a clean callplane environment: every `CALLPLANE_*`, `TWILIO_*` and
    /// `RUST_LOG` variable of the test process is removed, then the sandbox's database, log
    /// directory, an ephemeral port and a short drain are set. `env` overrides those.
    pub fn command(&self, bin: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(bin);
        cmd.args(args).current_dir(self.path());
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("CALLPLANE_") || key.starts_with("TWILIO_") || key == "RUST_LOG" {
                cmd.env_remove(key.as_ref());
            }
        }
        let db = format!("sqlite://{}/callplane.db", self.path().display());
        cmd.env("CALLPLANE_DATABASE_URL", db)
            .env("CALLPLANE_LOG_DIR", self.log_dir())
            .env("CALLPLANE_BIND", "127.0.0.1:0")
            .env("CALLPLANE_SHUTDOWN_DRAIN_SECS", "1");
        for (key, value) in env {
            cmd.env(key, value);
        }
        cmd
    }

    /// Runs `bin args…` to completion.
    ///
    /// # Panics
    /// When the binary cannot start or does not finish within [`PROCESS_TIMEOUT`].
    pub fn run(&self, bin: &Path, args: &[&str], env: &[(&str, &str)]) -> Outcome {
        self.run_with_input(bin, args, env, "")
    }

    /// Runs `bin args…` to completion with `input` on its standard input.
    ///
    /// # Panics
    /// When the binary cannot start or does not finish within [`PROCESS_TIMEOUT`].
    pub fn run_with_input(&self, bin: &Path, args: &[&str], env: &[(&str, &str)], input: &str) -> Outcome {
        run_command(self.command(bin, args, env), input)
    }

    /// Runs `serve` while this test holds the configured port, and returns what it printed.
    ///
    /// The host validates before it binds, so a refused boot exits 78; had it tried to bind, the
    /// held port would have made it exit 1 instead. The exit code therefore proves that no port was
    /// bound (and the port is still ours afterwards).
    ///
    /// # Panics
    /// When no port can be reserved.
    pub fn serve_refused(&self, bin: &Path, env: &[(&str, &str)]) -> Outcome {
        let held = TcpListener::bind("127.0.0.1:0").expect("reserve a port");
        let bind = held.local_addr().expect("reserved address").to_string();
        let mut env = env.to_vec();
        env.push(("CALLPLANE_BIND", &bind));
        let outcome = self.run(bin, &["serve"], &env);
        assert!(
            !outcome.stdout.contains("[BOOT] ready"),
            "the host must not get ready:\n{}",
            outcome.stdout
        );
        drop(held); // held until the host has exited
        outcome
    }

    /// Creates a business with `phone` (id 1 on a fresh database) and one user of it with the
    /// real `callplane admin` commands (the password goes through standard input).
    ///
    /// # Panics
    /// When either command fails.
    pub fn bootstrap(&self, bin: &Path, env: &[(&str, &str)], phone: &str, user: (&str, &str, &str)) {
        let (email, role, password) = user;
        let business = self.run(
            bin,
            &["admin", "create-business", "--name", "Test business", "--phone", phone],
            env,
        );
        assert_eq!(business.code, Some(0), "{}{}", business.stdout, business.stderr);
        let args = [
            "admin",
            "create-user",
            "--business",
            "1",
            "--email",
            email,
            "--role",
            role,
        ];
        let created = self.run_with_input(bin, &args, env, &format!("{password}\n"));
        assert_eq!(created.code, Some(0), "{}{}", created.stdout, created.stderr);
    }

    /// Starts `bin serve` and waits for its `[BOOT] ready bind=…` line.
    ///
    /// # Panics
    /// When the host exits or is not ready within [`PROCESS_TIMEOUT`].
    pub fn serve(&self, bin: &Path, env: &[(&str, &str)]) -> Server {
        self.serve_with(bin, &["serve"], env)
    }

    /// Starts `bin args…` (a `serve` with options) and waits for its `[BOOT] ready bind=…` line.
    ///
    /// # Panics
    /// When the host exits or is not ready within [`PROCESS_TIMEOUT`].
    pub fn serve_with(&self, bin: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = self
            .command(bin, args, env)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let lines = lines.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    lines.lock().expect("output lock").push(line);
                }
            }));
        }
        let started = Instant::now();
        loop {
            let ready = lines.lock().expect("output lock").iter().find_map(|l| {
                l.split_once("[BOOT] ready bind=")
                    .and_then(|(_, rest)| rest.split_whitespace().next()?.parse::<SocketAddr>().ok())
            });
            if let Some(addr) = ready {
                return Server {
                    child,
                    addr,
                    lines,
                    readers,
                    agent: agent(),
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                drain(&readers);
                panic!(
                    "host exited with {status} before ready:\n{}",
                    lines.lock().expect("output lock").join("\n")
                );
            }
            if started.elapsed() > PROCESS_TIMEOUT {
                let _ = child.kill();
                panic!(
                    "host not ready within {PROCESS_TIMEOUT:?}:\n{}",
                    lines.lock().expect("output lock").join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Runs `command` to completion with `input` on its standard input, killing it after
/// [`PROCESS_TIMEOUT`].
///
/// # Panics
/// When it cannot start or does not finish in time.
pub fn run_command(mut command: Command, input: &str) -> Outcome {
    let what = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).expect("write stdin");
    }
    let pid = child.id();
    let waiter = std::thread::spawn(move || child.wait_with_output());
    let started = Instant::now();
    while !waiter.is_finished() {
        if started.elapsed() > PROCESS_TIMEOUT {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            panic!("{what} did not finish within {PROCESS_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = waiter.join().expect("waiter thread").expect("process output");
    Outcome {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        // A redirect is an answer to check (the console's sign-in 303), not one to follow.
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(60)))
        .max_idle_connections(0)
        .build()
        .into()
}

/// Sends one request with `agent` (which may be configured for TLS) and reads the whole answer.
///
/// # Errors
/// A refused connection, a timeout, a protocol or TLS error.
pub fn send(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<Reply, ureq::Error> {
    let mut builder = ureq::http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(body.unwrap_or("").to_owned()).map_err(ureq::Error::from)?;
    let mut response = agent.run(request)?;
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string()?;
    Ok(Reply { status, headers, body })
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercase.
    pub headers: Vec<(String, String)>,
    /// Body text.
    pub body: String,
}

impl Reply {
    /// The first header named `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    ///
    /// # Panics
    /// When the body is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// A running host.
#[derive(Debug)]
pub struct Server {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
    /// The threads that read its standard output and error into `lines`.
    readers: Vec<JoinHandle<()>>,
    agent: ureq::Agent,
}

impl Server {
    /// `http://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends a request.
    ///
    /// # Panics
    /// On a transport error (refused connection, timeout).
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Reply {
        self.try_request(method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// Sends a request; transport errors are returned.
    ///
    /// # Errors
    /// A refused connection, a timeout, a protocol error.
    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Result<Reply, ureq::Error> {
        send(&self.agent, method, &self.url(path), headers, body)
    }

    /// Signs in over `POST /api/auth/login` and returns the bearer token.
    ///
    /// # Panics
    /// When the sign-in is refused.
    pub fn login(&self, email: &str, password: &str) -> String {
        let body = serde_json::json!({ "email": email, "password": password }).to_string();
        let reply = self.request(
            "POST",
            "/api/auth/login",
            &[("content-type", "application/json")],
            Some(&body),
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.json()["token"].as_str().expect("a token").to_owned()
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Reply {
        self.request("GET", path, &[], None)
    }

    /// Sends `signal` (e.g. `TERM`) to the process.
    ///
    /// # Panics
    /// When `kill` cannot run.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// The process id (for `/proc/<pid>/…`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory in KiB (`VmRSS` of `/proc/<pid>/status`).
    ///
    /// # Panics
    /// When the process is gone.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("/proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS")
    }

    /// Everything the process printed so far.
    pub fn output(&self) -> String {
        self.lines.lock().expect("output lock").join("\n")
    }

    /// Waits until the process has printed `needle`, and returns everything it printed so far.
    ///
    /// For a line the process prints in its own time (a request reached, a signal taken): the
    /// host writes its console from a background thread and the harness reads it on another, so a
    /// line may come well after what it reports.
    ///
    /// # Panics
    /// When `needle` is not printed within [`PROCESS_TIMEOUT`].
    pub fn wait_for_output(&self, needle: &str) -> String {
        let started = Instant::now();
        loop {
            let output = self.output();
            if output.contains(needle) {
                return output;
            }
            assert!(
                started.elapsed() < PROCESS_TIMEOUT,
                "{needle:?} not printed within {PROCESS_TIMEOUT:?}:\n{output}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit, then for its output to be read to the end, and returns
    /// its exit status and everything it printed.
    ///
    /// # Panics
    /// When it does not exit within [`PROCESS_TIMEOUT`].
    pub fn wait(mut self) -> (ExitStatus, String) {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                drain(&self.readers);
                return (status, self.output());
            }
            assert!(
                started.elapsed() < PROCESS_TIMEOUT,
                "host did not exit:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh PostgreSQL database on the server named by `TEST_POSTGRES_URL`, dropped on drop.
#[derive(Debug)]
pub struct PgDatabase {
    scratch: ScratchPostgres,
    /// The URL of the fresh database.
    pub url: String,
}

impl PgDatabase {
    /// Creates a database, or returns `None` (saying so on stderr) when `TEST_POSTGRES_URL` is not
    /// set. `.ci/run` sets it, so nothing is skipped in CI.
    ///
    /// # Panics
    /// When the server refuses to create the database.
    pub fn create(test: &str) -> Option<Self> {
        let scratch = ScratchPostgres::create(test)?;
        let url = scratch.url.clone();
        Some(Self { scratch, url })
    }

    /// Runs `sql` as the administrator (on the server's maintenance database).
    pub fn admin(&self, sql: &str) {
        self.scratch.admin(sql);
    }

    /// Runs `sql` (one or more statements) in the fresh database, as the administrator.
    ///
    /// # Panics
    /// When a statement fails.
    pub fn execute(&self, sql: &str) {
        use callplane_plugin_api::storage::{Db, sqlx};
        let (url, sql) = (self.url.clone(), sql.to_owned());
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let db = Db::connect_lazy(&url).expect("a postgres URL");
                db.run(|pool| sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone())).execute(pool))
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
                db.close().await;
            });
        })
        .join()
        .expect("statement thread");
    }

    /// The URL of the fresh database for another role (`user`, no password).
    pub fn url_as(&self, user: &str) -> String {
        let (scheme, rest) = self.url.split_once("://").expect("a URL");
        let host = rest.split_once('@').map_or(rest, |(_, host)| host);
        format!("{scheme}://{user}@{host}")
    }

    /// The first column of the first row of `sql`, run in the fresh database.
    ///
    /// # Panics
    /// When the query fails.
    pub fn scalar(&self, sql: &str) -> i64 {
        use callplane_plugin_api::storage::{Db, sqlx};
        let (url, sql) = (self.url.clone(), sql.to_owned());
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let db = Db::connect_lazy(&url).expect("a postgres URL");
                let value: (i64,) = db
                    .run(|pool| sqlx::query_as(sqlx::AssertSqlSafe(sql.clone())).fetch_one(pool))
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
                db.close().await;
                value.0
            })
        })
        .join()
        .expect("query thread")
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        self.scratch.name()
    }
}
