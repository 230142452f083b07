//! What both benchmark drivers read of a server process (`/proc`) and how they stop it.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The release binary `name` beside this driver (`target/release/`), which must have been built.
pub(crate) fn built(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().context("executable directory")?.join(name);
    if !path.exists() {
        bail!(
            "{} is missing: run `cargo build --release -p callplane -p callplane-bench` first",
            path.display()
        );
    }
    Ok(path)
}

/// The number in the environment variable `name`, or `default`.
pub(crate) fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Stops `child` with SIGTERM (its drain), killing it after 40 s.
pub(crate) fn stop(mut child: Child) -> anyhow::Result<()> {
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status()?;
    let started = Instant::now();
    while child.try_wait()?.is_none() {
        if started.elapsed() > Duration::from_secs(40) {
            child.kill()?;
            bail!("the server did not stop within 40 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// utime + stime of `pid`, in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').context("/proc stat format")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command name: state is field 3, utime 14 and stime 15 (proc(5)).
    let utime: u64 = fields.get(11).context("utime")?.parse()?;
    let stime: u64 = fields.get(12).context("stime")?.parse()?;
    Ok(utime + stime)
}

/// A memory line of `/proc/<pid>/status` (`VmRSS`, `VmHWM`) in MB.
pub(crate) fn memory_mb(pid: u32, field: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("memory field")?;
    Ok(kb / 1024.0)
}

/// Clock ticks per second (`getconf CLK_TCK`).
pub(crate) fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

/// A loopback port nothing listens on now.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `bin` with `args`, run in `dir`, with none of this environment's `CALLPLANE_*`, `TWILIO_*` or
/// `RUST_LOG` (the scenario sets its own).
pub(crate) fn clean_command(bin: &Path, dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(args).current_dir(dir);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CALLPLANE_") || key.starts_with("TWILIO_") || key == "RUST_LOG" {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd
}
