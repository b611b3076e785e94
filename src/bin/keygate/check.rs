//! `keygate check CONFIG`: a plugin configuration, read by the filter's own parser.

use crate::error::{Error, Result};
use keygate::config::Config;
use std::path::Path;

/// On success one line; otherwise every problem on stdout as `CONFIG: field: message`
/// (the findings, like a compiler's), then the failure on stderr.
pub fn run(path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| Error::at(path, format!("cannot read: {e}")))?;
    match Config::parse(&bytes) {
        Ok(config) => {
            println!(
                "{}: ok: {} keys, {} rules",
                path.display(),
                config.keys_loaded(),
                config.rules.rules.len()
            );
            Ok(())
        }
        Err(problems) => {
            for problem in &problems {
                println!("{}: {problem}", path.display());
            }
            let count = problems.len();
            Err(Error::at(
                path,
                format!(
                    "{count} problem{}: the filter would refuse this configuration",
                    if count == 1 { "" } else { "s" }
                ),
            ))
        }
    }
}
