//! The wire types, generated once in the SDK crate (`tagstream-client`,
//! from proto/tagstream/v1/tagstream.proto) and shared with it, and the
//! conversions between them and the crate's own types.

pub use tagstream_client::proto::*;

use crate::sample;

impl From<&sample::Value> for Value {
    fn from(v: &sample::Value) -> Self {
        use value::Kind;
        let kind = match v {
            sample::Value::Bool(b) => Kind::Bool(*b),
            sample::Value::I64(i) => Kind::I64(*i),
            sample::Value::U64(u) => Kind::U64(*u),
            sample::Value::F64(f) => Kind::F64(*f),
            sample::Value::Text(t) => Kind::Text(t.to_string()),
            sample::Value::Raw(r) => Kind::Raw(r.clone()),
        };
        Value { kind: Some(kind) }
    }
}

impl sample::Value {
    /// The crate value of a wire value, if a kind is set.
    pub fn from_wire(v: &Value) -> Option<sample::Value> {
        use value::Kind;
        Some(match v.kind.as_ref()? {
            Kind::Bool(b) => sample::Value::Bool(*b),
            Kind::I64(i) => sample::Value::I64(*i),
            Kind::U64(u) => sample::Value::U64(*u),
            Kind::F64(f) => sample::Value::F64(*f),
            Kind::Text(t) => sample::Value::Text(t.as_str().into()),
            Kind::Raw(r) => sample::Value::Raw(r.clone()),
        })
    }
}
