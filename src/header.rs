//! Header names and values that configuration may put on the wire, checked once at load.

/// `tchar` of RFC 9110 §5.6.2: the characters of a header name or a method.
pub fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

pub fn is_token(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(is_token_char)
}

/// For a text newtype `T(Box<str>)` whose `T::parse` checks it: `as_str`, `Display` as the
/// text itself, and `Deserialize` from a string through `parse` (its message is serde's).
macro_rules! checked_text {
    ($type:ident) => {
        impl $type {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $type {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $type {
            fn deserialize<D>(deserializer: D) -> Result<Self, D::Error>
            where
                D: serde::Deserializer<'de>,
            {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                $type::parse(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use checked_text;

/// A header name in lowercase, the form Envoy hands to filters (HTTP/1 names are
/// lowercased by the codec, HTTP/2 and HTTP/3 names are lowercase on the wire).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HeaderName(Box<str>);

impl HeaderName {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.starts_with(':') {
            return Err(format!("{text:?} is a pseudo-header, not a header name"));
        }
        if !is_token(text) {
            return Err(format!(
                "{text:?} is not a valid header name (letters, digits and !#$%&'*+-.^_`|~ only)"
            ));
        }
        Ok(HeaderName(text.to_ascii_lowercase().into_boxed_str()))
    }

    /// For the built-in defaults, which are known to be valid lowercase tokens.
    pub(crate) fn known(name: &'static str) -> Self {
        debug_assert!(is_token(name) && !name.bytes().any(|b| b.is_ascii_uppercase()));
        HeaderName(name.into())
    }
}

checked_text!(HeaderName);

/// Text that is forwarded verbatim as a header value (a key's id or owner): not empty, no
/// control characters (which would let a key record inject headers), no surrounding
/// whitespace (which Envoy would trim, so the upstream would see something else).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HeaderText(Box<str>);

impl HeaderText {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("must not be empty".to_string());
        }
        if text.chars().any(char::is_control) {
            return Err(format!("{text:?} contains a control character"));
        }
        if text.trim() != text {
            return Err(format!("{text:?} has leading or trailing whitespace"));
        }
        Ok(HeaderText(text.into()))
    }
}

checked_text!(HeaderText);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_are_lowercased_tokens() {
        assert_eq!(
            HeaderName::parse("X-Api-Key").unwrap().as_str(),
            "x-api-key"
        );
        assert_eq!(HeaderName::parse("apikey").unwrap().as_str(), "apikey");
        for bad in ["", ":path", "x api key", "x-api-key\r\n", "ключ", "a:b"] {
            assert!(HeaderName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn header_text_refuses_injection_and_blank() {
        assert_eq!(
            HeaderText::parse("alice@example.org").unwrap().as_str(),
            "alice@example.org"
        );
        assert_eq!(
            HeaderText::parse("José Núñez").unwrap().as_str(),
            "José Núñez"
        );
        for bad in [
            "",
            "alice\r\nx-admin: 1",
            "tab\there",
            " alice",
            "alice ",
            "nul\0",
        ] {
            assert!(HeaderText::parse(bad).is_err(), "{bad:?}");
        }
    }
}
