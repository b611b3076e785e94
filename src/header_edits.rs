//! Header edits made on a copy of the request's headers, so that the shell writes them
//! back to Envoy in one host call rather than one per edit.

use crate::decision::HeaderEditor;

/// The request's headers as Envoy listed them (names lowercase), with edits applied.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    pub headers: Vec<(String, Vec<u8>)>,
    /// Whether any edit changed them (nothing to write back otherwise).
    pub changed: bool,
}

impl HeaderEdits {
    pub fn new(headers: Vec<(String, Vec<u8>)>) -> Self {
        HeaderEdits {
            headers,
            changed: false,
        }
    }

    /// The headers as the host call takes them.
    pub fn pairs(&self) -> Vec<(&str, &[u8])> {
        self.headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_slice()))
            .collect()
    }
}

impl HeaderEditor for HeaderEdits {
    fn set(&mut self, name: &str, value: &str) {
        // In place, so the header keeps its position; any further value goes.
        match self.headers.iter().position(|(n, _)| n == name) {
            Some(first) => {
                self.headers[first].1 = value.as_bytes().to_vec();
                let mut index = 0;
                self.headers.retain(|(n, _)| {
                    let keep = index == first || n != name;
                    index += 1;
                    keep
                });
            }
            None => self
                .headers
                .push((name.to_string(), value.as_bytes().to_vec())),
        }
        self.changed = true;
    }

    fn remove(&mut self, name: &str) {
        let before = self.headers.len();
        self.headers.retain(|(n, _)| n != name);
        self.changed |= self.headers.len() != before;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edits(headers: &[(&str, &str)]) -> HeaderEdits {
        HeaderEdits::new(
            headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect(),
        )
    }

    fn names_values(edits: &HeaderEdits) -> Vec<(&str, &str)> {
        edits
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), std::str::from_utf8(v).unwrap()))
            .collect()
    }

    #[test]
    fn set_replaces_every_value_in_place_of_the_first() {
        let mut e = edits(&[
            (":path", "/a"),
            ("x-api-key-id", "spoof-1"),
            ("accept", "*/*"),
            ("x-api-key-id", "spoof-2"),
        ]);
        e.set("x-api-key-id", "alice");
        assert_eq!(
            names_values(&e),
            [
                (":path", "/a"),
                ("x-api-key-id", "alice"),
                ("accept", "*/*")
            ]
        );
        assert!(e.changed);
    }

    #[test]
    fn set_appends_a_new_header() {
        let mut e = edits(&[(":path", "/a")]);
        e.set("x-api-key-owner", "bob");
        assert_eq!(
            names_values(&e),
            [(":path", "/a"), ("x-api-key-owner", "bob")]
        );
    }

    #[test]
    fn remove_takes_every_value_and_says_whether_anything_changed() {
        let mut e = edits(&[
            ("authorization", "Bearer a"),
            ("accept", "*/*"),
            ("authorization", "Bearer b"),
        ]);
        e.remove("x-api-key-id");
        assert!(!e.changed);
        e.remove("authorization");
        assert!(e.changed);
        assert_eq!(names_values(&e), [("accept", "*/*")]);
        assert_eq!(e.pairs(), [("accept", &b"*/*"[..])]);
    }
}
