//! `[[mqtt]]`, `[[mqtt.tags]]` and `[[mqtt.topics]]` (config.md).

use std::time::Duration;

use serde::Deserialize;

use super::broker::Broker;
use super::payload::{Format, PayloadSpec, TagType};
use crate::pattern;
use crate::validate::{Problems, check_tag_name};

/// One broker connection (`[[mqtt]]`).
#[derive(Debug, Clone, Deserialize)]
pub struct MqttConfig {
    /// Source name, used in logs, metrics and `TagInfo.source`.
    pub name: String,
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    /// MQTT client id; default `tagstream-<server_id>-<name>`.
    #[serde(default)]
    pub client_id: String,
    /// User name, inline.
    #[serde(default)]
    pub username: Option<String>,
    /// Environment variable holding the user name.
    #[serde(default)]
    pub username_env: Option<String>,
    /// Environment variable holding the password (never inline).
    #[serde(default)]
    pub password_env: Option<String>,
    /// Extension, for `mqtts://`: a PEM CA bundle to trust instead of the
    /// system roots (plants often run a private CA).
    #[serde(default)]
    pub ca_file: Option<String>,
    /// MQTT keep-alive.
    #[serde(default = "default_keep_alive", with = "humantime_serde")]
    pub keep_alive: Duration,
    /// Largest payload decoded; larger ones turn the tag BadDecodingError.
    #[serde(default = "default_max_payload")]
    pub max_payload_bytes: usize,
    /// Tags its topic maps may discover; past it new topics are dropped,
    /// counted and logged (a rogue publisher cannot grow the catalog
    /// without bound).
    #[serde(default = "default_max_tags")]
    pub max_tags: usize,
    /// One tag per topic.
    #[serde(default)]
    pub tags: Vec<MqttTagConfig>,
    /// Many tags from one wildcard subscription.
    #[serde(default)]
    pub topics: Vec<MqttTopicConfig>,
}

fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}
fn default_max_tags() -> usize {
    100_000
}
fn default_max_payload() -> usize {
    65_536
}
fn default_qos() -> u8 {
    1
}

/// `[[mqtt.tags]]`: one topic, one tag.
#[derive(Debug, Clone, Deserialize)]
pub struct MqttTagConfig {
    /// Tag name.
    pub name: String,
    /// Exact topic (no wildcards).
    pub topic: String,
    /// Payload format.
    #[serde(default)]
    pub format: Format,
    /// For `json`: where the value is.
    #[serde(default)]
    pub json_pointer: Option<String>,
    /// For `json`: where a source timestamp is (epoch ms or RFC 3339).
    #[serde(default)]
    pub timestamp_pointer: Option<String>,
    /// Tag type.
    #[serde(rename = "type", default)]
    pub kind: TagType,
    /// Subscription QoS (0, 1, 2).
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Engineering unit.
    #[serde(default)]
    pub unit: String,
    /// Human description.
    #[serde(default)]
    pub description: String,
    /// Absolute deadband.
    #[serde(default)]
    pub deadband: f64,
    /// Never conflate.
    #[serde(default)]
    pub keep_samples: bool,
    /// Keep recent values (protocol.md History; `[history]` on).
    #[serde(default = "crate::sample::yes")]
    pub history: bool,
    /// Digits after the decimal point a person reads (0 to 12).
    #[serde(default)]
    pub decimals: Option<u8>,
    /// Writes publish here (QoS 1; the tag is writable when set).
    #[serde(default)]
    pub write_topic: Option<String>,
    /// For `json` writes: where the value goes (`/set/value` publishes
    /// `{"set":{"value":v}}`); default `{"value": v}`.
    #[serde(default)]
    pub write_pointer: Option<String>,
}

/// `[[mqtt.topics]]`: a wildcard filter whose topics become tags, named by
/// a template where `{N}` is the N-th wildcard level of the topic.
#[derive(Debug, Clone, Deserialize)]
pub struct MqttTopicConfig {
    /// Topic filter with `+` / `#`.
    pub filter: String,
    /// Tag name template.
    pub name: String,
    /// Payload format.
    #[serde(default)]
    pub format: Format,
    /// For `json`: where the value is.
    #[serde(default)]
    pub json_pointer: Option<String>,
    /// For `json`: where a source timestamp is.
    #[serde(default)]
    pub timestamp_pointer: Option<String>,
    /// Tag type.
    #[serde(rename = "type", default)]
    pub kind: TagType,
    /// Subscription QoS.
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Engineering unit.
    #[serde(default)]
    pub unit: String,
    /// Human description.
    #[serde(default)]
    pub description: String,
    /// Absolute deadband.
    #[serde(default)]
    pub deadband: f64,
    /// Never conflate.
    #[serde(default)]
    pub keep_samples: bool,
    /// Keep recent values (protocol.md History; `[history]` on).
    #[serde(default = "crate::sample::yes")]
    pub history: bool,
    /// Digits after the decimal point a person reads (0 to 12).
    #[serde(default)]
    pub decimals: Option<u8>,
    /// Writes publish here: a template with the same `{N}` fields as the
    /// name (the tags are writable when set).
    #[serde(default)]
    pub write_topic: Option<String>,
    /// For `json` writes: where the value goes (default `/value`).
    #[serde(default)]
    pub write_pointer: Option<String>,
}

impl MqttTagConfig {
    /// How to decode this tag's payloads.
    pub fn payload(&self) -> PayloadSpec {
        PayloadSpec {
            format: self.format,
            json_pointer: self.json_pointer.clone(),
            timestamp_pointer: self.timestamp_pointer.clone(),
            kind: self.kind,
        }
    }
}

impl MqttTopicConfig {
    /// How to decode this map's payloads.
    pub fn payload(&self) -> PayloadSpec {
        PayloadSpec {
            format: self.format,
            json_pointer: self.json_pointer.clone(),
            timestamp_pointer: self.timestamp_pointer.clone(),
            kind: self.kind,
        }
    }

    /// Number of wildcard levels in the filter.
    pub fn wildcards(&self) -> usize {
        self.filter
            .split('/')
            .filter(|l| *l == "+" || *l == "#")
            .count()
    }
}

impl MqttConfig {
    /// Its broker keys, with the client id `client_id` (see
    /// [`super::broker::client_id`]).
    pub fn broker(&self, client_id: String) -> Broker<'_> {
        Broker {
            source: &self.name,
            url: &self.url,
            client_id,
            username: self.username.as_deref(),
            username_env: self.username_env.as_deref(),
            password_env: self.password_env.as_deref(),
            ca_file: self.ca_file.as_deref(),
            keep_alive: self.keep_alive,
        }
    }

    pub(crate) fn check(&self, key: &str, p: &mut Problems) {
        if self.name.is_empty() {
            p.push(format!("{key}.name"), "must not be empty");
        }
        self.broker(String::new()).check(key, p);
        if !(1..=16 << 20).contains(&self.max_payload_bytes) {
            p.push(format!("{key}.max_payload_bytes"), "must be 1..=16777216");
        }
        if !(1..=1_000_000).contains(&self.max_tags) {
            p.push(format!("{key}.max_tags"), "must be 1..=1000000");
        }
        if self.tags.is_empty() && self.topics.is_empty() {
            p.push(
                format!("{key}.tags"),
                "a broker needs at least one tag or topic map",
            );
        }
        for (j, t) in self.tags.iter().enumerate() {
            let k = format!("{key}.tags[{j}]");
            if let Err(e) = check_tag_name(&t.name) {
                p.push(format!("{k}.name"), e);
            }
            if t.topic.is_empty() || t.topic.contains(['+', '#']) {
                p.push(
                    format!("{k}.topic"),
                    "must be a topic without wildcards (use [[mqtt.topics]] for those)",
                );
            }
            check_write(
                &k,
                t.format,
                t.write_topic.as_deref(),
                t.write_pointer.as_deref(),
                p,
            );
            check_common(&k, &t.payload(), t.qos, t.deadband, p);
            p.decimals(format!("{k}.decimals"), t.decimals);
        }
        for (j, t) in self.topics.iter().enumerate() {
            let k = format!("{key}.topics[{j}]");
            if let Err(e) = pattern::validate(&t.filter) {
                p.push(format!("{k}.filter"), e.to_string());
            } else if t.wildcards() == 0 {
                p.push(format!("{k}.filter"), "has no wildcard: use [[mqtt.tags]]");
            }
            let max_ref = template_refs(&format!("{k}.name"), &t.name, p);
            if max_ref == 0 {
                p.push(
                    format!("{k}.name"),
                    "a template needs at least one {N} or every topic maps to one tag",
                );
            }
            let mut refs = vec![("name", max_ref)];
            if let Some(w) = &t.write_topic {
                refs.push((
                    "write_topic",
                    template_refs(&format!("{k}.write_topic"), w, p),
                ));
            }
            for (field, max_ref) in refs {
                if max_ref > t.wildcards() {
                    p.push(
                        format!("{k}.{field}"),
                        format!(
                            "{{{max_ref}}} but the filter has {} wildcard(s)",
                            t.wildcards()
                        ),
                    );
                }
            }
            check_write(
                &k,
                t.format,
                t.write_topic.as_deref(),
                t.write_pointer.as_deref(),
                p,
            );
            check_common(&k, &t.payload(), t.qos, t.deadband, p);
            p.decimals(format!("{k}.decimals"), t.decimals);
        }
    }
}

/// The highest `{N}` a template uses (0: none); a malformed one is a
/// problem at `key`.
fn template_refs(key: &str, template: &str, p: &mut Problems) -> usize {
    let mut rest = template;
    let mut max_ref = 0;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        match rest[open + 1..open + close].parse::<usize>() {
            Ok(n) if n >= 1 => max_ref = max_ref.max(n),
            _ => p.push(
                key.to_string(),
                format!("{:?}: use {{1}}, {{2}}, ...", &rest[open..=open + close]),
            ),
        }
        rest = &rest[open + close + 1..];
    }
    max_ref
}

/// `write_topic` and `write_pointer`, for an exact tag or a topic map.
fn check_write(
    key: &str,
    format: Format,
    topic: Option<&str>,
    pointer: Option<&str>,
    p: &mut Problems,
) {
    if let Some(w) = topic
        && (w.is_empty() || w.contains(['+', '#']))
    {
        p.push(
            format!("{key}.write_topic"),
            "must be a topic without wildcards",
        );
    }
    if let Some(ptr) = pointer {
        if format != Format::Json {
            p.push(format!("{key}.write_pointer"), "only for format = \"json\"");
        } else if !ptr.starts_with('/') || ptr.len() < 2 {
            p.push(
                format!("{key}.write_pointer"),
                "must be a JSON pointer like \"/value\"",
            );
        }
        if topic.is_none() {
            p.push(format!("{key}.write_pointer"), "needs a write_topic");
        }
    }
}

fn check_common(key: &str, spec: &PayloadSpec, qos: u8, deadband: f64, p: &mut Problems) {
    if qos > 2 {
        p.push(format!("{key}.qos"), "must be 0, 1 or 2");
    }
    if !(deadband >= 0.0 && deadband.is_finite()) {
        p.push(format!("{key}.deadband"), "must be a finite number >= 0");
    }
    if let Err(e) = spec.check() {
        p.push(format!("{key}.{}", e.0), e.1);
    }
}
