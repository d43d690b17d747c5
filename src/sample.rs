//! `Sample`: the one type on the flume channel from sources to the engine.
//! Sources decode and scale; the engine decides (deadband, status) whether a
//! sample is a change.

use std::sync::Arc;

use bytes::Bytes;

/// Compact tag id, stable for an epoch; index into the catalog and table.
pub type TagId = u32;

/// A tag value after decoding and scaling (protocol.md, "Which Value kind").
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// BOOL tags.
    Bool(bool),
    /// Unscaled signed integers.
    I64(i64),
    /// Unscaled unsigned integers.
    U64(u64),
    /// Floats and every scaled tag.
    F64(f64),
    /// STRING tags; `Arc` so the table and encoders share one copy.
    Text(Arc<str>),
    /// BYTES tags.
    Raw(Bytes),
}

impl Value {
    /// The numeric value for deadband comparison and write limits.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Bool(b) => Some(f64::from(u8::from(*b))),
            Value::I64(v) => Some(*v as f64),
            Value::U64(v) => Some(*v as f64),
            Value::F64(v) => Some(*v),
            Value::Text(_) | Value::Raw(_) => None,
        }
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Bool(v) => write!(f, "{v}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::U64(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
            Value::Text(v) => write!(f, "{v:?}"),
            Value::Raw(v) => write!(f, "{} bytes", v.len()),
        }
    }
}

/// One reading (or failure to read) of one tag.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Which tag.
    pub tag: TagId,
    /// `None` keeps the last value: a Bad status from a source that could not
    /// read (protocol.md: "A Bad update still carries the last value").
    pub value: Option<Value>,
    /// OPC UA status code.
    pub status: u32,
    /// When the source took the reading, µs since the Unix epoch.
    pub source_time_us: i64,
}

impl Sample {
    /// A good reading taken now.
    pub fn good(tag: TagId, value: Value) -> Self {
        Sample {
            tag,
            value: Some(value),
            status: crate::status::GOOD,
            source_time_us: now_us(),
        }
    }

    /// A failed reading: the status changes, the last value stays.
    pub fn bad(tag: TagId, status: u32) -> Self {
        Sample {
            tag,
            value: None,
            status,
            source_time_us: now_us(),
        }
    }
}

/// Wall-clock µs since the Unix epoch (0 if the clock is before 1970).
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
