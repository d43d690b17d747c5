//! MQTT payload -> value: `number`, `text`, `bool` (true/false/1/0/on/off)
//! and `json` with a JSON pointer, plus an optional source timestamp (epoch
//! ms or RFC 3339). Pure functions: every malformed case is unit-tested.

use std::sync::Arc;

use serde::Deserialize;

use crate::proto::DataType;
use crate::sample::Value;

/// How a payload is written.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A decimal number as text (`21.5`).
    #[default]
    Number,
    /// UTF-8 text.
    Text,
    /// `true`/`false`/`1`/`0`/`on`/`off`.
    Bool,
    /// A JSON document; the value is at `json_pointer`.
    Json,
}

/// The tag's type.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum TagType {
    /// Double.
    #[default]
    F64,
    /// Signed integer.
    I64,
    /// Unsigned integer.
    U64,
    /// Boolean.
    Bool,
    /// Text.
    String,
}

impl TagType {
    /// The wire type.
    pub fn data_type(self) -> DataType {
        match self {
            TagType::F64 => DataType::F64,
            TagType::I64 => DataType::I64,
            TagType::U64 => DataType::U64,
            TagType::Bool => DataType::Bool,
            TagType::String => DataType::String,
        }
    }
}

/// Everything needed to decode one tag's payloads.
#[derive(Debug, Clone, PartialEq)]
pub struct PayloadSpec {
    /// Payload format.
    pub format: Format,
    /// For `json`.
    pub json_pointer: Option<String>,
    /// For `json`.
    pub timestamp_pointer: Option<String>,
    /// Tag type.
    pub kind: TagType,
}

/// A written value as the payload the tag's own format reads back: a
/// number as decimal text, text as is, a bool as `true`/`false`, `json` as
/// `{"value": v}` or the value at `pointer` (`/set/value` →
/// `{"set":{"value":v}}`).
pub fn encode(value: &Value, format: Format, pointer: Option<&str>) -> Vec<u8> {
    let json = || match value {
        Value::Bool(b) => serde_json::Value::Bool(*b),
        Value::I64(i) => (*i).into(),
        Value::U64(u) => (*u).into(),
        Value::F64(f) => {
            serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, Into::into)
        }
        Value::Text(t) => serde_json::Value::String(t.to_string()),
        Value::Raw(r) => serde_json::Value::String(String::from_utf8_lossy(r).into_owned()),
    };
    match format {
        Format::Json => {
            let mut doc = json();
            let path = pointer.unwrap_or("/value");
            for key in path.trim_start_matches('/').rsplit('/') {
                let key = key.replace("~1", "/").replace("~0", "~");
                doc = serde_json::json!({ key: doc });
            }
            doc.to_string().into_bytes()
        }
        Format::Text => match value {
            Value::Text(t) => t.as_bytes().to_vec(),
            other => other.to_string().into_bytes(),
        },
        Format::Bool | Format::Number => match value {
            Value::Text(t) => t.as_bytes().to_vec(),
            other => other.to_string().into_bytes(),
        },
    }
}

/// Why a payload could not be decoded (the tag turns BadDecodingError).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct PayloadError(pub String);

impl PayloadSpec {
    /// Checks the combination; returns (key, message) on error.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let json = self.format == Format::Json;
        if self.json_pointer.is_some() && !json {
            return Err(("json_pointer", "only for format = \"json\"".into()));
        }
        if self.timestamp_pointer.is_some() && !json {
            return Err(("timestamp_pointer", "only for format = \"json\"".into()));
        }
        for (key, ptr) in [
            ("json_pointer", &self.json_pointer),
            ("timestamp_pointer", &self.timestamp_pointer),
        ] {
            if ptr
                .as_ref()
                .is_some_and(|p| !p.is_empty() && !p.starts_with('/'))
            {
                return Err((key, "a JSON pointer starts with `/` (RFC 6901)".into()));
            }
        }
        let fits = match self.format {
            Format::Number => matches!(self.kind, TagType::F64 | TagType::I64 | TagType::U64),
            Format::Text => self.kind == TagType::String,
            Format::Bool => self.kind == TagType::Bool,
            Format::Json => true,
        };
        if !fits {
            return Err((
                "type",
                format!("format {:?} cannot give type {:?}", self.format, self.kind),
            ));
        }
        Ok(())
    }

    /// Decodes a payload into the value and, if present, a source time (µs).
    pub fn decode(&self, payload: &[u8]) -> Result<(Value, Option<i64>), PayloadError> {
        let text = || {
            std::str::from_utf8(payload).map_err(|_| PayloadError("payload is not UTF-8".into()))
        };
        match self.format {
            Format::Number => Ok((number(text()?.trim(), self.kind)?, None)),
            Format::Text => Ok((Value::Text(Arc::from(text()?)), None)),
            Format::Bool => Ok((Value::Bool(boolean(text()?.trim())?), None)),
            Format::Json => {
                let doc: serde_json::Value = serde_json::from_slice(payload)
                    .map_err(|e| PayloadError(format!("not JSON: {e}")))?;
                let pointer = self.json_pointer.as_deref().unwrap_or("");
                let v = doc
                    .pointer(pointer)
                    .ok_or_else(|| PayloadError(format!("no value at JSON pointer {pointer:?}")))?;
                let value = json_value(v, self.kind)?;
                let time = self
                    .timestamp_pointer
                    .as_deref()
                    .and_then(|p| doc.pointer(p))
                    .and_then(timestamp);
                Ok((value, time))
            }
        }
    }
}

fn number(s: &str, kind: TagType) -> Result<Value, PayloadError> {
    let bad = || PayloadError(format!("{s:?} is not a number of type {kind:?}"));
    match kind {
        TagType::I64 => s.parse::<i64>().map(Value::I64).map_err(|_| bad()),
        TagType::U64 => s.parse::<u64>().map(Value::U64).map_err(|_| bad()),
        _ => match s.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(Value::F64(v)),
            _ => Err(bad()),
        },
    }
}

fn boolean(s: &str) -> Result<bool, PayloadError> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "on" => Ok(true),
        "false" | "0" | "off" => Ok(false),
        _ => Err(PayloadError(format!(
            "{s:?} is not a bool (true/false/1/0/on/off)"
        ))),
    }
}

fn json_value(v: &serde_json::Value, kind: TagType) -> Result<Value, PayloadError> {
    let wrong = || PayloadError(format!("JSON {v} is not of type {kind:?}"));
    match kind {
        TagType::F64 => v
            .as_f64()
            .filter(|f| f.is_finite())
            .map(Value::F64)
            .ok_or_else(wrong),
        TagType::I64 => v.as_i64().map(Value::I64).ok_or_else(wrong),
        TagType::U64 => v.as_u64().map(Value::U64).ok_or_else(wrong),
        TagType::Bool => v.as_bool().map(Value::Bool).ok_or_else(wrong),
        TagType::String => v
            .as_str()
            .map(|s| Value::Text(Arc::from(s)))
            .ok_or_else(wrong),
    }
}

/// Epoch milliseconds (number) or RFC 3339 (string) -> µs since the epoch.
fn timestamp(v: &serde_json::Value) -> Option<i64> {
    if let Some(ms) = v.as_f64() {
        return Some((ms * 1000.0) as i64);
    }
    let ts: jiff::Timestamp = v.as_str()?.parse().ok()?;
    Some(ts.as_microsecond())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(format: Format, kind: TagType, ptr: Option<&str>, ts: Option<&str>) -> PayloadSpec {
        PayloadSpec {
            format,
            json_pointer: ptr.map(String::from),
            timestamp_pointer: ts.map(String::from),
            kind,
        }
    }

    #[test]
    fn each_format_decodes() {
        let num = spec(Format::Number, TagType::F64, None, None);
        assert_eq!(num.decode(b" 21.5\n"), Ok((Value::F64(21.5), None)));
        assert_eq!(
            spec(Format::Number, TagType::I64, None, None).decode(b"-7"),
            Ok((Value::I64(-7), None))
        );
        assert_eq!(
            spec(Format::Text, TagType::String, None, None).decode(b"RUN"),
            Ok((Value::Text("RUN".into()), None))
        );
        let b = spec(Format::Bool, TagType::Bool, None, None);
        for (text, want) in [
            ("true", true),
            ("OFF", false),
            ("1", true),
            ("0", false),
            ("on", true),
            ("False", false),
        ] {
            assert_eq!(
                b.decode(text.as_bytes()),
                Ok((Value::Bool(want), None)),
                "{text}"
            );
        }
        let j = spec(Format::Json, TagType::F64, Some("/data/v"), Some("/ts"));
        let (v, t) = j
            .decode(br#"{"data":{"v":3.5},"ts":1700000000123}"#)
            .expect("json");
        assert_eq!((v, t), (Value::F64(3.5), Some(1_700_000_000_123_000)));
        let (_, t) = j
            .decode(br#"{"data":{"v":1},"ts":"2024-05-01T12:00:00.5+02:00"}"#)
            .expect("json");
        assert_eq!(t, Some(1_714_557_600_500_000));
        let (_, t) = j
            .decode(br#"{"data":{"v":1},"ts":"yesterday"}"#)
            .expect("bad ts falls back");
        assert_eq!(t, None);
    }

    #[test]
    fn garbage_is_a_decoding_error() {
        let num = spec(Format::Number, TagType::F64, None, None);
        assert!(num.decode(&[0xff, 0x00, 0x13]).is_err(), "binary junk");
        assert!(num.decode(b"NaN").is_err());
        assert!(num.decode(b"12 volts").is_err());
        assert!(
            spec(Format::Number, TagType::U64, None, None)
                .decode(b"-1")
                .is_err()
        );
        assert!(
            spec(Format::Bool, TagType::Bool, None, None)
                .decode(b"maybe")
                .is_err()
        );
        let j = spec(Format::Json, TagType::F64, Some("/v"), None);
        assert!(j.decode(br#"{"v":"hot"}"#).is_err(), "wrong JSON type");
        assert!(j.decode(br#"{"w":1}"#).is_err(), "missing pointer");
        assert!(j.decode(br#"{"v":1"#).is_err(), "truncated JSON");
    }

    #[test]
    fn format_and_type_must_fit() {
        assert!(
            spec(Format::Text, TagType::F64, None, None)
                .check()
                .is_err()
        );
        assert!(
            spec(Format::Number, TagType::F64, Some("/v"), None)
                .check()
                .is_err()
        );
        assert!(
            spec(Format::Json, TagType::F64, Some("v"), None)
                .check()
                .is_err()
        );
        assert!(
            spec(Format::Json, TagType::Bool, Some("/v"), Some("/t"))
                .check()
                .is_ok()
        );
    }

    #[test]
    fn a_written_value_encodes_as_its_own_format_reads_it_back() {
        let cases = [
            (Format::Number, TagType::F64, Value::F64(65.5), None),
            (Format::Number, TagType::I64, Value::I64(-3), None),
            (
                Format::Text,
                TagType::String,
                Value::Text("RUN".into()),
                None,
            ),
            (Format::Bool, TagType::Bool, Value::Bool(true), None),
            (Format::Json, TagType::F64, Value::F64(1.25), None),
            (
                Format::Json,
                TagType::U64,
                Value::U64(7),
                Some("/set/value"),
            ),
        ];
        for (format, kind, value, pointer) in cases {
            let payload = encode(&value, format, pointer);
            let read = spec(format, kind, Some(pointer.unwrap_or("/value")), None);
            assert_eq!(
                read.decode(&payload),
                Ok((value.clone(), None)),
                "{format:?} {value:?}"
            );
        }
        assert_eq!(
            encode(&Value::F64(65.0), Format::Json, None),
            br#"{"value":65.0}"#
        );
        assert_eq!(
            encode(&Value::U64(7), Format::Json, Some("/set/value")),
            br#"{"set":{"value":7}}"#
        );
    }
}
