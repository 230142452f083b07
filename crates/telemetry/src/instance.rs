//! The instance id: a stable name per process (`CALLPLANE_INSTANCE_ID`, by default the host name
//! and the port), on every log line (`instance=…`) and on every call event the process records,
//! so that any line or event says which of several instances behind a load balancer wrote it.

use std::sync::OnceLock;

static INSTANCE: OnceLock<String> = OnceLock::new();

/// Names this process `id` on every log line from now on; only the first call counts.
pub fn set_instance_id(id: &str) {
    let _ = INSTANCE.set(id.to_owned());
}

/// This process's instance id, once [`set_instance_id`] named it.
pub fn instance_id() -> Option<&'static str> {
    INSTANCE.get().map(String::as_str)
}

/// This machine's name (`/proc/sys/kernel/hostname`, else `$HOSTNAME`, else `localhost`).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "localhost".to_owned())
}
