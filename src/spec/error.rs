//! Validation findings: errors refuse the spec, warnings are reported and let it through.

use std::fmt;

/// One finding, printed as `path: message`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every error found in a spec, in document order. Never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecErrors(pub Vec<Finding>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the load-balancer spec is invalid ({} error",
            self.0.len()
        )?;
        if self.0.len() != 1 {
            f.write_str("s")?;
        }
        f.write_str(")")?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl SpecErrors {
    /// Whether some error sits at exactly this path (tests and callers that branch on a field).
    pub fn has(&self, path: &str) -> bool {
        self.0.iter().any(|e| e.path == path)
    }
}

/// Collects findings while the spec is walked.
#[derive(Debug, Default)]
pub struct Findings {
    pub errors: Vec<Finding>,
    pub warnings: Vec<Finding>,
}

impl Findings {
    pub fn error(&mut self, path: impl fmt::Display, message: impl Into<String>) {
        self.errors.push(Finding {
            path: path.to_string(),
            message: message.into(),
        });
    }

    pub fn warning(&mut self, path: impl fmt::Display, message: impl Into<String>) {
        self.warnings.push(Finding {
            path: path.to_string(),
            message: message.into(),
        });
    }
}

/// Shows a refused value in an error without letting it break the line or flood the terminal.
pub fn shown(value: &str) -> String {
    const MAX: usize = 64;
    let mut s: String = value.chars().take(MAX).collect();
    if value.chars().count() > MAX {
        s.push('…');
    }
    format!("{s:?}")
}
