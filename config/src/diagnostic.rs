//! Errors and warnings about a configuration, each naming where it came from, which field,
//! and why.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How serious a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The key is well-formed but Keelson cannot honour it; the rest is applied.
    Warning,
    /// The configuration is rejected and nothing is applied.
    Error,
}

/// One finding about a configuration document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The document it is about, e.g. `fw_cfg opt/com.coreos/config` or `nocloud user-data`.
    pub source: String,
    /// Path of the field in that document, e.g. `storage.files[1].mode`; `$` for the whole
    /// document.
    pub field: String,
    /// What is wrong and what to do about it.
    pub reason: String,
}

impl Diagnostic {
    /// An error.
    pub fn error(source: &str, field: impl Into<String>, reason: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            source: source.to_owned(),
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// A warning.
    pub fn warning(source: &str, field: impl Into<String>, reason: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            source: source.to_owned(),
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// True for an error.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        write!(
            f,
            "{severity}: {}: {}: {}",
            self.source, self.field, self.reason
        )
    }
}

/// The warning for a key Keelson cannot honour because it has no shell, no SSH and no
/// user accounts.
pub fn no_shell(source: &str, field: impl Into<String>, what: &str) -> Diagnostic {
    Diagnostic::warning(
        source,
        field,
        format!(
            "{what} is not applied: Keelson has no shell, no SSH and no user accounts; \
             manage the machine through its API (keelctl)"
        ),
    )
}

/// Collects diagnostics while walking a document.
#[derive(Debug, Default)]
pub struct Findings {
    source: String,
    /// Everything found so far, in document order.
    pub diagnostics: Vec<Diagnostic>,
}

impl Findings {
    /// Findings about the document `source`.
    pub fn new(source: &str) -> Findings {
        Findings {
            source: source.to_owned(),
            diagnostics: Vec::new(),
        }
    }

    /// The document's name.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Records an error.
    pub fn error(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        let diagnostic = Diagnostic::error(&self.source, field, reason);
        self.diagnostics.push(diagnostic);
    }

    /// Records a warning.
    pub fn warning(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        let diagnostic = Diagnostic::warning(&self.source, field, reason);
        self.diagnostics.push(diagnostic);
    }

    /// Records a finding about `document` (another document of the same seed) or, when
    /// `None`, about this one.
    pub fn record(
        &mut self,
        severity: Severity,
        document: Option<String>,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) {
        self.diagnostics.push(Diagnostic {
            severity,
            source: document.unwrap_or_else(|| self.source.clone()),
            field: field.into(),
            reason: reason.into(),
        });
    }

    /// Records the no-shell warning for `field`.
    pub fn no_shell(&mut self, field: impl Into<String>, what: &str) {
        let diagnostic = no_shell(&self.source, field, what);
        self.diagnostics.push(diagnostic);
    }

    /// True when an error has been recorded.
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}
