//! Generated wire types (proto/tagstream/v1/tagstream.proto) and the
//! conversions between them and the crate's own types.

#![allow(missing_docs, clippy::all)]

include!(concat!(env!("OUT_DIR"), "/tagstream.v1.rs"));

use bytes::Bytes;
use prost::Message as _;

use crate::sample;

/// The subprotocol the server selects.
pub const SUBPROTOCOL: &str = "tagstream.v1";

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

impl Value {
    /// The crate value, if a kind is set.
    pub fn to_sample(&self) -> Option<sample::Value> {
        use value::Kind;
        Some(match self.kind.as_ref()? {
            Kind::Bool(b) => sample::Value::Bool(*b),
            Kind::I64(i) => sample::Value::I64(*i),
            Kind::U64(u) => sample::Value::U64(*u),
            Kind::F64(f) => sample::Value::F64(*f),
            Kind::Text(t) => sample::Value::Text(t.as_str().into()),
            Kind::Raw(r) => sample::Value::Raw(r.clone()),
        })
    }
}

/// Shorthand for a `ServerMessage` with one kind.
pub fn server(kind: server_message::Kind) -> ServerMessage {
    ServerMessage { kind: Some(kind) }
}

/// Shorthand for a `ClientMessage` with one kind.
pub fn client(kind: client_message::Kind) -> ClientMessage {
    ClientMessage { kind: Some(kind) }
}

impl ServerMessage {
    /// Encodes to a frame payload.
    pub fn to_bytes(&self) -> Bytes {
        Bytes::from(self.encode_to_vec())
    }
}
