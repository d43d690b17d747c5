//! A connection's subscription, resolved against the catalog into a bitset.
//! Connections with the same read scope and pattern list share one
//! `Selection` (interned), which keeps idle connections small and lets a
//! batch encode one Delta per distinct subscription instead of one per
//! connection. The read scope is part of the key and of the match: a tag
//! outside it is never selected, so every frame built from a selection
//! (Catalog, Snapshot, Delta, resume) leaves it out, and connections of
//! one scope still share their frames.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use super::catalog::Catalog;
use crate::pattern;
use crate::sample::TagId;

/// The set of tag ids a pattern list matches.
#[derive(Debug)]
pub struct Selection {
    /// The read scope (sorted, deduplicated): only tags it matches are
    /// selected.
    pub scope: Arc<[String]>,
    /// Sorted, deduplicated patterns.
    pub patterns: Vec<String>,
    bits: Vec<u64>,
    count: usize,
    /// Catalog version it was resolved against; a newer catalog means tags
    /// were found or redefined since and the selection must be resolved
    /// again (and those tags' Catalog entries sent).
    pub catalog_version: u64,
    /// Tags of that catalog (ids `1..=resolved`): a tag's name never
    /// changes within an epoch, so a newer catalog only needs its later
    /// ids matched.
    resolved: usize,
}

impl Selection {
    /// Resolves `patterns` (sorted, deduplicated) against `catalog`,
    /// reusing what `base` already decided: the cost is proportional to
    /// what changed, not to the catalog times the patterns.
    /// - patterns added to base's: only they are matched, each against the
    ///   names of its literal prefix only (a sorted range of the catalog);
    /// - patterns removed: base's selected tags are matched again (or, when
    ///   they are many, the kept patterns' names are);
    /// - tags newer than base: matched against every pattern.
    ///
    /// Without a base every pattern is resolved by its names' range, so
    /// 1,000 narrow patterns over 100,000 tags cost their matches, not
    /// 10^8 comparisons.
    fn derive(
        scope: Arc<[String]>,
        patterns: Vec<String>,
        base: Option<&Selection>,
        catalog: &Catalog,
    ) -> Self {
        let mut set = Bits {
            words: vec![0u64; catalog.len() / 64 + 1],
            count: 0,
        };
        let in_scope = Scope::new(&scope, catalog);
        let all: Vec<&str> = patterns.iter().map(String::as_str).collect();
        let base = base.filter(|b| b.resolved <= catalog.len() && b.scope == scope);
        match base {
            Some(base) => {
                let (added, removed) = difference(&patterns, &base.patterns);
                if removed.is_empty() {
                    set.words[..base.bits.len()].copy_from_slice(&base.bits);
                    set.count = base.count;
                } else if base.count.saturating_mul(all.len()) <= PER_ID_WORK {
                    // Few selected tags: check each against what is kept.
                    for id in base.ids().filter(|&id| matches_any(&all, catalog, id)) {
                        set.insert(id);
                    }
                } else {
                    // Many: the kept patterns' own names (base's tags are in
                    // scope already, later ones are checked below).
                    set.insert_matching(&all, catalog, |id| base.contains(id));
                }
                // Tags base left out match none of its patterns: only an
                // added one can take them, and only among its names.
                let upto = base.resolved as TagId;
                set.insert_matching(&added, catalog, |id| id <= upto && in_scope.contains(id));
                // Tags newer than base: few (a discovery), each against
                // every pattern; many, by each pattern's names.
                let newer = catalog.len() - base.resolved;
                if newer.saturating_mul(all.len()) <= PER_ID_WORK {
                    for id in (base.resolved + 1..=catalog.len()).map(|i| i as TagId) {
                        if matches_any(&all, catalog, id) && in_scope.contains(id) {
                            set.insert(id);
                        }
                    }
                } else {
                    set.insert_matching(&all, catalog, |id| id > upto && in_scope.contains(id));
                }
            }
            None => set.insert_matching(&all, catalog, |id| in_scope.contains(id)),
        }
        Selection {
            scope,
            patterns,
            bits: set.words,
            count: set.count,
            catalog_version: catalog.version(),
            resolved: catalog.len(),
        }
    }

    /// Ids this selects and `old` does not, in id order; word by word, so
    /// cheap even for a selection of the whole catalog.
    pub fn added_since(&self, old: &Selection) -> Vec<TagId> {
        let new = self.bits.iter().enumerate();
        set_bits(new.map(|(w, &word)| word & !old.bits.get(w).copied().unwrap_or(0))).collect()
    }

    /// True if the tag is selected.
    #[inline]
    pub fn contains(&self, id: TagId) -> bool {
        bit(&self.bits, id)
    }

    /// Number of selected tags.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True if nothing is selected.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Selected ids in id order; visits set bits only.
    pub fn ids(&self) -> impl Iterator<Item = TagId> + '_ {
        set_bits(self.bits.iter().copied())
    }
}

/// The ids of the set bits of `words` (word `w` holds ids `64w..64w+63`),
/// visiting set bits only.
fn set_bits(words: impl Iterator<Item = u64>) -> impl Iterator<Item = TagId> {
    words.enumerate().flat_map(|(w, word)| {
        let mut rest = word;
        std::iter::from_fn(move || {
            (rest != 0).then(|| {
                let bit = rest.trailing_zeros();
                rest &= rest - 1;
                (w * 64) as TagId + bit
            })
        })
    })
}

/// A read scope during a resolution: `#` (the usual one) costs nothing;
/// any other is resolved once into a bitset, each pattern walking only its
/// own names (`matching`), so a scope of 1,000 narrow patterns costs its
/// names, not every tag times every pattern.
struct Scope {
    tags: Option<Vec<u64>>,
}

impl Scope {
    fn new(scope: &[String], catalog: &Catalog) -> Self {
        if scope.iter().any(|p| p == "#") {
            return Scope { tags: None };
        }
        let mut set = Bits {
            words: vec![0u64; catalog.len() / 64 + 1],
            count: 0,
        };
        let patterns: Vec<&str> = scope.iter().map(String::as_str).collect();
        set.insert_matching(&patterns, catalog, |_| true);
        Scope {
            tags: Some(set.words),
        }
    }

    fn contains(&self, id: TagId) -> bool {
        self.tags.as_ref().is_none_or(|words| bit(words, id))
    }
}

/// A bitset under construction.
struct Bits {
    words: Vec<u64>,
    count: usize,
}

/// True if `id`'s bit is set in `words`.
#[inline]
fn bit(words: &[u64], id: TagId) -> bool {
    words
        .get(id as usize / 64)
        .is_some_and(|w| w >> (id % 64) & 1 == 1)
}

impl Bits {
    /// Inserts every tag one of `patterns` matches (each walking only its
    /// own names, see `matching`) that is not in yet and that `keep`
    /// accepts.
    fn insert_matching(
        &mut self,
        patterns: &[&str],
        catalog: &Catalog,
        keep: impl Fn(TagId) -> bool,
    ) {
        for p in patterns {
            for id in matching(p, catalog) {
                if !bit(&self.words, id) && keep(id) {
                    self.insert(id);
                }
            }
        }
    }

    fn insert(&mut self, id: TagId) {
        let word = &mut self.words[id as usize / 64];
        let bit = 1 << (id % 64);
        if *word & bit == 0 {
            *word |= bit;
            self.count += 1;
        }
    }
}

/// Patterns in `now` and not in `before`, and the reverse (both sorted).
fn difference<'a>(now: &'a [String], before: &'a [String]) -> (Vec<&'a str>, Vec<&'a str>) {
    let missing = |from: &'a [String], other: &[String]| -> Vec<&'a str> {
        let absent = |p: &&String| other.binary_search(p).is_err();
        from.iter().filter(absent).map(String::as_str).collect()
    };
    (missing(now, before), missing(before, now))
}

/// Tag-pattern checks below which matching tag by tag beats scanning each
/// pattern's names.
const PER_ID_WORK: usize = 100_000;

/// The ids of the tags `pattern` matches: only the names in its literal
/// prefix's range are looked at (`b/g5/none/#` touches none of 100,000
/// tags named `b/g7/...`; `+/x` still walks them all).
fn matching<'a>(pattern: &'a str, catalog: &'a Catalog) -> impl Iterator<Item = TagId> + 'a {
    catalog.prefix_range(pattern).filter_map(move |(name, id)| {
        #[cfg(test)]
        MATCHED.with(|n| n.set(n.get() + 1));
        pattern::matches(pattern, name).then_some(id)
    })
}

fn matches_any(patterns: &[&str], catalog: &Catalog, id: TagId) -> bool {
    catalog.get(id).is_some_and(|def| {
        patterns.iter().any(|p| {
            #[cfg(test)]
            MATCHED.with(|n| n.set(n.get() + 1));
            pattern::matches(p, &def.name)
        })
    })
}

#[cfg(test)]
thread_local! {
    /// Pattern evaluations on this thread (tests measure work, not time).
    static MATCHED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Interns selections by read scope and pattern list.
#[derive(Debug, Default)]
pub struct Selections {
    map: Mutex<Interned>,
}

/// The interned selections, by a hash of their scope and patterns. The
/// map holds no copy of a key: an entry is a `Weak` whose selection holds
/// its own scope and patterns, so when the last connection of a selection
/// closes, what it held is freed at once (a dead entry is a pointer to an
/// emptied allocation) instead of a copy of the pattern list waiting for a
/// sweep. Dead entries are swept whenever the map has doubled since the
/// last sweep, at amortised O(1) per lookup.
#[derive(Debug, Default)]
struct Interned {
    map: HashMap<u64, Vec<Weak<Selection>>>,
    entries: usize,
    sweep_at: usize,
}

fn key_hash(scope: &[String], patterns: &[String]) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    // A fixed hasher: the map lives as long as the process.
    static STATE: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    let mut h = STATE.get_or_init(Default::default).build_hasher();
    scope.hash(&mut h);
    patterns.hash(&mut h);
    h.finish()
}

impl Interned {
    fn find(&self, hash: u64, scope: &[String], patterns: &[String]) -> Option<Arc<Selection>> {
        self.map.get(&hash)?.iter().find_map(|weak| {
            weak.upgrade()
                .filter(|s| &*s.scope == scope && s.patterns == patterns)
        })
    }

    fn insert(&mut self, hash: u64, selection: &Arc<Selection>) {
        if self.entries >= self.sweep_at {
            self.map.retain(|_, list| {
                list.retain(|w| w.strong_count() > 0);
                !list.is_empty()
            });
            self.entries = self.map.values().map(Vec::len).sum();
            self.sweep_at = (self.entries * 2).max(64);
        }
        let list = self.map.entry(hash).or_default();
        let before = list.len();
        // Entries of this hash that died, and the one this replaces (an
        // older catalog version of the same key), go now.
        list.retain(|w| {
            w.upgrade()
                .is_some_and(|s| !(s.scope == selection.scope && s.patterns == selection.patterns))
        });
        list.push(Arc::downgrade(selection));
        self.entries = self.entries + list.len() - before;
    }
}

impl Selections {
    /// The shared selection for these patterns (order and duplicates
    /// ignored) within `scope` (canonical: `auth::scope`), resolved from
    /// `base` (the caller's current selection) when it must be built.
    /// Built outside the lock: one session's large Subscribe never holds
    /// up another's.
    pub fn get(
        &self,
        scope: &Arc<[String]>,
        mut patterns: Vec<String>,
        base: Option<&Selection>,
        catalog: &Catalog,
    ) -> Arc<Selection> {
        patterns.sort();
        patterns.dedup();
        let hash = key_hash(scope, &patterns);
        if let Some(existing) = self.lock().find(hash, scope, &patterns)
            && existing.catalog_version == catalog.version()
        {
            return existing;
        }
        let selection = Arc::new(Selection::derive(scope.clone(), patterns, base, catalog));
        let mut interned = self.lock();
        if let Some(raced) = interned.find(hash, scope, &selection.patterns)
            && raced.catalog_version == catalog.version()
        {
            return raced;
        }
        interned.insert(hash, &selection);
        selection
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Interned> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Selections interned (live or not yet swept).
    pub fn interned(&self) -> usize {
        self.lock().entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::TagDef;

    fn all() -> Arc<[String]> {
        crate::auth::scope(vec!["#".into()])
    }

    #[test]
    fn a_scope_bounds_every_pattern_and_is_part_of_the_key() {
        let catalog =
            Catalog::new(["a/x", "a/y", "b/x", "b/y", "c/x"].map(|n| TagDef::read_only(n, "s")));
        let sels = Selections::default();
        let scope = crate::auth::scope(vec!["b/#".into(), "a/x".into()]);
        let sel = sels.get(&scope, vec!["#".into()], None, &catalog);
        let names: Vec<&str> = sel
            .ids()
            .filter_map(|id| catalog.get(id).map(|d| d.name.as_str()))
            .collect();
        assert_eq!(names, ["a/x", "b/x", "b/y"]);
        // Same patterns, another scope: another selection.
        let open = sels.get(&all(), vec!["#".into()], None, &catalog);
        assert_eq!(open.len(), 5);
        assert!(!Arc::ptr_eq(&sel, &open));
        // Same scope (in another order) and patterns: the same one.
        let again = crate::auth::scope(vec!["a/x".into(), "b/#".into(), "b/#".into()]);
        assert!(Arc::ptr_eq(
            &sel,
            &sels.get(&again, vec!["#".into()], None, &catalog)
        ));
        // Derived from a scoped base, added patterns stay inside the scope.
        let more = sels.get(&scope, vec!["#".into(), "c/#".into()], Some(&sel), &catalog);
        assert_eq!(more.len(), 3);
        let narrow = sels.get(&scope, vec!["+/x".into()], Some(&more), &catalog);
        assert_eq!(narrow.len(), 2);
    }

    #[test]
    fn a_wide_scope_costs_its_names_not_every_tag_times_every_pattern() {
        let catalog = Catalog::new(
            (0..100_000).map(|i| TagDef::read_only(format!("b/g{}/t{i}", i / 100), "s")),
        );
        // 1,137 patterns (what a 16 KiB JWT holds), each naming one group.
        let scope = crate::auth::scope((0..1137).map(|i| format!("b/g{i}/#")).collect());
        MATCHED.with(|n| n.set(0));
        let sel = Selections::default().get(&scope, vec!["#".into()], None, &catalog);
        let evaluated = MATCHED.with(std::cell::Cell::get);
        assert_eq!(sel.len(), 100_000);
        // Each group pattern walks its group (and b/g1 the b/g1x... ones,
        // a few times over); the pattern `#` walks the catalog once.
        assert!(evaluated < 1_500_000, "{evaluated} evaluations, not 10^8");
    }

    #[test]
    fn lists_no_connection_holds_are_swept() {
        let catalog = Catalog::new([TagDef::read_only("a/x", "s")]);
        let sels = Selections::default();
        let held = sels.get(&all(), vec!["a/#".into()], None, &catalog);
        // A session growing its subscription one pattern at a time leaves
        // every intermediate list behind.
        for i in 0..10_000 {
            drop(sels.get(&all(), vec![format!("p/{i}")], None, &catalog));
        }
        assert!(sels.interned() <= 130, "{} lists kept", sels.interned());
        assert!(Arc::ptr_eq(
            &held,
            &sels.get(&all(), vec!["a/#".into()], None, &catalog)
        ));
    }

    #[test]
    fn ids_are_the_matched_tags_in_order_across_words() {
        // Ids start at 1; 200 tags span four bitset words.
        let catalog = Catalog::new((1..=200).map(|i| {
            let area = if [1, 63, 64, 65, 127, 128, 200].contains(&i) {
                "odd"
            } else {
                "even"
            };
            TagDef::read_only(format!("{area}/t{i}"), "s")
        }));
        let sel = Selections::default().get(&all(), vec!["odd/#".into()], None, &catalog);
        let ids: Vec<TagId> = sel.ids().collect();
        assert_eq!(ids, [1, 63, 64, 65, 127, 128, 200]);
        assert_eq!(sel.len(), ids.len());
        assert!(ids.iter().all(|id| sel.contains(*id)));
        assert!(!sel.contains(2));
    }

    #[test]
    fn a_derived_selection_equals_one_resolved_from_scratch() {
        use crate::sample::TagKey;
        let name = |i: usize| format!("a{}/b{}/c{i}", i % 3, i % 7);
        let mut catalog = Catalog::new((1..=300).map(|i| TagDef::read_only(name(i), "s")));
        let lists: [&[&str]; 6] = [
            &["a1/#"],
            &["a1/#", "+/b2/#"],
            &["+/b2/#"],
            &["+/b2/#", "a0/b0/+", "a2/#"],
            &["a0/b0/+"],
            &[],
        ];
        let owned = |l: &[&str]| -> Vec<String> { l.iter().map(|p| p.to_string()).collect() };
        let mut current = Selection::derive(all(), Vec::new(), None, &catalog);
        for (round, list) in lists.iter().cycle().take(12).enumerate() {
            if round == 6 {
                // The catalog grows: later ids must be matched too.
                for i in 301..=400 {
                    let key = TagKey {
                        source: 0,
                        local: i as u32,
                    };
                    catalog.add(TagDef::read_only(name(i), "s"), key, 0);
                }
            }
            let mut patterns = owned(list);
            patterns.sort();
            let derived = Selection::derive(all(), patterns.clone(), Some(&current), &catalog);
            let fresh = Selection::derive(all(), patterns, None, &catalog);
            let ids: Vec<TagId> = derived.ids().collect();
            assert_eq!(
                ids,
                fresh.ids().collect::<Vec<_>>(),
                "round {round}: {list:?}"
            );
            assert_eq!(derived.len(), fresh.len());
            let added: Vec<TagId> = ids
                .iter()
                .copied()
                .filter(|id| !current.contains(*id))
                .collect();
            assert_eq!(derived.added_since(&current), added);
            current = derived;
        }
    }

    #[test]
    fn subscribe_and_unsubscribe_cost_what_they_change_not_the_catalog() {
        let catalog = Catalog::new(
            (0..10_000).map(|i| TagDef::read_only(format!("a/{}/t{i}", i % 1000), "s")),
        );
        let held: Vec<String> = (0..500)
            .map(|i| format!("none/{i}/#"))
            .chain(["a/7/#".into()])
            .collect();
        let mut sorted = held.clone();
        sorted.sort();
        let base = Selection::derive(all(), sorted.clone(), None, &catalog);
        assert_eq!(base.len(), 10);
        let work = |f: &dyn Fn() -> Selection| {
            MATCHED.with(|n| n.set(0));
            let sel = f();
            (sel, MATCHED.with(std::cell::Cell::get))
        };
        // One more pattern: each tag base leaves out, against that pattern.
        let mut more = sorted.clone();
        more.push("a/8/#".into());
        more.sort();
        let (sel, evaluated) =
            work(&|| Selection::derive(all(), more.clone(), Some(&base), &catalog));
        assert_eq!(sel.len(), 20);
        // Only the names under its literal prefix "a/8": a/8, a/80..a/89
        // and a/800..a/899, ten tags each.
        assert_eq!(evaluated, 1_110, "not 10,000 tags x 502 patterns");
        // Dropping 250 patterns: only the 10 selected tags are looked at again.
        let fewer: Vec<String> = sorted
            .iter()
            .filter(|p| !p.starts_with("none/1"))
            .cloned()
            .collect();
        assert!(fewer.len() < 450 && fewer.contains(&"a/7/#".to_string()));
        let (sel, evaluated) =
            work(&|| Selection::derive(all(), fewer.clone(), Some(&base), &catalog));
        assert_eq!(sel.len(), 10);
        assert!(evaluated <= 10 * fewer.len(), "{evaluated} evaluations");
    }

    #[test]
    fn a_thousand_narrow_patterns_over_100k_tags_cost_their_names_not_the_product() {
        let catalog = Catalog::new(
            (0..100_000).map(|i| TagDef::read_only(format!("b/g{}/t{i}", i / 1000), "s")),
        );
        let mut patterns: Vec<String> = (0..1000)
            .map(|i| match i {
                0..10 => format!("b/g{i}/#"),
                _ => format!("b/g{}/none/{i}", i % 100),
            })
            .collect();
        patterns.sort();
        MATCHED.with(|n| n.set(0));
        let fresh = Selection::derive(all(), patterns.clone(), None, &catalog);
        let evaluated = MATCHED.with(std::cell::Cell::get);
        assert_eq!(fresh.len(), 10_000);
        // Each group pattern walks its group (and b/g1 the b/g1x ones too).
        assert!(evaluated < 200_000, "{evaluated} evaluations, not 10^8");

        // Dropping one narrow pattern from 10,000 selected tags x 999 kept
        // patterns: the kept patterns' names are walked instead, and the
        // result is the same as resolving from scratch.
        let fewer: Vec<String> = patterns
            .iter()
            .filter(|p| !p.ends_with("/999"))
            .cloned()
            .collect();
        MATCHED.with(|n| n.set(0));
        let derived = Selection::derive(all(), fewer.clone(), Some(&fresh), &catalog);
        let evaluated = MATCHED.with(std::cell::Cell::get);
        assert!(evaluated < 200_000, "{evaluated} evaluations");
        let scratch = Selection::derive(all(), fewer, None, &catalog);
        assert_eq!(
            derived.ids().collect::<Vec<_>>(),
            scratch.ids().collect::<Vec<_>>()
        );

        // Dropping a group pattern too: its tags leave.
        let no_g3: Vec<String> = patterns
            .iter()
            .filter(|p| p.as_str() != "b/g3/#")
            .cloned()
            .collect();
        let derived = Selection::derive(all(), no_g3.clone(), Some(&fresh), &catalog);
        let scratch = Selection::derive(all(), no_g3, None, &catalog);
        assert_eq!(derived.len(), 9_000);
        assert_eq!(
            derived.ids().collect::<Vec<_>>(),
            scratch.ids().collect::<Vec<_>>()
        );
    }
}
