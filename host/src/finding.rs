//! Boot findings: what `serve` and `check` report before anything is served.

use std::fmt;

use serde::Serialize;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Reported; the host still starts.
    Warning,
    /// The host refuses to start (exit 78).
    Error,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Warning => "warning",
            Self::Error => "error",
        })
    }
}

/// One problem found while validating configuration, plugins and the route table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// `CP001` … `CP010`, `CP1xx` for deploy checks.
    pub id: &'static str,
    /// Error or warning.
    pub level: Level,
    /// The plugin concerned, if any.
    pub plugin: Option<String>,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: String,
}

impl Finding {
    /// An error finding.
    pub fn error(id: &'static str, plugin: Option<&str>, message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            id,
            level: Level::Error,
            plugin: plugin.map(str::to_owned),
            message: message.into(),
            hint: hint.into(),
        }
    }

    /// A warning finding.
    pub fn warning(
        id: &'static str,
        plugin: Option<&str>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Self {
            level: Level::Warning,
            ..Self::error(id, plugin, message, hint)
        }
    }

    /// The two text lines of this finding, exactly as the boot log prints them.
    pub fn lines(&self) -> [String; 2] {
        let head = match self.level {
            Level::Error => format!("[BOOT] ❌ [BOOT][FATAL] {} {}", self.id, self.message),
            Level::Warning => format!("[BOOT] ⚠️ [BOOT][WARN] {} {}", self.id, self.message),
        };
        [head, format!("[BOOT]    hint: {}", self.hint)]
    }
}

/// Whether any finding is at or above `level`.
pub fn any_at_least(findings: &[Finding], level: Level) -> bool {
    findings.iter().any(|f| f.level >= level)
}

/// Counts errors and warnings.
pub fn counts(findings: &[Finding]) -> (usize, usize) {
    let errors = findings.iter().filter(|f| f.level == Level::Error).count();
    (errors, findings.len() - errors)
}
