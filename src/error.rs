//! A configuration problem, named by the path of the field that holds it.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// Where the problem is, as `keys[2].expires_at`; empty for the document as a whole.
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// The field each error names (its text before the first `:`), for tests.
#[cfg(test)]
pub(crate) fn fields_at_fault(errors: &[String]) -> Vec<&str> {
    errors
        .iter()
        .map(|e| e.split(':').next().unwrap_or_default())
        .collect()
}

/// Asserts that there are as many errors as `expect` has rows, each beginning with its row,
/// for tests.
#[cfg(test)]
pub(crate) fn assert_errors_start_with(errors: &[String], expect: &[&str]) {
    assert_eq!(errors.len(), expect.len(), "{errors:#?}");
    for (got, want) in errors.iter().zip(expect) {
        assert!(got.starts_with(want), "got {got:?}, want {want:?}");
    }
}
