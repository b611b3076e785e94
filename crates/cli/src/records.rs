//! Key records as the CLI writes, reads and edits them (README "Configuration reference").

use crate::error::{Error, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// A record as `keygate new` writes it, fields in the documented order (README "Configuration reference"). `expires_at` is written
/// as `null` for a key that never expires, so the record says so rather than leaving it to
/// a default.
#[derive(Serialize)]
pub struct NewRecord<'a> {
    pub id: &'a str,
    pub hash: &'a str,
    pub owner: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<&'a str>,
    pub scopes: &'a [String],
    pub created_at: &'a str,
    pub expires_at: Option<&'a str>,
    pub status: &'static str,
    pub read_only: bool,
}

impl NewRecord<'_> {
    pub fn to_raw(&self) -> Result<Box<RawValue>> {
        serde_json::value::to_raw_value(self).map_err(|e| Error::new(e.to_string()))
    }
}

/// The fields `list` shows, read leniently (the file has been checked already). Times are
/// kept as written; an absent optional field reads as `None`.
#[derive(Deserialize)]
pub struct RecordView {
    pub id: String,
    pub owner: String,
    pub label: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    pub created_at: Option<String>,
    pub expires_at: Option<String>,
    pub status: Option<String>,
    #[serde(default)]
    pub read_only: bool,
}

impl RecordView {
    pub fn of(raw: &RawValue) -> Result<RecordView> {
        serde_json::from_str(raw.get()).map_err(|e| Error::new(format!("unreadable record: {e}")))
    }

    pub fn is_disabled(&self) -> bool {
        self.status.as_deref() == Some("disabled")
    }
}

/// A record as fields in the documented order (README "Configuration reference"), for an edit that must leave the other fields
/// as they are: an absent field stays absent, a `null` stays `null`.
#[derive(Serialize, Deserialize)]
struct RecordFields {
    id: Value,
    hash: Value,
    owner: Value,
    #[serde(default, skip_serializing_if = "Kept::is_absent")]
    label: Kept,
    #[serde(default, skip_serializing_if = "Kept::is_absent")]
    scopes: Kept,
    #[serde(default, skip_serializing_if = "Kept::is_absent")]
    created_at: Kept,
    #[serde(default, skip_serializing_if = "Kept::is_absent")]
    expires_at: Kept,
    #[serde(default, skip_serializing_if = "Kept::is_absent")]
    status: Kept,
    #[serde(default, skip_serializing_if = "Kept::is_absent")]
    read_only: Kept,
    /// Whatever a later format adds: kept, not dropped.
    #[serde(flatten)]
    other: Map<String, Value>,
}

/// A field of [`RecordFields`] as the record has it: absent (`None`, and left out when
/// written), or there with its value, even `null` (serde's `Option` would read `null` as
/// absent).
#[derive(Default)]
struct Kept(Option<Value>);

impl Kept {
    fn is_absent(&self) -> bool {
        self.0.is_none()
    }
}

impl Serialize for Kept {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Kept {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Kept, D::Error> {
        Value::deserialize(deserializer).map(|v| Kept(Some(v)))
    }
}

/// The record with `status` set.
pub fn with_status(raw: &RawValue, status: &str) -> Result<Box<RawValue>> {
    let mut fields: RecordFields = serde_json::from_str(raw.get())
        .map_err(|e| Error::new(format!("unreadable record: {e}")))?;
    fields.status = Kept(Some(Value::String(status.to_string())));
    serde_json::value::to_raw_value(&fields).map_err(|e| Error::new(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_edit_keeps_every_other_field_and_the_order() {
        let raw = RawValue::from_string(
            r#"{"id":"k1","hash":"h","owner":"alice","label":"ci","scopes":["a","b"],"created_at":"2026-11-01T10:00:00Z","expires_at":"2027-05-21T20:55:24.654328038+02:00","read_only":true}"#
                .to_string(),
        )
        .unwrap();
        let disabled = with_status(&raw, "disabled").unwrap();
        assert_eq!(
            disabled.get(),
            r#"{"id":"k1","hash":"h","owner":"alice","label":"ci","scopes":["a","b"],"created_at":"2026-11-01T10:00:00Z","expires_at":"2027-05-21T20:55:24.654328038+02:00","status":"disabled","read_only":true}"#
        );
        let enabled = with_status(&disabled, "enabled").unwrap();
        let never = RawValue::from_string(
            r#"{"id":"k2","owner":"o","hash":"h","expires_at":null,"label":null}"#.to_string(),
        )
        .unwrap();
        assert_eq!(
            with_status(&never, "disabled").unwrap().get(),
            r#"{"id":"k2","hash":"h","owner":"o","label":null,"expires_at":null,"status":"disabled"}"#
        );
        assert!(enabled.get().contains(r#""status":"enabled""#));
        let view = RecordView::of(&disabled).unwrap();
        assert!(view.is_disabled() && view.read_only);
    }

    #[test]
    fn new_records_say_never_explicitly() {
        let scopes = vec!["browse".to_string()];
        let record = NewRecord {
            id: "i",
            hash: "h",
            owner: "o",
            label: None,
            scopes: &scopes,
            created_at: "2026-11-01T10:00:00Z",
            expires_at: None,
            status: "enabled",
            read_only: false,
        };
        assert_eq!(
            record.to_raw().unwrap().get(),
            r#"{"id":"i","hash":"h","owner":"o","scopes":["browse"],"created_at":"2026-11-01T10:00:00Z","expires_at":null,"status":"enabled","read_only":false}"#
        );
    }
}
