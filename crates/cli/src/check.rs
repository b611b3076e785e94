//! `keygate check CONFIG`: a plugin configuration, read by the filter's own parser.

use crate::error::{Error, Result};
use keygate_core::config::{Config, KeySource};
use std::path::Path;

/// On success one line; otherwise every problem on stdout as `CONFIG: field: message`
/// (the findings, like a compiler's), then the failure on stderr.
pub fn run(path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| Error::at(path, format!("cannot read: {e}")))?;
    match Config::parse(&bytes) {
        Ok(config) => {
            let keys = match &config.keys {
                KeySource::Inline(set) => count(set.len(), "key"),
                KeySource::KeySet(_) => "key set fetched over HTTP (key_set)".to_string(),
                KeySource::Lookup(_) => "keys looked up one by one (lookup)".to_string(),
            };
            println!(
                "{}: ok: {keys}, {}",
                path.display(),
                count(config.rules.rules.len(), "rule")
            );
            Ok(())
        }
        Err(problems) => {
            for problem in &problems {
                println!("{}: {problem}", path.display());
            }
            Err(Error::at(
                path,
                format!(
                    "{}: the filter would refuse this configuration",
                    count(problems.len(), "problem")
                ),
            ))
        }
    }
}

fn count(n: usize, thing: &str) -> String {
    format!("{n} {thing}{}", if n == 1 { "" } else { "s" })
}
