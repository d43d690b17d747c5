//! Writes across the cluster (protocol.md "Cluster"). A gateway checks a
//! `WriteRequest` as a single node does, then [`GatewayWrites`] sends it to
//! the owning edge by NATS request/reply; [`serve`] on the edge checks it
//! again against its own definition, runs it through the edge's own write
//! queue under the gateway's deadline, writes the audit line, and answers.
//!
//! Receives: checked writes (gateway), write requests (edge). Emits: NATS
//! requests and replies, device writes, audit lines.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use prost::Message as _;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::gateway::Edges;
use super::link::Link;
use super::wire::{ClusterWrite, ClusterWriteResult};
use crate::command::{CommandSink, LocalSources, Submitted, WRITE_TIMEOUT, WriteFailure};
use crate::engine::EngineShared;
use crate::peer_text::shown;
use crate::sample::{TagId, TagKey, Value};
use crate::status;

/// Network time allowed each way: the edge's budget is the gateway's
/// less twice this, so its answer arrives before the gateway gives up.
const LINK_SLACK: Duration = Duration::from_millis(250);

/// A gateway's command sink: each write goes to the edge that owns it.
pub struct GatewayWrites {
    link: Link,
    edges: Arc<Edges>,
}

impl GatewayWrites {
    /// Routes by `edges` over `link`.
    pub fn new(link: Link, edges: Arc<Edges>) -> Self {
        GatewayWrites { link, edges }
    }
}

impl CommandSink for GatewayWrites {
    fn submit(
        &self,
        tag: TagKey,
        value: Value,
        received: Instant,
        from: SocketAddr,
        subject: &str,
    ) -> Result<Submitted, WriteFailure> {
        let Some(edge) = self.edges.name(tag.source) else {
            return Err((status::BAD_NOT_WRITABLE, "no edge owns this tag".into()));
        };
        if !self.link.is_up() {
            return Err((
                status::BAD_COMMUNICATION_ERROR,
                "this gateway has lost NATS: the write was not sent".into(),
            ));
        }
        let answer_by = received + WRITE_TIMEOUT;
        let budget = answer_by
            .saturating_duration_since(Instant::now())
            .saturating_sub(LINK_SLACK * 2);
        let request = ClusterWrite {
            id: tag.local,
            value: Some(crate::proto::Value::from(&value)),
            subject: subject.to_string(),
            peer: from.to_string(),
            budget_ms: budget.as_millis() as u64,
        };
        let (reply, rx) = oneshot::channel();
        let client = self.link.client.clone();
        let to = self.link.subjects.write(&edge);
        tokio::spawn(async move {
            let request = async_nats::Request::new()
                .payload(Bytes::from(request.encode_to_vec()))
                .timeout(Some(budget + LINK_SLACK));
            let answer = match client.send_request(to, request).await {
                Ok(m) => match ClusterWriteResult::decode(m.payload.as_ref()) {
                    Ok(r) if r.status == status::GOOD => Ok(meaning(&r.message)),
                    Ok(r) => Err((r.status, r.message)),
                    Err(_) => Err((
                        status::BAD_COMMUNICATION_ERROR,
                        "the edge's answer did not decode".into(),
                    )),
                },
                Err(e) => Err(match e.kind() {
                    async_nats::RequestErrorKind::NoResponders => (
                        status::BAD_COMMUNICATION_ERROR,
                        format!("edge {edge} is not connected: the write was not sent"),
                    ),
                    async_nats::RequestErrorKind::TimedOut => (
                        status::BAD_TIMEOUT,
                        format!("no answer from edge {edge} in time"),
                    ),
                    _ => (
                        status::BAD_COMMUNICATION_ERROR,
                        format!("cannot reach edge {edge}: {e}"),
                    ),
                }),
            };
            let _ = reply.send(answer);
        });
        Ok(Submitted {
            reply: rx,
            answer_by,
        })
    }
}

/// The meanings a source gives an acknowledgement, as `'static` text (the
/// session's reply type); anything else is the device's own answer.
fn meaning(message: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        crate::source::mqtt::PUBLISHED,
        crate::source::sparkplug::PUBLISHED,
    ];
    KNOWN.iter().find(|k| **k == message).copied().unwrap_or("")
}

/// Cluster id -> local id of an edge's tags (the publisher fills it).
pub type LocalIds = Arc<RwLock<HashMap<TagId, TagId>>>;

/// Serves the writes gateways route to this edge until shutdown.
pub async fn serve(
    link: Link,
    edge_id: String,
    engine: Arc<EngineShared>,
    commands: Arc<LocalSources>,
    ids: LocalIds,
    shutdown: CancellationToken,
) {
    let mut requests = match link.client.subscribe(link.subjects.write(&edge_id)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cluster: cannot take writes for this edge");
            return;
        }
    };
    loop {
        let message = tokio::select! {
            m = requests.next() => match m { Some(m) => m, None => return },
            () = shutdown.cancelled() => return,
        };
        let Some(reply_to) = message.reply.clone() else {
            continue;
        };
        let (engine, commands, ids, client) = (
            engine.clone(),
            commands.clone(),
            ids.clone(),
            link.client.clone(),
        );
        tokio::spawn(async move {
            let received = Instant::now();
            let (status, text, audit) = match ClusterWrite::decode(message.payload.as_ref()) {
                Ok(w) => {
                    let audit = Some(w.clone());
                    let (s, t) = run(&w, received, &engine, &commands, &ids).await;
                    (s, t, audit)
                }
                Err(_) => (status::BAD_DECODING_ERROR, "malformed write".into(), None),
            };
            if let Some(w) = audit {
                let tag = engine
                    .catalog()
                    .get(local_id(&ids, w.id))
                    .map(|d| d.name.clone())
                    .unwrap_or_default();
                let value = w
                    .value
                    .as_ref()
                    .and_then(Value::from_wire)
                    .map_or_else(|| "none".into(), |v| v.to_string());
                tracing::info!(
                    target: "audit",
                    event = "write",
                    via = "cluster",
                    subject = %shown(&w.subject),
                    peer = %shown(&w.peer),
                    tag = %shown(&tag),
                    value = %shown(&value),
                    result = %status::name(status),
                    status = format_args!("{status:#010x}"),
                    latency_us = received.elapsed().as_micros() as u64,
                    detail = %shown(&text),
                    "write"
                );
            }
            let answer = ClusterWriteResult {
                status,
                message: text,
            };
            let _ = client
                .publish(reply_to, Bytes::from(answer.encode_to_vec()))
                .await;
        });
    }
}

fn local_id(ids: &LocalIds, cid: TagId) -> TagId {
    ids.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&cid)
        .copied()
        .unwrap_or(0)
}

/// Checks a routed write against the edge's own definition and runs it.
async fn run(
    w: &ClusterWrite,
    received: Instant,
    engine: &EngineShared,
    commands: &LocalSources,
    ids: &LocalIds,
) -> (u32, String) {
    let local = local_id(ids, w.id);
    let catalog = engine.catalog();
    let (Some(def), Some(meta)) = (catalog.get(local), catalog.meta(local)) else {
        return (
            status::BAD_NODE_ID_UNKNOWN,
            "no such tag on this edge".into(),
        );
    };
    if !def.writable {
        return (
            status::BAD_NOT_WRITABLE,
            format!("{} is read-only", def.name),
        );
    }
    let Some(value) = w.value.as_ref().and_then(Value::from_wire) else {
        return (
            status::BAD_TYPE_MISMATCH,
            "the request carries no value".into(),
        );
    };
    let value = match def.convert_for_write(&value) {
        Ok(v) => v,
        Err(failure) => return failure,
    };
    let cap = received + Duration::from_millis(w.budget_ms).min(WRITE_TIMEOUT);
    let peer: SocketAddr = w.peer.parse().unwrap_or(([0, 0, 0, 0], 0).into());
    let submitted = match commands.submit_within(meta.owner, value, received, peer, Some(cap)) {
        Ok(s) => s,
        Err(failure) => return failure,
    };
    crate::command::answer(submitted.reply, submitted.answer_by).await
}
