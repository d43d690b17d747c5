//! The client's copy of the server's tags, kept by the protocol's rules
//! (protocol.md "Sequence, epoch, and the resync rule"): a Catalog entry
//! before any update that uses its id, Snapshot chunks at the position,
//! every Delta starting where the last one ended, no Pong ahead of the
//! position. Receives decoded `ServerMessage`s; emits [`Event`]s. No I/O,
//! so the rules are tested without a socket.

use std::collections::HashMap;

use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::proto::{self, server_message::Kind};

/// One server message, after the mirror applied it.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Session start.
    Welcome(proto::Welcome),
    /// Tag descriptions.
    Catalog(proto::Catalog),
    /// Full state chunk.
    Snapshot(proto::Snapshot),
    /// Changes.
    Delta(proto::Delta),
    /// Answer to a write.
    WriteResult(proto::WriteResult),
    /// Answer to a ping.
    Pong(proto::Pong),
    /// A protocol error report.
    Error(proto::Error),
    /// One page of a Browse (not the subscription's catalog).
    BrowseResult(proto::BrowseResult),
    /// A Refresh was accepted.
    Refreshed(proto::Refreshed),
    /// The pacing now in force after a Pace.
    Paced(proto::Paced),
    /// Recent values at the position: the Deltas that follow continue
    /// each series.
    HistoryResult(proto::HistoryResult),
    /// The server closed the connection.
    Closed(Option<CloseFrame>),
}

/// The stream contradicts the protocol's rules.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Violation {
    /// A Snapshot, Delta or Pong does not match the position: something
    /// was lost, and a resume from the position recovers it.
    #[error("sequence gap: expected {expected}, got {got}")]
    Gap {
        /// The mirror's position.
        expected: u64,
        /// What the server sent.
        got: u64,
    },
    /// Anything else (an update before its Catalog entry, a Delta going
    /// backwards, a message without a kind): the mirror cannot be trusted
    /// and a fresh start rebuilds it.
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// What a client knows: the catalog, the latest state of each tag and the
/// position. Kept across a reconnect, so a resume costs one Delta.
#[derive(Debug, Clone, Default)]
pub struct Mirror {
    /// Tag descriptions by id (add through [`Mirror::learn`], which keeps
    /// the name index).
    pub catalog: HashMap<u32, proto::TagInfo>,
    /// Latest state by id.
    pub values: HashMap<u32, proto::TagUpdate>,
    /// Epoch from Welcome (0: never welcomed).
    pub epoch: u64,
    /// Seq of the last Snapshot / Delta.
    pub position: u64,
    by_name: HashMap<String, u32>,
}

impl Mirror {
    /// The resume point, if this mirror has seen a Welcome.
    pub fn resume(&self) -> Option<proto::Resume> {
        (self.epoch != 0).then_some(proto::Resume {
            epoch: self.epoch,
            seq: self.position,
        })
    }

    /// Forgets everything (a fresh start).
    pub fn clear(&mut self) {
        *self = Mirror::default();
    }

    /// The id of a tag by name, if in the catalog.
    pub fn id(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    /// The description of a tag by name.
    pub fn info(&self, name: &str) -> Option<&proto::TagInfo> {
        self.catalog.get(&self.id(name)?)
    }

    /// The latest update of a tag by name.
    pub fn value(&self, name: &str) -> Option<&proto::TagUpdate> {
        self.values.get(&self.id(name)?)
    }

    /// Adds or replaces a tag's description (a redefined tag keeps its id
    /// and may change its name).
    pub fn learn(&mut self, info: proto::TagInfo) {
        let (id, name) = (info.id, info.name.clone());
        if let Some(old) = self.catalog.insert(id, info)
            && old.name != name
        {
            self.by_name.remove(&old.name);
        }
        self.by_name.insert(name, id);
    }

    /// Applies one server message.
    pub fn apply(&mut self, msg: proto::ServerMessage) -> Result<Event, Violation> {
        let Some(kind) = msg.kind else {
            return Err(Violation::Protocol("ServerMessage without kind".into()));
        };
        Ok(match kind {
            Kind::Welcome(w) => {
                if w.resume != proto::ResumeOutcome::Resumed as i32 {
                    self.clear();
                }
                self.epoch = w.epoch;
                self.position = w.seq;
                Event::Welcome(w)
            }
            Kind::Catalog(c) => {
                for t in &c.tags {
                    self.learn(t.clone());
                }
                Event::Catalog(c)
            }
            Kind::Snapshot(s) => {
                self.expect(s.seq)?;
                self.apply_updates(&s.tags)?;
                Event::Snapshot(s)
            }
            Kind::Delta(d) => {
                self.expect(d.from_seq)?;
                if d.to_seq < d.from_seq {
                    return Err(Violation::Protocol(format!(
                        "delta goes backwards: {} -> {}",
                        d.from_seq, d.to_seq
                    )));
                }
                self.apply_updates(&d.updates)?;
                self.position = d.to_seq;
                Event::Delta(d)
            }
            Kind::Pong(p) => {
                // The server is current before each Pong: a position below
                // its seq means a Delta was lost.
                if p.seq > self.position {
                    return Err(Violation::Gap {
                        expected: self.position,
                        got: p.seq,
                    });
                }
                Event::Pong(p)
            }
            Kind::WriteResult(w) => Event::WriteResult(w),
            Kind::Error(e) => Event::Error(e),
            Kind::BrowseResult(b) => Event::BrowseResult(b),
            Kind::Refreshed(r) => Event::Refreshed(r),
            Kind::Paced(p) => Event::Paced(p),
            Kind::HistoryResult(h) => {
                // Made at the position (the server brings the connection
                // current first): one from elsewhere is a lost Delta.
                if h.seq != self.position {
                    return Err(Violation::Gap {
                        expected: self.position,
                        got: h.seq,
                    });
                }
                if let Some(s) = h.series.iter().find(|s| !self.catalog.contains_key(&s.id)) {
                    return Err(Violation::Protocol(format!(
                        "history for id {} before its Catalog entry",
                        s.id
                    )));
                }
                Event::HistoryResult(h)
            }
        })
    }

    fn expect(&self, from: u64) -> Result<(), Violation> {
        if from == self.position {
            Ok(())
        } else {
            Err(Violation::Gap {
                expected: self.position,
                got: from,
            })
        }
    }

    fn apply_updates(&mut self, updates: &[proto::TagUpdate]) -> Result<(), Violation> {
        // Checked first: a rejected message leaves the mirror as it was.
        if let Some(u) = updates.iter().find(|u| !self.catalog.contains_key(&u.id)) {
            return Err(Violation::Protocol(format!(
                "update for id {} before its Catalog entry",
                u.id
            )));
        }
        for u in updates {
            self.values.insert(u.id, u.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::proto::server;

    fn welcome(epoch: u64, seq: u64, resume: proto::ResumeOutcome) -> proto::ServerMessage {
        server(Kind::Welcome(proto::Welcome {
            epoch,
            seq,
            resume: resume as i32,
            ..Default::default()
        }))
    }

    fn catalog(names: &[(u32, &str)]) -> proto::ServerMessage {
        let tags = names
            .iter()
            .map(|&(id, name)| proto::TagInfo {
                id,
                name: name.into(),
                ..Default::default()
            })
            .collect();
        server(Kind::Catalog(proto::Catalog { tags, last: true }))
    }

    fn update(id: u32, v: f64) -> proto::TagUpdate {
        proto::TagUpdate {
            id,
            value: Some(v.into()),
            ..Default::default()
        }
    }

    fn delta(from_seq: u64, to_seq: u64, updates: Vec<proto::TagUpdate>) -> proto::ServerMessage {
        server(Kind::Delta(proto::Delta {
            from_seq,
            to_seq,
            updates,
        }))
    }

    fn started() -> Mirror {
        let mut m = Mirror::default();
        m.apply(welcome(7, 10, proto::ResumeOutcome::Fresh))
            .unwrap();
        m.apply(catalog(&[(1, "a/x"), (2, "a/y")])).unwrap();
        let snap = proto::Snapshot {
            seq: 10,
            tags: vec![update(1, 1.0)],
            last: true,
        };
        m.apply(server(Kind::Snapshot(snap))).unwrap();
        m
    }

    #[test]
    fn deltas_must_continue_from_the_position_and_a_gap_leaves_the_mirror_untouched() {
        let mut m = started();
        m.apply(delta(10, 12, vec![update(2, 5.0)])).unwrap();
        assert_eq!(m.position, 12);
        assert_eq!(
            m.value("a/y").and_then(|u| u.value.clone()),
            Some(5.0.into())
        );
        let gap = m.apply(delta(13, 14, vec![update(2, 6.0)]));
        assert_eq!(
            gap,
            Err(Violation::Gap {
                expected: 12,
                got: 13
            })
        );
        assert_eq!(m.position, 12);
        assert!(matches!(
            m.apply(delta(12, 11, vec![])),
            Err(Violation::Protocol(_))
        ));
        let pong = |seq| {
            server(Kind::Pong(proto::Pong {
                seq,
                ..Default::default()
            }))
        };
        assert!(m.apply(pong(12)).is_ok());
        assert_eq!(
            m.apply(pong(13)),
            Err(Violation::Gap {
                expected: 12,
                got: 13
            })
        );
    }

    #[test]
    fn an_update_before_its_catalog_entry_is_refused_whole() {
        let mut m = started();
        let bad = m.apply(delta(10, 11, vec![update(2, 3.0), update(9, 1.0)]));
        assert!(matches!(bad, Err(Violation::Protocol(_))));
        assert!(
            m.value("a/y").is_none(),
            "nothing of a refused message is applied"
        );
    }

    #[test]
    fn resumed_keeps_the_mirror_and_fresh_or_resync_clears_it() {
        let mut m = started();
        m.apply(welcome(7, 10, proto::ResumeOutcome::Resumed))
            .unwrap();
        assert_eq!(m.id("a/x"), Some(1));
        assert!(m.value("a/x").is_some());
        m.apply(welcome(8, 3, proto::ResumeOutcome::Resync))
            .unwrap();
        assert_eq!(m.id("a/x"), None);
        assert!(m.values.is_empty());
        assert_eq!((m.epoch, m.position), (8, 3));
    }

    #[test]
    fn a_redefined_tag_keeps_its_id_and_answers_to_its_new_name() {
        let mut m = started();
        m.apply(catalog(&[(1, "a/renamed")])).unwrap();
        assert_eq!(m.id("a/renamed"), Some(1));
        assert_eq!(m.id("a/x"), None);
    }
}
