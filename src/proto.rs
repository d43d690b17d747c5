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

#[cfg(test)]
mod reference {
    /// docs/protocol.md is the project's protocol reference: every
    /// message, enum, field and enum value of the schema is named there
    /// (in backticks), so the page cannot fall behind the proto.
    #[test]
    fn the_protocol_reference_names_every_message_field_and_value() {
        let doc = include_str!("../docs/protocol.md");
        let proto = include_str!("../proto/tagstream/v1/tagstream.proto");
        let mut missing = Vec::new();
        for line in proto.lines().map(str::trim) {
            let words: Vec<&str> = line.split_whitespace().collect();
            let name = match words.as_slice() {
                ["message" | "enum", name, ..] => Some(*name),
                [.., name, "=", _] if !line.starts_with("//") => Some(*name),
                _ => None,
            };
            if let Some(name) = name
                && !["kind", "syntax"].contains(&name)
                && !doc.contains(&format!("`{name}`"))
            {
                missing.push(name);
            }
        }
        assert!(
            missing.is_empty(),
            "docs/protocol.md does not name {missing:?}"
        );
    }
}
