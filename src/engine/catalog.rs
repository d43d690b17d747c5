//! The tag catalog of one epoch: id <-> name, the `TagInfo` each client is
//! told, what the engine needs per tag (deadband, keep_samples), and each
//! tag's owner key and history (when it appeared, when it was redefined).
//! Each `TagInfo` is encoded once here and shared by every Catalog message.
//! It knows no device protocol: sources build their own `TagDef`s.

use std::collections::BTreeMap;
use std::ops::Bound;

use bytes::{Bytes, BytesMut};

pub use crate::sample::{TagDef, type_name};
use crate::sample::{TagId, TagKey};

/// Where a tag came from and when, beside its definition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TagMeta {
    /// The source's key for it: writes are routed to `owner.source`.
    pub owner: TagKey,
    /// Table seq when the tag appeared (0 for configured tags): a client
    /// resuming from a seq at or before it may not know the tag yet.
    pub appeared_seq: u64,
    /// Table seq when its definition last changed (appeared or redefined).
    pub defined_seq: u64,
    /// Catalog version of that change: a session that resolved its
    /// selection at an older version sends the entry again.
    pub revision: u64,
}

/// All tags of the epoch, indexed by id. Ids are never reused or removed
/// within an epoch; a tag found at run time gets the next id, a redefined
/// tag keeps its id. Only the engine task changes it (copy-on-write:
/// sessions keep the `Arc` they hold).
#[derive(Debug, Default, Clone)]
pub struct Catalog {
    tags: Vec<TagDef>,
    meta: Vec<TagMeta>,
    encoded: Vec<Bytes>,
    /// Ordered, so Browse pages in name order without sorting.
    by_name: BTreeMap<String, TagId>,
    version: u64,
    /// `(version, id)` of each redefinition, oldest first, so a session
    /// finds what changed since it last looked without scanning its
    /// selection. Bounded: past `REDEFINITIONS` the older half goes and
    /// `forgotten` says up to which version the log is incomplete.
    redefinitions: std::collections::VecDeque<(u64, TagId)>,
    forgotten: u64,
}

/// Redefinitions the log keeps.
const REDEFINITIONS: usize = 65_536;

impl Catalog {
    /// A catalog of configured tags; ids and keys follow the given order
    /// (tests and tools: one source, local keys 0..n).
    pub fn new(defs: impl IntoIterator<Item = TagDef>) -> Self {
        let mut catalog = Catalog::default();
        for (local, def) in defs.into_iter().enumerate() {
            let key = TagKey {
                source: 0,
                local: local as u32,
            };
            catalog.add(def, key, 0);
        }
        catalog
    }

    /// Turns history off for every tag (no `[history]`): `TagInfo.history`
    /// then says false everywhere.
    pub fn without_history(mut self) -> Self {
        for (def, encoded) in self.tags.iter_mut().zip(self.encoded.iter_mut()) {
            if def.history {
                def.history = false;
                *encoded = encode_info(def);
            }
        }
        self
    }

    /// Appends a tag owned by `owner`, appearing at table seq `seq`;
    /// returns its id. The caller checks the name is free.
    pub fn add(&mut self, mut def: TagDef, owner: TagKey, seq: u64) -> TagId {
        def.id = self.tags.len() as TagId + 1;
        self.version += 1;
        self.by_name.insert(def.name.clone(), def.id);
        self.encoded.push(encode_info(&def));
        self.meta.push(TagMeta {
            owner,
            appeared_seq: seq,
            defined_seq: seq,
            revision: self.version,
        });
        let id = def.id;
        self.tags.push(def);
        id
    }

    /// Takes the next id for nothing (a cluster gateway's slot for a name
    /// claimed twice, or an id it never saw claimed): every gateway holds
    /// the same ids, and this one is never selected, looked up or sent.
    pub fn add_hidden(&mut self, seq: u64) -> TagId {
        let id = self.tags.len() as TagId + 1;
        self.encoded.push(Bytes::new());
        self.meta.push(TagMeta {
            owner: TagKey::default(),
            appeared_seq: seq,
            defined_seq: seq,
            revision: self.version,
        });
        self.tags.push(TagDef {
            id,
            ..TagDef::read_only("", "")
        });
        id
    }

    /// Replaces the definition of tag `id` (same name, same id) at table
    /// seq `seq`. Returns false if nothing changed or the id is unknown.
    pub fn redefine(&mut self, id: TagId, mut def: TagDef, seq: u64) -> bool {
        if !self.would_change(id, &def) {
            return false;
        }
        let index = id as usize - 1;
        def.id = id;
        def.name.clone_from(&self.tags[index].name);
        self.version += 1;
        self.encoded[index] = encode_info(&def);
        self.meta[index].defined_seq = seq;
        self.meta[index].revision = self.version;
        self.tags[index] = def;
        if self.redefinitions.len() >= REDEFINITIONS {
            let half = REDEFINITIONS / 2;
            self.forgotten = self.redefinitions[half - 1].0;
            self.redefinitions.drain(..half);
        }
        self.redefinitions.push_back((self.version, id));
        true
    }

    /// Ids redefined after catalog version `version` (possibly repeated),
    /// or `None` if the log no longer reaches back that far.
    pub fn redefined_since(&self, version: u64) -> Option<impl Iterator<Item = TagId> + '_> {
        if version < self.forgotten {
            return None;
        }
        let start = self.redefinitions.partition_point(|(v, _)| *v <= version);
        Some(self.redefinitions.range(start..).map(|(_, id)| *id))
    }

    /// True if `def` would change tag `id`'s definition (its id and name
    /// are the tag's own, whatever `def` says); false for an unknown id.
    pub fn would_change(&self, id: TagId, def: &TagDef) -> bool {
        self.get(id).is_some_and(|old| {
            let mut def = def.clone();
            def.id = old.id;
            def.name.clone_from(&old.name);
            *old != def
        })
    }

    /// Bumped by every addition and redefinition.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Number of tags.
    pub fn len(&self) -> usize {
        self.tags.len()
    }

    /// True if no tags.
    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }

    /// The tag with this id (none for a hidden id: its name is empty, and
    /// every real name has a level).
    pub fn get(&self, id: TagId) -> Option<&TagDef> {
        self.tags
            .get((id as usize).checked_sub(1)?)
            .filter(|d| !d.name.is_empty())
    }

    /// Owner and history of the tag with this id.
    pub fn meta(&self, id: TagId) -> Option<&TagMeta> {
        self.get(id)?;
        self.meta.get((id as usize).checked_sub(1)?)
    }

    /// The id of a name.
    pub fn id(&self, name: &str) -> Option<TagId> {
        self.by_name.get(name).copied()
    }

    /// One Browse page: ids of tags matching `pattern` (valid) in name
    /// order after the name `after`, at most `limit`, scanning at most
    /// `max_scan` names (so a page's cost is bounded whatever the pattern).
    /// Returns the page and the name to continue after, if any is left.
    /// Only names sharing the pattern's literal prefix are scanned.
    pub fn browse(
        &self,
        pattern: &str,
        after: &str,
        limit: usize,
        max_scan: usize,
        visible: impl Fn(&str) -> bool,
    ) -> (Vec<TagId>, Option<String>) {
        let prefix = literal_prefix(pattern);
        let start = if after >= prefix {
            Bound::Excluded(after)
        } else {
            Bound::Included(prefix)
        };
        let mut page = Vec::new();
        let mut last: Option<&str> = None;
        let names = self
            .by_name
            .range::<str, _>((start, Bound::Unbounded))
            .take_while(|(name, _)| name.starts_with(prefix));
        for (scanned, (name, &id)) in names.enumerate() {
            if page.len() >= limit.max(1) || scanned >= max_scan.max(1) {
                // Something is left: continue after the last name looked at.
                return (page, last.map(str::to_string));
            }
            if crate::pattern::matches(pattern, name) && visible(name) {
                page.push(id);
            }
            last = Some(name);
        }
        (page, None)
    }

    /// The tags whose names start with `pattern`'s literal prefix (its
    /// levels before the first wildcard), in name order: the only names
    /// the pattern can match, found in O(log n + range) instead of a walk
    /// of the whole catalog.
    pub fn prefix_range<'a>(
        &'a self,
        pattern: &'a str,
    ) -> impl Iterator<Item = (&'a str, TagId)> + 'a {
        let prefix = literal_prefix(pattern);
        self.by_name
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(move |(name, _)| name.starts_with(prefix))
            .map(|(name, &id)| (name.as_str(), id))
    }

    /// All tags (not the hidden ids).
    pub fn iter(&self) -> impl Iterator<Item = &TagDef> {
        self.tags.iter().filter(|d| !d.name.is_empty())
    }

    /// The tag's `TagInfo` encoded as field 1 (`Catalog.tags`).
    pub fn encoded_info(&self, id: TagId) -> Option<&Bytes> {
        self.encoded.get((id as usize).checked_sub(1)?)
    }
}

/// The levels of `pattern` before its first wildcard, joined: every name it
/// matches starts with this (`plant/#` matches `plant` itself, so no
/// trailing `/`).
fn literal_prefix(pattern: &str) -> &str {
    let end = pattern
        .split('/')
        .take_while(|level| *level != "+" && *level != "#")
        .map(|level| level.len() + 1)
        .sum::<usize>();
    &pattern[..end.saturating_sub(1).min(pattern.len())]
}

fn encode_info(def: &TagDef) -> Bytes {
    let mut buf = BytesMut::new();
    prost::encoding::message::encode(1, &def.info(), &mut buf);
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto;
    use crate::sample::Value;
    use crate::status;

    #[test]
    fn writes_of_non_finite_or_unrepresentable_floats_are_out_of_range() {
        let f32_tag = TagDef {
            writable: true,
            data_type: proto::DataType::F32,
            ..TagDef::read_only("a/sp", "s")
        };
        for v in [f64::INFINITY, f64::NEG_INFINITY, f64::NAN, 1e39, -1e39] {
            let err = f32_tag
                .convert_for_write(&Value::F64(v))
                .expect_err("refused");
            assert_eq!(err.0, status::BAD_OUT_OF_RANGE, "{v}");
        }
        assert!(f32_tag.convert_for_write(&Value::F64(1e38)).is_ok());
        let f64_tag = TagDef {
            writable: true,
            ..TagDef::read_only("a/f", "s")
        };
        let err = f64_tag
            .convert_for_write(&Value::F64(f64::INFINITY))
            .expect_err("refused");
        assert_eq!(err.0, status::BAD_OUT_OF_RANGE);
        assert!(f64_tag.convert_for_write(&Value::F64(1e39)).is_ok());
    }

    #[test]
    fn integer_writes_convert_exactly_or_are_out_of_range_at_every_edge() {
        use proto::DataType as D;
        let tag = |t| TagDef {
            writable: true,
            data_type: t,
            ..TagDef::read_only("w/x", "s")
        };
        let ok = |t, v: Value, want: Value| {
            assert_eq!(tag(t).convert_for_write(&v), Ok(want), "{t:?} {v:?}");
        };
        let out = |t, v: Value| {
            let err = tag(t).convert_for_write(&v).expect_err("refused");
            assert_eq!(err.0, status::BAD_OUT_OF_RANGE, "{t:?} {v:?}: {}", err.1);
        };
        // u64: what the TypeScript SDK and the web view send is an f64.
        ok(
            D::U64,
            Value::F64(1e19),
            Value::U64(10_000_000_000_000_000_000),
        );
        ok(D::U64, Value::U64(u64::MAX), Value::U64(u64::MAX));
        ok(D::U64, Value::F64(0.0), Value::U64(0));
        out(D::U64, Value::F64(1e30));
        out(D::U64, Value::F64(18_446_744_073_709_551_616.0)); // 2^64
        out(D::U64, Value::I64(-1));
        out(D::U64, Value::F64(-1.0));
        // i64
        ok(D::I64, Value::I64(i64::MIN), Value::I64(i64::MIN));
        ok(
            D::I64,
            Value::F64(-9_223_372_036_854_775_808.0),
            Value::I64(i64::MIN),
        );
        out(D::I64, Value::F64(9_223_372_036_854_775_808.0)); // 2^63
        out(D::I64, Value::F64(1e30));
        out(D::I64, Value::F64(-1e30));
        out(D::I64, Value::U64(u64::MAX));
        ok(D::I64, Value::U64(7), Value::I64(7));
        // the narrow types, at both ends and one past
        for (t, lo, hi) in [
            (D::U16, 0i128, 65_535i128),
            (D::I16, -32_768, 32_767),
            (D::U32, 0, 4_294_967_295),
            (D::I32, -2_147_483_648, 2_147_483_647),
        ] {
            for v in [lo, hi] {
                let want = if lo < 0 {
                    Value::I64(v as i64)
                } else {
                    Value::U64(v as u64)
                };
                ok(t, Value::F64(v as f64), want.clone());
                ok(t, Value::I64(v as i64), want);
            }
            out(t, Value::F64((lo - 1) as f64));
            out(t, Value::F64((hi + 1) as f64));
            out(t, Value::I64((hi + 1) as i64));
        }
        // Limits are said as a person would.
        let sp = TagDef {
            writable: true,
            min: Some(0.0),
            max: Some(150.0),
            unit: "degC".into(),
            ..TagDef::read_only("plant/boiler1/setpoint", "s")
        };
        let (_, why) = sp.convert_for_write(&Value::F64(500.0)).expect_err("above");
        assert_eq!(
            why,
            "500 degC is outside the limits of plant/boiler1/setpoint (0 to 150 degC)"
        );
        // A fraction is no integer (type mismatch, not range).
        let err = tag(D::U16)
            .convert_for_write(&Value::F64(1.5))
            .expect_err("mismatch");
        assert_eq!(err.0, status::BAD_TYPE_MISMATCH);
    }

    #[test]
    fn browse_pages_in_name_order_and_bounds_what_one_page_scans() {
        let names = [
            "b/2",
            "a/1",
            "plant",
            "plant/x",
            "plantx",
            "b/10",
            "plant/y/z",
        ];
        let c = Catalog::new(names.map(|n| TagDef::read_only(n, "s")));
        let page = |p: &str, after: &str, limit, scan| {
            let (ids, next) = c.browse(p, after, limit, scan, |_| true);
            let got: Vec<&str> = ids
                .iter()
                .filter_map(|id| c.get(*id))
                .map(|d| d.name.as_str())
                .collect();
            (got, next)
        };
        assert_eq!(
            page("#", "", 3, 100),
            (vec!["a/1", "b/10", "b/2"], Some("b/2".into()))
        );
        assert_eq!(
            page("#", "b/2", 3, 100),
            (
                vec!["plant", "plant/x", "plant/y/z"],
                Some("plant/y/z".into())
            )
        );
        assert_eq!(page("#", "plant/y/z", 3, 100), (vec!["plantx"], None));
        // `plant/#` matches `plant` itself, not `plantx`.
        assert_eq!(
            page("plant/#", "", 10, 100),
            (vec!["plant", "plant/x", "plant/y/z"], None)
        );
        assert_eq!(page("+/1", "", 10, 100), (vec!["a/1"], None));
        // The scan bound: an empty page that still says where to go on.
        assert_eq!(page("+/10", "", 10, 1), (vec![], Some("a/1".into())));
        assert_eq!(
            page("+/10", "a/1", 10, 1),
            (vec!["b/10"], Some("b/10".into()))
        );
        assert_eq!(page("nothing/#", "", 10, 100), (vec![], None));
    }

    #[test]
    fn redefinitions_are_logged_by_version() {
        let mut c = Catalog::new(["a", "b", "c"].map(|n| TagDef::read_only(n, "s")));
        let v0 = c.version();
        let unit = |u: &str| TagDef {
            unit: u.into(),
            ..TagDef::read_only("ignored", "s")
        };
        assert!(c.redefine(2, unit("kg"), 5));
        let v1 = c.version();
        assert!(c.redefine(3, unit("m"), 6));
        assert!(!c.redefine(3, unit("m"), 7), "no change, no entry");
        let since = |v| c.redefined_since(v).map(|i| i.collect::<Vec<_>>());
        assert_eq!(since(v0), Some(vec![2, 3]));
        assert_eq!(since(v1), Some(vec![3]));
        assert_eq!(since(c.version()), Some(vec![]));
    }
}
