//! A key record in a few bytes, for Envoy's shared data: written once by the worker that
//! fetched the set, read by every worker per request. It holds what a decision needs
//! (id, owner, scopes, expiry, status, read-only) and nothing else.

use crate::header::HeaderText;
use crate::record::{KeyRecord, KeyRecordDoc, KeyStatus};
use crate::scope::{Scope, ScopeIndex};
use crate::timestamp::Timestamp;

const FORMAT: u8 = 3;
const DISABLED: u8 = 1;
const READ_ONLY: u8 = 2;
const EXPIRES: u8 = 4;

/// `[format][flags][expires_at: i128 LE, if EXPIRES][id][owner][scopes]`, each text as a
/// u32 LE length and its bytes; scopes space-separated.
pub fn encode(doc: &KeyRecordDoc) -> Vec<u8> {
    let scopes_len: usize = doc.scopes.iter().map(|s| s.as_str().len() + 1).sum();
    let mut out = Vec::with_capacity(
        2 + 16 + 12 + doc.id.as_str().len() + doc.owner.as_str().len() + scopes_len,
    );
    let mut flags = 0;
    if doc.status == KeyStatus::Disabled {
        flags |= DISABLED;
    }
    if doc.read_only {
        flags |= READ_ONLY;
    }
    if doc.expires_at.is_some() {
        flags |= EXPIRES;
    }
    out.push(FORMAT);
    out.push(flags);
    if let Some(at) = doc.expires_at {
        out.extend_from_slice(&at.unix_nanos().to_le_bytes());
    }
    put_text(&mut out, doc.id.as_str());
    put_text(&mut out, doc.owner.as_str());
    put_text(&mut out, &crate::scope::joined(&doc.scopes));
    out
}

fn put_text(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u32).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// Reads a record back, scopes numbered by this configuration's index. Anything that is
/// not a well-formed record (another format, truncated, text that fails the checks made
/// at load) is `None`: the key is then unknown, never half-trusted.
pub fn decode(bytes: &[u8], index: &ScopeIndex) -> Option<KeyRecord> {
    let mut reader = Reader(bytes);
    if reader.take(1)? != [FORMAT] {
        return None;
    }
    let flags = reader.take(1)?[0];
    let expires_at = if flags & EXPIRES != 0 {
        let raw: [u8; 16] = reader.take(16)?.try_into().ok()?;
        Some(Timestamp::from_unix_nanos(i128::from_le_bytes(raw)))
    } else {
        None
    };
    let id = HeaderText::parse(reader.text()?).ok()?;
    let owner = HeaderText::parse(reader.text()?).ok()?;
    let scopes_header = reader.text()?;
    if !reader.0.is_empty() {
        return None;
    }
    let scopes = scopes_header
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(Scope::parse)
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    Some(KeyRecord {
        scope_mask: index.mask(&scopes),
        scopes_header: scopes_header.into(),
        id,
        owner,
        label: None,
        scopes: scopes.into_boxed_slice(),
        created_at: None,
        expires_at,
        status: if flags & DISABLED != 0 {
            KeyStatus::Disabled
        } else {
            KeyStatus::Enabled
        },
        read_only: flags & READ_ONLY != 0,
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn text(&mut self) -> Option<&'a str> {
        let len: [u8; 4] = self.take(4)?.try_into().ok()?;
        let bytes = self.take(u32::from_le_bytes(len) as usize)?;
        std::str::from_utf8(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::KeyHash;
    use serde_json::json;

    use crate::scope::test_index as index;

    fn doc(value: serde_json::Value) -> KeyRecordDoc {
        crate::json::from_value(value).unwrap()
    }

    #[test]
    fn round_trips_what_a_decision_reads() {
        let index = index(&["browse", "upload"]);
        let d = doc(json!({
            "id": "8c3e4394", "hash": KeyHash::of_key("k").to_hex(), "owner": "alice ü",
            "label": "ci", "scopes": ["browse", "download"], "created_at": "2026-01-01T00:00:00Z",
            "expires_at": "2027-05-21T20:55:24.654328038Z", "status": "disabled", "read_only": true
        }));
        let (_, want) = KeyRecord::from_doc(d.clone(), &index);
        let got = decode(&encode(&d), &index).unwrap();
        // Everything but the label and creation time, which no decision reads.
        let want = KeyRecord {
            label: None,
            created_at: None,
            ..want
        };
        assert_eq!(got, want);
        assert_eq!(got.status, KeyStatus::Disabled);
        assert!(got.read_only);

        let plain = doc(json!({"id": "a", "hash": KeyHash::of_key("k").to_hex(), "owner": "o"}));
        let got = decode(&encode(&plain), &index).unwrap();
        assert_eq!(
            (got.expires_at, got.status, got.read_only),
            (None, KeyStatus::Enabled, false)
        );
        assert!(got.scopes.is_empty());
    }

    #[test]
    fn anything_malformed_is_no_record() {
        let index = index(&[]);
        let d = doc(
            json!({"id": "a", "hash": KeyHash::of_key("k").to_hex(), "owner": "o",
            "scopes": ["x"], "expires_at": "2027-01-01T00:00:00Z"}),
        );
        let good = encode(&d);
        assert!(decode(&good, &index).is_some());
        for cut in 0..good.len() {
            assert!(decode(&good[..cut], &index).is_none(), "cut at {cut}");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(decode(&longer, &index).is_none());
        let mut other_format = good.clone();
        other_format[0] = 1;
        assert!(decode(&other_format, &index).is_none());
        // An id with a newline would inject a header upstream.
        let mut injected = vec![FORMAT, 0];
        put_text(&mut injected, "a\nx-admin: 1");
        put_text(&mut injected, "o");
        put_text(&mut injected, "");
        assert!(decode(&injected, &index).is_none());
        assert!(decode(&[], &index).is_none());
    }
}
