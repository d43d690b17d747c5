//! The wire types, generated once in the SDK crate (`tagstream-client`,
//! from proto/tagstream/v1/tagstream.proto) and shared with it. A leaf:
//! the conversions from the crate's own types live beside those types
//! (`sample`).

pub use tagstream_client::proto::*;

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
