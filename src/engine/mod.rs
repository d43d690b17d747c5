//! The engine: one task owns the tag table, fed by one bounded flume channel
//! of [`Input`]s. It awaits one input, drains what else is ready, applies
//! the batch (tags defined, readings, lost sources), encodes each change
//! once, and publishes one `Batch` that every session shares.
//!
//! Only [`Engine`], inside the engine task, writes the table. After each
//! batch it publishes a snapshot of it (a clone sharing every page the
//! batch did not touch) that sessions read through [`EngineShared`]
//! without a lock: readers never wait for the engine, nor it for them. The
//! batch itself goes to the [`feed::Feed`], which each push shard reads
//! once for all its sessions. Seq and epoch come from the engine's
//! [`seq::Sequencer`].

pub mod batch;
pub mod catalog;
pub mod feed;
pub mod history;
pub mod selection;
pub mod seq;
pub mod table;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

pub use batch::Batch;
use catalog::{Catalog, TagDef};
use selection::Selections;
use seq::Sequencer;
use table::TagTable;

use crate::peer_text::shown;
use crate::rate::Throttle;
use crate::sample::{Input, Sample, SourceId, TagId, TagKey, now_us};

/// Most inputs applied in one batch: bounds the write-lock hold and the
/// size of one Delta under a burst.
pub const MAX_BATCH: usize = 1024;

/// Batches kept for sessions that are behind (see [`feed::RING_BATCHES`]);
/// past this a session catches up from the table instead.
pub const BATCH_RING: usize = feed::RING_BATCHES;

pub use crate::sample::{Local, Replicated};

/// Most ids a cluster gateway holds: a claim past it is ignored, the same
/// on every gateway (ids are claimed in order), so a rogue claim of id
/// 4,000,000,000 cannot make a gateway hold 4 billion empty slots.
pub const MAX_CLUSTER_TAGS: TagId = 1_000_000;

/// Longest unit, description or source name a gateway takes from a
/// definition on the stream (the name has its own rule).
pub const MAX_REPLICATED_TEXT: usize = 1024;

/// Whether a definition from the stream may enter a gateway's catalog:
/// a tag name as any source's must be, bounded texts. Whoever can publish
/// to the stream controls it, so it is checked as a peer's input.
fn replicated_def_fits(def: &TagDef) -> Result<(), String> {
    crate::validate::check_tag_name(&def.name)?;
    for (what, text) in [
        ("unit", &def.unit),
        ("description", &def.description),
        ("source", &def.source),
    ] {
        if text.len() > MAX_REPLICATED_TEXT {
            return Err(format!(
                "its {what} is {} bytes, more than {MAX_REPLICATED_TEXT}",
                text.len()
            ));
        }
    }
    Ok(())
}

/// The entry seq of a local status in a batch: after any position, so
/// every session at or before the batch's seq takes it.
pub const LOCAL_SEQ: u64 = u64::MAX;

/// The statuses a gateway shows instead of the stream's, and why.
#[derive(Debug, Default)]
struct LocalMarks {
    link_lost: bool,
    edges_down: std::collections::HashSet<SourceId>,
    /// The stream's status of each tag shown otherwise.
    saved: std::collections::HashMap<TagId, u32>,
}

impl LocalMarks {
    /// What tag `id` of edge `owner` shows, given the stream's status.
    fn shown(&self, owner: SourceId, stream: u32, read: bool) -> u32 {
        if !read {
            stream
        } else if self.link_lost {
            crate::status::UNCERTAIN_LAST_USABLE_VALUE
        } else if self.edges_down.contains(&owner) {
            crate::status::BAD_COMMUNICATION_ERROR
        } else {
            stream
        }
    }
}

impl Replicated {
    /// The message's stream seq.
    pub fn seq(&self) -> u64 {
        match self {
            Replicated::Claim { seq, .. }
            | Replicated::Define { seq, .. }
            | Replicated::Skip { seq } => *seq,
            Replicated::Update { seq, .. } => *seq,
        }
    }
}

/// What sessions read: the table's latest snapshot, the epoch, interned
/// selections and the feed of published batches.
#[derive(Debug)]
pub struct EngineShared {
    table: ArcSwap<TagTable>,
    /// The epoch (from the sequencer).
    pub epoch: u64,
    /// Interned subscriptions.
    pub selections: Selections,
    /// Published batches.
    pub feed: feed::Feed,
    /// Update bytes published so far.
    published_bytes: AtomicU64,
    /// Recent values per tag (`[history]`); `None`: not kept.
    pub history: Option<Arc<history::Store>>,
    /// A cluster gateway: the last stream seq applied, whatever the
    /// message (the position moves only with changes).
    stream_seq: AtomicU64,
    /// The catalog's version, for a cluster edge that publishes
    /// definitions even when no change follows them.
    catalog_signal: tokio::sync::watch::Sender<u64>,
}

impl EngineShared {
    /// The table as of the last published batch: a snapshot, consistent at
    /// its seq, read without a lock. Hold it for a scan, not across an
    /// await (a held snapshot keeps its pages).
    pub fn table(&self) -> arc_swap::Guard<Arc<TagTable>> {
        self.table.load()
    }

    /// The current catalog (ids are never reused within an epoch).
    pub fn catalog(&self) -> Arc<Catalog> {
        self.table().catalog().clone()
    }

    /// A receiver of the catalog's version (it moves when tags appear or
    /// are redefined).
    pub fn catalog_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.catalog_signal.subscribe()
    }

    /// A cluster gateway: the last stream seq its engine has applied
    /// (claims and definitions included); 0 on a single node.
    pub fn stream_seq(&self) -> u64 {
        self.stream_seq.load(Ordering::Acquire)
    }

    /// Total update bytes published.
    pub fn published_bytes(&self) -> u64 {
        self.published_bytes.load(Ordering::Acquire)
    }
}

/// Key -> id, per source. 0: not (yet) defined; `REFUSED`: its name
/// belonged to another tag, so its samples are dropped.
#[derive(Debug, Default)]
struct Keys(Vec<Vec<TagId>>);

const REFUSED: TagId = TagId::MAX;

impl Keys {
    fn get(&self, key: TagKey) -> TagId {
        self.0
            .get(usize::from(key.source))
            .and_then(|s| s.get(key.local as usize))
            .copied()
            .unwrap_or(0)
    }

    fn set(&mut self, key: TagKey, id: TagId) {
        let source = usize::from(key.source);
        if self.0.len() <= source {
            self.0.resize_with(source + 1, Vec::new);
        }
        let tags = &mut self.0[source];
        if tags.len() <= key.local as usize {
            tags.resize(key.local as usize + 1, 0);
        }
        tags[key.local as usize] = id;
    }

    fn of(&self, source: SourceId) -> impl Iterator<Item = TagId> + '_ {
        self.0
            .get(usize::from(source))
            .into_iter()
            .flatten()
            .copied()
            .filter(|&id| id != 0 && id != REFUSED)
    }
}

/// The engine task's state: the write side of the table, the key map and
/// the sequencer. Sans-IO apart from the clock read once per batch.
pub struct Engine {
    shared: Arc<EngineShared>,
    /// The table itself; sessions see its snapshots.
    table: TagTable,
    work: Work,
}

/// What applying a batch works with besides the table (apart from it, so
/// both can be borrowed at once).
struct Work {
    keys: Keys,
    seq: Box<dyn Sequencer>,
    scratch: batch::Builder,
    /// Recent values (`[history]`), fed every applied change.
    history: Option<history::Writer>,
    /// Statuses a cluster gateway shows by itself.
    local: LocalMarks,
    /// The last stream seq a gateway has applied (any message).
    stream_seq: u64,
    /// The definition log (a name refused, a tag redefined): a source
    /// rebirthing 10 times a second with 10,000 metrics would otherwise
    /// write 100,000 lines a second. Lines past it are counted in the next.
    defined_log: Throttle,
}

/// Definition log lines at once, then per second.
const DEFINED_LOG_BURST: u32 = 20;

impl Engine {
    /// An engine over the configured tags (their owners' keys are taken
    /// from the catalog), numbering changes with `seq`.
    pub fn new(catalog: Catalog, seq: Box<dyn Sequencer>) -> Engine {
        Engine::with_history(catalog, seq, None)
    }

    /// An engine that keeps recent values per `history` (protocol.md
    /// History); `None`: none, and every tag says so in its `TagInfo`.
    pub fn with_history(
        catalog: Catalog,
        seq: Box<dyn Sequencer>,
        history: Option<history::HistoryConfig>,
    ) -> Engine {
        let mut history = history.map(history::Writer::new);
        let catalog = match &mut history {
            Some(writer) => {
                let mut catalog = catalog;
                let mut refused = Vec::new();
                for def in catalog.iter() {
                    let on = def.history && writer.admits(None);
                    writer.define(def.id, on);
                    if def.history && !on {
                        refused.push(TagDef {
                            history: false,
                            ..def.clone()
                        });
                    }
                }
                // More configured tags than max_memory holds rings for:
                // the rest say they keep none.
                for def in refused {
                    catalog.redefine(def.id, def, 0);
                }
                catalog
            }
            None => catalog.without_history(),
        };
        let mut keys = Keys::default();
        for def in catalog.iter() {
            if let Some(meta) = catalog.meta(def.id) {
                keys.set(meta.owner, def.id);
            }
        }
        let table = TagTable::new(Arc::new(catalog), seq.current());
        let shared = Arc::new(EngineShared {
            table: ArcSwap::from_pointee(table.clone()),
            epoch: seq.epoch(),
            selections: Selections::default(),
            feed: feed::Feed::default(),
            published_bytes: AtomicU64::new(0),
            history: history.as_ref().map(|h| h.store().clone()),
            stream_seq: AtomicU64::new(0),
            catalog_signal: tokio::sync::watch::Sender::new(0),
        });
        Engine {
            shared,
            table,
            work: Work {
                keys,
                seq,
                scratch: batch::Builder::default(),
                history,
                local: LocalMarks::default(),
                stream_seq: 0,
                defined_log: Throttle::new(DEFINED_LOG_BURST, 2.0),
            },
        }
    }

    /// The read side, for sessions.
    pub fn shared(&self) -> &Arc<EngineShared> {
        &self.shared
    }

    /// Applies one batch of inputs and publishes it; returns the batch if
    /// any tag changed. The async task below is a thin loop around this.
    pub fn apply(&mut self, inputs: impl IntoIterator<Item = Input>) -> Option<Arc<Batch>> {
        let batch = self.apply_batch(inputs);
        // After the table: whoever sees the stream seq finds a table that
        // applied it.
        self.shared
            .stream_seq
            .fetch_max(self.work.stream_seq, Ordering::Release);
        batch
    }

    fn apply_batch(&mut self, inputs: impl IntoIterator<Item = Input>) -> Option<Arc<Batch>> {
        let now = now_us();
        let (table, work) = (&mut self.table, &mut self.work);
        let from_seq = table.seq();
        let version = table.catalog().version();
        for input in inputs {
            match input {
                Input::Sample(sample) => {
                    let id = work.keys.get(sample.tag);
                    work.change(table, id, sample, now);
                }
                Input::Define { key, def } => work.define(table, key, *def),
                Input::Replicated(message) => work.replicate(table, *message, now),
                Input::ReplicatedMany(messages) => {
                    for message in messages {
                        work.replicate(table, message, now);
                    }
                }
                Input::Local(event) => work.local(table, event),
                Input::SourceDown {
                    source,
                    status,
                    unread,
                } => {
                    let ids: Vec<TagId> = work.keys.of(source).collect();
                    for id in ids {
                        let read = table.state(id).is_some_and(|s| s.value.is_some());
                        let status = if read { status } else { unread };
                        work.change(table, id, Sample::bad(TagKey::default(), status), now);
                    }
                }
            }
        }
        if let Some(history) = &mut work.history {
            history.sweep(now);
        }
        let to_seq = table.seq();
        let catalog = table.catalog().clone();
        if catalog.version() != version {
            metrics::gauge!("tagstream_tags").set(catalog.len() as f64);
        }
        if to_seq == from_seq && catalog.version() == version && self.work.scratch.is_empty() {
            return None;
        }
        // The snapshot first, then the batch: whoever reads a batch finds
        // a table at least as new.
        self.shared.table.store(Arc::new(self.table.clone()));
        if catalog.version() != version {
            self.shared.catalog_signal.send_replace(catalog.version());
        }
        // A gateway's position may move without a change (a claim, a
        // message of no tag): the table says so, no batch is needed. Its
        // own statuses make a batch that does not move it.
        if self.work.scratch.is_empty() {
            return None;
        }
        let end = self.shared.published_bytes.load(Ordering::Relaxed);
        let batch = Arc::new(self.work.scratch.finish(from_seq, to_seq, &catalog, end));
        self.shared
            .published_bytes
            .fetch_add(batch.bytes.len() as u64, Ordering::Release);
        self.shared.feed.publish(batch.clone());
        Some(batch)
    }
}

impl Work {
    fn change(&mut self, table: &mut TagTable, id: TagId, sample: Sample, now: i64) {
        if id == 0 || id == REFUSED {
            metrics::counter!("tagstream_samples_dropped_total").increment(1);
            return;
        }
        if let Some(seq) = table.apply(id, sample, now, self.seq.as_mut())
            && let Some(state) = table.state(id)
        {
            self.scratch.push(id, seq, state);
            if let Some(history) = &mut self.history {
                history.record(id, seq, state, now);
            }
        }
    }

    /// A gateway's own statement about some tags: each whose shown status
    /// changes goes out at [`LOCAL_SEQ`], its seq unchanged.
    fn local(&mut self, table: &mut TagTable, event: Local) {
        let marks = &mut self.local;
        let owner_filter = match event {
            Local::LinkLost => {
                marks.link_lost = true;
                None
            }
            Local::LinkBack => {
                marks.link_lost = false;
                None
            }
            Local::EdgeDown(n) => {
                marks.edges_down.insert(n);
                Some(n)
            }
            Local::EdgeUp(n) => {
                marks.edges_down.remove(&n);
                Some(n)
            }
        };
        let catalog = table.catalog().clone();
        let ids: Vec<(TagId, SourceId)> = (1..=catalog.len() as TagId)
            .filter_map(|id| Some((id, catalog.meta(id)?.owner.source)))
            .filter(|(_, owner)| owner_filter.is_none_or(|n| n == *owner))
            .collect();
        let mut changed = 0;
        for (id, owner) in ids {
            let Some(state) = table.state(id) else {
                continue;
            };
            let stream = marks.saved.get(&id).copied().unwrap_or(state.status);
            let shown = marks.shown(owner, stream, state.value.is_some());
            if shown == state.status {
                continue;
            }
            if shown == stream {
                marks.saved.remove(&id);
            } else {
                marks.saved.entry(id).or_insert(state.status);
            }
            if table.set_local_status(id, shown)
                && let Some(state) = table.state(id)
            {
                self.scratch.push(id, LOCAL_SEQ, state);
                changed += 1;
            }
        }
        tracing::info!(
            ?event,
            tags = changed,
            "cluster: statuses this gateway shows by itself"
        );
    }

    fn replicate(&mut self, table: &mut TagTable, message: Replicated, now: i64) {
        let seq = message.seq();
        self.stream_seq = self.stream_seq.max(seq);
        // Only a change moves the position: claims and definitions are
        // applied by id whatever their seq (a known id or an unchanged
        // definition changes nothing), since an edge republishes them
        // (a gateway loads every claim, in id order, before the rest).
        match message {
            Replicated::Claim { id, def, owner, .. } => {
                if id > MAX_CLUSTER_TAGS {
                    if let Some(suppressed) = self.defined_log.admit() {
                        tracing::warn!(
                            id,
                            max = MAX_CLUSTER_TAGS,
                            suppressed,
                            "cluster: a claim past the most ids a gateway holds: ignored"
                        );
                    }
                    return;
                }
                while (table.catalog().len() as TagId) + 1 < id {
                    let hole = table.add_hidden();
                    tracing::warn!(id = hole, "cluster: an id was never claimed: held empty");
                }
                if (table.catalog().len() as TagId) + 1 != id {
                    return;
                }
                if let Err(why) = replicated_def_fits(&def) {
                    table.add_hidden();
                    if let Some(suppressed) = self.defined_log.admit() {
                        tracing::warn!(
                            id,
                            suppressed,
                            "cluster: a claim refused, its id held empty: {why}"
                        );
                    }
                    return;
                }
                if table.catalog().id(&def.name).is_some() {
                    table.add_hidden();
                    if let Some(suppressed) = self.defined_log.admit() {
                        tracing::warn!(tag = %shown(&def.name), id, suppressed, "cluster: a name claimed twice: the later id is held empty");
                    }
                    return;
                }
                let mut def = def;
                def.history &= self.history.as_ref().is_some_and(|h| h.admits(None));
                let history = def.history;
                let added = table.add_at(def, owner, seq);
                if let Some(h) = &mut self.history {
                    h.define(added, history);
                }
            }
            Replicated::Define { id, mut def, .. } => {
                if table.catalog().get(id).is_none() {
                    return;
                }
                if let Err(why) = replicated_def_fits(&def) {
                    if let Some(suppressed) = self.defined_log.admit() {
                        tracing::warn!(id, suppressed, "cluster: a definition refused: {why}");
                    }
                    return;
                }
                def.history &= self.history.as_ref().is_some_and(|h| h.admits(Some(id)));
                let history = def.history;
                table.redefine_at(id, def, seq);
                if let Some(h) = &mut self.history {
                    h.define(id, history);
                }
            }
            Replicated::Update { id, samples, .. } => {
                // Applied already (a consumer recreated after a gap).
                if seq <= table.seq() {
                    return;
                }
                // The stream's word replaces this gateway's own.
                self.local.saved.remove(&id);
                for mut state in samples {
                    if state.server_time_us == 0 {
                        state.server_time_us = now;
                    }
                    state.seq = seq;
                    if !table.put(id, state) {
                        metrics::counter!("tagstream_samples_dropped_total").increment(1);
                        break;
                    }
                    if let Some(state) = table.state(id) {
                        self.scratch.push(id, seq, state);
                        if let Some(history) = &mut self.history {
                            history.record(id, seq, state, now);
                        }
                    }
                }
            }
            Replicated::Skip { .. } => {}
        }
    }

    fn define(&mut self, table: &mut TagTable, key: TagKey, mut def: TagDef) {
        let known = match self.keys.get(key) {
            0 | REFUSED => None,
            id => Some(id),
        };
        def.history &= self.history.as_ref().is_some_and(|h| h.admits(known));
        let history = def.history;
        match self.keys.get(key) {
            REFUSED => {}
            0 => {
                if let Some(other) = table.catalog().id(&def.name) {
                    let owner = table.catalog().get(other).map(|d| d.source.clone());
                    if let Some(suppressed) = self.defined_log.admit() {
                        let owner = owner.as_deref().unwrap_or("");
                        tracing::warn!(tag = %shown(&def.name), source = %def.source, owner, suppressed, "tag name already taken: refused");
                    }
                    metrics::counter!("tagstream_tags_refused_total", "source" => def.source)
                        .increment(1);
                    self.keys.set(key, REFUSED);
                    return;
                }
                let name = def.name.clone();
                let id = table.add(def, key);
                tracing::debug!(tag = %shown(&name), id, seq = table.seq(), "tag added");
                self.keys.set(key, id);
                if let Some(h) = &mut self.history {
                    h.define(id, history);
                }
            }
            id => {
                let name = def.name.clone();
                if table.redefine(id, def)
                    && let Some(suppressed) = self.defined_log.admit()
                {
                    tracing::info!(tag = %shown(&name), id, suppressed, "tag redefined");
                }
                if let Some(h) = &mut self.history {
                    h.define(id, history);
                }
            }
        }
    }
}

impl Engine {
    /// The engine task: runs until the channel closes or shutdown.
    pub async fn run(mut self, inputs: flume::Receiver<Input>, shutdown: CancellationToken) {
        // The configured tags count from the start, not from the first
        // tag found at run time.
        metrics::gauge!("tagstream_tags").set(self.shared.catalog().len() as f64);
        loop {
            let first = tokio::select! {
                input = inputs.recv_async() => match input {
                    Ok(input) => input,
                    Err(_) => break,
                },
                () = shutdown.cancelled() => break,
            };
            let mut n = 1;
            let drained = std::iter::once(first)
                .chain(inputs.try_iter().take(MAX_BATCH - 1))
                .inspect(|_| n += 1);
            let batch = self.apply(drained);
            metrics::counter!("tagstream_samples_in_total").increment(n - 1);
            if let Some(batch) = batch {
                metrics::counter!("tagstream_updates_applied_total")
                    .increment(batch.entries.len() as u64);
                metrics::gauge!("tagstream_seq").set(batch.to_seq as f64);
            }
        }
        tracing::info!("engine stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::Value;
    use crate::status;

    fn key(source: SourceId, local: u32) -> TagKey {
        TagKey { source, local }
    }

    fn sample(k: TagKey, v: f64) -> Input {
        Input::Sample(Sample::good(k, Value::F64(v)))
    }

    fn engine() -> Engine {
        let catalog = Catalog::new([TagDef::read_only("a/x", "s0")]);
        Engine::new(catalog, Box::new(seq::Counter::new(7)))
    }

    #[test]
    fn a_rebirth_loop_costs_a_bounded_number_of_log_lines() {
        let mut e = engine();
        let def = |i: usize, t| Input::Define {
            key: key(1, i as u32),
            def: Box::new(TagDef {
                data_type: t,
                ..TagDef::read_only(format!("n/m{i}"), "s1")
            }),
        };
        // 20 rebirths of 1,000 metrics, each changing every type.
        for round in 0..20 {
            let t = if round % 2 == 0 {
                crate::proto::DataType::F64
            } else {
                crate::proto::DataType::I64
            };
            e.apply((0..1000).map(|i| def(i, t)));
        }
        // A name another source holds, 1,000 times.
        e.apply((0..1000).map(|i| Input::Define {
            key: key(2, i),
            def: Box::new(TagDef::read_only("a/x", "s2")),
        }));
        // Counted at the throttle, not by capturing tracing's output (a
        // thread's capture races other tests' subscribers).
        let lines = e.work.defined_log.admitted();
        assert!(
            (1..=u64::from(DEFINED_LOG_BURST) + 2).contains(&lines),
            "{lines} lines for 19,000 redefinitions and 1,000 refusals"
        );
        let table = e.shared().table();
        let id = table.catalog().id("n/m0").expect("defined");
        assert_eq!(
            table.catalog().get(id).map(|d| d.data_type),
            Some(crate::proto::DataType::I64),
            "the last birth's type"
        );
    }

    #[test]
    fn a_tag_defined_on_the_channel_takes_the_next_id_and_its_samples_apply() {
        let mut e = engine();
        assert_eq!(e.shared().epoch, 7);
        e.apply([sample(key(0, 0), 1.0)]);
        let def = TagDef::read_only("b/new", "s1");
        let batch = e
            .apply([
                Input::Define {
                    key: key(1, 0),
                    def: Box::new(def),
                },
                sample(key(1, 0), 5.0),
            ])
            .expect("a change");
        let catalog = e.shared().catalog();
        assert_eq!(catalog.id("b/new"), Some(2));
        let meta = catalog.meta(2).expect("meta");
        assert_eq!((meta.owner, meta.appeared_seq), (key(1, 0), 1));
        assert_eq!(batch.catalog_version, catalog.version());
        assert_eq!(batch.entries.iter().map(|e| e.id).collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn a_name_taken_by_another_key_is_refused_and_its_samples_dropped() {
        let mut e = engine();
        let evil = TagDef::read_only("a/x", "evil");
        assert!(
            e.apply([
                Input::Define {
                    key: key(3, 0),
                    def: Box::new(evil)
                },
                sample(key(3, 0), 7.0)
            ])
            .is_none()
        );
        let table = e.shared().table();
        assert_eq!(table.catalog().len(), 1);
        assert_eq!(
            table.catalog().get(1).map(|d| d.source.as_str()),
            Some("s0")
        );
        assert_eq!(table.state(1).map(|s| s.seq), Some(0), "untouched");
    }

    #[test]
    fn a_redefinition_keeps_the_id_and_bumps_the_version() {
        let mut e = engine();
        let before = e.shared().catalog().version();
        let def = TagDef {
            unit: "bar".into(),
            ..TagDef::read_only("a/x", "s0")
        };
        e.apply([Input::Define {
            key: key(0, 0),
            def: Box::new(def.clone()),
        }]);
        let catalog = e.shared().catalog();
        assert_eq!(catalog.len(), 1);
        assert_eq!(catalog.get(1).map(|d| d.unit.as_str()), Some("bar"));
        assert!(catalog.version() > before);
        // The same definition again changes nothing.
        e.apply([Input::Define {
            key: key(0, 0),
            def: Box::new(def),
        }]);
        assert_eq!(e.shared().catalog().version(), catalog.version());
    }

    #[test]
    fn source_down_turns_its_tags_bad_keeping_values_unread_ones_their_own_status() {
        let catalog = Catalog::new([
            TagDef::read_only("a/x", "s0"),
            TagDef::read_only("a/y", "s0"),
        ]);
        let mut e = Engine::new(catalog, Box::new(seq::Counter::new(1)));
        e.apply([sample(key(0, 0), 3.0)]);
        let batch = e
            .apply([Input::SourceDown {
                source: 0,
                status: status::BAD_TIMEOUT,
                unread: status::BAD_NO_COMMUNICATION,
            }])
            .expect("changes");
        assert_eq!(batch.entries.len(), 2);
        let table = e.shared().table();
        let x = table.state(1).expect("x");
        assert_eq!(
            (x.status, x.value.clone()),
            (status::BAD_TIMEOUT, Some(Value::F64(3.0)))
        );
        assert_eq!(
            table.state(2).map(|s| s.status),
            Some(status::BAD_NO_COMMUNICATION)
        );
    }

    fn claim(seq: u64, id: TagId, name: &str, edge: SourceId) -> Input {
        Input::Replicated(Box::new(Replicated::Claim {
            seq,
            id,
            def: TagDef::read_only(name, "e"),
            owner: TagKey {
                source: edge,
                local: id,
            },
        }))
    }

    fn update(seq: u64, id: TagId, v: f64) -> Input {
        Input::Replicated(Box::new(Replicated::Update {
            id,
            seq,
            samples: vec![table::TagState {
                value: Some(Value::F64(v)),
                status: status::GOOD,
                source_time_us: 5,
                server_time_us: 6,
                seq,
            }],
        }))
    }

    #[test]
    fn a_gateway_takes_ids_and_seqs_from_the_stream() {
        let mut e = Engine::new(Catalog::default(), Box::new(seq::Counter::new(9)));
        e.apply([claim(3, 1, "g/a", 0), claim(4, 2, "g/b", 1)]);
        // A name claimed twice keeps its first id; the second is held
        // empty, and an id past the next leaves a hole held empty too.
        e.apply([claim(5, 3, "g/a", 1), claim(8, 5, "g/c", 0)]);
        let catalog = e.shared().catalog();
        assert_eq!(catalog.len(), 5);
        assert_eq!(
            (catalog.id("g/a"), catalog.id("g/b"), catalog.id("g/c")),
            (Some(1), Some(2), Some(5))
        );
        assert!(
            catalog.get(3).is_none() && catalog.get(4).is_none(),
            "hidden"
        );
        assert_eq!(catalog.iter().count(), 3);
        assert_eq!(
            e.shared().table().seq(),
            0,
            "only changes move the position"
        );
        assert_eq!(e.shared().stream_seq(), 8);
        assert_eq!(
            catalog.meta(5).map(|m| m.defined_seq),
            Some(8),
            "appeared at its claim"
        );
        let batch = e.apply([update(10, 2, 1.5)]).expect("a change");
        assert_eq!((batch.from_seq, batch.to_seq), (0, 10));
        assert_eq!(
            batch
                .entries
                .iter()
                .map(|x| (x.id, x.seq))
                .collect::<Vec<_>>(),
            [(2, 10)]
        );
        // A change at or before the position (a consumer recreated) and
        // one of a hidden id change nothing; a claim again changes nothing.
        assert!(e.apply([update(9, 1, 7.0), update(10, 2, 7.0)]).is_none());
        assert!(
            e.apply([update(11, 3, 7.0), claim(12, 1, "g/a", 0)])
                .is_none()
        );
        assert_eq!(e.shared().table().seq(), 10);
        assert_eq!(e.shared().stream_seq(), 12);
        assert_eq!(
            e.shared().table().state(2).and_then(|s| s.value.clone()),
            Some(Value::F64(1.5))
        );
    }

    #[test]
    fn a_gateways_own_statuses_take_no_seq_and_the_stream_overrides_them() {
        let mut e = Engine::new(Catalog::default(), Box::new(seq::Counter::new(9)));
        e.apply([
            claim(1, 1, "g/a", 0),
            claim(2, 2, "g/b", 1),
            claim(3, 3, "g/u", 1),
        ]);
        e.apply([update(4, 1, 1.0), update(5, 2, 2.0)]);
        let batch = e
            .apply([Input::Local(Local::EdgeDown(1))])
            .expect("a batch");
        assert_eq!(
            (batch.from_seq, batch.to_seq),
            (5, 5),
            "the seq does not move"
        );
        assert_eq!(
            batch
                .entries
                .iter()
                .map(|x| (x.id, x.seq))
                .collect::<Vec<_>>(),
            [(2, LOCAL_SEQ)],
            "edge 1's read tag only (g/u was never read)"
        );
        let table = e.shared().table();
        let b = table.state(2).expect("b");
        assert_eq!((b.status, b.seq), (status::BAD_COMMUNICATION_ERROR, 5));
        let everything = e.shared().selections.get(
            &Arc::from(["#".to_string()]),
            vec!["#".into()],
            None,
            &table.catalog().clone(),
        );
        let caught: Vec<TagId> = table
            .changed_since(5, &everything)
            .map(|(id, _)| id)
            .collect();
        assert_eq!(caught, [2], "a catch-up at the position includes it");
        drop(table);
        // Cut off on top: Uncertain everywhere; back: each its own again.
        e.apply([Input::Local(Local::LinkLost)]).expect("a batch");
        assert!(
            [1, 2]
                .iter()
                .all(|&id| e.shared().table().state(id).map(|s| s.status)
                    == Some(status::UNCERTAIN_LAST_USABLE_VALUE))
        );
        e.apply([Input::Local(Local::LinkBack)]).expect("a batch");
        let shown = |e: &Engine, id| e.shared().table().state(id).map(|s| s.status);
        assert_eq!(shown(&e, 1), Some(status::GOOD));
        assert_eq!(shown(&e, 2), Some(status::BAD_COMMUNICATION_ERROR));
        // The stream's word replaces the gateway's; the edge returning
        // restores nothing more.
        e.apply([update(6, 2, 3.0)]);
        assert_eq!(shown(&e, 2), Some(status::GOOD));
        assert!(e.apply([Input::Local(Local::EdgeUp(1))]).is_none());
    }

    #[test]
    fn a_gateway_bounds_what_the_stream_claims() {
        let mut e = Engine::new(Catalog::default(), Box::new(seq::Counter::new(9)));
        // An id far past the bound allocates nothing.
        e.apply([claim(1, 4_000_000_000, "g/far", 0)]);
        assert_eq!(e.shared().catalog().len(), 0);
        // A 64 KiB name or description: the id is held empty, the same on
        // every gateway, and never selected or sent.
        let long = "n".repeat(65_536);
        e.apply([claim(2, 1, &long, 0), claim(3, 2, "g/ok", 0)]);
        let catalog = e.shared().catalog();
        assert_eq!(catalog.len(), 2);
        assert!(catalog.get(1).is_none(), "hidden");
        assert_eq!(catalog.id("g/ok"), Some(2));
        let oversized = TagDef {
            description: "d".repeat(65_536),
            ..TagDef::read_only("g/ok", "e")
        };
        e.apply([Input::Replicated(Box::new(Replicated::Define {
            seq: 4,
            id: 2,
            def: oversized,
        }))]);
        assert!(
            e.shared()
                .catalog()
                .get(2)
                .is_some_and(|d| d.description.is_empty()),
            "the oversized definition is refused"
        );
    }
}
