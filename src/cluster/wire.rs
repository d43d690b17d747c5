//! What travels between nodes, and on which subjects. Everything lives in
//! one stream whose subjects all start with its name `S`:
//!
//! | subject | payload | written by |
//! | --- | --- | --- |
//! | `S.id.<id>` | [`ClusterDef`]: the claim of an id for a name | the edge that defines the tag, only if the subject is empty |
//! | `S.d.<id>` | [`ClusterDef`]: a redefinition (a Sparkplug rebirth) | the owning edge |
//! | `S.v.<id>` | `TagUpdate` (its `id` unused): one applied change | the owning edge |
//!
//! The stream keeps the last message per subject, so it holds every tag's
//! claim, latest definition and latest state, and its sequence is the
//! protocol's seq. Claims are created in id order (an edge claims id k
//! only after it has seen k - 1 claimed), so every reader meets them in
//! id order, whether it follows live or reads the stream's last messages
//! at start: that is what makes ids equal on every gateway.

use prost::Message;

use crate::proto;
use crate::sample::TagDef;
use crate::sample::TagId;

/// A tag's definition as edges publish it: `TagDef` with its owner edge
/// (the target of writes) and the exact limits (`TagInfo`'s EU range
/// cannot say "none").
#[derive(Clone, PartialEq, Message)]
pub struct ClusterDef {
    /// The owning edge's id.
    #[prost(string, tag = "1")]
    pub edge: String,
    /// The tag's name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// `proto::DataType`.
    #[prost(int32, tag = "3")]
    pub data_type: i32,
    /// Engineering unit.
    #[prost(string, tag = "4")]
    pub unit: String,
    /// Description.
    #[prost(string, tag = "5")]
    pub description: String,
    /// Clients may write it.
    #[prost(bool, tag = "6")]
    pub writable: bool,
    /// Lower write limit.
    #[prost(double, optional, tag = "7")]
    pub min: Option<f64>,
    /// Upper write limit.
    #[prost(double, optional, tag = "8")]
    pub max: Option<f64>,
    /// The source's name on its edge.
    #[prost(string, tag = "9")]
    pub source: String,
    /// Display step.
    #[prost(double, tag = "10")]
    pub resolution: f64,
    /// Never conflated.
    #[prost(bool, tag = "11")]
    pub keep_samples: bool,
    /// Keeps history (where the gateway keeps any).
    #[prost(bool, tag = "12")]
    pub history: bool,
    /// Display decimals (the tag key `decimals`).
    #[prost(uint32, optional, tag = "13")]
    pub decimals: Option<u32>,
}

impl ClusterDef {
    /// What an edge publishes for its tag.
    pub fn of(def: &TagDef, edge: &str) -> Self {
        ClusterDef {
            edge: edge.to_string(),
            name: def.name.clone(),
            data_type: def.data_type as i32,
            unit: def.unit.clone(),
            description: def.description.clone(),
            writable: def.writable,
            min: def.min,
            max: def.max,
            source: def.source.clone(),
            resolution: def.resolution,
            keep_samples: def.keep_samples,
            history: def.history,
            decimals: def.decimals.map(u32::from),
        }
    }

    /// The gateway's definition (no deadband: the edge applied it).
    pub fn to_def(&self) -> TagDef {
        TagDef {
            id: 0,
            name: self.name.clone(),
            data_type: proto::DataType::try_from(self.data_type)
                .unwrap_or(proto::DataType::TypeUnspecified),
            unit: self.unit.clone(),
            description: self.description.clone(),
            writable: self.writable,
            min: self.min,
            max: self.max,
            source: self.source.clone(),
            deadband: 0.0,
            keep_samples: self.keep_samples,
            resolution: self.resolution,
            history: self.history,
            // More than a display can use is a peer's mistake: dropped.
            decimals: self
                .decimals
                .and_then(|d| u8::try_from(d).ok())
                .filter(|&d| d <= crate::sample::MAX_DECIMALS),
        }
    }
}

/// A write a gateway routes to the owning edge (NATS request/reply on
/// [`Subjects::write`], outside the stream): checked by the gateway, its
/// principal and peer carried for the edge's audit line.
#[derive(Clone, PartialEq, Message)]
pub struct ClusterWrite {
    /// The tag's cluster id.
    #[prost(uint32, tag = "1")]
    pub id: u32,
    /// The value, converted by the gateway to the tag's kind.
    #[prost(message, optional, tag = "2")]
    pub value: Option<proto::Value>,
    /// The principal's subject.
    #[prost(string, tag = "3")]
    pub subject: String,
    /// The client's address.
    #[prost(string, tag = "4")]
    pub peer: String,
    /// Time left before the gateway answers BadTimeout, ms: the edge
    /// answers within it and starts the device write before it ends.
    #[prost(uint64, tag = "5")]
    pub budget_ms: u64,
}

/// The edge's answer to a [`ClusterWrite`].
#[derive(Clone, PartialEq, Message)]
pub struct ClusterWriteResult {
    /// OPC UA status (0: the device acknowledged).
    #[prost(uint32, tag = "1")]
    pub status: u32,
    /// What the acknowledgement means, or why it failed.
    #[prost(string, tag = "2")]
    pub message: String,
}

/// What one stream message is, by its subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `S.id.<id>`.
    Claim(TagId),
    /// `S.d.<id>`.
    Define(TagId),
    /// `S.v.<id>`.
    Value(TagId),
    /// Anything else under `S.`: not ours, skipped (its seq still counts).
    Other,
}

/// The subjects of one stream.
#[derive(Debug, Clone)]
pub struct Subjects {
    stream: String,
}

impl Subjects {
    /// For stream `stream` (a checked token).
    pub fn new(stream: &str) -> Self {
        Subjects {
            stream: stream.to_string(),
        }
    }

    /// The stream's name.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Everything the stream holds.
    pub fn all(&self) -> String {
        format!("{}.>", self.stream)
    }

    /// Every claim.
    pub fn claims(&self) -> String {
        format!("{}.id.>", self.stream)
    }

    /// The claim of `id`.
    pub fn claim(&self, id: TagId) -> String {
        format!("{}.id.{id}", self.stream)
    }

    /// A redefinition of `id`.
    pub fn define(&self, id: TagId) -> String {
        format!("{}.d.{id}", self.stream)
    }

    /// A change of `id`.
    pub fn value(&self, id: TagId) -> String {
        format!("{}.v.{id}", self.stream)
    }

    /// Where writes to edge `edge` go (core NATS, not the stream).
    pub fn write(&self, edge: &str) -> String {
        format!("{}_write.{edge}", self.stream)
    }

    /// Edge `edge`'s heartbeat (core NATS, not the stream).
    pub fn live(&self, edge: &str) -> String {
        format!("{}_live.{edge}", self.stream)
    }

    /// Every edge's heartbeat.
    pub fn live_all(&self) -> String {
        format!("{}_live.*", self.stream)
    }

    /// The edge a heartbeat subject names.
    pub fn live_edge<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject
            .strip_prefix(self.stream.as_str())?
            .strip_prefix("_live.")
    }

    /// What a stream message's subject says it is.
    pub fn kind(&self, subject: &str) -> Kind {
        let Some(rest) = subject
            .strip_prefix(self.stream.as_str())
            .and_then(|r| r.strip_prefix('.'))
        else {
            return Kind::Other;
        };
        let Some((what, id)) = rest.split_once('.') else {
            return Kind::Other;
        };
        let Ok(id) = id.parse::<TagId>() else {
            return Kind::Other;
        };
        if id == 0 {
            return Kind::Other;
        }
        match what {
            "id" => Kind::Claim(id),
            "d" => Kind::Define(id),
            "v" => Kind::Value(id),
            _ => Kind::Other,
        }
    }
}

/// The epoch of a stream: its name and creation time, hashed (FNV-1a) to
/// a nonzero u64, so every gateway derives the same one and a stream
/// deleted and created again has another.
pub fn epoch(stream: &str, created_unix_ns: i128) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in stream
        .bytes()
        .chain([0])
        .chain(created_unix_ns.to_le_bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1)
}

/// What `S.v.<id>` holds: one change, or the spooled samples of a
/// keep_samples tag in order (the stream keeps one message per subject,
/// so samples published one by one while a gateway was not reading would
/// be lost). Its field number is `Delta.updates`' (3): a batch entry as
/// the engine encoded it is this message with one sample, published as
/// is, and samples concatenated are this message with several.
#[derive(Clone, PartialEq, Message)]
pub struct ClusterValue {
    /// The changes, oldest first (their `id` unused: the subject says).
    #[prost(message, repeated, tag = "3")]
    pub samples: Vec<proto::TagUpdate>,
}

/// A `S.v.<id>` payload, decoded (`None`: malformed or empty).
pub fn decode_value(payload: &[u8]) -> Option<Vec<proto::TagUpdate>> {
    let value = ClusterValue::decode(payload).ok()?;
    (!value.samples.is_empty()).then_some(value.samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_name_what_they_hold_and_nothing_else_parses() {
        let s = Subjects::new("TS");
        assert_eq!(s.kind(&s.claim(7)), Kind::Claim(7));
        assert_eq!(s.kind(&s.define(7)), Kind::Define(7));
        assert_eq!(s.kind(&s.value(4_000_000_000)), Kind::Value(4_000_000_000));
        for other in [
            "TS.v.0",
            "TS.v.x",
            "TS.v",
            "TSX.v.1",
            "TS.q.1",
            "TS.v.99999999999",
        ] {
            assert_eq!(s.kind(other), Kind::Other, "{other}");
        }
    }

    #[test]
    fn an_epoch_is_nonzero_and_names_one_stream_at_one_creation() {
        assert_ne!(epoch("TS", 1), epoch("TS", 2));
        assert_ne!(epoch("TS", 1), epoch("TT", 1));
        assert_eq!(epoch("TS", 1), epoch("TS", 1));
        assert_ne!(epoch("", 0), 0);
    }

    #[test]
    fn batch_entries_are_values_of_one_sample_and_concatenated_of_several() {
        let state = |v: f64| crate::engine::table::TagState {
            value: Some(crate::sample::Value::F64(v)),
            status: 0,
            source_time_us: 1,
            server_time_us: 2,
            seq: 9,
        };
        let mut b = crate::engine::batch::Builder::default();
        b.push(1, 9, &state(1.0));
        b.push(1, 10, &state(2.0));
        let catalog = crate::engine::catalog::Catalog::new([TagDef {
            keep_samples: true,
            ..TagDef::read_only("a/b", "s")
        }]);
        let batch = b.finish(8, 10, &catalog, 0);
        let one = batch.entry_slice(&batch.entries[0]);
        let samples = decode_value(&one).expect("one sample");
        assert_eq!(samples.len(), 1);
        let both = [one, batch.entry_slice(&batch.entries[1])].concat();
        let samples = decode_value(&both).expect("two samples");
        assert_eq!(samples.len(), 2);
        assert_eq!(
            samples[1].value,
            Some(proto::Value::from(&crate::sample::Value::F64(2.0)))
        );
        assert_eq!(decode_value(&[]), None, "no sample");
        assert_eq!(decode_value(&[0x1a, 9, 1]), None, "short");
    }

    #[test]
    fn a_definition_survives_the_trip() {
        let def = TagDef {
            writable: true,
            min: Some(0.0),
            max: None,
            unit: "bar".into(),
            decimals: Some(2),
            ..TagDef::read_only("a/b", "m1")
        };
        let back = ClusterDef::decode(ClusterDef::of(&def, "e1").encode_to_vec().as_slice())
            .expect("decodes")
            .to_def();
        assert_eq!(
            back,
            TagDef {
                deadband: 0.0,
                ..def.clone()
            }
        );
        // Decimals past what a display can use are a peer's mistake: dropped.
        let wild = ClusterDef {
            decimals: Some(300),
            ..ClusterDef::of(&def, "e1")
        };
        assert_eq!(wild.to_def().decimals, None);
    }
}
