//! Command lines that do not parse: clap's error as one `keygate: ` line, and the checks
//! that give an argument a hint of what to write instead.

/// `keygate hash KEY`: the key is read on stdin. The argument is not repeated: it is a key.
pub const HASH_READS_STDIN: &str = "hash reads the key on stdin, not from the command line: \
     keygate hash < key.txt, or printf '%s\\n' \"$KEY\" | keygate hash";

/// What to say about arguments `keygate hash` does not take (clap hands over anything it
/// does not know, so that a key is never echoed): a mistyped option is named, as clap would;
/// anything else is taken for a key.
pub fn hash_arguments(given: &[String]) -> String {
    let option = given.iter().find(|arg| {
        arg.strip_prefix("--").is_some_and(|name| {
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
        })
    });
    match option {
        Some(option) => format!(
            "unexpected argument '{option}' found: hash takes --strip-prefix PREFIX or \
             --no-strip, and reads the key on stdin (see keygate hash --help)"
        ),
        None => HASH_READS_STDIN.to_string(),
    }
}

/// clap's error, which spans several lines (message, tips, usage), as one line: the message,
/// any tip in parentheses, then the usage and where the help is (`subcommand`: the one the
/// command line named, if any).
pub fn one_line(error: &clap::Error, subcommand: Option<&str>) -> String {
    let text = error.render().to_string();
    let mut message: Vec<String> = Vec::new();
    let mut tips: Vec<String> = Vec::new();
    let mut usage = None;
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    while let Some(line) = lines.next() {
        if let Some(rest) = line.strip_prefix("Usage:") {
            // The usage is on this line, or on the next when clap wraps it.
            usage = Some(match rest.trim() {
                "" => lines.next().unwrap_or_default().to_string(),
                rest => rest.to_string(),
            });
        } else if let Some(tip) = line.strip_prefix("tip:") {
            tips.push(tip.trim().to_string());
        } else if line.starts_with("For more information") {
            continue;
        } else {
            message.push(
                line.strip_prefix("error:")
                    .unwrap_or(line)
                    .trim()
                    .to_string(),
            );
        }
    }
    // "the following required arguments were not provided:" is followed by one per line.
    let mut out = match message.split_first() {
        Some((first, rest)) if first.ends_with(':') && !rest.is_empty() => {
            format!("{first} {}", rest.join(", "))
        }
        _ => message.join(" "),
    };
    if !tips.is_empty() {
        out.push_str(&format!(" ({})", tips.join("; ")));
    }
    let help = match subcommand {
        Some(name) => format!("keygate {name} --help"),
        None => "keygate --help".to_string(),
    };
    match usage {
        Some(usage) => out.push_str(&format!("; usage: {usage} (see {help})")),
        None => out.push_str(&format!("; see {help}")),
    }
    out
}

/// `--listen`: a bare port (`8081`, or `:8081` as Go servers take it) gets the two addresses
/// it most likely meant; any other value is left to `keygate serve`, which names what it
/// cannot listen on.
pub fn listen_address(text: &str) -> Result<String, String> {
    match text.strip_prefix(':').unwrap_or(text).parse::<u16>() {
        Ok(port) => Err(format!(
            "give HOST:PORT, e.g. 127.0.0.1:{port} (this machine only) or 0.0.0.0:{port} \
             (every interface)"
        )),
        Err(_) => Ok(text.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_names_a_mistyped_option_but_never_a_key() {
        let given =
            |args: &[&str]| hash_arguments(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>());
        assert!(given(&["--no-stirp"]).starts_with("unexpected argument '--no-stirp' found"));
        for key in ["kg_abc", "-abc", "--ABC", "--a_b", "--"] {
            assert_eq!(given(&[key]), HASH_READS_STDIN, "{key}");
        }
    }

    #[test]
    fn a_bare_port_is_refused_with_host_and_port() {
        for given in [
            "127.0.0.1:8081",
            "0.0.0.0:0",
            "localhost:80",
            "[::1]:8081",
            "x",
        ] {
            assert_eq!(listen_address(given).as_deref(), Ok(given));
        }
        for bare in ["8081", ":8081"] {
            let err = listen_address(bare).err().unwrap();
            assert!(
                err.contains("127.0.0.1:8081") && err.contains("0.0.0.0:8081"),
                "{err}"
            );
        }
    }
}
