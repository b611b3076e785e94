//! The key set's [`Meta`] as shared data holds it: the JSON serde_json wrote for it, field
//! for field, so that VMs of an earlier build sharing the store read it alike. Written by
//! hand so that the filter links no serializer (issue #24).

use crate::json::{self, Json};
use crate::key_set::Meta;

impl Meta {
    /// `{"bits":..,"etag":..,"version":..,"epoch":..,"keys":..,"last_ok_ms":..,
    /// "next_due_ms":..,"failures":..,"last_error":..}`, `null` for what is not known.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(160);
        let text = |out: &mut String, name: &str, value: &Option<String>| {
            out.push_str(name);
            match value {
                Some(v) => json::write_str(out, v),
                None => out.push_str("null"),
            }
        };
        let number = |out: &mut String, name: &str, value: Option<u64>| {
            out.push_str(name);
            match value {
                Some(v) => out.push_str(&v.to_string()),
                None => out.push_str("null"),
            }
        };
        number(&mut out, "{\"bits\":", self.bits.map(u64::from));
        text(&mut out, ",\"etag\":", &self.etag);
        text(&mut out, ",\"version\":", &self.version);
        text(&mut out, ",\"epoch\":", &self.epoch);
        number(&mut out, ",\"keys\":", u64::try_from(self.keys).ok());
        number(&mut out, ",\"last_ok_ms\":", self.last_ok_ms);
        number(&mut out, ",\"next_due_ms\":", Some(self.next_due_ms));
        number(&mut out, ",\"failures\":", Some(u64::from(self.failures)));
        text(&mut out, ",\"last_error\":", &self.last_error);
        out.push('}');
        out
    }

    /// What [`Meta::to_json`] wrote; `None` for anything else (the caller starts afresh,
    /// as it did when serde_json refused it). Fields it does not know are ignored.
    pub fn from_json(bytes: &[u8]) -> Option<Meta> {
        let Ok(Json::Object(fields)) = json::parse(bytes, "meta") else {
            return None;
        };
        let field = |name: &str| fields.iter().find(|(n, _)| n == name).map(|(_, v)| v);
        let text = |name: &str| match field(name) {
            None | Some(Json::Null) => Some(None),
            Some(Json::Str(s)) => Some(Some(s.clone())),
            Some(_) => None,
        };
        let number = |name: &str| match field(name) {
            None | Some(Json::Null) => Some(None),
            Some(Json::UInt(n)) => Some(Some(*n)),
            Some(_) => None,
        };
        let bits = match number("bits")? {
            Some(b) => Some(u8::try_from(b).ok()?),
            None => None,
        };
        Some(Meta {
            bits,
            etag: text("etag")?,
            version: text("version")?,
            epoch: text("epoch")?,
            keys: usize::try_from(number("keys")??).ok()?,
            last_ok_ms: number("last_ok_ms")?,
            next_due_ms: number("next_due_ms")??,
            failures: u32::try_from(number("failures")??).ok()?,
            last_error: text("last_error")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same text serde_json wrote, and read back alike.
    #[test]
    fn meta_reads_and_writes_as_serde_json_did() {
        let metas = [
            Meta::default(),
            Meta {
                bits: Some(12),
                etag: Some("\"v1\"".into()),
                version: Some("7".into()),
                epoch: Some("e1".into()),
                keys: 1_000_000,
                last_ok_ms: Some(1_764_000_000_000),
                next_due_ms: u64::MAX,
                failures: 3,
                last_error: Some("key service answered 503\n\u{1}é".into()),
            },
        ];
        for meta in metas {
            let theirs = serde_json::json!({
                "bits": meta.bits, "etag": meta.etag, "version": meta.version,
                "epoch": meta.epoch, "keys": meta.keys, "last_ok_ms": meta.last_ok_ms,
                "next_due_ms": meta.next_due_ms, "failures": meta.failures,
                "last_error": meta.last_error,
            });
            let ours = meta.to_json();
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(&ours).unwrap(),
                theirs
            );
            assert_eq!(Meta::from_json(ours.as_bytes()), Some(meta.clone()));
            assert_eq!(Meta::from_json(theirs.to_string().as_bytes()), Some(meta));
        }
        assert_eq!(Meta::from_json(b"{\"keys\": 1}"), None);
        assert_eq!(Meta::from_json(b"not json"), None);
        assert_eq!(
            Meta::from_json(b"{\"keys\": 1, \"next_due_ms\": 5, \"failures\": 0, \"x\": []}"),
            Some(Meta {
                keys: 1,
                next_due_ms: 5,
                ..Meta::default()
            })
        );
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let text: String = (0u8..0x80).map(char::from).chain("é😀".chars()).collect();
        let mut ours = String::new();
        json::write_str(&mut ours, &text);
        assert_eq!(ours, serde_json::to_string(&text).unwrap());
    }
}
