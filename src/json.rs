//! A JSON document as keygate reads configuration, key records and reports: one tree that
//! each reader walks field by field, naming every problem by its path (`keys[3].scopes[0]`).
//!
//! The text is read by [`crate::json_text`]: a derived deserializer per type, each wrapped
//! for path tracking, made most of the wasm module's size (issue #24).

use crate::error::ConfigError;
use crate::json_text::{self, SyntaxError};

/// A JSON value. An object keeps its fields in document order, repeats included, so that a
/// repeated field is refused rather than silently overwritten.
#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    UInt(u64),
    NegInt(i64),
    /// A number with a fraction or an exponent, or an integer beyond 64 bits: keygate
    /// reads none, so its value is not kept.
    Float,
    Str(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    /// What the value is, as serde words it in "invalid type: {this}, expected ...".
    fn unexpected(&self) -> String {
        match self {
            Json::Null => "null".into(),
            Json::Bool(b) => format!("boolean `{b}`"),
            Json::UInt(n) => format!("integer `{n}`"),
            Json::NegInt(n) => format!("integer `{n}`"),
            // Floating-point formatting would be linked for this message alone.
            Json::Float => "floating point number".into(),
            Json::Str(s) => format!("string {s:?}"),
            Json::Array(_) => "sequence".into(),
            Json::Object(_) => "map".into(),
        }
    }

    /// The text of a string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// Parses one JSON document (`what` names it in messages). Text after it is refused.
pub fn parse(json: &[u8], what: &str) -> Result<Json, ConfigError> {
    let to_error = |e: SyntaxError| ConfigError::new(e.path, e.message);
    let (doc, trailing) = json_text::parse(json).map_err(to_error)?;
    if let Some(e) = trailing {
        return Err(ConfigError::new(
            "",
            format!("unexpected text after the {what}: {}", e.message),
        ));
    }
    Ok(doc)
}

/// Parses a document with `read`: the problems, each named by its field path.
pub fn read_document<T>(
    json: &[u8],
    what: &str,
    read: impl FnOnce(&Json, &mut Vec<ConfigError>) -> Option<T>,
) -> Result<T, Vec<ConfigError>> {
    let doc = parse(json, what).map_err(|e| vec![e])?;
    let mut errors = Vec::new();
    match read(&doc, &mut errors) {
        Some(value) if errors.is_empty() => Ok(value),
        _ => {
            place_problems(json, &mut errors);
            Err(errors)
        }
    }
}

/// Reads one value on its own (an element of a key set, a key service's answer): its
/// first problem, named by its place (`at`, as `keys[3]`) and field.
pub fn read_one<T: FromJson>(json: &[u8], at: &str) -> Result<T, String> {
    let mut errors = Vec::new();
    let read = match parse(json, "value") {
        Ok(doc) => {
            let read = T::read(&doc, "", &mut errors);
            place_problems(json, &mut errors);
            read
        }
        Err(e) => {
            errors.push(e);
            None
        }
    };
    match (read, errors.first_mut()) {
        (Some(value), None) => Ok(value),
        (_, Some(first)) => {
            first.path = field_path(at, &first.path);
            Err(first.to_string())
        }
        (None, None) => Err(format!("{at}: refused")),
    }
}

/// The text of a JSON string (`"..."`, escapes and all), if that is what `json` is.
pub fn string(json: &[u8]) -> Option<String> {
    match json_text::parse(json) {
        Ok((Json::Str(text), None)) => Some(text),
        _ => None,
    }
}

/// `at.name`, or `name` at the top (`at` for no name).
pub(crate) fn field_path(at: &str, name: &str) -> String {
    let mut path = String::with_capacity(at.len() + 1 + name.len());
    path.push_str(at);
    if !at.is_empty() && !name.is_empty() {
        path.push('.');
    }
    path.push_str(name);
    path
}

pub(crate) fn index_path(at: &str, i: usize) -> String {
    let mut path = String::with_capacity(at.len() + 8);
    path.push_str(at);
    path.push('[');
    path.push_str(&i.to_string());
    path.push(']');
    path
}

/// "invalid type: ..., expected ...", as serde says it.
pub(crate) fn invalid_type(value: &Json, expected: &str) -> String {
    format!("invalid type: {}, expected {expected}", value.unexpected())
}

/// Names `known` as serde does after "unknown field" or "unknown variant".
fn expected_one_of(known: &[&str]) -> String {
    match known {
        [] => "there are none".into(),
        [one] => format!("expected `{one}`"),
        [a, b] => format!("expected `{a}` or `{b}`"),
        _ => {
            let mut text = String::from("expected one of ");
            for (i, name) in known.iter().enumerate() {
                if i > 0 {
                    text.push_str(", ");
                }
                text.push('`');
                text.push_str(name);
                text.push('`');
            }
            text
        }
    }
}

/// A value read from JSON at a field path; a problem is pushed onto `errors` and the value
/// is then `None`.
pub trait FromJson: Sized {
    fn read(value: &Json, at: &str, errors: &mut Vec<ConfigError>) -> Option<Self>;
}

/// The text of a string value, or a problem.
pub(crate) fn text<'a>(
    value: &'a Json,
    at: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<&'a str> {
    let text = value.as_str();
    if text.is_none() {
        errors.push(ConfigError::new(at, invalid_type(value, "a string")));
    }
    text
}

/// A string value checked by `parse`, whose message is the problem's.
pub(crate) fn parsed<T>(
    value: &Json,
    at: &str,
    errors: &mut Vec<ConfigError>,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Option<T> {
    parse(text(value, at, errors)?)
        .map_err(|message| errors.push(ConfigError::new(at, message)))
        .ok()
}

/// One of a few names (a unit variant, as serde reads it from a string).
pub(crate) fn variant<T: Copy>(
    value: &Json,
    at: &str,
    errors: &mut Vec<ConfigError>,
    variants: &[(&str, T)],
) -> Option<T> {
    let name = text(value, at, errors)?;
    let found = variants.iter().find(|(n, _)| *n == name).map(|v| v.1);
    if found.is_none() {
        let names: Vec<&str> = variants.iter().map(|v| v.0).collect();
        errors.push(ConfigError::new(
            at,
            format!("unknown variant `{name}`, {}", expected_one_of(&names)),
        ));
    }
    found
}

impl FromJson for String {
    fn read(value: &Json, at: &str, errors: &mut Vec<ConfigError>) -> Option<Self> {
        text(value, at, errors).map(str::to_owned)
    }
}

impl FromJson for bool {
    fn read(value: &Json, at: &str, errors: &mut Vec<ConfigError>) -> Option<Self> {
        match value {
            Json::Bool(b) => Some(*b),
            other => {
                errors.push(ConfigError::new(at, invalid_type(other, "a boolean")));
                None
            }
        }
    }
}

/// An unsigned integer of at most `max`; `name` is its type's, as serde names it.
fn unsigned(
    value: &Json,
    at: &str,
    errors: &mut Vec<ConfigError>,
    name: &str,
    max: u64,
) -> Option<u64> {
    let problem = match value {
        Json::UInt(n) if *n <= max => return Some(*n),
        Json::UInt(_) | Json::NegInt(_) => {
            format!("invalid value: {}, expected {name}", value.unexpected())
        }
        other => invalid_type(other, name),
    };
    errors.push(ConfigError::new(at, problem));
    None
}

impl FromJson for u32 {
    fn read(value: &Json, at: &str, errors: &mut Vec<ConfigError>) -> Option<Self> {
        unsigned(value, at, errors, "u32", u64::from(u32::MAX)).and_then(|n| u32::try_from(n).ok())
    }
}

impl FromJson for u64 {
    fn read(value: &Json, at: &str, errors: &mut Vec<ConfigError>) -> Option<Self> {
        unsigned(value, at, errors, "u64", u64::MAX)
    }
}

/// `null` is `None`, as serde reads an `Option`.
impl<T: FromJson> FromJson for Option<T> {
    fn read(value: &Json, at: &str, errors: &mut Vec<ConfigError>) -> Option<Self> {
        match value {
            Json::Null => Some(None),
            other => T::read(other, at, errors).map(Some),
        }
    }
}

/// Every element is read, so that each bad one is named.
impl<T: FromJson> FromJson for Vec<T> {
    fn read(value: &Json, at: &str, errors: &mut Vec<ConfigError>) -> Option<Self> {
        let Json::Array(items) = value else {
            errors.push(ConfigError::new(at, invalid_type(value, "a sequence")));
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match T::read(item, &index_path(at, i), errors) {
                Some(v) if ok => out.push(v),
                Some(_) => {}
                None => ok = false,
            }
        }
        ok.then_some(out)
    }
}

/// The fields of an object, read one by one. Unknown and repeated fields are problems;
/// [`Fields::done`] says whether any field had one.
pub(crate) struct Fields<'a, 'e> {
    at: &'a str,
    pairs: &'a [(String, Json)],
    errors: &'e mut Vec<ConfigError>,
    ok: bool,
}

impl<'a, 'e> Fields<'a, 'e> {
    /// `value` as an object whose fields are among `known`; `expected` says what it should
    /// be, for a value that is no object at all.
    pub(crate) fn of(
        value: &'a Json,
        at: &'a str,
        expected: &str,
        known: &[&str],
        errors: &'e mut Vec<ConfigError>,
    ) -> Option<Self> {
        let Json::Object(pairs) = value else {
            errors.push(ConfigError::new(at, invalid_type(value, expected)));
            return None;
        };
        let mut ok = true;
        for (i, (name, _)) in pairs.iter().enumerate() {
            let problem = if !known.contains(&name.as_str()) {
                format!("unknown field `{name}`, {}", expected_one_of(known))
            } else if pairs[..i].iter().any(|(n, _)| n == name) {
                format!("duplicate field `{name}`")
            } else {
                continue;
            };
            errors.push(ConfigError::new(field_path(at, name), problem));
            ok = false;
        }
        Some(Fields {
            at,
            pairs,
            errors,
            ok,
        })
    }

    fn get(&self, name: &str) -> Option<&'a Json> {
        self.pairs.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// A field that must be there.
    pub(crate) fn required<T: FromJson>(&mut self, name: &str) -> Option<T> {
        let Some(value) = self.get(name) else {
            self.errors
                .push(ConfigError::new(self.at, format!("missing field `{name}`")));
            self.ok = false;
            return None;
        };
        self.with(name, value)
    }

    /// A field that may be left out (`None` then, or after a problem).
    pub(crate) fn optional<T: FromJson>(&mut self, name: &str) -> Option<T> {
        let value = self.get(name)?;
        self.with(name, value)
    }

    /// A field that may be left out or `null`, as serde reads an `Option` (`None` then, or
    /// after a problem).
    pub(crate) fn nullable<T: FromJson>(&mut self, name: &str) -> Option<T> {
        match self.get(name)? {
            Json::Null => None,
            value => self.with(name, value),
        }
    }

    fn with<T: FromJson>(&mut self, name: &str, value: &Json) -> Option<T> {
        let read = T::read(value, &field_path(self.at, name), self.errors);
        self.ok &= read.is_some();
        read
    }

    /// `Some` when every field read so far was well-formed.
    pub(crate) fn done(self) -> Option<()> {
        self.ok.then_some(())
    }
}

/// Reads a test's `serde_json::Value` as keygate reads a document: its first problem.
#[cfg(test)]
pub(crate) fn from_value<T: FromJson>(value: serde_json::Value) -> Result<T, ConfigError> {
    let json = parse(value.to_string().as_bytes(), "test value")?;
    let mut errors = Vec::new();
    match (T::read(&json, "", &mut errors), errors.into_iter().next()) {
        (Some(value), None) => Ok(value),
        (_, Some(first)) => Err(first),
        (None, None) => Err(ConfigError::new("", "refused without a reason")),
    }
}

/// The core's checked texts, read as strings and checked by their own `parse`.
macro_rules! parsed_text {
    ($($type:ty => $parse:expr),* $(,)?) => {$(
        impl FromJson for $type {
            fn read(value: &Json, at: &str, errors: &mut Vec<ConfigError>) -> Option<Self> {
                parsed(value, at, errors, $parse)
            }
        }
    )*};
}

parsed_text! {
    crate::header::HeaderName => crate::header::HeaderName::parse,
    crate::header::HeaderText => crate::header::HeaderText::parse,
    crate::scope::Scope => crate::scope::Scope::parse,
    crate::record::KeyHash => crate::record::KeyHash::parse_hex,
    crate::timestamp::Timestamp => crate::timestamp::Timestamp::parse_rfc3339,
    crate::key_format::Prefix => crate::key_format::Prefix::parse,
    crate::credential::Scheme => crate::credential::Scheme::parse_name,
}

/// Appends to each problem where its value ends in `text` (" at line 1 column 11"), as
/// serde_json places its own (and [`crate::json_text`] a syntax error): the path alone may be hard to find in a long document.
pub fn place_problems(text: &[u8], errors: &mut [ConfigError]) {
    for error in errors {
        if let Some((line, column)) = place_of(text, &error.path) {
            error.message.push_str(" at line ");
            error.message.push_str(&line.to_string());
            error.message.push_str(" column ");
            error.message.push_str(&column.to_string());
        }
    }
}

/// The line and column (serde_json's: a column counts bytes) where the value at `path`
/// ends. `None` when the path cannot be followed in the text.
fn place_of(text: &[u8], path: &str) -> Option<(usize, usize)> {
    let mut pos = 0;
    let mut rest = path;
    loop {
        pos = skip_space(text, pos);
        if rest.is_empty() {
            let end = skip_value(text, pos)?;
            let line_start = text[..end]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            let line = 1 + text[..end].iter().filter(|&&b| b == b'\n').count();
            return Some((line, end - line_start));
        }
        if let Some(after) = rest.strip_prefix('[') {
            let (n, after) = after.split_once(']')?;
            let n: usize = n.parse().ok()?;
            rest = after;
            if text.get(pos) != Some(&b'[') {
                return None;
            }
            pos += 1;
            for _ in 0..n {
                pos = skip_value(text, skip_space(text, pos))?;
                pos = skip_space(text, pos);
                if text.get(pos) != Some(&b',') {
                    return None;
                }
                pos += 1;
            }
        } else {
            let after = rest.strip_prefix('.').unwrap_or(rest);
            let (name, after) = after.split_at(after.find(['.', '[']).unwrap_or(after.len()));
            rest = after;
            if text.get(pos) != Some(&b'{') {
                return None;
            }
            pos += 1;
            loop {
                pos = skip_space(text, pos);
                let key_end = skip_value(text, pos)?;
                let key = text.get(pos + 1..key_end.checked_sub(1)?)?;
                pos = skip_space(text, key_end);
                if text.get(pos) != Some(&b':') {
                    return None;
                }
                pos = skip_space(text, pos + 1);
                if key == name.as_bytes() {
                    break;
                }
                pos = skip_space(text, skip_value(text, pos)?);
                if text.get(pos) != Some(&b',') {
                    return None;
                }
                pos += 1;
            }
        }
    }
}

fn skip_space(text: &[u8], mut pos: usize) -> usize {
    while text.get(pos).is_some_and(|b| b" \t\r\n".contains(b)) {
        pos += 1;
    }
    pos
}

/// The end of the value starting at `pos` (text already parsed, so well-formed).
fn skip_value(text: &[u8], mut pos: usize) -> Option<usize> {
    let mut depth = 0usize;
    loop {
        match *text.get(pos)? {
            b'"' => {
                pos += 1;
                loop {
                    match *text.get(pos)? {
                        b'\\' => pos += 2,
                        b'"' => break,
                        _ => pos += 1,
                    }
                }
                pos += 1;
            }
            b'{' | b'[' => {
                depth += 1;
                pos += 1;
            }
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                pos += 1;
            }
            b',' | b':' | b' ' | b'\t' | b'\r' | b'\n' if depth > 0 => pos += 1,
            _ if depth > 0 => pos += 1,
            _ => {
                while text.get(pos).is_some_and(|b| !b",]} \t\r\n".contains(b)) {
                    pos += 1;
                }
            }
        }
        if depth == 0 {
            return Some(pos);
        }
    }
}

/// Writes `text` as a JSON string, escaped as serde_json escapes it: `"` and `\`, and
/// control characters (`\n`, `\u001b`); everything else as is.
pub fn write_str(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if c < ' ' => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push_str("\\u00");
                let b = c as u8;
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xf)]));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}
