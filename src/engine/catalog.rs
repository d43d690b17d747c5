//! The tag catalog of one epoch: id <-> name, the `TagInfo` each client is
//! told, and what the engine needs per tag (deadband, keep_samples). Each
//! `TagInfo` is encoded once here and shared by every Catalog message.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use prost::Message;

use crate::proto;
use crate::sample::{TagId, Value};
use crate::source::modbus::{ModbusConfig, RegisterType};
use crate::status;

/// Everything known about one tag.
#[derive(Debug, Clone)]
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
}

/// All tags of the epoch, indexed by id. Append-only: a tag discovered at
/// run time (an MQTT wildcard's new topic) gets the next id in the same epoch.
#[derive(Debug, Default, Clone)]
pub struct Catalog {
    tags: Vec<TagDef>,
    encoded: Vec<Bytes>,
    by_name: HashMap<String, TagId>,
}

impl Catalog {
    /// Builds the catalog from tag definitions; ids follow the given order.
    pub fn new(defs: impl IntoIterator<Item = TagDef>) -> Self {
        let mut catalog = Catalog::default();
        for def in defs {
            catalog.push(def);
        }
        catalog
    }

    /// Appends a tag (copy-on-write: readers keep the catalog they hold).
    pub fn with(&self, def: TagDef) -> Catalog {
        let mut next = self.clone();
        next.push(def);
        next
    }

    fn push(&mut self, mut def: TagDef) {
        def.id = self.tags.len() as TagId + 1;
        self.by_name.insert(def.name.clone(), def.id);
        let mut buf = BytesMut::new();
        prost::encoding::message::encode(1, &def.info(), &mut buf);
        self.encoded.push(buf.freeze());
        self.tags.push(def);
    }

    /// Every Modbus tag of the configuration, in file order.
    pub fn from_modbus(devices: &[ModbusConfig]) -> Self {
        Catalog::new(devices.iter().flat_map(|d| {
            d.tags.iter().map(move |t| TagDef {
                id: 0,
                name: t.name.clone(),
                data_type: modbus_type(t.kind, t.is_scaled()),
                unit: t.unit.clone(),
                description: t.description.clone(),
                writable: t.writable,
                min: t.min,
                max: t.max,
                source: d.name.clone(),
                deadband: t.deadband,
                keep_samples: t.keep_samples,
            })
        }))
    }

    /// Number of tags.
    pub fn len(&self) -> usize {
        self.tags.len()
    }

    /// True if no tags.
    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }

    /// The tag with this id.
    pub fn get(&self, id: TagId) -> Option<&TagDef> {
        self.tags.get((id as usize).checked_sub(1)?)
    }

    /// The id of a name.
    pub fn id(&self, name: &str) -> Option<TagId> {
        self.by_name.get(name).copied()
    }

    /// All tags.
    pub fn iter(&self) -> impl Iterator<Item = &TagDef> {
        self.tags.iter()
    }

    /// The tag's `TagInfo` encoded as field 1 (`Catalog.tags`).
    pub fn encoded_info(&self, id: TagId) -> Option<&Bytes> {
        self.encoded.get((id as usize).checked_sub(1)?)
    }
}

fn modbus_type(kind: RegisterType, scaled: bool) -> proto::DataType {
    use proto::DataType as D;
    if scaled {
        return D::F64;
    }
    match kind {
        RegisterType::Bool => D::Bool,
        RegisterType::U16 => D::U16,
        RegisterType::I16 => D::I16,
        RegisterType::U32 => D::U32,
        RegisterType::I32 => D::I32,
        RegisterType::U64 => D::U64,
        RegisterType::I64 => D::I64,
        RegisterType::F32 => D::F32,
        RegisterType::F64 => D::F64,
        RegisterType::String => D::String,
    }
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
            (_, Value::U64(v)) => Value::U64(*v),
            (_, Value::I64(v)) => Value::I64(*v),
            (_, Value::F64(v)) if v.fract() == 0.0 && v.is_finite() => Value::I64(*v as i64),
            _ => return mismatch("expects an integer"),
        };
        if let Some(x) = converted.as_f64() {
            let below = self.min.is_some_and(|min| x < min);
            let above = self.max.is_some_and(|max| x > max);
            if below || above || x.is_nan() {
                return Err((
                    status::BAD_OUT_OF_RANGE,
                    format!(
                        "{x} is outside [{:?}, {:?}] for {}",
                        self.min, self.max, self.name
                    ),
                ));
            }
        }
        Ok(converted)
    }
}

/// Encodes a `Catalog` message body (no oneof wrapper) for the given ids.
pub fn encode_catalog(catalog: &Catalog, ids: &[TagId], last: bool) -> proto::ServerMessage {
    proto::ServerMessage {
        kind: Some(proto::server_message::Kind::Catalog(proto::Catalog {
            tags: ids
                .iter()
                .filter_map(|id| catalog.get(*id))
                .map(TagDef::info)
                .collect(),
            last,
        })),
    }
}

impl proto::ServerMessage {
    /// Encodes to a frame payload.
    pub fn to_bytes(&self) -> Bytes {
        Bytes::from(self.encode_to_vec())
    }
}
