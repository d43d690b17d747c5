//! The edge's publisher: follows its own engine (the batches it publishes
//! and, when it has fallen behind or lost NATS, its table) and puts every
//! applied change on the stream, waiting for JetStream's acknowledgement.
//! It owns the edge's cluster ids: a tag gets one by claiming the next
//! free `S.id.<id>` subject (a publish that only succeeds on an empty
//! subject), or reuses the claim it made before a restart.
//!
//! Receives: the engine's batches and table snapshots, the stream's
//! claims and definitions. Emits: claims, definitions and changes on the
//! stream, each change with a message id (edge, local epoch, local seq) so
//! a retry after a lost acknowledgement stores nothing twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, context, stream};
use bytes::Bytes;
use futures_util::StreamExt as _;
use prost::Message as _;
use tokio_util::sync::CancellationToken;

use super::link::{Link, REQUEST_TIMEOUT};
use super::wire::{ClusterDef, Kind};
use crate::engine::EngineShared;
use crate::sample::TagId;

/// Changes published before their acknowledgements are awaited.
const PIPELINE: usize = 4096;

/// A local tag whose name another edge holds: never published.
const REFUSED: TagId = TagId::MAX;

/// Why a round of publishing stopped (it is retried from the last
/// acknowledged position).
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// JetStream refused or did not answer.
    #[error("publish: {0}")]
    Publish(String),
    /// The claims could not be read.
    #[error("reading claims: {0}")]
    Claims(String),
}

/// What the edge knows of the stream's claims and definitions.
#[derive(Debug, Default)]
struct Claims {
    /// Name -> (first id claimed for it, its edge).
    by_name: HashMap<String, (TagId, String)>,
    /// Id -> the definition the stream holds for it last.
    defs: HashMap<TagId, ClusterDef>,
    /// Highest id claimed.
    max: TagId,
}

impl Claims {
    fn observe(&mut self, kind: Kind, def: ClusterDef) {
        match kind {
            Kind::Claim(id) => {
                self.max = self.max.max(id);
                self.by_name
                    .entry(def.name.clone())
                    .or_insert((id, def.edge.clone()));
                self.defs.insert(id, def);
            }
            Kind::Define(id) => {
                self.defs.insert(id, def);
            }
            _ => {}
        }
    }
}

/// The publisher of one edge.
pub struct Edge {
    link: Link,
    stream: stream::Stream,
    engine: Arc<EngineShared>,
    edge_id: String,
    claims: Claims,
    claims_rx: Option<flume::Receiver<(Kind, ClusterDef)>>,
    /// Local id -> cluster id (0: none yet).
    ids: Vec<TagId>,
    /// Cluster id -> local id, for the writes gateways route here.
    local_ids: super::writes::LocalIds,
    /// Catalog version whose definitions are published.
    catalog_version: u64,
    /// Local seq up to which every change is acknowledged.
    position: u64,
    /// Next feed index to read.
    next_batch: u64,
    /// Publish from the table (latest state per tag) rather than from the
    /// batches: after a failure or when the ring has moved on.
    from_table: bool,
}

impl Edge {
    /// A publisher for `engine` on `link`'s stream, as edge `edge_id`.
    pub fn new(
        link: Link,
        stream: stream::Stream,
        engine: Arc<EngineShared>,
        edge_id: String,
    ) -> Self {
        Edge {
            link,
            stream,
            engine,
            edge_id,
            claims: Claims::default(),
            claims_rx: None,
            ids: Vec::new(),
            local_ids: Default::default(),
            catalog_version: u64::MAX,
            position: 0,
            next_batch: 0,
            from_table: true,
        }
    }

    /// Cluster id -> local id of this edge's tags (kept current).
    pub fn local_ids(&self) -> super::writes::LocalIds {
        self.local_ids.clone()
    }

    /// Publishes until shutdown, retrying with backoff after a failure.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut watch = self.engine.feed.watch();
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.round().await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(_) if !self.link.is_up() => {
                    // Wait for the link (the client reconnects by itself),
                    // then a jitter, so edges do not all return at once.
                    self.from_table = true;
                    while !self.link.is_up() {
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_millis(100)) => {}
                            () = shutdown.cancelled() => return,
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(fastrand::u64(0..500))).await;
                    tracing::info!(
                        from = self.position,
                        "cluster: NATS back; the edge publishes what changed meanwhile"
                    );
                    continue;
                }
                Err(e) => {
                    metrics::counter!("tagstream_cluster_publish_errors_total").increment(1);
                    tracing::warn!(error = %e, retry_in = ?backoff, "cluster: edge publish failed");
                    self.from_table = true;
                    let jitter =
                        Duration::from_millis(fastrand::u64(0..=backoff.as_millis() as u64 / 2));
                    tokio::select! {
                        () = tokio::time::sleep(backoff + jitter) => {}
                        () = shutdown.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
            tokio::select! {
                changed = watch.changed() => if changed.is_err() { return },
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// One pass: definitions first, then every change past the position.
    async fn round(&mut self) -> Result<(), PublishError> {
        // Nothing is handed to a client that is reconnecting: it would
        // buffer the messages and send them later, beside the retry.
        if !self.link.is_up() {
            return Err(PublishError::Publish("NATS link down".into()));
        }
        if self.claims_rx.is_none() {
            self.read_claims().await?;
        }
        self.drain_claims();
        // The batches first, then the catalog: the engine stores a table
        // before it publishes a batch, so every tag in them has its id.
        let pulled = self.engine.feed.pull(self.next_batch);
        let published = self.engine.feed.published();
        let table = self.engine.table().clone();
        let catalog = self.engine.catalog();
        if catalog.version() != self.catalog_version {
            self.publish_definitions(&catalog).await?;
            self.catalog_version = catalog.version();
        }
        if pulled.first > self.next_batch {
            // The ring dropped batches this edge had not published.
            self.from_table = true;
        }
        if self.from_table {
            self.publish_table(&table).await?;
            self.next_batch = published;
            self.from_table = false;
            return Ok(());
        }
        let mut acks = Vec::new();
        let mut last = self.position;
        for batch in &pulled.batches {
            for entry in &batch.entries {
                if entry.seq <= self.position {
                    continue;
                }
                let Some(update) = super::wire::update_of_entry(batch.entry_bytes(entry)) else {
                    continue;
                };
                if let Some(ack) = self
                    .send(entry.id, entry.seq, Bytes::copy_from_slice(update))
                    .await?
                {
                    acks.push(ack);
                }
                if acks.len() >= PIPELINE {
                    await_acks(std::mem::take(&mut acks)).await?;
                }
            }
            last = last.max(batch.to_seq);
        }
        await_acks(acks).await?;
        self.position = last;
        self.next_batch = pulled.first + pulled.batches.len() as u64;
        Ok(())
    }

    /// The latest state of every tag that changed past the position, one
    /// message per tag in the order of their last change: what an edge
    /// owes the stream after an outage, bounded by its tag count.
    async fn publish_table(
        &mut self,
        table: &crate::engine::table::TagTable,
    ) -> Result<(), PublishError> {
        let mut changed: Vec<(u64, TagId)> = (1..=table.catalog().len() as TagId)
            .filter_map(|id| {
                let state = table.state(id)?;
                (state.seq > self.position).then_some((state.seq, id))
            })
            .collect();
        changed.sort_unstable();
        let mut acks = Vec::new();
        for (seq, id) in changed {
            let Some(state) = table.state(id) else {
                continue;
            };
            let update = crate::proto::TagUpdate {
                id,
                value: state.value.as_ref().map(crate::proto::Value::from),
                status: state.status,
                source_time_us: state.source_time_us,
                server_time_us: state.server_time_us,
            };
            if let Some(ack) = self.send(id, seq, update.encode_to_vec().into()).await? {
                acks.push(ack);
            }
            if acks.len() >= PIPELINE {
                await_acks(std::mem::take(&mut acks)).await?;
            }
        }
        await_acks(acks).await?;
        if table.seq() > self.position {
            tracing::debug!(
                from = self.position,
                to = table.seq(),
                "cluster: edge caught up from its table"
            );
        }
        self.position = self.position.max(table.seq());
        Ok(())
    }

    /// Publishes one change of local tag `id` (none for a tag without a
    /// cluster id: refused, or its claim failed and is retried first).
    async fn send(
        &self,
        id: TagId,
        seq: u64,
        payload: Bytes,
    ) -> Result<Option<context::PublishAckFuture>, PublishError> {
        let cid = self.ids.get(id as usize).copied().unwrap_or(0);
        if cid == 0 || cid == REFUSED {
            return Ok(None);
        }
        let publish = jetstream::message::PublishMessage::build()
            .payload(payload)
            .message_id(format!("{}.{}.{seq}", self.edge_id, self.engine.epoch));
        let ack = self
            .link
            .js
            .send_publish(self.link.subjects.value(cid), publish)
            .await
            .map_err(|e| PublishError::Publish(e.to_string()))?;
        Ok(Some(ack))
    }

    /// Reads every claim and definition the stream holds, then keeps
    /// following them (another edge's claims move the next free id).
    async fn read_claims(&mut self) -> Result<(), PublishError> {
        let failed = |e: String| PublishError::Claims(e);
        let subjects = &self.link.subjects;
        let consumer = self
            .stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subjects: vec![subjects.claims(), format!("{}.d.>", subjects.stream())],
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .map_err(|e| failed(e.to_string()))?;
        let pending = consumer.cached_info().num_pending;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| failed(e.to_string()))?;
        let subjects = subjects.clone();
        let decode = move |m: &jetstream::Message| -> Option<(Kind, ClusterDef)> {
            let kind = subjects.kind(&m.subject);
            let def = ClusterDef::decode(m.payload.as_ref()).ok()?;
            Some((kind, def))
        };
        // The claims that existed when the consumer was made: all of them
        // before this edge claims anything (its own, before a restart, are
        // among them).
        for _ in 0..pending {
            let message = tokio::time::timeout(REQUEST_TIMEOUT * 2, messages.next())
                .await
                .map_err(|_| failed("timed out".into()))?
                .ok_or_else(|| failed("ended".into()))?
                .map_err(|e| failed(e.to_string()))?;
            if let Some((kind, def)) = decode(&message) {
                self.claims.observe(kind, def);
            }
        }
        let (tx, rx) = flume::unbounded();
        tokio::spawn(async move {
            while let Some(message) = messages.next().await {
                match message {
                    Ok(m) => {
                        if let Some(claim) = decode(&m)
                            && tx.send(claim).is_err()
                        {
                            return;
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "cluster: claims consumer"),
                }
            }
        });
        self.claims_rx = Some(rx);
        Ok(())
    }

    fn drain_claims(&mut self) {
        if let Some(rx) = &self.claims_rx {
            for (kind, def) in rx.try_iter() {
                self.claims.observe(kind, def);
            }
        }
    }

    /// Claims ids for new tags and publishes changed definitions.
    async fn publish_definitions(
        &mut self,
        catalog: &crate::engine::catalog::Catalog,
    ) -> Result<(), PublishError> {
        for def in catalog.iter() {
            let local = def.id as usize;
            if self.ids.len() <= local {
                self.ids.resize(local + 1, 0);
            }
            let wanted = ClusterDef::of(def, &self.edge_id);
            match self.ids[local] {
                REFUSED => {}
                0 => {
                    let cid = self.claim(wanted).await?;
                    self.ids[local] = cid;
                    if cid != REFUSED {
                        self.local_ids
                            .write()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .insert(cid, def.id);
                    }
                }
                cid => {
                    if self.claims.defs.get(&cid) != Some(&wanted) {
                        self.define(cid, wanted).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The cluster id of a tag: its earlier claim, or the next free id.
    async fn claim(&mut self, def: ClusterDef) -> Result<TagId, PublishError> {
        loop {
            self.drain_claims();
            if let Some((cid, edge)) = self.claims.by_name.get(&def.name).cloned() {
                if edge != self.edge_id {
                    tracing::warn!(tag = %crate::peer_text::shown(&def.name), owner = %edge, "cluster: tag name held by another edge: not published");
                    metrics::counter!("tagstream_tags_refused_total", "source" => def.source.clone()).increment(1);
                    return Ok(REFUSED);
                }
                if self.claims.defs.get(&cid) != Some(&def) {
                    self.define(cid, def).await?;
                }
                return Ok(cid);
            }
            let id = self.claims.max + 1;
            let publish = jetstream::message::PublishMessage::build()
                .payload(def.encode_to_vec().into())
                .expected_last_subject_sequence(0);
            let result = self
                .link
                .js
                .send_publish(self.link.subjects.claim(id), publish)
                .await
                .map_err(|e| PublishError::Publish(e.to_string()))?
                .await;
            match result {
                Ok(_) => {
                    self.claims.observe(Kind::Claim(id), def);
                    return Ok(id);
                }
                Err(e) if e.kind() == context::PublishErrorKind::WrongLastSequence => {
                    // Someone claimed it first: learn that claim, try the next.
                    let m = self
                        .stream
                        .direct_get_last_for_subject(self.link.subjects.claim(id))
                        .await
                        .map_err(|e| PublishError::Claims(e.to_string()))?;
                    if let Ok(other) = ClusterDef::decode(m.payload.as_ref()) {
                        self.claims.observe(Kind::Claim(id), other);
                    } else {
                        self.claims.max = self.claims.max.max(id);
                    }
                }
                Err(e) => return Err(PublishError::Publish(e.to_string())),
            }
        }
    }

    async fn define(&mut self, cid: TagId, def: ClusterDef) -> Result<(), PublishError> {
        self.link
            .js
            .publish(self.link.subjects.define(cid), def.encode_to_vec().into())
            .await
            .map_err(|e| PublishError::Publish(e.to_string()))?
            .await
            .map_err(|e| PublishError::Publish(e.to_string()))?;
        self.claims.defs.insert(cid, def);
        Ok(())
    }
}

async fn await_acks(acks: Vec<context::PublishAckFuture>) -> Result<(), PublishError> {
    for ack in acks {
        ack.await
            .map_err(|e| PublishError::Publish(e.to_string()))?;
    }
    Ok(())
}
