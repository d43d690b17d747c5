//! MQTT source: one rumqttc client per `[[mqtt]]`. Its event loop is polled
//! without pause (rumqttc sends nothing, not even SUBSCRIBE, otherwise).
//! Every ConnAck re-subscribes, so a reconnect restores the subscriptions,
//! and retained messages give initial values. A lost or unreachable broker
//! turns the source's tags Bad (BadCommunicationError keeping the last
//! value; BadNoCommunication if never received); fresh data turns them
//! Good. An undecodable payload turns only its tag BadDecodingError, with a
//! rate-limited log line naming topic and reason. Topics of a wildcard map
//! become tags the first time they are seen: the source defines them on
//! the engine's channel under its own keys and sends their samples after.
//! A write to a tag with a `write_topic` publishes the value in the tag's
//! format at QoS 1 and is answered Good at the broker's PUBACK (the
//! broker, not the device, acknowledged: the tag's next value confirms);
//! a write while the broker is away is refused, never queued, and one
//! that loses its connection before the PUBACK is answered and taken out
//! of rumqttc's resend list.

pub mod broker;
pub mod config;
pub mod payload;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Outgoing, Packet, QoS, Request, SubscribeFilter};

use broker::Link;
pub use config::{MqttConfig, MqttTagConfig, MqttTopicConfig};
use payload::PayloadSpec;

use super::{Discovery, EngineGone, SourceConfig, SourceContext, SourceTask};
use crate::command::WriteCommand;
use crate::pattern;
use crate::peer_text::shown;
use crate::rate::Throttle;
use crate::sample::TagDef;
use crate::sample::{Sample, now_us};
use crate::status;
use crate::validate::Problems;

/// At most one log line per topic per this period for bad payloads.
const LOG_EVERY: Duration = Duration::from_secs(10);

impl SourceConfig for MqttConfig {
    fn kind(&self) -> &'static str {
        "mqtt"
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn tags(&self) -> Vec<TagDef> {
        self.tags
            .iter()
            .map(|t| TagDef {
                data_type: t.kind.data_type(),
                unit: t.unit.clone(),
                description: t.description.clone(),
                deadband: t.deadband,
                keep_samples: t.keep_samples,
                history: t.history,
                decimals: t.decimals,
                writable: t.write_topic.is_some(),
                ..TagDef::read_only(t.name.clone(), &self.name)
            })
            .collect()
    }

    fn discovered(&self) -> Vec<Discovery> {
        self.topics
            .iter()
            .enumerate()
            .map(|(i, map)| Discovery {
                key: format!("topics[{i}]"),
                filter: map.filter.clone(),
                def: map.tag_def(map.name.clone(), &self.name),
                from: format!("{} (discovered from {})", self.name, map.filter),
            })
            .collect()
    }

    fn validate(&self, key: &str, problems: &mut Problems) {
        self.check(key, problems);
    }

    fn build(&self, cx: SourceContext) -> SourceTask {
        Box::pin(MqttSource::new(Arc::new(self.clone()), cx).run())
    }
}

impl MqttTopicConfig {
    /// The definition of a tag this map discovers.
    fn tag_def(&self, name: String, source: &str) -> TagDef {
        TagDef {
            writable: self.write_topic.is_some(),
            data_type: self.kind.data_type(),
            unit: self.unit.clone(),
            description: self.description.clone(),
            deadband: self.deadband,
            keep_samples: self.keep_samples,
            history: self.history,
            decimals: self.decimals,
            ..TagDef::read_only(name, source)
        }
    }
}

/// The MQTT client id: `client_id`, else `tagstream-<node>-<name>`.
pub fn client_id(config: &MqttConfig, node_id: &str) -> String {
    broker::client_id(&config.client_id, node_id, &config.name)
}

struct Route {
    local: u32,
    spec: PayloadSpec,
}

/// Where and how a writable tag's writes are published.
struct WriteRoute {
    topic: String,
    format: payload::Format,
    pointer: Option<String>,
}

/// What a Good answer to an MQTT write means (protocol.md "Writes").
pub const PUBLISHED: &str =
    "published; the broker acknowledged (PUBACK), the tag's next value confirms";

/// Writes published at QoS 1 and not yet acknowledged. rumqttc numbers
/// publishes (pkid) as it sends them, in order, so the oldest unnumbered
/// write takes the next outgoing number.
#[derive(Default)]
struct Acks {
    unnumbered: VecDeque<WriteCommand>,
    in_flight: HashMap<u16, WriteCommand>,
}

impl Acks {
    /// Writes awaiting a PUBACK (after dropping those nobody waits for).
    fn len(&mut self) -> usize {
        self.in_flight.retain(|_, c| !c.reply.is_closed());
        self.unnumbered.len() + self.in_flight.len()
    }

    /// Answers every pending write: its connection is gone.
    fn fail_all(&mut self) {
        let why =
            "connection to the broker lost before its PUBACK: may or may not have been delivered";
        for cmd in self
            .unnumbered
            .drain(..)
            .chain(self.in_flight.drain().map(|(_, c)| c))
        {
            let _ = cmd
                .reply
                .send(Err((status::BAD_COMMUNICATION_ERROR, why.into())));
        }
    }
}

/// One broker's source. Local keys: its `[[mqtt.tags]]` in order, then the
/// tags its topic maps discover, in the order first seen.
pub struct MqttSource {
    config: Arc<MqttConfig>,
    cx: SourceContext,
    /// Exact topic -> its tags.
    routes: HashMap<String, Vec<Route>>,
    /// Tag name -> local key for tags discovered through topic maps.
    discovered: HashMap<String, u32>,
    next_local: u32,
    /// Bad-payload lines, one throttle per topic.
    last_log: HashMap<String, Throttle>,
    /// "tag discovered" lines: a publisher creating topics cannot flood
    /// the log.
    discovery_log: Throttle,
    /// "max_tags reached" lines.
    full_log: Throttle,
    /// Local key -> where its writes go.
    writes: HashMap<u32, WriteRoute>,
}

impl MqttSource {
    /// A source for `config`.
    pub fn new(config: Arc<MqttConfig>, cx: SourceContext) -> Self {
        let mut routes: HashMap<String, Vec<Route>> = HashMap::new();
        for (local, t) in config.tags.iter().enumerate() {
            routes.entry(t.topic.clone()).or_default().push(Route {
                local: local as u32,
                spec: t.payload(),
            });
        }
        let writes = config
            .tags
            .iter()
            .enumerate()
            .filter_map(|(local, t)| {
                let topic = t.write_topic.clone()?;
                let route = WriteRoute {
                    topic,
                    format: t.format,
                    pointer: t.write_pointer.clone(),
                };
                Some((local as u32, route))
            })
            .collect();
        MqttSource {
            writes,
            next_local: config.tags.len() as u32,
            config,
            cx,
            routes,
            discovered: HashMap::new(),
            last_log: HashMap::new(),
            discovery_log: Throttle::new(100, 10.0),
            full_log: Throttle::once_per(LOG_EVERY),
        }
    }

    fn filters(&self) -> Vec<SubscribeFilter> {
        let qos = |q: u8| match q {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        };
        let mut by_path: HashMap<&str, u8> = HashMap::new();
        for t in &self.config.tags {
            let q = by_path.entry(&t.topic).or_default();
            *q = (*q).max(t.qos);
        }
        for t in &self.config.topics {
            let q = by_path.entry(&t.filter).or_default();
            *q = (*q).max(t.qos);
        }
        by_path
            .into_iter()
            .map(|(path, q)| SubscribeFilter::new(path.to_string(), qos(q)))
            .collect()
    }

    /// Runs until shutdown; never returns on broker errors.
    pub async fn run(mut self) {
        let shutdown = self.cx.shutdown.clone();
        let id = client_id(&self.config, &self.cx.node_id);
        let (client, mut events) = self.config.broker(id).client(None);
        let filters = self.filters();
        let mut link = Link::default();
        let mut acks = Acks::default();
        let mut writes_open = true;
        tracing::info!(source = %self.config.name, url = %self.config.url, "mqtt source started");
        loop {
            let event = tokio::select! {
                () = shutdown.cancelled() => break,
                cmd = self.cx.commands.recv_async(), if writes_open => {
                    match cmd {
                        Ok(cmd) => self.publish_write(&client, link.is_connected(), cmd, &mut acks),
                        Err(_) => writes_open = false,
                    }
                    continue;
                }
                event = events.poll() => event,
            };
            match event {
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    if let Some(cmd) = acks.unnumbered.pop_front() {
                        acks.in_flight.insert(pkid, cmd);
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    if let Some(cmd) = acks.in_flight.remove(&ack.pkid) {
                        tracing::info!(source = %self.config.name, value = %cmd.value, "write published and acknowledged");
                        let _ = cmd.reply.send(Ok(PUBLISHED));
                    }
                }
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    link.connected();
                    tracing::info!(source = %self.config.name, "mqtt connected");
                    self.cx.up();
                    if let Err(e) = client.try_subscribe_many(filters.clone()) {
                        tracing::warn!(source = %self.config.name, error = %e, "mqtt subscribe failed");
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if self.on_publish(&p.topic, &p.payload).await.is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    // Answered now, so never sent later: rumqttc would
                    // resend unacknowledged publishes after a reconnect.
                    acks.fail_all();
                    events.pending.retain(|r| !matches!(r, Request::Publish(_)));
                    if !link.lost(&self.cx, &e).await {
                        break;
                    }
                }
            }
        }
        let _ = client.try_disconnect();
        tracing::info!(source = %self.config.name, "mqtt source stopped");
    }

    /// Publishes one write at QoS 1, or answers why not.
    fn publish_write(
        &self,
        client: &AsyncClient,
        connected: bool,
        cmd: WriteCommand,
        acks: &mut Acks,
    ) {
        let Some(cmd) = cmd.still_wanted(tokio::time::Instant::now()) else {
            return;
        };
        let refuse = |cmd: WriteCommand, status: u32, why: String| {
            let _ = cmd.reply.send(Err((status, why)));
        };
        let Some(route) = self.writes.get(&cmd.tag.local) else {
            return refuse(
                cmd,
                status::BAD_NOT_WRITABLE,
                "tag has no write_topic".into(),
            );
        };
        if !connected {
            return refuse(
                cmd,
                status::BAD_COMMUNICATION_ERROR,
                "broker not connected; not published".into(),
            );
        }
        if acks.len() >= crate::command::WRITE_QUEUE {
            return refuse(
                cmd,
                status::BAD_TOO_MANY_OPERATIONS,
                "too many writes awaiting PUBACK".into(),
            );
        }
        let payload = payload::encode(&cmd.value, route.format, route.pointer.as_deref());
        match client.try_publish(route.topic.as_str(), QoS::AtLeastOnce, false, payload) {
            Ok(()) => acks.unnumbered.push_back(cmd),
            Err(e) => refuse(
                cmd,
                status::BAD_COMMUNICATION_ERROR,
                format!("publish failed: {e}"),
            ),
        }
    }

    async fn on_publish(&mut self, topic: &str, payload: &[u8]) -> Result<(), EngineGone> {
        let mut targets: Vec<(u32, PayloadSpec)> = self
            .routes
            .get(topic)
            .map(|r| r.iter().map(|r| (r.local, r.spec.clone())).collect())
            .unwrap_or_default();
        let mut bad_names = Vec::new();
        let config = self.config.clone();
        for map in &config.topics {
            let Some(caps) = pattern::captures(&map.filter, topic) else {
                continue;
            };
            let name = pattern::fill(&map.name, &caps);
            if let Err(why) = crate::validate::check_tag_name(&name) {
                bad_names.push(why);
                continue;
            }
            let local = match self.discovered.get(&name) {
                Some(local) => *local,
                None if self.discovered.len() >= self.config.max_tags => {
                    metrics::counter!("tagstream_mqtt_topics_dropped_total", "source" => self.config.name.clone())
                        .increment(1);
                    if let Some(suppressed) = self.full_log.admit() {
                        tracing::warn!(source = %self.config.name, topic = %shown(topic), max_tags = self.config.max_tags, suppressed, "max_tags reached: new topic dropped");
                    }
                    continue;
                }
                None => {
                    let local = self.next_local;
                    self.next_local += 1;
                    if let Some(suppressed) = self.discovery_log.admit() {
                        tracing::info!(source = %self.config.name, topic = %shown(topic), tag = %shown(&name), suppressed, "tag discovered");
                    }
                    self.cx
                        .define(local, map.tag_def(name.clone(), &self.config.name))
                        .await?;
                    if let Some(template) = &map.write_topic {
                        let route = WriteRoute {
                            topic: pattern::fill(template, &caps),
                            format: map.format,
                            pointer: map.write_pointer.clone(),
                        };
                        self.writes.insert(local, route);
                    }
                    self.discovered.insert(name, local);
                    local
                }
            };
            targets.push((local, map.payload()));
        }
        for why in bad_names {
            self.log_bad(topic, &format!("maps to an invalid tag name: {why}"));
        }
        for (local, spec) in targets {
            let key = self.cx.key(local);
            let sample = if payload.len() > self.config.max_payload_bytes {
                let why = format!(
                    "payload of {} bytes over max_payload_bytes {}",
                    payload.len(),
                    self.config.max_payload_bytes
                );
                self.log_bad(topic, &why);
                Sample::bad(key, status::BAD_DECODING_ERROR)
            } else {
                match spec.decode(payload) {
                    Ok((value, time)) => {
                        let mut s = Sample::good(key, value);
                        s.source_time_us = time.unwrap_or_else(now_us);
                        s
                    }
                    Err(e) => {
                        self.log_bad(topic, &e.0);
                        Sample::bad(key, status::BAD_DECODING_ERROR)
                    }
                }
            };
            self.cx.send(sample).await?;
        }
        Ok(())
    }

    /// One line per topic per `LOG_EVERY`, with how many were suppressed.
    fn log_bad(&mut self, topic: &str, reason: &str) {
        metrics::counter!("tagstream_mqtt_bad_payloads_total", "source" => self.config.name.clone()).increment(1);
        if self.last_log.len() > 4096 {
            self.last_log.clear();
        }
        let throttle = self
            .last_log
            .entry(crate::peer_text::clip(topic, 256).to_string())
            .or_insert_with(|| Throttle::once_per(LOG_EVERY));
        if let Some(suppressed) = throttle.admit() {
            tracing::warn!(source = %self.config.name, topic = %shown(topic), reason = %shown(reason), suppressed, "undecodable mqtt payload");
        }
    }
}
