//! A failed command: one or more lines for stderr, each printed after `keygate: `.

use keygate_core::error::ConfigError;
use std::fmt::Display;
use std::path::Path;

#[derive(Debug)]
pub struct Error {
    pub lines: Vec<String>,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(line: impl Into<String>) -> Self {
        Error {
            lines: vec![line.into()],
        }
    }

    /// A problem with a file, named first so that the user knows which one.
    pub fn at(path: &Path, problem: impl Display) -> Self {
        Error::new(format!("{}: {problem}", path.display()))
    }

    /// Every problem the library found in a file, one line each, named by field path.
    pub fn each_at(path: &Path, problems: &[ConfigError]) -> Self {
        Error {
            lines: problems
                .iter()
                // Where a syntax error leaves no field to name, the message has the line and
                // column.
                .map(|p| format!("{}: {p}", path.display()))
                .collect(),
        }
    }
}
