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

/// Parses one JSON document (`what` names it in messages), every error named by the path
/// of its field; a syntax error where no field is open, by its line and column alone.
/// Text after the document is refused.
pub fn parse_json<T: serde::de::DeserializeOwned>(
    json: &[u8],
    what: &str,
) -> Result<T, Vec<ConfigError>> {
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let doc: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        // serde_path_to_error writes the root as "." and a field it cannot name (a bad
        // key) as "?": name what holds it instead.
        let path = e.path().to_string();
        let path = match path.as_str() {
            "." | "?" => String::new(),
            p => p.strip_suffix(".?").unwrap_or(p).to_string(),
        };
        vec![ConfigError::new(path, e.into_inner().to_string())]
    })?;
    deserializer.end().map_err(|e| {
        vec![ConfigError::new(
            "",
            format!("unexpected text after the {what}: {e}"),
        )]
    })?;
    Ok(doc)
}

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
