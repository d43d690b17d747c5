//! Sockets accepted but not yet upgraded (silent, sending headers, or
//! idle HTTP keep-alive): counted and capped apart from `max_connections`.
//! At the cap the oldest one is dropped to make room, so a new request — a
//! health check, a handshake a full server answers 503 — is always served,
//! and a crowd of silent sockets cannot use up the process's descriptors
//! (past them the kernel refuses every accept, `/healthz` included).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// Descriptors kept for the server's own use beyond its sockets:
/// listener, devices, brokers, logs.
pub const FD_RESERVE: u64 = 256;
/// The fewest pre-upgrade sockets allowed, whatever the descriptors.
pub const MIN_PENDING: usize = 64;
/// Pre-upgrade sockets allowed beyond `max_connections`.
pub const EXTRA_PENDING: usize = 1024;

/// The cap for an open-file limit of `fd_limit`: above `max_connections`
/// (a reconnect storm of every client fits, and a full server still reads
/// a handshake to answer it 503) by [`EXTRA_PENDING`], but never more than
/// the descriptors left after `max_connections` sessions and the reserve
/// (at least [`MIN_PENDING`]).
pub fn cap_for(fd_limit: Option<u64>, max_connections: usize) -> usize {
    let wanted = max_connections.saturating_add(EXTRA_PENDING);
    let Some(limit) = fd_limit else {
        return wanted;
    };
    let left = limit.saturating_sub(max_connections as u64 + FD_RESERVE);
    usize::try_from(left)
        .unwrap_or(usize::MAX)
        .min(wanted)
        .max(MIN_PENDING)
}

/// The pre-upgrade sockets of one listener.
#[derive(Debug)]
pub struct Pending {
    cap: usize,
    count: AtomicUsize,
    /// Oldest first; a cancelled token is a connection that already left
    /// (removed lazily).
    queue: Mutex<VecDeque<CancellationToken>>,
}

/// One pre-upgrade socket's place; dropping it leaves.
#[derive(Debug)]
pub struct PendingGuard {
    /// Cancelled when the socket is evicted: its task drops it.
    pub evicted: CancellationToken,
    pending: Arc<Pending>,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        // Also marks the queue entry as gone.
        self.evicted.cancel();
        self.pending.count.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Pending {
    /// At most `cap` pre-upgrade sockets.
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Pending {
            cap: cap.max(1),
            count: AtomicUsize::new(0),
            queue: Mutex::new(VecDeque::new()),
        })
    }

    /// The cap.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Sockets waiting now.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// True when none waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A place for a new socket, evicting the oldest at the cap.
    pub fn enter(self: &Arc<Self>) -> PendingGuard {
        if self.len() >= self.cap {
            self.evict_oldest();
        }
        let evicted = CancellationToken::new();
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if queue.len() >= 2 * self.cap {
            queue.retain(|t| !t.is_cancelled());
        }
        queue.push_back(evicted.clone());
        drop(queue);
        self.count.fetch_add(1, Ordering::AcqRel);
        PendingGuard {
            evicted,
            pending: self.clone(),
        }
    }

    /// Drops the oldest waiting socket; false if none waits.
    pub fn evict_oldest(&self) -> bool {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(token) = queue.pop_front() {
            if !token.is_cancelled() {
                token.cancel();
                metrics::counter!("tagstream_pending_evicted_total").increment(1);
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_waiting_socket_makes_room_and_finished_ones_are_skipped() {
        let p = Pending::new(3);
        let a = p.enter();
        let b = p.enter();
        let c = p.enter();
        drop(b);
        assert_eq!(p.len(), 2);
        let d = p.enter();
        assert_eq!(p.len(), 3);
        assert!(!a.evicted.is_cancelled(), "below the cap nobody goes");
        let _e = p.enter();
        assert!(a.evicted.is_cancelled(), "the oldest made room");
        assert!(!c.evicted.is_cancelled() && !d.evicted.is_cancelled());
        drop(a);
        let _f = p.enter();
        assert!(c.evicted.is_cancelled(), "b had left: c is next");
        assert!(!d.evicted.is_cancelled());
    }

    #[test]
    fn the_cap_is_what_the_descriptors_leave_within_bounds() {
        assert_eq!(cap_for(Some(1_048_576), 10_000), 10_000 + EXTRA_PENDING);
        assert_eq!(cap_for(Some(12_000), 10_000), 12_000 - 10_000 - 256);
        assert_eq!(cap_for(Some(1024), 10_000), MIN_PENDING);
        assert_eq!(cap_for(None, 10), 10 + EXTRA_PENDING);
    }
}
