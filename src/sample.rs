//! The engine's one input type: everything sources say arrives as an
//! [`Input`] on one bounded flume channel, in order — readings, tags found
//! at run time, definition changes and a lost source. Sources name their
//! tags by their own [`TagKey`] and never wait for the engine to answer, so
//! a full channel slows a source down but can never deadlock discovery.

use std::sync::Arc;

use bytes::Bytes;

use crate::engine::catalog::TagDef;

/// Compact tag id, stable for an epoch; index into the catalog and table.
pub type TagId = u32;

/// A source's index in the running configuration (assigned at start).
pub type SourceId = u16;

/// A source's own name for one of its tags: the source's index and the
/// tag's index among the tags that source defined (its configured tags
/// first, in file order, then those it found at run time). The engine maps
/// keys to ids; writes come back to the source by key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TagKey {
    /// Which source.
    pub source: SourceId,
    /// Which of its tags.
    pub local: u32,
}

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
    /// Which tag, by its source's key.
    pub tag: TagKey,
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
    pub fn good(tag: TagKey, value: Value) -> Self {
        Sample {
            tag,
            value: Some(value),
            status: crate::status::GOOD,
            source_time_us: now_us(),
        }
    }

    /// A failed reading: the status changes, the last value stays.
    pub fn bad(tag: TagKey, status: u32) -> Self {
        Sample {
            tag,
            value: None,
            status,
            source_time_us: now_us(),
        }
    }
}

/// What a source tells the engine.
#[derive(Clone, Debug)]
pub enum Input {
    /// A reading of a tag the source defined (configured or `Define`d).
    Sample(Sample),
    /// A tag the source found at run time, or a new definition of one it
    /// defined before (a Sparkplug rebirth with another type). A new key
    /// gets the next id; a known key keeps its id and every session that
    /// sees the tag gets its Catalog entry again. A name that already
    /// belongs to another key is refused (logged and counted): a run-time
    /// name never takes over another tag. Samples may follow at once.
    Define {
        /// The source's key for the tag.
        key: TagKey,
        /// The definition (its `id` is ignored). Boxed: it is rare, and
        /// every slot of the channel is as large as the largest input.
        def: Box<TagDef>,
    },
    /// The source lost its device or broker: each of its tags turns
    /// `status` (those never read: `unread`), keeping its last value.
    SourceDown {
        /// Which source.
        source: SourceId,
        /// Status of tags that have a value.
        status: u32,
        /// Status of tags never read.
        unread: u32,
    },
}

/// Wall-clock µs since the Unix epoch (0 if the clock is before 1970).
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_input_is_no_larger_than_a_sample() {
        // The channel holds up to 65,536 of them under backpressure.
        assert!(std::mem::size_of::<Input>() <= std::mem::size_of::<Sample>() + 8);
    }
}
