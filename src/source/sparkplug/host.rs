//! The Sparkplug host's state: which edge nodes and devices are born, their
//! seq, bdSeq and aliases, and the tags their births made. It receives
//! (topic, payload) pairs and emits [`Action`]s — define a tag, a sample,
//! ask a node for a rebirth, a log line — so it runs without a broker in
//! its tests; the source's loop (mod.rs) carries them out.
//!
//! Rules (Sparkplug B 3.0, host application): a birth (NBIRTH/DBIRTH)
//! defines its metrics' tags and gives their values; data (NDATA/DDATA)
//! names metrics by alias or name; a death (NDEATH with the birth's bdSeq,
//! DDEATH) turns the tags Bad with their last values. Every message but
//! NDEATH carries `seq` (0-255, +1 each): a gap, an unknown alias, or data
//! from a node or device not born asks for a rebirth, at most once per
//! node per [`REBIRTH_EVERY`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;

use super::config::SparkplugConfig;
use super::payload::{self, BD_SEQ, Kind, Metric, MetricValue, pb};
use crate::proto::DataType;
use crate::sample::TagDef;
use crate::sample::{Sample, SourceId, TagKey, now_us};
use crate::status;

/// A node is asked for a rebirth at most this often.
pub const REBIRTH_EVERY: Duration = Duration::from_secs(5);
/// Nodes tracked before unknown ones stop being remembered (each unknown
/// topic would otherwise grow the map).
const MAX_NODES: usize = 100_000;
/// Nodes never born that were asked for a rebirth and are remembered (for
/// [`REBIRTH_EVERY`]): data from 100,000 invented node ids must not grow
/// the host. Past it, older entries go; with all of them recent, such a
/// node is not asked.
const MAX_UNBORN: usize = 1_000;
/// Longest group, node or device id accepted (bytes). The specification
/// sets none; a real one is a short name, and each is part of every tag
/// name and map key. A message with a longer one is ignored.
pub const MAX_ID_BYTES: usize = 128;

/// Message types of the Sparkplug topic namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    /// Node birth.
    NBirth,
    /// Node death.
    NDeath,
    /// Device birth.
    DBirth,
    /// Device death.
    DDeath,
    /// Node data.
    NData,
    /// Device data.
    DData,
    /// Command to a node or device (others' or ours: ignored).
    Cmd,
}

/// A parsed `spBv1.0/<group>/<type>/<node>[/<device>]` topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic<'a> {
    /// Group id.
    pub group: &'a str,
    /// Message type.
    pub kind: MessageType,
    /// Edge node id.
    pub node: &'a str,
    /// Device id, for D* messages.
    pub device: Option<&'a str>,
}

/// The topic of a node or device message; `None` for anything else
/// (`STATE`, foreign topics, a D* message without a device).
pub fn parse_topic(topic: &str) -> Option<Topic<'_>> {
    let mut levels = topic.split('/');
    if levels.next()? != "spBv1.0" {
        return None;
    }
    let group = levels.next()?;
    let kind = match levels.next()? {
        "NBIRTH" => MessageType::NBirth,
        "NDEATH" => MessageType::NDeath,
        "DBIRTH" => MessageType::DBirth,
        "DDEATH" => MessageType::DDeath,
        "NDATA" => MessageType::NData,
        "DDATA" => MessageType::DData,
        "NCMD" | "DCMD" => MessageType::Cmd,
        _ => return None,
    };
    let node = levels.next()?;
    let device = levels.next();
    if levels.next().is_some() || group.is_empty() || node.is_empty() {
        return None;
    }
    let is_device = matches!(
        kind,
        MessageType::DBirth | MessageType::DDeath | MessageType::DData
    );
    if is_device != device.is_some() && kind != MessageType::Cmd {
        return None;
    }
    Some(Topic {
        group,
        kind,
        node,
        device,
    })
}

/// What the source's loop does for the host.
#[derive(Debug, Clone)]
pub enum Action {
    /// Define (or redefine) a tag under this local key.
    Define(u32, Box<TagDef>),
    /// A reading or a status.
    Sample(Sample),
    /// Publish a rebirth request (NCMD) to this node.
    Rebirth {
        /// Group id.
        group: String,
        /// Edge node id.
        node: String,
    },
    /// A log line (warn level, throttled by the loop).
    Warn(String),
}

/// Where a tag's metric lives, and what the last birth said of it.
#[derive(Debug, Clone)]
pub struct Slot {
    /// Tag name.
    pub name: String,
    /// Group id.
    pub group: String,
    /// Edge node id.
    pub node: String,
    /// Device id, for device metrics.
    pub device: Option<String>,
    /// Metric name as the node gave it.
    pub metric: String,
    /// Sparkplug data type.
    pub datatype: u32,
    /// Writes may go to it.
    pub writable: bool,
    unit: String,
    /// Newest source time applied (µs): historical metrics older than it
    /// are not applied.
    latest_us: i64,
}

/// One edge node as the host knows it.
#[derive(Debug, Default)]
struct Node {
    /// Born and not dead.
    online: bool,
    /// The bdSeq of its NBIRTH: only the NDEATH with the same one counts.
    bd_seq: Option<u64>,
    /// The seq its next message must carry.
    next_seq: Option<u64>,
    /// Alias -> local key; aliases are unique across a node and its
    /// devices.
    aliases: HashMap<u64, u32>,
    /// The tags of the node's own metrics (`None`) and of each device.
    members: HashMap<Option<String>, Vec<u32>>,
    /// Devices born since the node's birth and not dead.
    born: HashSet<String>,
    /// Last rebirth request.
    asked_at: Option<Instant>,
}

/// Counters, for metrics and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Metrics not made tags: DataSet, Template, arrays, ...
    pub skipped: u64,
    /// New metrics dropped at `max_tags`.
    pub dropped: u64,
    /// Historical values not applied (older than the tag's value).
    pub historical: u64,
    /// Rebirth requests sent.
    pub rebirths: u64,
}

/// Log lines one message may cause: a payload of a million bad metrics
/// costs one line, not a million strings.
const WARNS_PER_MESSAGE: u32 = 3;
/// Nodes' own scopes and devices tracked at most (each device that births
/// takes one, even with no tag).
const MAX_SCOPES: usize = 200_000;

/// The `bdSeq` metric of an NBIRTH or NDEATH.
fn bd_seq(p: &pb::Payload) -> Option<u64> {
    p.metrics
        .iter()
        .find(|m| m.name() == BD_SEQ)
        .and_then(|m| match m.value {
            Some(MetricValue::LongValue(v)) => Some(v),
            Some(MetricValue::IntValue(v)) => Some(u64::from(v)),
            _ => None,
        })
}

/// True for a group, node or device id the host does not take.
fn bad_id(id: &str) -> bool {
    id.len() > MAX_ID_BYTES || crate::peer_text::has_control(id)
}

/// Queues a log line while the message's budget lasts.
fn warn(left: &mut u32, out: &mut Vec<Action>, line: impl FnOnce() -> String) {
    if *left > 0 {
        *left -= 1;
        out.push(Action::Warn(line()));
    }
}

/// The host's state for one `[[sparkplug]]`.
pub struct Host {
    config: Arc<SparkplugConfig>,
    source: SourceId,
    nodes: HashMap<(String, String), Node>,
    /// Nodes not born that were asked for a rebirth, and when.
    unborn: HashMap<(String, String), Instant>,
    /// Local key -> its slot.
    slots: Vec<Slot>,
    by_name: HashMap<String, u32>,
    /// Scopes (a node's own metrics, each device) tracked.
    scopes: usize,
    warns_left: u32,
    /// What it skipped and asked for.
    pub counts: Counts,
}

impl Host {
    /// An empty host whose tags are keys of `source`.
    pub fn new(config: Arc<SparkplugConfig>, source: SourceId) -> Self {
        Host {
            config,
            source,
            nodes: HashMap::new(),
            unborn: HashMap::new(),
            slots: Vec::new(),
            by_name: HashMap::new(),
            scopes: 0,
            warns_left: WARNS_PER_MESSAGE,
            counts: Counts::default(),
        }
    }

    /// Nodes known (born once), nodes never born but remembered, and
    /// scopes tracked: what a rogue publisher could try to grow.
    pub fn tracked(&self) -> (usize, usize, usize) {
        (self.nodes.len(), self.unborn.len(), self.scopes)
    }

    /// The slot of a local key.
    pub fn slot(&self, local: u32) -> Option<&Slot> {
        self.slots.get(local as usize)
    }

    /// Whether the node (and device) of a slot is born and alive.
    pub fn is_online(&self, slot: &Slot) -> bool {
        self.nodes
            .get(&(slot.group.clone(), slot.node.clone()))
            .is_some_and(|n| n.online && slot.device.as_ref().is_none_or(|d| n.born.contains(d)))
    }

    /// The broker connection was lost: what was missed is unknown, so every
    /// node must be born again before its data counts (its next message
    /// asks for the rebirth).
    pub fn forget_nodes(&mut self) {
        self.nodes.clear();
        self.unborn.clear();
        self.scopes = 0;
    }

    /// Handles one message.
    pub fn handle(&mut self, topic: &str, bytes: &[u8], now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        self.warns_left = WARNS_PER_MESSAGE;
        let Some(t) = parse_topic(topic) else {
            return out;
        };
        if t.kind == MessageType::Cmd {
            return out;
        }
        let ids = [Some(t.group), Some(t.node), t.device];
        if let Some(id) = ids.into_iter().flatten().find(|id| bad_id(id)) {
            warn(&mut self.warns_left, &mut out, || {
                format!(
                    "message ignored: the id {} is longer than {MAX_ID_BYTES} bytes or holds a control character",
                    crate::peer_text::shown(id)
                )
            });
            return out;
        }
        let payload = match pb::Payload::decode(bytes) {
            Ok(p) => p,
            Err(e) => {
                warn(&mut self.warns_left, &mut out, || {
                    format!("undecodable Sparkplug payload on {topic}: {e}")
                });
                return out;
            }
        };
        // Sparkplug seq counts 0..=255; anything past that is a malformed
        // payload, refused before any arithmetic on it.
        if let Some(seq) = payload.seq.filter(|s| *s > 255) {
            warn(&mut self.warns_left, &mut out, || {
                format!("Sparkplug payload on {topic} ignored: seq {seq} is outside 0-255")
            });
            return out;
        }
        let key = (t.group.to_string(), t.node.to_string());
        match t.kind {
            MessageType::NBirth => self.node_birth(key, &payload, &mut out),
            MessageType::NDeath => self.node_death(&key, &payload, &mut out),
            MessageType::DBirth | MessageType::DData | MessageType::DDeath | MessageType::NData => {
                let device = t.device.map(str::to_string);
                let Some(node) = self.nodes.get(&key).filter(|n| n.online) else {
                    let why = format!("{topic} from a node that is not born");
                    self.ask_rebirth(key, now, why, &mut out);
                    return out;
                };
                let device_born = device.as_ref().is_none_or(|d| node.born.contains(d));
                let gap = self.advance_seq(&key, payload.seq);
                match t.kind {
                    MessageType::DBirth => {
                        if let Some(d) = &device {
                            self.device_birth(&key, d, &payload, &mut out);
                        }
                    }
                    MessageType::DDeath => {
                        if let Some(node) = self.nodes.get_mut(&key)
                            && let Some(d) = &device
                        {
                            node.born.remove(d);
                        }
                        self.mark_bad(&key, &device, status::BAD_COMMUNICATION_ERROR, &mut out);
                    }
                    _ if !device_born => {
                        let why = format!("{topic} from a device that is not born");
                        self.ask_rebirth(key.clone(), now, why, &mut out);
                    }
                    _ => {
                        let unknown = self.data(&key, &device, &payload, &mut out);
                        if let Some(name) = unknown {
                            let why = format!("{topic} names unknown metric {name}");
                            self.ask_rebirth(key.clone(), now, why, &mut out);
                        }
                    }
                }
                if let Some((expected, got)) = gap {
                    let why = format!("seq gap on {topic}: expected {expected}, got {got}");
                    self.ask_rebirth(key, now, why, &mut out);
                }
            }
            MessageType::Cmd => {}
        }
        out
    }

    /// Checks and moves the node's seq on; `Some((expected, got))` on a gap.
    fn advance_seq(&mut self, key: &(String, String), seq: Option<u64>) -> Option<(u64, u64)> {
        let node = self.nodes.get_mut(key)?;
        let got = seq?;
        let expected = node.next_seq.replace((got + 1) % 256);
        expected.filter(|e| *e != got).map(|e| (e, got))
    }

    fn node_birth(&mut self, key: (String, String), p: &pb::Payload, out: &mut Vec<Action>) {
        let bd_seq = bd_seq(p);
        if !self.nodes.contains_key(&key) && self.nodes.len() >= MAX_NODES {
            warn(&mut self.warns_left, out, || {
                format!(
                    "NBIRTH of {}/{} ignored: {MAX_NODES} nodes tracked",
                    key.0, key.1
                )
            });
            return;
        }
        self.unborn.remove(&key);
        let node = self.nodes.entry(key.clone()).or_default();
        node.online = true;
        node.bd_seq = bd_seq;
        node.next_seq = p.seq.map(|s| (s + 1) % 256);
        node.aliases.clear();
        node.born.clear();
        self.births(&key, &None, p, out);
    }

    fn device_birth(
        &mut self,
        key: &(String, String),
        device: &str,
        p: &pb::Payload,
        out: &mut Vec<Action>,
    ) {
        if let Some(node) = self.nodes.get_mut(key) {
            node.born.insert(device.to_string());
        }
        self.births(key, &Some(device.to_string()), p, out);
    }

    /// The metrics of a birth: tags defined (again when their type, unit
    /// or writability changed), aliases learnt, values applied; tags of
    /// the scope's previous birth that this one lacks turn Bad.
    fn births(
        &mut self,
        key: &(String, String),
        device: &Option<String>,
        p: &pb::Payload,
        out: &mut Vec<Action>,
    ) {
        let known = self
            .nodes
            .get(key)
            .is_some_and(|n| n.members.contains_key(device));
        if !known {
            if self.scopes >= MAX_SCOPES {
                warn(&mut self.warns_left, out, || {
                    format!(
                        "birth of {}/{} ignored: {MAX_SCOPES} nodes and devices tracked",
                        key.0, key.1
                    )
                });
                if let (Some(node), Some(d)) = (self.nodes.get_mut(key), device) {
                    node.born.remove(d);
                }
                return;
            }
            self.scopes += 1;
        }
        let max_aliases = self.config.max_tags;
        let mut members = Vec::new();
        for m in &p.metrics {
            let Some(name) = m.name.as_deref() else {
                warn(&mut self.warns_left, out, || {
                    format!("a birth of {}/{} has a metric without a name", key.0, key.1)
                });
                continue;
            };
            if name == BD_SEQ
                || name.starts_with("Node Control/")
                || name.starts_with("Device Control/")
            {
                continue;
            }
            let Some(local) = self.define(key, device, name, m, out) else {
                continue;
            };
            // A node's aliases name its tags, so they are as many at most
            // (a node re-birthing a device with new aliases each time
            // cannot grow the map).
            if let Some(alias) = m.alias
                && let Some(node) = self.nodes.get_mut(key)
                && (node.aliases.len() < max_aliases || node.aliases.contains_key(&alias))
            {
                node.aliases.insert(alias, local);
            }
            members.push(local);
            self.apply(local, m, p.timestamp, out);
        }
        let Some(node) = self.nodes.get_mut(key) else {
            return;
        };
        let old = node.members.insert(device.clone(), members.clone());
        for local in old.unwrap_or_default() {
            if !members.contains(&local) {
                out.push(Action::Sample(Sample::bad(
                    self.key(local),
                    status::BAD_NO_COMMUNICATION,
                )));
            }
        }
    }

    /// The local key of a birth's metric, defining its tag if new or
    /// changed; `None` when it is not a tag.
    fn define(
        &mut self,
        key: &(String, String),
        device: &Option<String>,
        metric: &str,
        m: &Metric,
        out: &mut Vec<Action>,
    ) -> Option<u32> {
        let datatype = m.datatype.unwrap_or(0);
        let Kind::Tag(data_type) = payload::kind(datatype) else {
            self.counts.skipped += 1;
            metrics::counter!("tagstream_sparkplug_metrics_skipped_total", "source" => self.config.name.clone()).increment(1);
            return None;
        };
        let name = self
            .config
            .tag_name(&key.0, &key.1, device.as_deref(), metric);
        if let Err(e) = crate::validate::check_tag_name(&name) {
            warn(&mut self.warns_left, out, || {
                format!(
                    "metric {metric:?} of {}/{} maps to an invalid tag name: {e}",
                    key.0, key.1
                )
            });
            return None;
        }
        let slot = Slot {
            writable: self.config.is_writable(&name),
            unit: payload::unit(m),
            name,
            group: key.0.clone(),
            node: key.1.clone(),
            device: device.clone(),
            metric: metric.to_string(),
            datatype,
            latest_us: i64::MIN,
        };
        let local = match self.by_name.get(&slot.name) {
            // Two metrics that map to one name (node metric `d/m` and
            // device `d`'s metric `m`): the first keeps it, the other is
            // refused, so a write never goes to a metric it was not meant
            // for.
            Some(&local)
                if {
                    let old = &self.slots[local as usize];
                    old.group != slot.group
                        || old.node != slot.node
                        || old.device != slot.device
                        || old.metric != slot.metric
                } =>
            {
                let old = &self.slots[local as usize];
                warn(&mut self.warns_left, out, || {
                    format!(
                        "metric {} of {}/{} maps to {}, which metric {} of {}/{} holds: refused",
                        crate::peer_text::shown(metric),
                        key.0,
                        key.1,
                        crate::peer_text::shown(&slot.name),
                        crate::peer_text::shown(&old.metric),
                        old.group,
                        old.node
                    )
                });
                return None;
            }
            Some(&local) => {
                let old = &mut self.slots[local as usize];
                let same = old.datatype == slot.datatype
                    && old.unit == slot.unit
                    && old.writable == slot.writable;
                let latest_us = if old.datatype == slot.datatype {
                    old.latest_us
                } else {
                    i64::MIN
                };
                *old = Slot { latest_us, ..slot };
                if same {
                    return Some(local);
                }
                local
            }
            None if self.slots.len() >= self.config.max_tags => {
                self.counts.dropped += 1;
                metrics::counter!("tagstream_sparkplug_metrics_dropped_total", "source" => self.config.name.clone()).increment(1);
                warn(&mut self.warns_left, out, || {
                    format!(
                        "max_tags {} reached: metric {} dropped",
                        self.config.max_tags, slot.name
                    )
                });
                return None;
            }
            None => {
                let local = self.slots.len() as u32;
                self.by_name.insert(slot.name.clone(), local);
                self.slots.push(slot);
                local
            }
        };
        let s = &self.slots[local as usize];
        let def = TagDef {
            data_type,
            unit: s.unit.clone(),
            writable: s.writable,
            description: if datatype == payload::SpType::DateTime as u32 {
                "DateTime: ms since the Unix epoch".into()
            } else {
                String::new()
            },
            ..TagDef::read_only(s.name.clone(), &self.config.name)
        };
        debug_assert!(def.data_type != DataType::TypeUnspecified);
        out.push(Action::Define(local, Box::new(def)));
        Some(local)
    }

    /// NDATA/DDATA: each metric by alias or name; the first unknown one's
    /// name (or alias) is returned.
    fn data(
        &mut self,
        key: &(String, String),
        device: &Option<String>,
        p: &pb::Payload,
        out: &mut Vec<Action>,
    ) -> Option<String> {
        let mut unknown = None;
        for m in &p.metrics {
            let local = match (&m.name, m.alias) {
                (Some(name), _) => {
                    let tag = self
                        .config
                        .tag_name(&key.0, &key.1, device.as_deref(), name);
                    self.by_name.get(&tag).copied().filter(|l| {
                        let s = &self.slots[*l as usize];
                        s.node == key.1 && s.group == key.0 && &s.device == device
                    })
                }
                (None, Some(alias)) => self
                    .nodes
                    .get(key)
                    .and_then(|n| n.aliases.get(&alias).copied())
                    .filter(|l| &self.slots[*l as usize].device == device),
                (None, None) => None,
            };
            match local {
                Some(local) => self.apply(local, m, p.timestamp, out),
                None if m
                    .name
                    .as_deref()
                    .is_some_and(|n| n == BD_SEQ || n.starts_with("Node Control/")) => {}
                None if unknown.is_none() => {
                    unknown = Some(match (&m.name, m.alias) {
                        (Some(n), _) => format!("{n:?}"),
                        (None, Some(a)) => format!("alias {a}"),
                        (None, None) => "without name or alias".into(),
                    });
                }
                None => {}
            }
        }
        unknown
    }

    /// A metric's value as a sample of `local`: the metric's timestamp (or
    /// the payload's) is the source time; a historical value older than
    /// the tag's is not applied.
    fn apply(&mut self, local: u32, m: &Metric, payload_ms: Option<u64>, out: &mut Vec<Action>) {
        let tag = self.key(local);
        let slot = &mut self.slots[local as usize];
        let time_us = m
            .timestamp
            .or(payload_ms)
            .and_then(|ms| i64::try_from(ms).ok())
            .map_or_else(now_us, |ms| ms.saturating_mul(1000));
        if m.is_historical() && time_us <= slot.latest_us {
            self.counts.historical += 1;
            return;
        }
        slot.latest_us = slot.latest_us.max(time_us);
        let sample = match payload::value(m, slot.datatype) {
            Ok(Some(value)) => Sample {
                source_time_us: time_us,
                ..Sample::good(tag, value)
            },
            Ok(None) => Sample {
                source_time_us: time_us,
                ..Sample::bad(tag, status::BAD_NO_COMMUNICATION)
            },
            Err(e) => {
                warn(&mut self.warns_left, out, || format!("{}: {e}", slot.name));
                Sample::bad(tag, status::BAD_DECODING_ERROR)
            }
        };
        out.push(Action::Sample(sample));
    }

    /// NDEATH: with its birth's bdSeq (or none), the node and its devices
    /// are dead and their tags Bad; another bdSeq is a stale death of an
    /// earlier session (its will arriving late) and changes nothing.
    fn node_death(&mut self, key: &(String, String), p: &pb::Payload, out: &mut Vec<Action>) {
        let death_bd = bd_seq(p);
        let Some(node) = self.nodes.get_mut(key).filter(|n| n.online) else {
            return;
        };
        // A node born with a bdSeq dies only by an NDEATH with the same
        // one (the specification requires it in both); one without is not
        // its death certificate (a stale or forged message) and is ignored.
        if let Some(born) = node.bd_seq
            && death_bd != Some(born)
        {
            warn(&mut self.warns_left, out, || {
                let died = death_bd.map_or_else(|| "none".to_string(), |d| d.to_string());
                format!(
                    "NDEATH of {}/{} with bdSeq {died} ignored: its birth had {born}",
                    key.0, key.1
                )
            });
            return;
        }
        node.online = false;
        node.next_seq = None;
        node.aliases.clear();
        node.born.clear();
        let scopes: Vec<Option<String>> = node.members.keys().cloned().collect();
        for scope in scopes {
            self.mark_bad(key, &scope, status::BAD_COMMUNICATION_ERROR, out);
        }
    }

    fn mark_bad(
        &self,
        key: &(String, String),
        scope: &Option<String>,
        status: u32,
        out: &mut Vec<Action>,
    ) {
        let Some(members) = self.nodes.get(key).and_then(|n| n.members.get(scope)) else {
            return;
        };
        for &local in members {
            out.push(Action::Sample(Sample::bad(self.key(local), status)));
        }
    }

    /// A rebirth request, when `rebirth_on_gap` and not asked recently.
    fn ask_rebirth(
        &mut self,
        key: (String, String),
        now: Instant,
        why: String,
        out: &mut Vec<Action>,
    ) {
        warn(&mut self.warns_left, out, || why);
        if !self.config.rebirth_on_gap {
            return;
        }
        let recent = |at: &Instant| now.duration_since(*at) < REBIRTH_EVERY;
        if let Some(node) = self.nodes.get_mut(&key) {
            if node.asked_at.as_ref().is_some_and(recent) {
                return;
            }
            node.asked_at = Some(now);
        } else {
            // Never born: remembered apart, in a bounded map.
            if self.unborn.get(&key).is_some_and(recent) {
                return;
            }
            if !self.unborn.contains_key(&key) && self.unborn.len() >= MAX_UNBORN {
                self.unborn.retain(|_, at| recent(at));
                if self.unborn.len() >= MAX_UNBORN {
                    return;
                }
            }
            self.unborn.insert(key.clone(), now);
        }
        self.counts.rebirths += 1;
        out.push(Action::Rebirth {
            group: key.0,
            node: key.1,
        });
    }

    fn key(&self, local: u32) -> TagKey {
        TagKey {
            source: self.source,
            local,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::Value;

    fn host(extra: &str) -> Host {
        let config: SparkplugConfig =
            toml::from_str(&format!("name = \"s\"\nurl = \"mqtt://h\"\n{extra}")).expect("toml");
        Host::new(Arc::new(config), 4)
    }

    fn metric(name: &str, alias: u64, datatype: payload::SpType, v: MetricValue) -> Metric {
        Metric {
            name: Some(name.into()),
            alias: Some(alias),
            datatype: Some(datatype as u32),
            value: Some(v),
            ..Default::default()
        }
    }

    fn bytes(seq: Option<u64>, metrics: Vec<Metric>) -> Vec<u8> {
        pb::Payload {
            timestamp: Some(1_000),
            metrics,
            seq,
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn bd(n: u64) -> Metric {
        Metric {
            name: Some(BD_SEQ.into()),
            datatype: Some(payload::SpType::Int64 as u32),
            value: Some(MetricValue::LongValue(n)),
            ..Default::default()
        }
    }

    fn samples(actions: &[Action]) -> Vec<(u32, Option<Value>, u32)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Sample(s) => Some((s.tag.local, s.value.clone(), s.status)),
                _ => None,
            })
            .collect()
    }

    fn defines(actions: &[Action]) -> Vec<(u32, String, DataType)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Define(l, d) => Some((*l, d.name.clone(), d.data_type)),
                _ => None,
            })
            .collect()
    }

    fn rebirths(actions: &[Action]) -> usize {
        actions
            .iter()
            .filter(|a| matches!(a, Action::Rebirth { .. }))
            .count()
    }

    const DOUBLE: payload::SpType = payload::SpType::Double;

    #[test]
    fn long_ids_are_ignored_and_unborn_nodes_are_remembered_boundedly() {
        let mut h = host("");
        let now = Instant::now();
        let long = "x".repeat(60_000);
        let birth = bytes(Some(0), vec![bd(1)]);
        let out = h.handle("spBv1.0/g/NBIRTH/n", &birth, now);
        assert!(defines(&out).is_empty());
        // 5,000 device births with 60 KB names: nothing tracked.
        for i in 0..5_000 {
            let d = bytes(
                Some((i + 1) % 256),
                vec![metric("m", 1, DOUBLE, MetricValue::DoubleValue(1.0))],
            );
            let out = h.handle(&format!("spBv1.0/g/DBIRTH/n/{long}{i}"), &d, now);
            assert!(defines(&out).is_empty());
            if i == 0 {
                let Some(Action::Warn(w)) = out.first() else {
                    panic!("{out:?}")
                };
                assert!(w.len() < 400, "a bounded line: {} bytes", w.len());
            }
        }
        assert_eq!(h.tracked(), (1, 0, 1), "only the node's own scope");
        // A 60 KB metric name makes no tag (a name is at most 256 bytes).
        let big = bytes(
            Some(1),
            vec![metric(&long, 7, DOUBLE, MetricValue::DoubleValue(1.0))],
        );
        assert!(defines(&h.handle("spBv1.0/g/NBIRTH/n", &big, now)).is_empty());
        assert!(h.slot(0).is_none());
        // Data from 100,000 node ids never born: at most MAX_UNBORN are
        // remembered, and those are asked once per REBIRTH_EVERY.
        let data = bytes(Some(0), vec![]);
        let mut asked = 0;
        for i in 0..100_000 {
            asked += rebirths(&h.handle(&format!("spBv1.0/g/NDATA/ghost{i}"), &data, now));
        }
        assert_eq!(asked, MAX_UNBORN);
        assert_eq!(h.tracked().1, MAX_UNBORN);
        let later = now + REBIRTH_EVERY;
        asked = rebirths(&h.handle("spBv1.0/g/NDATA/ghost-new", &data, later));
        assert_eq!(asked, 1, "stale entries make room");
        assert!(h.tracked().1 <= MAX_UNBORN);
        // Long ids from unborn nodes are not even remembered.
        let before = h.tracked();
        h.handle(&format!("spBv1.0/g/NDATA/{long}"), &data, later);
        assert_eq!(h.tracked(), before);
    }

    #[test]
    fn an_ndeath_without_the_births_bdseq_and_a_name_clash_change_nothing() {
        let mut h = host("");
        let now = Instant::now();
        let birth = bytes(
            Some(0),
            vec![
                bd(5),
                metric("d/m", 1, DOUBLE, MetricValue::DoubleValue(1.0)),
            ],
        );
        assert_eq!(
            defines(&h.handle("spBv1.0/g/NBIRTH/n", &birth, now)).len(),
            1
        );
        // Device d's metric m maps to the same name g/n/d/m: refused.
        let dbirth = bytes(
            Some(1),
            vec![metric("m", 2, DOUBLE, MetricValue::DoubleValue(2.0))],
        );
        let out = h.handle("spBv1.0/g/DBIRTH/n/d", &dbirth, now);
        assert!(
            defines(&out).is_empty() && samples(&out).is_empty(),
            "{out:?}"
        );
        assert_eq!(
            h.slot(0).map(|s| s.device.clone()),
            Some(None),
            "the node metric keeps it"
        );
        // An NDEATH without bdSeq does not kill a node born with one.
        let out = h.handle("spBv1.0/g/NDEATH/n", &bytes(None, vec![]), now);
        assert!(samples(&out).is_empty(), "{out:?}");
        let slot = h.slot(0).expect("slot").clone();
        assert!(h.is_online(&slot));
    }

    #[test]
    fn topics_parse_and_others_are_ignored() {
        let t = parse_topic("spBv1.0/g/DDATA/n/d").expect("parses");
        assert_eq!(
            (t.group, t.kind, t.node, t.device),
            ("g", MessageType::DData, "n", Some("d"))
        );
        for other in [
            "spBv1.0/STATE/host",
            "spBv1.0/g/NDATA/n/d",
            "spBv1.0/g/DDATA/n",
            "spBv1.0/g/NDATA/n/d/x",
            "spAv1.0/g/NDATA/n",
            "spBv1.0/g/BOGUS/n",
            "spBv1.0//NDATA/n",
        ] {
            assert_eq!(parse_topic(other), None, "{other}");
        }
    }

    #[test]
    fn a_stale_ndeath_changes_nothing_and_the_matching_one_kills_node_and_devices() {
        let mut h = host("");
        let now = Instant::now();
        let birth = bytes(
            Some(0),
            vec![bd(5), metric("t", 1, DOUBLE, MetricValue::DoubleValue(1.0))],
        );
        h.handle("spBv1.0/g/NBIRTH/n", &birth, now);
        let dbirth = bytes(
            Some(1),
            vec![metric("f", 2, DOUBLE, MetricValue::DoubleValue(2.0))],
        );
        h.handle("spBv1.0/g/DBIRTH/n/d", &dbirth, now);
        let stale = h.handle("spBv1.0/g/NDEATH/n", &bytes(None, vec![bd(4)]), now);
        assert!(samples(&stale).is_empty(), "{stale:?}");
        let death = h.handle("spBv1.0/g/NDEATH/n", &bytes(None, vec![bd(5)]), now);
        let mut dead = samples(&death);
        dead.sort_by_key(|s| s.0);
        assert_eq!(
            dead,
            [
                (0, None, status::BAD_COMMUNICATION_ERROR),
                (1, None, status::BAD_COMMUNICATION_ERROR)
            ]
        );
        let slot = h.slot(1).expect("slot").clone();
        assert!(!h.is_online(&slot));
    }

    #[test]
    fn a_rebirth_redefines_only_what_changed_and_a_dropped_metric_turns_bad() {
        let mut h = host("");
        let now = Instant::now();
        let first = bytes(
            Some(0),
            vec![
                metric("a", 1, DOUBLE, MetricValue::DoubleValue(1.0)),
                metric("b", 2, DOUBLE, MetricValue::DoubleValue(2.0)),
            ],
        );
        let out = h.handle("spBv1.0/g/NBIRTH/n", &first, now);
        assert_eq!(defines(&out).len(), 2);
        let second = bytes(
            Some(0),
            vec![metric(
                "a",
                1,
                payload::SpType::Int16,
                MetricValue::IntValue(3),
            )],
        );
        let out = h.handle("spBv1.0/g/NBIRTH/n", &second, now);
        assert_eq!(defines(&out), [(0, "g/n/a".to_string(), DataType::I16)]);
        let s = samples(&out);
        assert!(s.contains(&(0, Some(Value::I64(3)), status::GOOD)), "{s:?}");
        assert!(
            s.contains(&(1, None, status::BAD_NO_COMMUNICATION)),
            "{s:?}"
        );
        let again = h.handle("spBv1.0/g/NBIRTH/n", &second, now);
        assert!(
            defines(&again).is_empty(),
            "an unchanged birth defines nothing"
        );
    }

    #[test]
    fn historical_values_apply_only_when_newer_and_rebirth_requests_are_rate_limited() {
        let mut h = host("");
        let t0 = Instant::now();
        let at = |ms: u64, historical: bool| Metric {
            alias: Some(1),
            timestamp: Some(ms),
            is_historical: Some(historical),
            value: Some(MetricValue::DoubleValue(ms as f64)),
            ..Default::default()
        };
        h.handle(
            "spBv1.0/g/NBIRTH/n",
            &bytes(
                Some(0),
                vec![metric("a", 1, DOUBLE, MetricValue::DoubleValue(0.0))],
            ),
            t0,
        );
        let live = h.handle(
            "spBv1.0/g/NDATA/n",
            &bytes(Some(1), vec![at(5_000, false)]),
            t0,
        );
        assert_eq!(samples(&live).len(), 1);
        let older = h.handle(
            "spBv1.0/g/NDATA/n",
            &bytes(Some(2), vec![at(4_000, true)]),
            t0,
        );
        assert!(samples(&older).is_empty());
        assert_eq!(h.counts.historical, 1);
        let newer = h.handle(
            "spBv1.0/g/NDATA/n",
            &bytes(Some(3), vec![at(6_000, true)]),
            t0,
        );
        assert_eq!(
            samples(&newer).len(),
            1,
            "a historical value newer than the tag's applies"
        );

        let gap = h.handle(
            "spBv1.0/g/NDATA/n",
            &bytes(Some(9), vec![at(7_000, false)]),
            t0,
        );
        assert_eq!(samples(&gap).len(), 1, "data of a gap still counts");
        assert_eq!(rebirths(&gap), 1);
        let soon = t0 + Duration::from_secs(1);
        let again = h.handle("spBv1.0/g/NDATA/n", &bytes(Some(20), vec![]), soon);
        assert_eq!(rebirths(&again), 0, "asked already");
        let later = t0 + REBIRTH_EVERY + Duration::from_millis(1);
        let again = h.handle("spBv1.0/g/NDATA/n", &bytes(Some(30), vec![]), later);
        assert_eq!(rebirths(&again), 1);
    }

    #[test]
    fn garbage_and_bad_values_are_logged_never_fatal() {
        let mut h = host("");
        let now = Instant::now();
        let out = h.handle("spBv1.0/g/NBIRTH/n", b"\xff\xff\xff garbage", now);
        assert!(matches!(out.as_slice(), [Action::Warn(_)]), "{out:?}");
        let wrong_field = bytes(
            Some(0),
            vec![metric("a", 1, DOUBLE, MetricValue::IntValue(1))],
        );
        let out = h.handle("spBv1.0/g/NBIRTH/n", &wrong_field, now);
        assert!(
            samples(&out).contains(&(0, None, status::BAD_DECODING_ERROR)),
            "{out:?}"
        );
        let bad_name = bytes(
            Some(1),
            vec![metric("x//y", 2, DOUBLE, MetricValue::DoubleValue(1.0))],
        );
        let out = h.handle("spBv1.0/g/DBIRTH/n/d", &bad_name, now);
        assert!(defines(&out).is_empty() && out.iter().any(|a| matches!(a, Action::Warn(_))));
    }

    #[test]
    fn one_message_costs_a_few_log_lines_and_aliases_stay_bounded() {
        let mut h = host("max_tags = 2");
        let now = Instant::now();
        let nameless: Vec<Metric> = (0..1000).map(|_| Metric::default()).collect();
        let out = h.handle("spBv1.0/g/NBIRTH/n", &bytes(Some(0), nameless), now);
        assert_eq!(out.len(), WARNS_PER_MESSAGE as usize, "{out:?}");
        for seq in 1..50 {
            let m = metric("a", 1000 + seq, DOUBLE, MetricValue::DoubleValue(1.0));
            h.handle("spBv1.0/g/DBIRTH/n/d", &bytes(Some(seq), vec![m]), now);
        }
        let node = h
            .nodes
            .get(&("g".to_string(), "n".to_string()))
            .expect("node");
        assert!(node.aliases.len() <= 2, "{} aliases", node.aliases.len());
    }

    #[test]
    fn a_seq_past_255_is_refused_not_added_to() {
        // Found by the sparkplug fuzz target: seq u64::MAX overflowed `seq + 1`.
        let mut h = host("");
        let now = Instant::now();
        let a = || metric("a", 1, DOUBLE, MetricValue::DoubleValue(1.0));
        for topic in ["spBv1.0/g/NBIRTH/n", "spBv1.0/g/NDATA/n"] {
            let out = h.handle(topic, &bytes(Some(u64::MAX), vec![a()]), now);
            assert!(
                defines(&out).is_empty() && samples(&out).is_empty(),
                "{out:?}"
            );
            assert!(
                out.iter()
                    .any(|x| matches!(x, Action::Warn(w) if w.contains("outside 0-255"))),
                "{out:?}"
            );
        }
        h.handle("spBv1.0/g/NBIRTH/n", &bytes(Some(0), vec![a()]), now);
        let out = h.handle("spBv1.0/g/NDATA/n", &bytes(Some(256), vec![a()]), now);
        assert!(samples(&out).is_empty(), "{out:?}");
        let out = h.handle("spBv1.0/g/NDATA/n", &bytes(Some(1), vec![a()]), now);
        assert_eq!(
            samples(&out).len(),
            1,
            "the refused message moved no seq: {out:?}"
        );
    }
}
