//! Whether each edge is alive, as gateways see it: an edge publishes a
//! heartbeat on core NATS (`<stream>_live.<edge_id>`, not stored) every
//! quarter of `edge_timeout`; a gateway that has not heard an edge for
//! `edge_timeout` turns its tags BadCommunicationError (keeping their
//! values) and back when it hears it again ([`Local::EdgeDown`] /
//! [`Local::EdgeUp`]). While the gateway itself is cut off it hears no
//! one, so it judges no edge (its tags show Uncertain meanwhile) and gives
//! every edge a full `edge_timeout` once it is back.
//!
//! Receives: heartbeats. Emits: heartbeats (edge), local statuses to the
//! gateway's engine.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::gateway::Edges;
use super::link::Link;
use crate::engine::Local;
use crate::sample::{Input, SourceId};

/// How often an edge says it is alive, for a gateway's `timeout`.
pub fn period(timeout: Duration) -> Duration {
    (timeout / 4).max(Duration::from_millis(25))
}

/// An edge's heartbeat until shutdown.
pub async fn beat(link: Link, edge_id: String, timeout: Duration, shutdown: CancellationToken) {
    let subject = link.subjects.live(&edge_id);
    let mut tick = tokio::time::interval(period(timeout));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        if link.is_up() {
            let _ = link
                .client
                .publish(subject.clone(), bytes::Bytes::new())
                .await;
        }
    }
}

/// A gateway's judge of its edges until shutdown.
pub async fn judge(
    link: Link,
    edges: Arc<Edges>,
    timeout: Duration,
    input: flume::Sender<Input>,
    shutdown: CancellationToken,
) {
    let mut beats = loop {
        match link.client.subscribe(link.subjects.live_all()).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(error = %e, "cluster: cannot hear edges yet");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = shutdown.cancelled() => return,
                }
            }
        }
    };
    let mut heard: HashMap<SourceId, Instant> = HashMap::new();
    let mut down: HashSet<SourceId> = HashSet::new();
    let mut tick = tokio::time::interval(period(timeout));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_cut_off = false;
    loop {
        tokio::select! {
            beat = beats.next() => {
                let Some(beat) = beat else { return };
                let Some(n) = link.subjects.live_edge(&beat.subject).and_then(|e| edges.find(e)) else {
                    continue;
                };
                heard.insert(n, Instant::now());
                if down.remove(&n) {
                    tracing::info!(edge = ?edges.name(n), "cluster: edge heard again");
                    if input.send_async(Input::Local(Local::EdgeUp(n))).await.is_err() {
                        return;
                    }
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                if !link.is_up() {
                    was_cut_off = true;
                    continue;
                }
                if std::mem::take(&mut was_cut_off) {
                    heard.values_mut().for_each(|t| *t = now);
                }
                for n in 0..edges.len() {
                    let Ok(n) = SourceId::try_from(n) else { break };
                    let last = *heard.entry(n).or_insert(now);
                    if now.duration_since(last) > timeout && down.insert(n) {
                        tracing::warn!(edge = ?edges.name(n), ?timeout, "cluster: edge not heard: its tags turn Bad");
                        if input.send_async(Input::Local(Local::EdgeDown(n))).await.is_err() {
                            return;
                        }
                    }
                }
            }
            () = shutdown.cancelled() => return,
        }
    }
}
