//! Request-path normalization (README "Paths"): the path rules are matched against, and the path
//! the upstream is sent, so that both read the request the same way.

use std::borrow::Cow;

/// Why a path is refused (answered with 400).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathError {
    Missing,
    NotOriginForm,
    BadPercentEncoding,
    EncodedSlash,
    EncodedBackslash,
    EncodedNul,
    Backslash,
    ForbiddenByte,
    DotSegmentWithParameters,
    EscapesRoot,
}

impl PathError {
    pub fn description(self) -> &'static str {
        match self {
            PathError::Missing => "request has no path",
            PathError::NotOriginForm => "request path must start with '/'",
            PathError::BadPercentEncoding => "request path has a malformed percent-encoding",
            PathError::EncodedSlash => "request path contains an encoded '/' (%2F)",
            PathError::EncodedBackslash => "request path contains an encoded '\\' (%5C)",
            PathError::EncodedNul => "request path contains an encoded NUL (%00)",
            PathError::Backslash => "request path contains '\\'",
            PathError::ForbiddenByte => "request path contains a byte that is not allowed",
            PathError::DotSegmentWithParameters => {
                "request path contains a dot segment with parameters (such as '..;')"
            }
            PathError::EscapesRoot => "request path climbs above '/' with '..'",
        }
    }
}

/// Splits `:path` into the path and the query string (without its `?`).
pub fn split_query(target: &str) -> (&str, Option<&str>) {
    match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

pub(crate) fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Normalizes a path (query already removed): percent-encoded unreserved characters are
/// decoded and other escapes upper-cased, `.` and `..` segments resolved, repeated slashes
/// merged. Refuses encoded `/`, `\` or NUL, a raw `\`, control or non-ASCII bytes, `#`,
/// dot segments carrying `;` parameters (read as `..` by some servers), and `..` above the
/// root. Borrows when the path is already normal, the common case.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotOriginForm);
    }
    let mut needs_work = false;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\\' => return Err(PathError::Backslash),
            b'#' => return Err(PathError::ForbiddenByte),
            b'%' => needs_work = true,
            b'/' => {
                if matches!(bytes.get(i + 1), Some(b'/' | b'.')) {
                    needs_work = true;
                }
            }
            0x21..=0x7e => {}
            _ => return Err(PathError::ForbiddenByte),
        }
    }
    if !needs_work {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    Ok(Cow::Owned(resolve_segments(&decoded)?))
}

/// The path rules are matched against: a normalized path without `;` segment parameters
/// (`/admin;x/keys;jsessionid=1` reads as `/admin/keys`), since servers such as Tomcat drop
/// them before routing; matching with them would let `/admin/keys;x` slip past a rule for
/// `/admin/keys`. A segment of parameters only (`/;x/admin/keys`) vanishes, as those
/// servers merge the slashes it leaves. The upstream still receives the parameters.
pub fn without_parameters(normalized: &str) -> Cow<'_, str> {
    if !normalized.contains(';') {
        return Cow::Borrowed(normalized);
    }
    let mut out = String::with_capacity(normalized.len());
    let mut segments = normalized.split('/').skip(1).peekable();
    while let Some(segment) = segments.next() {
        let name = segment.split(';').next().unwrap_or("");
        let last = segments.peek().is_none();
        if name.is_empty() && !last {
            continue;
        }
        out.push('/');
        out.push_str(name);
    }
    Cow::Owned(out)
}

fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            out.push(char::from(b));
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).copied().and_then(hex_value),
            bytes.get(i + 2).copied().and_then(hex_value),
        ) else {
            return Err(PathError::BadPercentEncoding);
        };
        let value = hi << 4 | lo;
        match value {
            b'/' => return Err(PathError::EncodedSlash),
            b'\\' => return Err(PathError::EncodedBackslash),
            0 => return Err(PathError::EncodedNul),
            v if is_unreserved(v) => out.push(char::from(v)),
            v => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.push('%');
                out.push(char::from(HEX[usize::from(v >> 4)]));
                out.push(char::from(HEX[usize::from(v & 15)]));
            }
        }
        i += 3;
    }
    Ok(out)
}

fn resolve_segments(path: &str) -> Result<String, PathError> {
    let mut kept: Vec<&str> = Vec::new();
    let mut ends_with_slash = false;
    for segment in path[1..].split('/') {
        ends_with_slash = true;
        match segment {
            "" | "." => {}
            ".." => {
                if kept.pop().is_none() {
                    return Err(PathError::EscapesRoot);
                }
            }
            s if s.starts_with(".;")
                || s.starts_with("..;")
                || s.starts_with(".%3B")
                || s.starts_with("..%3B") =>
            {
                return Err(PathError::DotSegmentWithParameters)
            }
            s => {
                kept.push(s);
                ends_with_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if ends_with_slash || kept.is_empty() {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, PathError> {
        normalize(p).map(Cow::into_owned)
    }

    /// Each input normalizes to the path paired with it.
    fn assert_normalizes(cases: &[(&str, &str)]) {
        for (input, want) in cases {
            assert_eq!(norm(input).unwrap(), *want, "{input}");
        }
    }

    #[test]
    fn already_normal_paths_are_borrowed() {
        for p in [
            "/",
            "/data/query",
            "/data/query/",
            "/a-b_c~d.e",
            "/x;y=1",
            "/a.b/c",
        ] {
            assert!(
                matches!(normalize(p), Ok(Cow::Borrowed(s)) if s == p),
                "{p}"
            );
        }
    }

    #[test]
    fn resolves_dots_and_slashes() {
        let cases = [
            ("//data///query", "/data/query"),
            ("/data/./query", "/data/query"),
            ("/data/upload/../query", "/data/query"),
            ("/data/query/.", "/data/query/"),
            ("/data/query/..", "/data/"),
            ("/data/query/", "/data/query/"),
            ("/data/query//", "/data/query/"),
            ("/.", "/"),
            ("/a/..", "/"),
            ("/./", "/"),
            ("/.well-known/x", "/.well-known/x"),
            ("/a/...", "/a/..."),
            ("/a/..b", "/a/..b"),
        ];
        assert_normalizes(&cases);
    }

    #[test]
    fn decodes_unreserved_and_uppercases_the_rest() {
        let cases = [
            ("/data/%71uery", "/data/query"),
            ("/data/%51uery", "/data/Query"),
            ("/%7e%2d%5F%2E", "/~-_."),
            ("/a/%2e%2e/b", "/b"),
            ("/a/%2E/b", "/a/b"),
            ("/file%20name", "/file%20name"),
            ("/file%3f", "/file%3F"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/100%25", "/100%25"),
        ];
        assert_normalizes(&cases);
    }

    #[test]
    fn refuses_the_dangerous_ones() {
        let cases = [
            ("/a%2Fb", PathError::EncodedSlash),
            ("/a%2fb", PathError::EncodedSlash),
            ("/a%5Cb", PathError::EncodedBackslash),
            ("/a%5cb", PathError::EncodedBackslash),
            ("/a%00b", PathError::EncodedNul),
            ("/a\\b", PathError::Backslash),
            ("/..", PathError::EscapesRoot),
            ("/a/../..", PathError::EscapesRoot),
            ("/%2e%2e/etc", PathError::EscapesRoot),
            ("/a/../../b", PathError::EscapesRoot),
            ("/%", PathError::BadPercentEncoding),
            ("/%4", PathError::BadPercentEncoding),
            ("/%zz", PathError::BadPercentEncoding),
            ("/a b", PathError::ForbiddenByte),
            ("/a\tb", PathError::ForbiddenByte),
            ("/a\u{7f}", PathError::ForbiddenByte),
            ("/é", PathError::ForbiddenByte),
            ("/a#frag", PathError::ForbiddenByte),
            ("/healthz/..;/admin", PathError::DotSegmentWithParameters),
            ("/healthz/.;x/admin", PathError::DotSegmentWithParameters),
            ("/healthz/..%3b/admin", PathError::DotSegmentWithParameters),
            (
                "/healthz/%2e%2e;/admin",
                PathError::DotSegmentWithParameters,
            ),
            ("data/query", PathError::NotOriginForm),
            ("*", PathError::NotOriginForm),
            ("", PathError::NotOriginForm),
        ];
        for (input, want) in cases {
            assert_eq!(norm(input), Err(want), "{input:?}");
        }
    }

    #[test]
    fn normalization_is_idempotent_on_samples() {
        for p in [
            "//a/./b/../c//",
            "/%61/%2e/b",
            "/x/%7E/y/.",
            "/q%3b",
            "/a/b/c/../../d",
        ] {
            let once = norm(p).unwrap();
            assert_eq!(norm(&once).unwrap(), once, "{p}");
        }
    }

    #[test]
    fn splits_query() {
        assert_eq!(split_query("/a?b=c?d"), ("/a", Some("b=c?d")));
        assert_eq!(split_query("/a"), ("/a", None));
        assert_eq!(split_query("/a?"), ("/a", Some("")));
    }

    #[test]
    fn parameters_are_dropped_for_matching_only() {
        assert!(matches!(without_parameters("/a/b"), Cow::Borrowed("/a/b")));
        assert_eq!(without_parameters("/admin/keys;x"), "/admin/keys");
        assert_eq!(
            without_parameters("/admin;a=b/keys;jsessionid=1"),
            "/admin/keys"
        );
        assert_eq!(without_parameters("/a/;x/"), "/a/");
        assert_eq!(without_parameters("/;"), "/");
        assert_eq!(without_parameters("/;x/admin/keys"), "/admin/keys");
        assert_eq!(without_parameters("/admin/;/keys"), "/admin/keys");
        assert_eq!(without_parameters("/admin/keys/;x"), "/admin/keys/");
        assert_eq!(without_parameters("/;a/;b/x;c"), "/x");
    }
}
