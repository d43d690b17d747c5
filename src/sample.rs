//! The engine's one input type: everything sources say arrives as an
//! [`Input`] on one bounded flume channel, in order — readings, tags found
//! at run time, definition changes and a lost source. Sources name their
//! tags by their own [`TagKey`] and never wait for the engine to answer, so
//! a full channel slows a source down but can never deadlock discovery.
//! Beside it, what an input carries: [`TagDef`] (a tag's definition, with
//! its write checks), [`Value`] with its wire conversions, and what a
//! cluster gateway's engine takes from the stream ([`Replicated`], with
//! [`TagState`]) or states itself ([`Local`]). A leaf below
//! the sources and the engine (it imports only `proto` and `status`), so
//! the arrows run one way: sources → sample ← engine.

use std::sync::Arc;

use bytes::Bytes;

use crate::{proto, status};

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
    /// A message of the cluster's stream, on a gateway: it carries its own
    /// seq and ids (protocol.md "Cluster"). Boxed as `Define` is.
    Replicated(Box<Replicated>),
    /// Many at once, applied in one batch (a gateway's claims at start).
    ReplicatedMany(Vec<Replicated>),
    /// A cluster gateway's own statement about the tags it follows (cut
    /// off, an edge silent, and back): statuses without a seq.
    Local(Local),
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

/// The most display decimals a tag may ask for (an f64 carries about 15
/// significant digits; more would print binary noise).
pub const MAX_DECIMALS: u8 = 12;

/// `true`, for serde defaults (a tag keeps history unless told not to).
pub fn yes() -> bool {
    true
}

/// Everything known about one tag.
#[derive(Debug, Clone, PartialEq)]
pub struct TagDef {
    /// Wire id (1-based; 0 is never used so a default field is never valid).
    pub id: TagId,
    /// `/`-separated name.
    pub name: String,
    /// Type after scaling.
    pub data_type: proto::DataType,
    /// Engineering unit.
    pub unit: String,
    /// Human description.
    pub description: String,
    /// Clients may write it.
    pub writable: bool,
    /// Write limits (also sent as the EU range).
    pub min: Option<f64>,
    /// Write limits (also sent as the EU range).
    pub max: Option<f64>,
    /// Source name.
    pub source: String,
    /// Absolute deadband in scaled units.
    pub deadband: f64,
    /// Never conflate.
    pub keep_samples: bool,
    /// The smallest step of the value, for display (a scaled integer
    /// register's |scale|); 0: not known.
    pub resolution: f64,
    /// Digits after the decimal point a person reads (the tag key
    /// `decimals`, at most [`MAX_DECIMALS`]); `None`: the clients' own rule.
    pub decimals: Option<u8>,
    /// Recent values are kept (protocol.md History): the tag key
    /// `history`, true unless set false; the engine turns it off for
    /// every tag when `[history]` is absent.
    pub history: bool,
}

impl TagDef {
    /// A read-only F64 tag without limits (MQTT tags, benchmarks, tests);
    /// set other fields with struct update. Its id is assigned by the
    /// catalog.
    pub fn read_only(name: impl Into<String>, source: &str) -> Self {
        TagDef {
            id: 0,
            name: name.into(),
            data_type: proto::DataType::F64,
            unit: String::new(),
            description: String::new(),
            writable: false,
            min: None,
            max: None,
            source: source.into(),
            deadband: 0.0,
            keep_samples: false,
            resolution: 0.0,
            decimals: None,
            history: true,
        }
    }

    /// The wire description.
    pub fn info(&self) -> proto::TagInfo {
        proto::TagInfo {
            id: self.id,
            name: self.name.clone(),
            r#type: self.data_type as i32,
            unit: self.unit.clone(),
            description: self.description.clone(),
            writable: self.writable,
            eu_min: self.min.unwrap_or(0.0),
            eu_max: self.max.unwrap_or(0.0),
            source: self.source.clone(),
            resolution: self.resolution,
            history: self.history,
            decimals: self.decimals.map(u32::from),
        }
    }

    /// Checks a client's write value against type and limits (protocol.md
    /// "Writes", steps 4 and 5) and returns it in the tag's value kind.
    pub fn convert_for_write(&self, value: &Value) -> Result<Value, (u32, String)> {
        use proto::DataType as D;
        let mismatch = |what: &str| {
            Err((
                status::BAD_TYPE_MISMATCH,
                format!("{} is {:?}: {what}", self.name, self.data_type),
            ))
        };
        let converted = match (self.data_type, value) {
            (D::Bool, Value::Bool(b)) => Value::Bool(*b),
            (D::Bool, Value::U64(v @ 0..=1)) => Value::Bool(*v == 1),
            (D::Bool, Value::I64(v @ 0..=1)) => Value::Bool(*v == 1),
            (D::Bool, _) => return mismatch("expects a bool"),
            (D::String, Value::Text(t)) => Value::Text(t.clone()),
            (D::String, _) => return mismatch("expects text"),
            (D::Bytes, Value::Raw(r)) => Value::Raw(r.clone()),
            (D::Bytes, _) => return mismatch("expects bytes"),
            (D::F32 | D::F64, v) => match v {
                Value::F64(_) | Value::I64(_) | Value::U64(_) => {
                    Value::F64(v.as_f64().unwrap_or(0.0))
                }
                _ => return mismatch("expects a number"),
            },
            (kind, v) => {
                // An integer tag: the value must be that integer exactly,
                // within the type's range. An f64 (how JavaScript sends
                // every number) converts only when it is a whole number;
                // `as` would saturate 1e30 to the type's maximum.
                let exact: i128 = match v {
                    Value::U64(v) => i128::from(*v),
                    Value::I64(v) => i128::from(*v),
                    // Saturates only far outside every range checked below.
                    Value::F64(f) if f.is_finite() && f.fract() == 0.0 => *f as i128,
                    _ => return mismatch("expects an integer"),
                };
                let (lo, hi, signed) = integer_range(kind);
                if !(lo..=hi).contains(&exact) {
                    return Err((
                        status::BAD_OUT_OF_RANGE,
                        format!(
                            "{} cannot be written to {} ({}: {lo} to {hi})",
                            value,
                            self.name,
                            type_name(kind)
                        ),
                    ));
                }
                // In range, so these conversions are exact.
                if signed {
                    Value::I64(i64::try_from(exact).unwrap_or_default())
                } else {
                    Value::U64(u64::try_from(exact).unwrap_or_default())
                }
            }
        };
        if let Some(x) = converted.as_f64() {
            // A device never gets an infinity or NaN, nor an f32 tag a
            // value f32 cannot hold (it would arrive as infinity).
            let unrepresentable = !x.is_finite()
                || (self.data_type == proto::DataType::F32 && x.abs() > f64::from(f32::MAX));
            if unrepresentable {
                return Err((
                    status::BAD_OUT_OF_RANGE,
                    format!(
                        "{x} cannot be written to {} ({:?})",
                        self.name, self.data_type
                    ),
                ));
            }
            let below = self.min.is_some_and(|min| x < min);
            let above = self.max.is_some_and(|max| x > max);
            if below || above {
                let limits = match (self.min, self.max) {
                    (Some(lo), Some(hi)) => format!("{lo} to {hi}"),
                    (Some(lo), None) => format!("at least {lo}"),
                    (_, hi) => format!("at most {}", hi.unwrap_or_default()),
                };
                let unit = if self.unit.is_empty() {
                    String::new()
                } else {
                    format!(" {}", self.unit)
                };
                return Err((
                    status::BAD_OUT_OF_RANGE,
                    format!(
                        "{x}{unit} is outside the limits of {} ({limits}{unit})",
                        self.name
                    ),
                ));
            }
        }
        Ok(converted)
    }
}

impl From<&Value> for proto::Value {
    fn from(v: &Value) -> Self {
        use proto::value::Kind;
        let kind = match v {
            Value::Bool(b) => Kind::Bool(*b),
            Value::I64(i) => Kind::I64(*i),
            Value::U64(u) => Kind::U64(*u),
            Value::F64(f) => Kind::F64(*f),
            Value::Text(t) => Kind::Text(t.to_string()),
            Value::Raw(r) => Kind::Raw(r.clone()),
        };
        proto::Value { kind: Some(kind) }
    }
}

impl Value {
    /// The crate value of a wire value, if a kind is set.
    pub fn from_wire(v: &proto::Value) -> Option<Value> {
        use proto::value::Kind;
        Some(match v.kind.as_ref()? {
            Kind::Bool(b) => Value::Bool(*b),
            Kind::I64(i) => Value::I64(*i),
            Kind::U64(u) => Value::U64(*u),
            Kind::F64(f) => Value::F64(*f),
            Kind::Text(t) => Value::Text(t.as_str().into()),
            Kind::Raw(r) => Value::Raw(r.clone()),
        })
    }
}

/// The integers a tag of `kind` holds, and whether it is signed (the
/// value kind it takes on the wire: protocol.md "Which Value kind").
fn integer_range(kind: proto::DataType) -> (i128, i128, bool) {
    use proto::DataType as D;
    match kind {
        D::U16 => (0, u16::MAX.into(), false),
        D::I16 => (i16::MIN.into(), i16::MAX.into(), true),
        D::U32 => (0, u32::MAX.into(), false),
        D::I32 => (i32::MIN.into(), i32::MAX.into(), true),
        D::U64 => (0, u64::MAX.into(), false),
        _ => (i64::MIN.into(), i64::MAX.into(), true),
    }
}

/// A type's name as the config spells it (`u64`), for messages a plant
/// engineer reads.
pub fn type_name(kind: proto::DataType) -> &'static str {
    use proto::DataType as D;
    match kind {
        D::Bool => "bool",
        D::U16 => "u16",
        D::I16 => "i16",
        D::U32 => "u32",
        D::I32 => "i32",
        D::U64 => "u64",
        D::I64 => "i64",
        D::F32 => "f32",
        D::F64 => "f64",
        D::String => "string",
        D::Bytes => "bytes",
        D::TypeUnspecified => "unspecified",
    }
}

/// The state of one tag.
#[derive(Debug, Clone, PartialEq)]
pub struct TagState {
    /// Last value; `None` only if never read.
    pub value: Option<Value>,
    /// OPC UA status.
    pub status: u32,
    /// Source timestamp of the last change, µs.
    pub source_time_us: i64,
    /// Server timestamp of the last change, µs.
    pub server_time_us: i64,
    /// Seq of the last change (0: never changed in this epoch).
    pub seq: u64,
}

/// One message of a cluster's stream as a gateway's engine applies it: the
/// stream's seq is the seq, the edge's id claim is the id, and the edge
/// already applied deadband and scaling. A seq at or before the table's
/// is a message already applied (a consumer recreated after a gap) and
/// changes nothing.
#[derive(Debug, Clone, PartialEq)]
pub enum Replicated {
    /// `id` claimed for a tag: the next id. A name another id holds, or an
    /// id past the next, takes hidden ids, the same on every gateway.
    Claim {
        /// Stream seq.
        seq: u64,
        /// The claimed id.
        id: TagId,
        /// Its definition.
        def: TagDef,
        /// Where its writes go (the gateway's key for the owning edge).
        owner: TagKey,
    },
    /// A known tag's new definition.
    Define {
        /// Stream seq.
        seq: u64,
        /// The tag.
        id: TagId,
        /// Its definition (name ignored: names never change).
        def: TagDef,
    },
    /// A change the owning edge applied, or the samples of a keep_samples
    /// tag it spooled (oldest first), all at one stream seq.
    Update {
        /// The tag.
        id: TagId,
        /// Stream seq.
        seq: u64,
        /// Its states, the last the current one; each `seq` is the
        /// message's.
        samples: Vec<TagState>,
    },
    /// A message that changes no tag: the position moves.
    Skip {
        /// Stream seq.
        seq: u64,
    },
}

/// What a cluster gateway states by itself about the tags it follows
/// (protocol.md "Cluster"): no stream message says it, so it takes no seq
/// and travels in a batch that does not move the position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    /// This gateway lost the stream: every tag with a value turns
    /// UncertainLastUsableValue, keeping it.
    LinkLost,
    /// It has caught up again: each tag shows what the stream says.
    LinkBack,
    /// Edge number `n` (owner keys' `source`) has not been heard for
    /// `edge_timeout`: its tags with a value turn BadCommunicationError.
    EdgeDown(SourceId),
    /// Edge `n` is heard again: its tags show what the stream says.
    EdgeUp(SourceId),
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
