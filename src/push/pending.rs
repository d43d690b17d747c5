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

/// How many sockets may wait for their upgrade while `sessions` are open:
/// above `max_connections` by [`EXTRA_PENDING`] (a reconnect storm of
/// every client fits, and a full server still reads a handshake to answer
/// it 503), but never more than the descriptors `fd_limit` leaves after
/// the open sessions and the reserve (at least [`MIN_PENDING`]).
pub fn cap_for(fd_limit: Option<u64>, max_connections: usize, sessions: usize) -> usize {
    let wanted = max_connections.saturating_add(EXTRA_PENDING);
    let Some(limit) = fd_limit else {
        return wanted;
    };
    let left = limit.saturating_sub(sessions as u64 + FD_RESERVE);
    usize::try_from(left)
        .unwrap_or(usize::MAX)
        .min(wanted)
        .max(MIN_PENDING)
}

/// The pre-upgrade sockets of one listener.
#[derive(Debug)]
pub struct Pending {
    fd_limit: Option<u64>,
    max_connections: usize,
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
        if self.pending.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last one left (a reconnect burst has upgraded): free the
            // queue's tokens now rather than at the next accept.
            if let Ok(mut queue) = self.pending.queue.try_lock() {
                queue.retain(|t| !t.is_cancelled());
                queue.shrink_to_fit();
            }
        }
    }
}

impl Pending {
    /// Pre-upgrade sockets under an open-file limit of `fd_limit`
    /// (none: unknown) beside up to `max_connections` sessions.
    pub fn new(fd_limit: Option<u64>, max_connections: usize) -> Arc<Self> {
        Arc::new(Pending {
            fd_limit,
            max_connections,
            count: AtomicUsize::new(0),
            queue: Mutex::new(VecDeque::new()),
        })
    }

    /// The cap while `sessions` are open.
    pub fn cap(&self, sessions: usize) -> usize {
        cap_for(self.fd_limit, self.max_connections, sessions)
    }

    /// Sockets waiting now.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// True when none waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A place for a new socket while `sessions` are open, evicting the
    /// oldest at the cap.
    pub fn enter(self: &Arc<Self>, sessions: usize) -> PendingGuard {
        if self.len() >= self.cap(sessions) {
            self.evict_oldest();
        }
        let evicted = CancellationToken::new();
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        // Entries of sockets that left are dropped once they outnumber
        // the waiting ones (amortised O(1)), so an upgraded session keeps
        // no token here.
        if queue.len() >= 2 * self.len() + MIN_PENDING {
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
        // 256 reserved + 60 sessions of 380 descriptors: 64 may wait.
        let p = Pending::new(Some(380), 1000);
        let sessions = 60;
        assert_eq!(p.cap(sessions), 64);
        let a = p.enter(sessions);
        let b = p.enter(sessions);
        let c = p.enter(sessions);
        let rest: Vec<_> = (0..61).map(|_| p.enter(sessions)).collect();
        drop(b);
        assert_eq!(p.len(), 63);
        let d = p.enter(sessions);
        assert_eq!(p.len(), 64);
        assert!(!a.evicted.is_cancelled(), "below the cap nobody goes");
        let _e = p.enter(sessions);
        assert!(a.evicted.is_cancelled(), "the oldest made room");
        assert!(!c.evicted.is_cancelled() && !d.evicted.is_cancelled());
        assert!(rest.iter().all(|r| !r.evicted.is_cancelled()));
        drop(a);
        let _f = p.enter(sessions);
        assert!(c.evicted.is_cancelled(), "b had left: c is next");
        assert!(!d.evicted.is_cancelled());
    }

    #[test]
    fn the_cap_is_what_the_descriptors_leave_within_bounds() {
        assert_eq!(cap_for(Some(1_048_576), 10_000, 0), 10_000 + EXTRA_PENDING);
        assert_eq!(cap_for(Some(12_000), 10_000, 9_000), 12_000 - 9_000 - 256);
        // max_connections above the descriptors: what they hold now counts.
        assert_eq!(cap_for(Some(20_000), 100_000, 0), 20_000 - 256);
        assert_eq!(cap_for(Some(1024), 10_000, 1000), MIN_PENDING);
        assert_eq!(cap_for(None, 10, 5), 10 + EXTRA_PENDING);
    }
}
