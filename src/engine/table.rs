//! The tag table: latest value, status, timestamps and last-change seq of
//! every tag, and the catalog it follows. Sans-IO: `apply` reads no clock,
//! does no I/O and takes its seq from the engine's sequencer, so it is
//! tested and benchmarked directly. Only the engine task holds it mutably.
//!
//! The states live in pages of [`PAGE`] behind `Arc`s, so a clone of the
//! table (what the engine publishes after each batch, for sessions to read
//! without a lock) copies a page pointer per page, and the next batch
//! copies only the pages it touches that a reader still holds.

use std::sync::Arc;

use super::catalog::{Catalog, TagDef};
use super::selection::Selection;
use super::seq::Sequencer;
use crate::sample::{Sample, TagId, TagKey};
use crate::status;

pub use crate::sample::TagState;

/// Tag states per page: a batch that changes 10 tags of 100,000 copies at
/// most 10 pages of this many (measured on `wall` and `room`: see
/// BENCHMARKS.md, issue 22).
pub const PAGE: usize = 32;

/// All tags of one epoch. Cloning it is a snapshot: cheap, and unaffected by
/// later changes to the original.
#[derive(Debug, Clone)]
pub struct TagTable {
    seq: u64,
    catalog: Arc<Catalog>,
    pages: Vec<Arc<Vec<TagState>>>,
    /// Tags whose shown status this node set itself (a cluster gateway:
    /// cut off, an edge silent) or restored since their last stream
    /// message. Such a change takes no seq, so a catch-up by seq would
    /// miss it: catch-ups include these. Empty on a single node.
    local: Arc<std::collections::HashSet<TagId>>,
    /// Bumped by every local status change (catch-ups shared between
    /// sessions are keyed by it as well as by seq).
    local_version: u64,
}

fn waiting() -> TagState {
    TagState {
        value: None,
        status: status::BAD_WAITING_FOR_INITIAL_DATA,
        source_time_us: 0,
        server_time_us: 0,
        seq: 0,
    }
}

impl TagTable {
    /// A table where every tag waits for its first reading, at `seq`.
    pub fn new(catalog: Arc<Catalog>, seq: u64) -> Self {
        let mut table = TagTable {
            seq,
            catalog,
            pages: Vec::new(),
            local: Arc::default(),
            local_version: 0,
        };
        for _ in 0..table.catalog.len() {
            table.push_waiting();
        }
        table
    }

    fn push_waiting(&mut self) {
        match self.pages.last_mut() {
            Some(page) if page.len() < PAGE => Arc::make_mut(page).push(waiting()),
            _ => {
                let mut page = Vec::with_capacity(PAGE);
                page.push(waiting());
                self.pages.push(Arc::new(page));
            }
        }
    }

    fn state_mut(&mut self, index: usize) -> Option<&mut TagState> {
        let page = self.pages.get_mut(index / PAGE)?;
        Arc::make_mut(page).get_mut(index % PAGE)
    }

    /// Seq of the last applied change.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The catalog this table follows.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// Adds a tag owned by `owner` (the caller checked its name is free);
    /// it waits for its first reading. Copies the catalog only if a
    /// session still holds the current one.
    pub fn add(&mut self, def: TagDef, owner: TagKey) -> TagId {
        let seq = self.seq;
        let id = Arc::make_mut(&mut self.catalog).add(def, owner, seq);
        self.push_waiting();
        id
    }

    /// Adds a tag that appeared at `seq` (a cluster gateway: its claim's
    /// stream seq), without moving the table's seq.
    pub fn add_at(&mut self, def: TagDef, owner: TagKey, seq: u64) -> TagId {
        let id = Arc::make_mut(&mut self.catalog).add(def, owner, seq);
        self.push_waiting();
        id
    }

    /// Replaces a tag's definition as of `seq` (a cluster gateway's
    /// definition message), without moving the table's seq.
    pub fn redefine_at(&mut self, id: TagId, def: TagDef, seq: u64) -> bool {
        if !self.catalog.would_change(id, &def) {
            return false;
        }
        Arc::make_mut(&mut self.catalog).redefine(id, def, seq)
    }

    /// Takes the next id for nothing ([`Catalog::add_hidden`]).
    pub fn add_hidden(&mut self) -> TagId {
        let seq = self.seq;
        let id = Arc::make_mut(&mut self.catalog).add_hidden(seq);
        self.push_waiting();
        id
    }

    /// Sets a tag's state as another node applied it, at `state.seq` (a
    /// cluster gateway: no deadband, no comparison, the seq is the
    /// stream's). False for an unknown or hidden id.
    pub fn put(&mut self, id: TagId, state: TagState) -> bool {
        if self.catalog.get(id).is_none() {
            return false;
        }
        let seq = state.seq;
        let Some(slot) = (id as usize)
            .checked_sub(1)
            .and_then(|index| self.state_mut(index))
        else {
            return false;
        };
        *slot = state;
        self.seq = self.seq.max(seq);
        if self.local.contains(&id) {
            Arc::make_mut(&mut self.local).remove(&id);
        }
        true
    }

    /// Shows `status` for tag `id` without a seq (a cluster gateway's own
    /// statement: cut off, edge silent, or the stream's status restored);
    /// false if unknown or already so.
    pub fn set_local_status(&mut self, id: TagId, status: u32) -> bool {
        if self.state(id).is_none_or(|s| s.status == status) {
            return false;
        }
        let Some(state) = (id as usize)
            .checked_sub(1)
            .and_then(|index| self.state_mut(index))
        else {
            return false;
        };
        state.status = status;
        self.local_version += 1;
        if !self.local.contains(&id) {
            Arc::make_mut(&mut self.local).insert(id);
        }
        true
    }

    /// Bumped by every [`TagTable::set_local_status`].
    pub fn local_version(&self) -> u64 {
        self.local_version
    }

    /// Replaces a tag's definition; true if anything changed.
    pub fn redefine(&mut self, id: TagId, def: TagDef) -> bool {
        // Checked first: `make_mut` copies the catalog a session holds.
        if !self.catalog.would_change(id, &def) {
            return false;
        }
        let seq = self.seq;
        Arc::make_mut(&mut self.catalog).redefine(id, def, seq)
    }

    /// One tag's state.
    pub fn state(&self, id: TagId) -> Option<&TagState> {
        let index = (id as usize).checked_sub(1)?;
        self.pages.get(index / PAGE)?.get(index % PAGE)
    }

    /// Applies a reading of tag `id`; returns the seq `seq` handed out if
    /// it changed the tag. A change is a status change (always passes) or
    /// a value change beyond the tag's absolute deadband.
    pub fn apply(
        &mut self,
        id: TagId,
        sample: Sample,
        now_us: i64,
        seq: &mut dyn Sequencer,
    ) -> Option<u64> {
        let index = (id as usize).checked_sub(1)?;
        let def = self.catalog.get(id)?;
        let deadband = def.deadband;
        // Compared before the page is taken for writing: a reading that
        // changes nothing copies no page.
        let state = self.state(id)?;
        let status_changed = state.status != sample.status;
        let value_changed = match (&state.value, &sample.value) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(old), Some(new)) => match (old.as_f64(), new.as_f64()) {
                // NaN -> number and number -> NaN are changes, NaN -> NaN is
                // not: `NaN - x` is never over a deadband and `NaN != NaN`
                // is always true, so neither comparison below can say it.
                (Some(a), Some(b)) if a.is_nan() || b.is_nan() => a.is_nan() != b.is_nan(),
                (Some(a), Some(b)) if deadband > 0.0 => (a - b).abs() > deadband,
                _ => old != new,
            },
        };
        if !status_changed && !value_changed {
            return None;
        }
        let next = seq.next();
        let state = self.state_mut(index)?;
        if let Some(value) = sample.value {
            state.value = Some(value);
        }
        state.status = sample.status;
        state.source_time_us = sample.source_time_us;
        state.server_time_us = now_us;
        state.seq = next;
        self.seq = next;
        Some(next)
    }

    /// Selected tags that changed after `seq` (and those whose status this
    /// node set itself, see `local`), in id order: the catch-up
    /// query behind resume and slow consumers. Walks the selection, not the
    /// table: a resume of 100 tags out of 10,000 reads 100 states.
    pub fn changed_since<'a>(
        &'a self,
        seq: u64,
        selection: &'a Selection,
    ) -> impl Iterator<Item = (TagId, &'a TagState)> + 'a {
        let local = (!self.local.is_empty()).then_some(&self.local);
        selection.ids().filter_map(move |id| {
            let state = self.state(id)?;
            let changed = state.seq > seq || local.is_some_and(|l| l.contains(&id));
            changed.then_some((id, state))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::selection::Selections;
    use crate::engine::seq::Counter;
    use crate::sample::{TagDef, Value};

    fn def(name: &str, deadband: f64) -> TagDef {
        TagDef {
            deadband,
            ..TagDef::read_only(name, "s")
        }
    }

    fn sample(value: Option<f64>, status: u32) -> Sample {
        Sample {
            tag: TagKey::default(),
            value: value.map(Value::F64),
            status,
            source_time_us: 7,
        }
    }

    fn table() -> (TagTable, Counter) {
        let catalog = Arc::new(Catalog::new([def("a/x", 0.5), def("a/y", 0.0)]));
        (TagTable::new(catalog, 0), Counter::new(42))
    }

    #[test]
    fn starts_waiting_for_data_at_seq_zero() {
        let (t, _) = table();
        assert_eq!(t.seq(), 0);
        let s = t.state(1).expect("tag 1");
        assert_eq!(s.status, status::BAD_WAITING_FOR_INITIAL_DATA);
        assert_eq!(s.value, None);
    }

    #[test]
    fn deadband_filters_small_moves_but_never_a_status_change() {
        let (mut t, mut c) = table();
        assert_eq!(t.apply(1, sample(Some(10.0), 0), 1, &mut c), Some(1));
        assert_eq!(
            t.apply(1, sample(Some(10.4), 0), 2, &mut c),
            None,
            "within deadband"
        );
        assert_eq!(
            t.apply(1, sample(Some(10.5), 0), 2, &mut c),
            None,
            "at deadband"
        );
        assert_eq!(t.apply(1, sample(Some(10.6), 0), 3, &mut c), Some(2));
        assert_eq!(
            t.apply(1, sample(None, status::BAD_TIMEOUT), 4, &mut c),
            Some(3)
        );
        let s = t.state(1).expect("tag 1");
        assert_eq!(s.value, Some(Value::F64(10.6)), "bad keeps last value");
        assert_eq!(s.status, status::BAD_TIMEOUT);
        assert_eq!(
            t.apply(1, sample(Some(10.6), 0), 5, &mut c),
            Some(4),
            "good again passes"
        );
    }

    #[test]
    fn same_value_is_no_change_and_unknown_ids_are_ignored() {
        let (mut t, mut c) = table();
        assert_eq!(t.apply(2, sample(Some(1.0), 0), 1, &mut c), Some(1));
        assert_eq!(t.apply(2, sample(Some(1.0), 0), 1, &mut c), None);
        assert_eq!(t.apply(0, sample(Some(1.0), 0), 1, &mut c), None);
        assert_eq!(t.apply(99, sample(Some(1.0), 0), 1, &mut c), None);
        assert_eq!(t.seq(), 1);
    }

    #[test]
    fn nan_to_number_and_back_are_changes_nan_to_nan_is_not() {
        for tag in [1, 2] {
            // Tag 1 has a deadband, tag 2 none.
            let (mut t, mut c) = table();
            assert!(t.apply(tag, sample(Some(f64::NAN), 0), 1, &mut c).is_some());
            assert_eq!(
                t.apply(tag, sample(Some(f64::NAN), 0), 2, &mut c),
                None,
                "tag {tag}"
            );
            assert!(
                t.apply(tag, sample(Some(50.0), 0), 3, &mut c).is_some(),
                "tag {tag}"
            );
            assert_eq!(
                t.state(tag).and_then(|s| s.value.clone()),
                Some(Value::F64(50.0))
            );
            assert!(
                t.apply(tag, sample(Some(f64::NAN), 0), 4, &mut c).is_some(),
                "tag {tag}"
            );
        }
    }

    #[test]
    fn a_clone_is_a_snapshot_that_later_changes_do_not_touch() {
        let catalog = Arc::new(Catalog::new(
            (0..PAGE * 2 + 1).map(|i| def(&format!("t/{i}"), 0.0)),
        ));
        let mut t = TagTable::new(catalog, 0);
        let mut c = Counter::new(1);
        t.apply(1, sample(Some(1.0), 0), 1, &mut c);
        let snapshot = t.clone();
        t.apply(1, sample(Some(2.0), 0), 2, &mut c);
        let last = (PAGE * 2 + 1) as TagId;
        t.apply(last, sample(Some(3.0), 0), 3, &mut c);
        assert_eq!(snapshot.seq(), 1);
        assert_eq!(
            snapshot.state(1).and_then(|s| s.value.clone()),
            Some(Value::F64(1.0))
        );
        assert_eq!(snapshot.state(last).map(|s| s.seq), Some(0));
        assert_eq!(
            t.state(1).and_then(|s| s.value.clone()),
            Some(Value::F64(2.0))
        );
        assert_eq!(t.state(last).map(|s| s.seq), Some(3));
        // The untouched middle page is still shared, not copied.
        assert!(Arc::ptr_eq(&snapshot.pages[1], &t.pages[1]));
        assert!(!Arc::ptr_eq(&snapshot.pages[0], &t.pages[0]));
    }

    #[test]
    fn changed_since_answers_catch_up() {
        let (mut t, mut c) = table();
        t.apply(1, sample(Some(1.0), 0), 1, &mut c);
        t.apply(2, sample(Some(1.0), 0), 1, &mut c);
        t.apply(1, sample(Some(5.0), 0), 1, &mut c);
        let sels = Selections::default();
        let all = sels.get(
            &crate::auth::scope(vec!["#".into()]),
            vec!["#".into()],
            None,
            t.catalog(),
        );
        let ids: Vec<_> = t.changed_since(1, &all).map(|(id, _)| id).collect();
        assert_eq!(ids, vec![1, 2]);
        let ids: Vec<_> = t.changed_since(2, &all).map(|(id, _)| id).collect();
        assert_eq!(ids, vec![1]);
        let only_y = sels.get(
            &crate::auth::scope(vec!["#".into()]),
            vec!["a/y".into()],
            None,
            t.catalog(),
        );
        assert_eq!(t.changed_since(2, &only_y).count(), 0);
    }
}
