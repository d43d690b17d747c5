//! The published batches: a ring the engine appends to once per batch and
//! each push shard reads once per wakeup (never each session: a shard
//! fans a batch out to its own sessions). Owns the recent batches, bounded
//! by count and bytes; receives them from the engine task; emits a signal
//! (the count published) that each shard's hub awaits.
//!
//! The ring's lock is taken by the engine and by one hub per shard per
//! batch, so with N shards it sees N + 1 acquisitions per batch whatever
//! the number of sessions; its waits are counted (`LockWaits`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::Instant;

use tokio::sync::watch;

use super::Batch;

/// Most batches kept: at 1,000 batches a second, about one second, longer
/// than a session's turn on a busy shard (wall's cycle is ~170 ms), so a
/// session that keeps up never has to catch up from the table.
pub const RING_BATCHES: usize = 1024;

/// Most update bytes kept, whatever the count: a burst of full batches
/// (1,024 updates each) must not hold a gigabyte.
pub const RING_BYTES: usize = 8 << 20;

/// Times a lock was found taken, and the time spent waiting for it.
#[derive(Debug)]
pub struct LockWaits {
    /// The `lock` label of its metrics.
    name: &'static str,
    /// Acquisitions that had to wait.
    pub waits: AtomicU64,
    /// Nanoseconds spent waiting.
    pub wait_ns: AtomicU64,
    /// All acquisitions.
    pub takes: AtomicU64,
}

impl LockWaits {
    /// Counters for the lock called `name` in `/metrics`.
    pub fn new(name: &'static str) -> Self {
        LockWaits {
            name,
            waits: AtomicU64::new(0),
            wait_ns: AtomicU64::new(0),
            takes: AtomicU64::new(0),
        }
    }

    /// Locks `m`, counting a wait when it is held by another thread.
    pub fn lock<'a, T>(&self, m: &'a Mutex<T>) -> MutexGuard<'a, T> {
        self.takes.fetch_add(1, Ordering::Relaxed);
        match m.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => {
                let t = Instant::now();
                let g = m.lock().unwrap_or_else(|e| e.into_inner());
                let ns = t.elapsed().as_nanos() as u64;
                self.waits.fetch_add(1, Ordering::Relaxed);
                self.wait_ns.fetch_add(ns, Ordering::Relaxed);
                // Only the waits reach the shared registry: counting every
                // acquisition there would be a shared counter itself.
                metrics::counter!("tagstream_lock_waits_total", "lock" => self.name).increment(1);
                metrics::counter!("tagstream_lock_wait_microseconds_total", "lock" => self.name)
                    .increment(ns / 1000);
                g
            }
        }
    }

    /// (acquisitions, waits, seconds waited).
    pub fn read(&self) -> (u64, u64, f64) {
        (
            self.takes.load(Ordering::Relaxed),
            self.waits.load(Ordering::Relaxed),
            self.wait_ns.load(Ordering::Relaxed) as f64 / 1e9,
        )
    }
}

#[derive(Debug, Default)]
struct Ring {
    batches: VecDeque<Arc<Batch>>,
    /// Index of `batches[0]`.
    first: u64,
    bytes: usize,
}

/// The engine's published batches.
#[derive(Debug)]
pub struct Feed {
    ring: Mutex<Ring>,
    /// Batches published so far; hubs wait for it to change.
    signal: watch::Sender<u64>,
    /// Waits on the ring's lock.
    pub waits: LockWaits,
}

/// What a shard pulled: batches from index `first` on. `first` is later
/// than asked when the ring dropped what the shard had not read yet.
#[derive(Debug, Default)]
pub struct Pulled {
    /// Index of `batches[0]` (or where the next batch will be).
    pub first: u64,
    /// Index of the oldest batch the ring still holds: a shard keeps no
    /// part of an older one.
    pub oldest: u64,
    /// The batches, in order.
    pub batches: Vec<Arc<Batch>>,
}

impl Default for Feed {
    fn default() -> Self {
        Feed {
            ring: Mutex::new(Ring::default()),
            signal: watch::channel(0).0,
            waits: LockWaits::new("feed"),
        }
    }
}

impl Feed {
    /// Appends a batch (the engine only), drops what is past the bounds and
    /// signals the hubs.
    pub fn publish(&self, batch: Arc<Batch>) {
        let published = {
            let mut ring = self.waits.lock(&self.ring);
            ring.bytes += batch.bytes.len();
            ring.batches.push_back(batch);
            while ring.batches.len() > 1
                && (ring.batches.len() > RING_BATCHES || ring.bytes > RING_BYTES)
            {
                if let Some(old) = ring.batches.pop_front() {
                    ring.bytes -= old.bytes.len();
                    ring.first += 1;
                }
            }
            ring.first + ring.batches.len() as u64
        };
        self.signal.send_replace(published);
    }

    /// Batches from index `next` on (a shard's hub or a session's poll).
    pub fn pull(&self, next: u64) -> Pulled {
        let ring = self.waits.lock(&self.ring);
        let end = ring.first + ring.batches.len() as u64;
        if next >= end {
            return Pulled {
                first: end,
                oldest: ring.first,
                batches: Vec::new(),
            };
        }
        let first = next.max(ring.first);
        let skip = (first - ring.first) as usize;
        Pulled {
            first,
            oldest: ring.first,
            batches: ring.batches.iter().skip(skip).cloned().collect(),
        }
    }

    /// Batches published so far, without the lock.
    pub fn published(&self) -> u64 {
        *self.signal.borrow()
    }

    /// A receiver of the published count, for a shard's hub.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.signal.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::batch::Builder;
    use crate::engine::catalog::{Catalog, TagDef};
    use crate::engine::table::TagState;

    fn batch(seq: u64, catalog: &Catalog) -> Arc<Batch> {
        let mut b = Builder::default();
        let state = TagState {
            value: None,
            status: 0,
            source_time_us: 0,
            server_time_us: 0,
            seq,
        };
        b.push(1, seq, &state);
        Arc::new(b.finish(seq - 1, seq, catalog, 0))
    }

    #[test]
    fn the_ring_keeps_the_newest_batches_and_says_where_a_pull_starts() {
        let catalog = Catalog::new([TagDef::read_only("a/x", "s")]);
        let feed = Feed::default();
        let total = RING_BATCHES as u64 + 10;
        for seq in 1..=total {
            feed.publish(batch(seq, &catalog));
        }
        assert_eq!(feed.published(), total);
        let p = feed.pull(0);
        assert_eq!(p.first, 10, "the oldest ten were dropped");
        assert_eq!(p.batches.len(), RING_BATCHES);
        assert_eq!(p.batches[0].to_seq, 11);
        let p = feed.pull(total - 1);
        assert_eq!((p.first, p.batches.len()), (total - 1, 1));
        let p = feed.pull(total);
        assert_eq!((p.first, p.batches.len()), (total, 0));
        let (takes, _, _) = feed.waits.read();
        assert!(takes >= total + 3);
    }
}
