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

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use async_nats::jetstream::{self, context, stream};
use bytes::Bytes;
use futures_util::StreamExt as _;
use prost::Message as _;
use tokio_util::sync::CancellationToken;

use super::link::Link;
use super::wire::{ClusterDef, Kind};
use crate::engine::EngineShared;
use crate::sample::TagId;

/// Ids claimed at once (pipelined).
const CLAIM_BATCH: usize = 512;

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
    /// This edge's id.
    me: String,
    /// Name -> (lowest id claimed for it, its edge): gateways keep a
    /// name's lowest id, whatever order they read the claims in. Edge
    /// names are shared, not copied per tag.
    by_name: HashMap<String, (TagId, Arc<str>)>,
    /// The edges seen, interned.
    edges: HashMap<String, Arc<str>>,
    /// Id -> a digest of the definition the stream holds for it last
    /// (this edge's tags: whether to publish a definition again).
    defs: HashMap<TagId, u64>,
    /// Id -> where its claim and latest definition are in the stream,
    /// for republishing them (this edge's tags).
    seqs: HashMap<TagId, Placed>,
    /// Highest id claimed.
    max: TagId,
}

/// A definition's digest (its encoding, hashed): the edge compares what
/// it would publish with what the stream holds without keeping a copy.
fn digest(def: &ClusterDef) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    def.encode_to_vec().hash(&mut h);
    h.finish()
}

/// Stream seqs of a tag's claim and latest definition (0: none), and
/// when this edge last learned of either.
#[derive(Debug, Clone, Copy)]
struct Placed {
    claim: u64,
    def: u64,
    at: Instant,
}

impl Default for Placed {
    fn default() -> Self {
        Placed {
            claim: 0,
            def: 0,
            at: Instant::now(),
        }
    }
}

impl Claims {
    fn observe(&mut self, kind: Kind, def: ClusterDef, seq: u64) {
        let mine = def.edge == self.me;
        match kind {
            Kind::Claim(id) => {
                self.max = self.max.max(id);
                let edge = match self.edges.get(&def.edge) {
                    Some(e) => e.clone(),
                    None => {
                        let e: Arc<str> = Arc::from(def.edge.as_str());
                        self.edges.insert(def.edge.clone(), e.clone());
                        e
                    }
                };
                let entry = self
                    .by_name
                    .entry(def.name.clone())
                    .or_insert((id, edge.clone()));
                if id < entry.0 {
                    *entry = (id, edge);
                }
                if mine {
                    self.defs.entry(id).or_insert_with(|| digest(&def));
                    let placed = self.seqs.entry(id).or_default();
                    (placed.claim, placed.at) = (seq, Instant::now());
                }
            }
            Kind::Define(id) if mine => {
                self.defs.insert(id, digest(&def));
                let placed = self.seqs.entry(id).or_default();
                (placed.def, placed.at) = (seq, Instant::now());
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
    claims_rx: Option<flume::Receiver<(Kind, ClusterDef, u64)>>,
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
    /// Samples of keep_samples tags kept while NATS is away, oldest first.
    spool: VecDeque<Spooled>,
    /// Most samples the spool holds (`spool_limit`).
    spool_limit: usize,
    /// Next feed index the spool reads while NATS is away.
    spool_next: u64,
    /// A tag not published for this long is published again.
    silence: Duration,
    /// When each local tag was last published.
    published_at: Vec<Option<Instant>>,
    /// The stream's replicas and epoch, and where to say it changed.
    epoch: (usize, u64, super::Fatal),
}

/// One spooled sample: a keep_samples tag's change, encoded once.
#[derive(Debug)]
struct Spooled {
    id: TagId,
    seq: u64,
    update: Bytes,
}

impl Edge {
    /// A publisher for `engine` on `link`'s stream, as edge `edge_id`.
    pub fn new(cluster: &super::Cluster, engine: Arc<EngineShared>) -> Self {
        let config = &cluster.config;
        let (link, stream, edge_id) = (
            cluster.link.clone(),
            cluster.stream.clone(),
            cluster.edge_id.clone(),
        );
        Edge {
            link,
            stream,
            engine,
            edge_id,
            claims: Claims {
                me: cluster.edge_id.clone(),
                ..Claims::default()
            },
            claims_rx: None,
            ids: Vec::new(),
            local_ids: Default::default(),
            catalog_version: u64::MAX,
            position: 0,
            next_batch: 0,
            from_table: true,
            spool: VecDeque::new(),
            spool_limit: config.spool_limit,
            spool_next: 0,
            silence: config.max_silence,
            published_at: Vec::new(),
            epoch: (config.replicas, cluster.epoch, cluster.fatal.clone()),
        }
    }

    /// Cluster id -> local id of this edge's tags (kept current).
    pub fn local_ids(&self) -> super::writes::LocalIds {
        self.local_ids.clone()
    }

    /// Publishes until shutdown, retrying with backoff after a failure.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut watch = self.engine.feed.watch();
        let mut catalog = self.engine.catalog_watch();
        let mut backoff = Duration::from_millis(100);
        let mut silence = tokio::time::interval((self.silence / 4).max(Duration::from_millis(250)));
        silence.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            match self.round().await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(_) if !self.link.is_up() => {
                    // Wait for the link (the client reconnects by itself),
                    // then a jitter, so edges do not all return at once.
                    // Meanwhile the samples of keep_samples tags go to the
                    // spool as the engine publishes them.
                    if !self.from_table {
                        self.from_table = true;
                        self.spool_next = self.next_batch;
                    }
                    while !self.link.is_up() {
                        self.spool_drain();
                        tokio::select! {
                            _ = watch.changed() => {}
                            () = tokio::time::sleep(Duration::from_millis(100)) => {}
                            () = shutdown.cancelled() => return,
                        }
                    }
                    self.spool_drain();
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
                    // The stream deleted (and made again)? Then a new
                    // epoch: this node restarts.
                    let (replicas, epoch, fatal) = &self.epoch;
                    super::check_epoch(&self.link, *replicas, *epoch, fatal).await;
                    if fatal.watch().borrow().is_some() {
                        return;
                    }
                    if !self.from_table {
                        self.from_table = true;
                        self.spool_next = self.next_batch;
                    }
                    self.spool_drain();
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
                // A tag found or redefined with no change after it.
                changed = catalog.changed() => if changed.is_err() { return },
                _ = silence.tick() => {
                    let moved = match self.republish_silent().await {
                        Ok(()) => self.republish_claims().await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = moved {
                        tracing::debug!(error = %e, "cluster: republishing silent tags");
                    }
                }
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Moves the samples of keep_samples tags from the engine's batches
    /// into the spool (NATS away), dropping the oldest past the limit.
    fn spool_drain(&mut self) {
        let pulled = self.engine.feed.pull(self.spool_next);
        if pulled.first > self.spool_next && self.spool_next > 0 {
            tracing::warn!(
                "cluster: the engine's batches moved on before the spool read them: samples lost"
            );
        }
        let catalog = self.engine.catalog();
        let mut dropped = 0u64;
        for batch in &pulled.batches {
            for entry in &batch.entries {
                let keep = catalog.get(entry.id).is_some_and(|d| d.keep_samples);
                if !keep || entry.seq <= self.position {
                    continue;
                }
                self.spool.push_back(Spooled {
                    id: entry.id,
                    seq: entry.seq,
                    update: batch.entry_slice(entry),
                });
                while self.spool.len() > self.spool_limit {
                    self.spool.pop_front();
                    dropped += 1;
                }
            }
        }
        if dropped > 0 {
            metrics::counter!("tagstream_cluster_spool_dropped_total").increment(dropped);
        }
        metrics::gauge!("tagstream_cluster_spool_samples").set(self.spool.len() as f64);
        self.spool_next = pulled.first + pulled.batches.len() as u64;
    }

    /// Publishes again the tags not published for `max_silence` (their
    /// state unchanged), so the stream keeps no message older than that
    /// and stays dense (a sparse last-value stream is slow to read).
    async fn republish_silent(&mut self) -> Result<(), PublishError> {
        if !self.link.is_up() || self.from_table {
            return Ok(());
        }
        let now = Instant::now();
        let table = self.engine.table().clone();
        let silent: Vec<TagId> = (1..=table.catalog().len() as TagId)
            .filter(|&id| {
                let at = self.published_at.get(id as usize).copied().flatten();
                at.is_some_and(|at| now.duration_since(at) >= self.silence)
            })
            .collect();
        let mut acks = Vec::new();
        for id in silent {
            let Some(state) = table.state(id) else {
                continue;
            };
            if let Some(ack) = self.send(id, None, encode(id, state)).await? {
                acks.push(ack);
            }
            if acks.len() >= PIPELINE {
                await_acks(std::mem::take(&mut acks)).await?;
            }
        }
        await_acks(acks).await
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
                // The engine's encoding, shared: a one-sample ClusterValue.
                let update = batch.entry_slice(entry);
                if let Some(ack) = self.send(entry.id, Some(entry.seq), update).await? {
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

    /// What an edge owes the stream after an outage, bounded by its tag
    /// count and the spool: the latest state of every tag that changed
    /// past the position (one message per tag) and every spooled sample
    /// of the keep_samples tags, all in the order of their seqs.
    async fn publish_table(
        &mut self,
        table: &crate::engine::table::TagTable,
    ) -> Result<(), PublishError> {
        let catalog = table.catalog();
        let spooled: std::collections::HashSet<(TagId, u64)> =
            self.spool.iter().map(|s| (s.id, s.seq)).collect();
        let mut owed: Vec<(u64, TagId, Bytes)> = (1..=catalog.len() as TagId)
            .filter_map(|id| {
                let state = table.state(id)?;
                let spooled = spooled.contains(&(id, state.seq));
                (state.seq > self.position && !spooled).then(|| (state.seq, id, encode(id, state)))
            })
            .collect();
        // A keep_samples tag's spooled samples go as one message (the
        // stream keeps one per subject), at the seq of its last one.
        let mut samples: HashMap<TagId, (u64, Vec<u8>)> = HashMap::new();
        for s in std::mem::take(&mut self.spool) {
            if s.seq > self.position {
                let (seq, bytes) = samples.entry(s.id).or_default();
                *seq = s.seq;
                bytes.extend_from_slice(&s.update);
            }
        }
        owed.extend(
            samples
                .into_iter()
                .map(|(id, (seq, bytes))| (seq, id, Bytes::from(bytes))),
        );
        owed.sort_unstable_by_key(|(seq, id, _)| (*seq, *id));
        let mut acks = Vec::new();
        for (seq, id, update) in owed {
            if let Some(ack) = self.send(id, Some(seq), update).await? {
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
        metrics::gauge!("tagstream_cluster_spool_samples").set(0.0);
        Ok(())
    }

    /// Publishes one change of local tag `id` (none for a tag without a
    /// cluster id: refused, or its claim failed and is retried first).
    async fn send(
        &mut self,
        id: TagId,
        seq: Option<u64>,
        payload: Bytes,
    ) -> Result<Option<context::PublishAckFuture>, PublishError> {
        let cid = self.ids.get(id as usize).copied().unwrap_or(0);
        if cid == 0 || cid == REFUSED {
            return Ok(None);
        }
        if self.published_at.len() <= id as usize {
            self.published_at.resize(id as usize + 1, None);
        }
        self.published_at[id as usize] = Some(Instant::now());
        let mut publish = jetstream::message::PublishMessage::build().payload(payload);
        // A change's id (this edge, its epoch, the change's seq): a retry
        // after a lost acknowledgement is stored once. A republished
        // state has none: storing it twice is harmless.
        if let Some(seq) = seq {
            publish = publish.message_id(format!("{}.{}.{seq}", self.edge_id, self.engine.epoch));
        }
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
        let subjects = &self.link.subjects;
        let filters = vec![subjects.claims(), format!("{}.d.>", subjects.stream())];
        // The claims that existed when the consumer was made: all of them
        // before this edge claims anything (its own, before a restart, are
        // among them).
        let (known, mut messages) = super::gateway::read_last(&self.stream, subjects, filters)
            .await
            .map_err(PublishError::Claims)?;
        for (kind, def, seq) in known {
            self.claims.observe(kind, def, seq);
        }
        let subjects = subjects.clone();
        let decode = move |m: &jetstream::Message| super::gateway::decode_def(&subjects, m);
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
            for (kind, def, seq) in rx.try_iter() {
                self.claims.observe(kind, def, seq);
            }
        }
    }

    /// Claims ids for new tags and publishes changed definitions.
    async fn publish_definitions(
        &mut self,
        catalog: &crate::engine::catalog::Catalog,
    ) -> Result<(), PublishError> {
        let mut new: Vec<(TagId, ClusterDef)> = Vec::new();
        self.drain_claims();
        for def in catalog.iter() {
            let local = def.id as usize;
            if self.ids.len() <= local {
                self.ids.resize(local + 1, 0);
            }
            let wanted = ClusterDef::of(def, &self.edge_id);
            match self.ids[local] {
                REFUSED => {}
                0 => match self.known(&wanted) {
                    Some(cid) => self.assign(def.id, cid, wanted).await?,
                    None => new.push((def.id, wanted)),
                },
                cid => {
                    if self.claims.defs.get(&cid) != Some(&digest(&wanted)) {
                        self.define(cid, wanted).await?;
                    }
                }
            }
        }
        while !new.is_empty() {
            new = self.claim_batch(new).await?;
        }
        Ok(())
    }

    /// The id the stream already holds for this tag's name (its own claim
    /// before a restart, or another edge's: then [`REFUSED`]).
    fn known(&self, def: &ClusterDef) -> Option<TagId> {
        let (cid, edge) = self.claims.by_name.get(&def.name)?;
        if **edge != *self.edge_id {
            tracing::warn!(tag = %crate::peer_text::shown(&def.name), owner = %edge, "cluster: tag name held by another edge: not published");
            metrics::counter!("tagstream_tags_refused_total", "source" => def.source.clone())
                .increment(1);
            return Some(REFUSED);
        }
        Some(*cid)
    }

    /// Local tag `local` is cluster id `cid` (or refused); its definition
    /// is published if the stream holds another.
    async fn assign(
        &mut self,
        local: TagId,
        cid: TagId,
        def: ClusterDef,
    ) -> Result<(), PublishError> {
        self.ids[local as usize] = cid;
        if cid == REFUSED {
            return Ok(());
        }
        self.local_ids
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(cid, local);
        if self.claims.defs.get(&cid) != Some(&digest(&def)) {
            self.define(cid, def).await?;
        }
        Ok(())
    }

    /// Claims the next free ids for new tags, many at once (each claim is
    /// a publish that succeeds only on an empty subject, so pipelining
    /// them keeps every id claimed once). Returns the tags whose id
    /// another node took meanwhile, to claim again.
    async fn claim_batch(
        &mut self,
        mut new: Vec<(TagId, ClusterDef)>,
    ) -> Result<Vec<(TagId, ClusterDef)>, PublishError> {
        let rest = new.split_off(new.len().min(CLAIM_BATCH));
        let first = self.claims.max + 1;
        let mut acks = Vec::with_capacity(new.len());
        for (i, (_, def)) in new.iter().enumerate() {
            let publish = jetstream::message::PublishMessage::build()
                .payload(def.encode_to_vec().into())
                .expected_last_subject_sequence(0);
            let ack = self
                .link
                .js
                .send_publish(self.link.subjects.claim(first + i as TagId), publish)
                .await
                .map_err(|e| PublishError::Publish(e.to_string()))?;
            acks.push(ack);
        }
        let mut again = Vec::new();
        for (i, ((local, def), ack)) in new.into_iter().zip(acks).enumerate() {
            let id = first + i as TagId;
            match ack.await {
                Ok(ack) => {
                    self.claims
                        .observe(Kind::Claim(id), def.clone(), ack.sequence);
                    self.assign(local, id, def).await?;
                }
                Err(e) if e.kind() == context::PublishErrorKind::WrongLastSequence => {
                    // Someone claimed it first: learn that claim; this
                    // tag tries a later id.
                    match self.claim_of(id).await? {
                        (Some(other), seq) => self.claims.observe(Kind::Claim(id), other, seq),
                        (None, _) => self.claims.max = self.claims.max.max(id),
                    }
                    again.push((local, def));
                }
                Err(e) => return Err(PublishError::Publish(e.to_string())),
            }
        }
        // A name another node claimed meanwhile is that node's (or ours,
        // from before a restart).
        let mut retry = Vec::new();
        for (local, def) in again.into_iter().chain(rest) {
            match self.known(&def) {
                Some(cid) => self.assign(local, cid, def).await?,
                None => retry.push((local, def)),
            }
        }
        Ok(retry)
    }

    async fn define(&mut self, cid: TagId, def: ClusterDef) -> Result<(), PublishError> {
        let ack = self
            .link
            .js
            .publish(self.link.subjects.define(cid), def.encode_to_vec().into())
            .await
            .map_err(|e| PublishError::Publish(e.to_string()))?
            .await
            .map_err(|e| PublishError::Publish(e.to_string()))?;
        self.claims.observe(Kind::Define(cid), def, ack.sequence);
        Ok(())
    }

    /// Moves this edge's claims and definitions older than `max_silence`
    /// to the stream's end (same content; a claim only if it is still the
    /// one the stream holds): a message never superseded would pin the
    /// stream's first sequence, and every later superseded message would
    /// stay an interior delete.
    async fn republish_claims(&mut self) -> Result<(), PublishError> {
        let now = Instant::now();
        let mine: Vec<(TagId, Placed)> = self
            .claims
            .seqs
            .iter()
            .filter(|(_, p)| now.duration_since(p.at) >= self.silence)
            .map(|(id, p)| (*id, *p))
            .collect();
        for (id, placed) in mine {
            if placed.claim > 0 {
                let (Some(def), _) = self.claim_of(id).await? else {
                    continue;
                };
                let publish = jetstream::message::PublishMessage::build()
                    .payload(def.encode_to_vec().into())
                    .expected_last_subject_sequence(placed.claim);
                let sent = self
                    .link
                    .js
                    .send_publish(self.link.subjects.claim(id), publish)
                    .await
                    .map_err(|e| PublishError::Publish(e.to_string()))?
                    .await;
                let seq = match sent {
                    Ok(ack) => ack.sequence,
                    // Moved meanwhile: learn where.
                    Err(e) if e.kind() == context::PublishErrorKind::WrongLastSequence => {
                        self.claim_of(id).await?.1
                    }
                    Err(e) => return Err(PublishError::Publish(e.to_string())),
                };
                let p = self.claims.seqs.entry(id).or_default();
                (p.claim, p.at) = (seq, Instant::now());
            }
            if placed.def == 0 {
                continue;
            }
            // The definition as this edge has it (what it published last).
            let local = self
                .local_ids
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&id)
                .copied();
            let def = local.and_then(|l| {
                let catalog = self.engine.catalog();
                catalog.get(l).map(|d| ClusterDef::of(d, &self.edge_id))
            });
            if let Some(def) = def {
                self.define(id, def).await?;
            }
        }
        Ok(())
    }

    /// The claim of `id` as the stream holds it: its content as first
    /// made (a claim's name and edge never change; its definition is in
    /// `S.d` once redefined; `None` if it does not decode) and its seq.
    async fn claim_of(&self, id: TagId) -> Result<(Option<ClusterDef>, u64), PublishError> {
        let m = self
            .stream
            .direct_get_last_for_subject(self.link.subjects.claim(id))
            .await
            .map_err(|e| PublishError::Claims(e.to_string()))?;
        Ok((ClusterDef::decode(m.payload.as_ref()).ok(), m.sequence))
    }
}

/// A tag's state as a one-sample `ClusterValue`, encoded as the engine
/// encodes a batch entry.
fn encode(id: TagId, state: &crate::engine::table::TagState) -> Bytes {
    let mut buf = bytes::BytesMut::new();
    crate::engine::batch::encode_update(3, id, state, &mut buf);
    buf.freeze()
}

async fn await_acks(acks: Vec<context::PublishAckFuture>) -> Result<(), PublishError> {
    for ack in acks {
        ack.await
            .map_err(|e| PublishError::Publish(e.to_string()))?;
    }
    Ok(())
}
