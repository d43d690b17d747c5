//! The generated wire types (`proto/tagstream/v1/tagstream.proto`, package
//! `tagstream.v1`) and shorthands for building messages.

#![allow(missing_docs, clippy::all)]

include!(concat!(env!("OUT_DIR"), "/tagstream.v1.rs"));

use bytes::Bytes;
use prost::Message as _;

/// The subprotocol a client offers and the server selects.
pub const SUBPROTOCOL: &str = "tagstream.v1";

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

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value {
            kind: Some(value::Kind::F64(v)),
        }
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value {
            kind: Some(value::Kind::I64(v)),
        }
    }
}

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value {
            kind: Some(value::Kind::U64(v)),
        }
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value {
            kind: Some(value::Kind::Bool(v)),
        }
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value {
            kind: Some(value::Kind::Text(v.to_string())),
        }
    }
}

impl Value {
    /// Parses a value typed by a person (`tagstream write`): `true` /
    /// `false`, an integer, a number, else text. The server converts it
    /// to the tag's type or answers BadTypeMismatch.
    pub fn parse_loose(text: &str) -> Value {
        if let Ok(b) = text.parse::<bool>() {
            b.into()
        } else if let Ok(i) = text.parse::<i64>() {
            i.into()
        } else if let Ok(u) = text.parse::<u64>() {
            // Above i64::MAX: a u64, exactly (an f64 would round it).
            u.into()
        } else if let Ok(f) = text.parse::<f64>() {
            f.into()
        } else {
            text.into()
        }
    }
}
