//! The tag table: latest value, status, timestamps and last-change seq of
//! every tag. Sans-IO: `apply` reads no clock and does no I/O, so it is
//! tested and benchmarked directly.

use std::sync::Arc;

use super::catalog::{Catalog, TagDef};
use super::selection::Selection;
use crate::sample::{Sample, TagId, Value};
use crate::status;

/// The state of one tag.
#[derive(Debug, Clone, PartialEq)]
pub struct TagState {
    /// Last value; `None` only if never read.
    pub value: Option<Value>,
    /// OPC UA status.
    pub status: u32,
    /// Source timestamp of the last change, µs.
    pub source_time_us: i64,
    /// Server timestamp of the last change, µs.
    pub server_time_us: i64,
    /// Seq of the last change (0: never changed in this epoch).
    pub seq: u64,
}

/// All tags of one epoch.
#[derive(Debug)]
pub struct TagTable {
    epoch: u64,
    seq: u64,
    catalog: Arc<Catalog>,
    states: Vec<TagState>,
}

impl TagTable {
    /// A table where every tag waits for its first reading.
    pub fn new(catalog: Arc<Catalog>, epoch: u64) -> Self {
        let states = (0..catalog.len())
            .map(|_| TagState {
                value: None,
                status: status::BAD_WAITING_FOR_INITIAL_DATA,
                source_time_us: 0,
                server_time_us: 0,
                seq: 0,
            })
            .collect();
        TagTable {
            epoch,
            seq: 0,
            catalog,
            states,
        }
    }

    /// The epoch; a new one starts whenever seq or ids could not continue.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Seq of the last applied change.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The catalog this table follows.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// The id of `def.name`, adding the tag if new. The new tag waits for
    /// its first reading; its id is stable for the rest of the epoch.
    pub fn register(&mut self, def: TagDef) -> TagId {
        if let Some(id) = self.catalog.id(&def.name) {
            return id;
        }
        self.catalog = Arc::new(self.catalog.with(def));
        self.states.push(TagState {
            value: None,
            status: status::BAD_WAITING_FOR_INITIAL_DATA,
            source_time_us: 0,
            server_time_us: 0,
            seq: 0,
        });
        self.catalog.len() as TagId
    }

    /// One tag's state.
    pub fn state(&self, id: TagId) -> Option<&TagState> {
        self.states.get((id as usize).checked_sub(1)?)
    }

    /// Applies a sample; returns the new seq if it changed the tag. A change
    /// is a status change (always passes) or a value change beyond the
    /// tag's absolute deadband.
    pub fn apply(&mut self, sample: Sample, now_us: i64) -> Option<u64> {
        let index = (sample.tag as usize).checked_sub(1)?;
        let def = self.catalog.get(sample.tag)?;
        let deadband = def.deadband;
        let state = self.states.get_mut(index)?;
        let status_changed = state.status != sample.status;
        let value_changed = match (&state.value, &sample.value) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(old), Some(new)) => match (old.as_f64(), new.as_f64()) {
                (Some(a), Some(b)) if deadband > 0.0 => (a - b).abs() > deadband,
                _ => old != new,
            },
        };
        if !status_changed && !value_changed {
            return None;
        }
        if let Some(value) = sample.value {
            state.value = Some(value);
        }
        self.seq += 1;
        state.status = sample.status;
        state.source_time_us = sample.source_time_us;
        state.server_time_us = now_us;
        state.seq = self.seq;
        Some(self.seq)
    }

    /// Selected tags that changed after `seq`, in id order: the catch-up
    /// query behind resume and slow consumers. Walks the selection, not the
    /// table: a resume of 100 tags out of 10,000 reads 100 states.
    pub fn changed_since<'a>(
        &'a self,
        seq: u64,
        selection: &'a Selection,
    ) -> impl Iterator<Item = (TagId, &'a TagState)> + 'a {
        selection.ids().filter_map(move |id| {
            let state = self.state(id)?;
            (state.seq > seq).then_some((id, state))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::catalog::TagDef;
    use crate::engine::selection::Selections;

    fn def(name: &str, deadband: f64) -> TagDef {
        TagDef {
            deadband,
            ..TagDef::read_only(name, "s")
        }
    }

    fn sample(tag: TagId, value: Option<f64>, status: u32) -> Sample {
        Sample {
            tag,
            value: value.map(Value::F64),
            status,
            source_time_us: 7,
        }
    }

    fn table() -> TagTable {
        TagTable::new(
            Arc::new(Catalog::new([def("a/x", 0.5), def("a/y", 0.0)])),
            42,
        )
    }

    #[test]
    fn starts_waiting_for_data_at_seq_zero() {
        let t = table();
        assert_eq!(t.seq(), 0);
        let s = t.state(1).expect("tag 1");
        assert_eq!(s.status, status::BAD_WAITING_FOR_INITIAL_DATA);
        assert_eq!(s.value, None);
    }

    #[test]
    fn deadband_filters_small_moves_but_never_a_status_change() {
        let mut t = table();
        assert_eq!(t.apply(sample(1, Some(10.0), 0), 1), Some(1));
        assert_eq!(
            t.apply(sample(1, Some(10.4), 0), 2),
            None,
            "within deadband"
        );
        assert_eq!(t.apply(sample(1, Some(10.5), 0), 2), None, "at deadband");
        assert_eq!(t.apply(sample(1, Some(10.6), 0), 3), Some(2));
        assert_eq!(t.apply(sample(1, None, status::BAD_TIMEOUT), 4), Some(3));
        let s = t.state(1).expect("tag 1");
        assert_eq!(s.value, Some(Value::F64(10.6)), "bad keeps last value");
        assert_eq!(s.status, status::BAD_TIMEOUT);
        assert_eq!(
            t.apply(sample(1, Some(10.6), 0), 5),
            Some(4),
            "good again passes"
        );
    }

    #[test]
    fn same_value_is_no_change_and_unknown_ids_are_ignored() {
        let mut t = table();
        assert_eq!(t.apply(sample(2, Some(1.0), 0), 1), Some(1));
        assert_eq!(t.apply(sample(2, Some(1.0), 0), 1), None);
        assert_eq!(t.apply(sample(0, Some(1.0), 0), 1), None);
        assert_eq!(t.apply(sample(99, Some(1.0), 0), 1), None);
        assert_eq!(t.seq(), 1);
    }

    #[test]
    fn changed_since_answers_catch_up() {
        let mut t = table();
        t.apply(sample(1, Some(1.0), 0), 1);
        t.apply(sample(2, Some(1.0), 0), 1);
        t.apply(sample(1, Some(5.0), 0), 1);
        let sels = Selections::default();
        let all = sels.get(vec!["#".into()], t.catalog());
        let ids: Vec<_> = t.changed_since(1, &all).map(|(id, _)| id).collect();
        assert_eq!(ids, vec![1, 2]);
        let ids: Vec<_> = t.changed_since(2, &all).map(|(id, _)| id).collect();
        assert_eq!(ids, vec![1]);
        let only_y = sels.get(vec!["a/y".into()], t.catalog());
        assert_eq!(t.changed_since(2, &only_y).count(), 0);
    }
}
