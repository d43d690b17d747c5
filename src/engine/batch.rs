//! A published batch: every change of one engine wakeup, each encoded once
//! as a `Delta.updates` field. A protobuf repeated field is the
//! concatenation of its entries, so any client's Delta is a short header
//! plus the selected entries' bytes: the batch's own bytes when it selects
//! everything, else one copy per subscription per batch and shard (see
//! `push::shard`), shared by every session that holds that subscription.
//! A batch is immutable once published: readers share it without a lock.

use bytes::{BufMut, Bytes, BytesMut};

use super::catalog::Catalog;
use super::selection::Selection;
use super::table::TagState;
use crate::proto;
use crate::sample::TagId;

/// Where one encoded update lies in `Batch::bytes`.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    /// The tag.
    pub id: TagId,
    /// Seq of this change.
    pub seq: u64,
    start: u32,
    len: u32,
}

/// One engine batch, shared by every session.
#[derive(Debug)]
pub struct Batch {
    /// Seq before the batch.
    pub from_seq: u64,
    /// Seq after the batch.
    pub to_seq: u64,
    /// Encoded `Delta.updates` fields, back to back.
    pub bytes: Bytes,
    /// The entries, in seq order.
    pub entries: Vec<Entry>,
    /// Published bytes before this batch, for lag accounting.
    pub published_before: u64,
    /// Catalog version when the batch was applied: sessions whose
    /// selection is older re-select first, so Catalog entries precede
    /// updates.
    pub catalog_version: u64,
}

/// The selected updates of one batch, ready to append to a Delta.
#[derive(Debug, Clone)]
pub struct Part {
    /// Encoded `Delta.updates` fields, back to back.
    pub bytes: Bytes,
    /// Updates in it.
    pub updates: u64,
}

impl Batch {
    /// One entry's bytes, shared (no copy).
    pub fn entry_slice(&self, e: &Entry) -> Bytes {
        self.bytes
            .slice(e.start as usize..(e.start + e.len) as usize)
    }

    /// The encoded bytes of one entry.
    pub fn entry_bytes(&self, e: &Entry) -> &[u8] {
        &self.bytes[e.start as usize..(e.start + e.len) as usize]
    }

    /// The updates a session at `position` with this selection gets from
    /// this batch, or `None` if nothing it selects changed after its
    /// position. When the selection takes every entry, the part is the
    /// batch's own bytes: no copy at all.
    pub fn assemble(&self, selection: &Selection, position: u64) -> Option<Part> {
        let selected = |e: &&Entry| e.seq > position && selection.contains(e.id);
        let mut parts = self.entries.iter().filter(selected).peekable();
        parts.peek()?;
        let all = self
            .entries
            .iter()
            .all(|e| e.seq > position && selection.contains(e.id));
        if all {
            return Some(Part {
                bytes: self.bytes.clone(),
                updates: self.entries.len() as u64,
            });
        }
        let mut bytes = BytesMut::new();
        let mut updates = 0;
        for e in parts {
            bytes.put_slice(self.entry_bytes(e));
            updates += 1;
        }
        Some(Part {
            bytes: bytes.freeze(),
            updates,
        })
    }
}

/// Reused across batches so the hot path does not allocate per update.
#[derive(Debug, Default)]
pub struct Builder {
    buf: BytesMut,
    entries: Vec<Entry>,
    seen: Vec<u64>,
    duplicates: bool,
}

impl Builder {
    /// No change pushed since the last `finish`.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Encodes one change.
    pub fn push(&mut self, id: TagId, seq: u64, state: &TagState) {
        let start = self.buf.len() as u32;
        encode_update(3, id, state, &mut self.buf);
        let len = self.buf.len() as u32 - start;
        self.entries.push(Entry {
            id,
            seq,
            start,
            len,
        });
        let (word, bit) = (id as usize / 64, id % 64);
        if word >= self.seen.len() {
            self.seen.resize(word + 1, 0);
        }
        self.duplicates |= self.seen[word] >> bit & 1 == 1;
        self.seen[word] |= 1 << bit;
    }

    /// Closes the batch: conflates repeated changes of one tag to the last
    /// (unless the tag keeps every sample) and hands the bytes over.
    pub fn finish(
        &mut self,
        from_seq: u64,
        to_seq: u64,
        catalog: &Catalog,
        published_before: u64,
    ) -> Batch {
        for e in &self.entries {
            self.seen[e.id as usize / 64] = 0;
        }
        if std::mem::take(&mut self.duplicates) {
            self.conflate(catalog);
        }
        Batch {
            from_seq,
            to_seq,
            bytes: self.buf.split().freeze(),
            entries: std::mem::take(&mut self.entries),
            published_before,
            catalog_version: catalog.version(),
        }
    }

    fn conflate(&mut self, catalog: &Catalog) {
        let mut keep = vec![false; self.entries.len()];
        for (i, e) in self.entries.iter().enumerate().rev() {
            let (word, bit) = (e.id as usize / 64, e.id % 64);
            let first_from_end = self.seen[word] >> bit & 1 == 0;
            self.seen[word] |= 1 << bit;
            keep[i] = first_from_end || catalog.get(e.id).is_some_and(|d| d.keep_samples);
        }
        let old = self.buf.split().freeze();
        let mut entries = Vec::with_capacity(self.entries.len());
        for (e, keep) in self.entries.iter().zip(keep) {
            self.seen[e.id as usize / 64] = 0;
            if keep {
                let start = self.buf.len() as u32;
                self.buf
                    .put_slice(&old[e.start as usize..(e.start + e.len) as usize]);
                entries.push(Entry { start, ..*e });
            }
        }
        self.entries = entries;
    }
}

/// Encodes a tag's state as a `TagUpdate` message field `field`.
pub fn encode_update(field: u32, id: TagId, state: &TagState, buf: &mut BytesMut) {
    let update = proto::TagUpdate {
        id,
        value: state.value.as_ref().map(proto::Value::from),
        status: state.status,
        source_time_us: state.source_time_us,
        server_time_us: state.server_time_us,
    };
    prost::encoding::message::encode(field, &update, buf);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::selection::Selections;
    use crate::sample::TagDef;
    use crate::sample::Value;
    use prost::Message;

    fn catalog(keep: bool) -> Catalog {
        Catalog::new(["a/x", "a/y", "b/z"].map(|n| TagDef {
            keep_samples: keep && n == "a/x",
            ..TagDef::read_only(n, "s")
        }))
    }

    fn state(v: f64, seq: u64) -> TagState {
        TagState {
            value: Some(Value::F64(v)),
            status: 0,
            source_time_us: 1,
            server_time_us: 2,
            seq,
        }
    }

    /// A part is a run of `Delta.updates` fields: it decodes as a Delta.
    fn decode(part: &Part) -> proto::Delta {
        proto::Delta::decode(part.bytes.clone()).expect("decodes")
    }

    #[test]
    fn parts_select_entries_and_share_bytes() {
        let cat = catalog(false);
        let mut b = Builder::default();
        b.push(1, 11, &state(1.0, 11));
        b.push(3, 12, &state(3.0, 12));
        let batch = b.finish(10, 12, &cat, 0);
        let sels = Selections::default();
        let all = sels.get(
            &crate::auth::scope(vec!["#".into()]),
            vec!["#".into()],
            None,
            &cat,
        );
        let part = batch.assemble(&all, 10).expect("part");
        let d = decode(&part);
        assert_eq!(
            d.updates.iter().map(|u| u.id).collect::<Vec<_>>(),
            vec![1, 3]
        );
        // Taking everything is the batch's own bytes, not a copy.
        assert_eq!(part.bytes.as_ptr(), batch.bytes.as_ptr());
        let only_b = sels.get(
            &crate::auth::scope(vec!["#".into()]),
            vec!["b/#".into()],
            None,
            &cat,
        );
        let d = decode(&batch.assemble(&only_b, 10).expect("part"));
        assert_eq!(d.updates.iter().map(|u| u.id).collect::<Vec<_>>(), vec![3]);
        let only_y = sels.get(
            &crate::auth::scope(vec!["#".into()]),
            vec!["a/y".into()],
            None,
            &cat,
        );
        assert!(batch.assemble(&only_y, 10).is_none());
        // A session already past seq 11 gets only the later entry.
        let d = decode(&batch.assemble(&all, 11).expect("part"));
        assert_eq!(d.updates.len(), 1);
    }

    #[test]
    fn repeated_changes_conflate_unless_keep_samples() {
        let cat = catalog(true);
        let mut b = Builder::default();
        b.push(1, 1, &state(1.0, 1));
        b.push(2, 2, &state(2.0, 2));
        b.push(1, 3, &state(3.0, 3));
        b.push(2, 4, &state(4.0, 4));
        let batch = b.finish(0, 4, &cat, 0);
        let seqs: Vec<_> = batch.entries.iter().map(|e| (e.id, e.seq)).collect();
        assert_eq!(
            seqs,
            vec![(1, 1), (1, 3), (2, 4)],
            "a/x keeps samples, a/y conflates"
        );
        let sels = Selections::default();
        let d = decode(
            &batch
                .assemble(
                    &sels.get(
                        &crate::auth::scope(vec!["#".into()]),
                        vec!["#".into()],
                        None,
                        &cat,
                    ),
                    0,
                )
                .expect("part"),
        );
        let values: Vec<_> = d.updates.iter().map(|u| u.value.clone()).collect();
        assert_eq!(values.len(), 3);
        // The builder is clean for the next batch.
        b.push(2, 5, &state(5.0, 5));
        assert_eq!(b.finish(4, 5, &cat, 0).entries.len(), 1);
    }
}
