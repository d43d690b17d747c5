//! The engine: one task owns the tag table, fed by one bounded flume channel.
//! It awaits one sample, drains what else is ready, applies the batch, encodes
//! each changed tag once, and publishes one `Batch` that every session shares.
//!
//! Sessions read the table (behind an `RwLock`, held only for short scans)
//! for snapshots and catch-up; only this task writes it.

pub mod batch;
pub mod catalog;
pub mod selection;
pub mod table;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

pub use batch::Batch;
use catalog::{Catalog, TagDef};
use selection::Selections;
use table::TagTable;

use crate::sample::{Sample, TagId, now_us};

/// Most samples applied in one batch: bounds the write-lock hold and the
/// size of one Delta under a burst.
pub const MAX_BATCH: usize = 1024;

/// Batches kept for sessions that are behind; past this a session catches
/// up from the table instead. Memory is shared, not per session.
pub const BATCH_RING: usize = 128;

/// What sessions need from the engine.
#[derive(Debug)]
pub struct EngineShared {
    table: RwLock<TagTable>,
    /// The epoch.
    pub epoch: u64,
    /// Interned subscriptions.
    pub selections: Selections,
    batches: broadcast::Sender<Arc<Batch>>,
    /// Update bytes published so far, to measure how far a session lags.
    published_bytes: AtomicU64,
}

impl EngineShared {
    /// A new engine state with a fresh table and a random epoch.
    pub fn new(catalog: Arc<Catalog>) -> Arc<Self> {
        let epoch = fastrand::u64(1..);
        let (batches, _) = broadcast::channel(BATCH_RING);
        Arc::new(EngineShared {
            table: RwLock::new(TagTable::new(catalog, epoch)),
            epoch,
            selections: Selections::default(),
            batches,
            published_bytes: AtomicU64::new(0),
        })
    }

    /// Reads the table. Hold it only for a scan, never across an await.
    pub fn table(&self) -> RwLockReadGuard<'_, TagTable> {
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The current catalog (it only grows within an epoch).
    pub fn catalog(&self) -> Arc<Catalog> {
        self.table().catalog().clone()
    }

    /// The id of a tag, adding it to the catalog if new (run-time discovery).
    pub fn register(&self, def: TagDef) -> TagId {
        let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
        table.register(def)
    }

    /// A receiver for future batches. Subscribe *before* reading the table,
    /// so no batch falls between the snapshot and the first delta.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Batch>> {
        self.batches.subscribe()
    }

    /// Total update bytes published.
    pub fn published_bytes(&self) -> u64 {
        self.published_bytes.load(Ordering::Acquire)
    }

    /// Applies one batch of samples and publishes it; returns the batch if
    /// anything changed. The async task below is a thin loop around this.
    pub fn apply_batch(
        &self,
        samples: impl IntoIterator<Item = Sample>,
        scratch: &mut batch::Builder,
    ) -> Option<Arc<Batch>> {
        let now = now_us();
        let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
        let from_seq = table.seq();
        for sample in samples {
            let id = sample.tag;
            if let Some(seq) = table.apply(sample, now) {
                if let Some(state) = table.state(id) {
                    scratch.push(id, seq, state);
                }
            }
        }
        let to_seq = table.seq();
        let catalog = table.catalog().clone();
        drop(table);
        if to_seq == from_seq {
            return None;
        }
        let end = self.published_bytes.load(Ordering::Relaxed);
        let batch = Arc::new(scratch.finish(from_seq, to_seq, &catalog, end));
        self.published_bytes
            .fetch_add(batch.bytes.len() as u64, Ordering::Release);
        // No receivers is fine: nobody is connected.
        let _ = self.batches.send(batch.clone());
        Some(batch)
    }
}

/// The engine task: runs until the channel closes or shutdown.
pub async fn run(
    samples: flume::Receiver<Sample>,
    shared: Arc<EngineShared>,
    shutdown: CancellationToken,
) {
    let mut scratch = batch::Builder::default();
    loop {
        let first = tokio::select! {
            sample = samples.recv_async() => match sample {
                Ok(sample) => sample,
                Err(_) => break,
            },
            () = shutdown.cancelled() => break,
        };
        let mut n = 1;
        let drained = std::iter::once(first)
            .chain(samples.try_iter().take(MAX_BATCH - 1))
            .inspect(|_| n += 1);
        let batch = shared.apply_batch(drained, &mut scratch);
        metrics::counter!("tagstream_samples_in_total").increment(n - 1);
        if let Some(batch) = batch {
            metrics::counter!("tagstream_updates_applied_total")
                .increment(batch.entries.len() as u64);
            metrics::gauge!("tagstream_seq").set(batch.to_seq as f64);
        }
    }
    tracing::info!("engine stopped");
}
