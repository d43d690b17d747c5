//! Sparkplug B 3.0 host application: one rumqttc client per
//! `[[sparkplug]]`. It subscribes `spBv1.0/<group>/#` for its groups and
//! publishes its retained `spBv1.0/STATE/<host_id>` (`{"online": true}`
//! on each connect; the will says `false` with the same timestamp). Edge
//! nodes' births define tags (host.rs); their data updates them; deaths
//! turn them Bad with their last values. A lost broker turns every tag of
//! the source Bad and forgets what nodes were born: after the reconnect
//! each node's next message asks for its rebirth.
//!
//! Writes to `writable` tags go out as NCMD (node metrics) or DCMD (device
//! metrics) at QoS 0, by metric name: the answer says "published" (the
//! broker does not acknowledge QoS 0) and the node's next data confirms.
//! A write while the broker or the node is away is refused, never queued.

pub mod config;
pub mod host;
pub mod payload;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, LastWill, Packet, QoS, SubscribeFilter};

use crate::peer_text::shown;
use crate::source::mqtt::broker::Link;
pub use config::SparkplugConfig;
use host::{Action, Host};

use super::{EngineGone, SourceConfig, SourceContext, SourceTask};
use crate::command::WriteCommand;
use crate::rate::Throttle;
use crate::sample::TagDef;
use crate::status;
use crate::validate::Problems;

/// Log lines (bad payloads, gaps, drops): a burst, then this many per second.
const LOG_BURST: u32 = 50;

/// What a Good answer to a Sparkplug write means (protocol.md "Writes").
pub const PUBLISHED: &str =
    "published at QoS 0 (the broker does not acknowledge); the tag's next value confirms";

impl SourceConfig for SparkplugConfig {
    fn kind(&self) -> &'static str {
        "sparkplug"
    }

    fn name(&self) -> &str {
        &self.name
    }

    /// None configured: births define them all.
    fn tags(&self) -> Vec<TagDef> {
        Vec::new()
    }

    /// A QoS 0 publish is handed to the client at once.
    fn write_operation(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn validate(&self, key: &str, problems: &mut Problems) {
        self.check(key, problems);
    }

    fn build(&self, cx: SourceContext) -> SourceTask {
        Box::pin(SparkplugSource::new(Arc::new(self.clone()), cx).run())
    }
}

/// The retained STATE message of Sparkplug 3.0.
fn state(online: bool, timestamp_ms: u64) -> String {
    format!("{{\"online\":{online},\"timestamp\":{timestamp_ms}}}")
}

fn now_ms() -> u64 {
    u64::try_from(crate::sample::now_us() / 1000).unwrap_or(0)
}

/// One host's source.
pub struct SparkplugSource {
    config: Arc<SparkplugConfig>,
    cx: SourceContext,
    host: Host,
    log: Throttle,
}

impl SparkplugSource {
    /// A source for `config`.
    pub fn new(config: Arc<SparkplugConfig>, cx: SourceContext) -> Self {
        SparkplugSource {
            host: Host::new(config.clone(), cx.id),
            config,
            cx,
            log: Throttle::new(LOG_BURST, 1.0),
        }
    }

    fn state_topic(&self) -> String {
        format!("spBv1.0/STATE/{}", self.config.host_id)
    }

    fn filters(&self) -> Vec<SubscribeFilter> {
        self.config
            .groups
            .iter()
            .map(|g| SubscribeFilter::new(format!("spBv1.0/{g}/#"), QoS::AtLeastOnce))
            .collect()
    }

    /// Runs until shutdown; never returns on broker errors.
    pub async fn run(mut self) {
        let shutdown = self.cx.shutdown.clone();
        let born_ms = now_ms();
        let will = LastWill::new(
            self.state_topic(),
            state(false, born_ms),
            QoS::AtLeastOnce,
            true,
        );
        let id = self.config.client_id(&self.cx.node_id);
        let (client, mut events) = self.config.broker(id).client(Some(will));
        let mut link = Link::default();
        let mut writes_open = true;
        tracing::info!(source = %self.config.name, url = %self.config.url, host_id = %self.config.host_id, "sparkplug host started");
        loop {
            let event = tokio::select! {
                () = shutdown.cancelled() => break,
                cmd = self.cx.commands.recv_async(), if writes_open => {
                    match cmd {
                        Ok(cmd) => self.publish_write(&client, link.is_connected(), cmd),
                        Err(_) => writes_open = false,
                    }
                    continue;
                }
                event = events.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    link.connected();
                    tracing::info!(source = %self.config.name, "sparkplug host connected");
                    self.cx.up();
                    if let Err(e) = client.try_subscribe_many(self.filters()) {
                        tracing::warn!(source = %self.config.name, error = %e, "sparkplug subscribe failed");
                    }
                    let online = state(true, born_ms);
                    if let Err(e) =
                        client.try_publish(self.state_topic(), QoS::AtLeastOnce, true, online)
                    {
                        tracing::warn!(source = %self.config.name, error = %e, "STATE publish failed");
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let actions = self.host.handle(&p.topic, &p.payload, Instant::now());
                    if self.carry_out(&client, actions).await.is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    self.host.forget_nodes();
                    if !link.lost(&self.cx, &e).await {
                        break;
                    }
                }
            }
        }
        if link.is_connected() {
            // Offline before leaving, so edge nodes need not wait for the
            // broker to notice (the will says the same if this is lost).
            let _ = client.try_publish(
                self.state_topic(),
                QoS::AtLeastOnce,
                true,
                state(false, born_ms),
            );
            let _ = client.try_disconnect();
            let flush = async { while events.poll().await.is_ok() {} };
            let _ = tokio::time::timeout(Duration::from_secs(1), flush).await;
        }
        tracing::info!(source = %self.config.name, "sparkplug host stopped");
    }

    async fn carry_out(
        &mut self,
        client: &AsyncClient,
        actions: Vec<Action>,
    ) -> Result<(), EngineGone> {
        for action in actions {
            match action {
                Action::Define(local, def) => {
                    if let Some(suppressed) = self.log.admit() {
                        tracing::info!(source = %self.config.name, tag = %shown(&def.name), r#type = ?def.data_type, suppressed, "sparkplug metric defined");
                    }
                    self.cx.define(local, *def).await?;
                }
                Action::Sample(s) => self.cx.send(s).await?,
                Action::Rebirth { group, node } => {
                    let topic = format!("spBv1.0/{group}/NCMD/{node}");
                    tracing::info!(source = %self.config.name, group = %shown(&group), node = %shown(&node), "rebirth requested");
                    metrics::counter!("tagstream_sparkplug_rebirths_requested_total", "source" => self.config.name.clone()).increment(1);
                    if let Err(e) = client.try_publish(
                        topic,
                        QoS::AtMostOnce,
                        false,
                        payload::rebirth(now_ms()),
                    ) {
                        tracing::warn!(source = %self.config.name, error = %e, "rebirth request not published");
                    }
                }
                Action::Warn(why) => {
                    if let Some(suppressed) = self.log.admit() {
                        tracing::warn!(source = %self.config.name, suppressed, "{}", shown(&why));
                    }
                }
            }
        }
        Ok(())
    }

    /// Publishes one write as NCMD/DCMD at QoS 0, or answers why not.
    fn publish_write(&self, client: &AsyncClient, connected: bool, cmd: WriteCommand) {
        let Some(cmd) = cmd.still_wanted(tokio::time::Instant::now()) else {
            return;
        };
        let answer = self.write(client, connected, &cmd);
        if let Ok(how) = &answer {
            tracing::info!(source = %self.config.name, value = %cmd.value, "{}", shown(how));
        }
        let _ = cmd.reply.send(answer.map(|_| PUBLISHED));
    }

    fn write(
        &self,
        client: &AsyncClient,
        connected: bool,
        cmd: &WriteCommand,
    ) -> Result<String, (u32, String)> {
        let slot = self.host.slot(cmd.tag.local).ok_or_else(|| {
            (
                status::BAD_NODE_ID_UNKNOWN,
                "no such Sparkplug metric".to_string(),
            )
        })?;
        if !slot.writable {
            return Err((
                status::BAD_NOT_WRITABLE,
                "not in the source's writable patterns".into(),
            ));
        }
        if !connected {
            return Err((
                status::BAD_COMMUNICATION_ERROR,
                "broker not connected; not published".into(),
            ));
        }
        if !self.host.is_online(slot) {
            let who = if slot.device.is_some() {
                "device"
            } else {
                "edge node"
            };
            return Err((
                status::BAD_COMMUNICATION_ERROR,
                format!("the {who} is offline (dead or not born); not published"),
            ));
        }
        let value = payload::encode_value(&cmd.value, slot.datatype)?;
        let (kind, topic) = match &slot.device {
            Some(d) => (
                "DCMD",
                format!("spBv1.0/{}/DCMD/{}/{d}", slot.group, slot.node),
            ),
            None => ("NCMD", format!("spBv1.0/{}/NCMD/{}", slot.group, slot.node)),
        };
        let bytes = payload::command(&slot.metric, slot.datatype, value, now_ms());
        client
            .try_publish(topic.as_str(), QoS::AtMostOnce, false, bytes)
            .map_err(|e| {
                (
                    status::BAD_COMMUNICATION_ERROR,
                    format!("publish failed: {e}"),
                )
            })?;
        Ok(format!("write published as {kind} on {topic}"))
    }
}
