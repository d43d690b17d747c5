//! Where seq and epoch come from. The engine owns one [`Sequencer`] and
//! asks it for the seq of every applied change; nothing else mints one.
//! A single node counts ([`Counter`]); a cluster gateway will replace it
//! with one that hands out the JetStream stream sequence of the message
//! being applied and takes the epoch from the stream's identity, so every
//! gateway shares one seq space.

/// The source of seqs for one epoch.
pub trait Sequencer: Send {
    /// The epoch these seqs belong to (never 0: a Hello's zero epoch is
    /// "none").
    fn epoch(&self) -> u64;
    /// The seq of the last change handed out (0 before the first).
    fn current(&self) -> u64;
    /// The seq for the next applied change: strictly greater than
    /// `current()` (a stream's may skip numbers).
    fn next(&mut self) -> u64;
}

/// A local counter in a random epoch: a restart is a new epoch, so a
/// client's old `{epoch, seq}` can never be mistaken for a current one.
#[derive(Debug, Clone)]
pub struct Counter {
    epoch: u64,
    seq: u64,
}

impl Counter {
    /// A fresh epoch at seq 0.
    pub fn random() -> Self {
        Counter::new(fastrand::u64(1..))
    }

    /// A counter in a given epoch at seq 0 (tests pin the epoch).
    pub fn new(epoch: u64) -> Self {
        Counter {
            epoch: epoch.max(1),
            seq: 0,
        }
    }
}

impl Sequencer for Counter {
    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn current(&self) -> u64 {
        self.seq
    }

    fn next(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_is_monotonic_in_a_nonzero_epoch() {
        let mut c = Counter::new(0);
        assert_eq!(c.epoch(), 1, "epoch 0 means none on the wire");
        assert_eq!(c.current(), 0);
        assert_eq!((c.next(), c.next(), c.current()), (1, 2, 2));
        assert_ne!(Counter::random().epoch(), 0);
    }
}
