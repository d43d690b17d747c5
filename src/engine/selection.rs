//! A connection's subscription, resolved against the catalog into a bitset.
//! Connections with the same pattern list share one `Selection` (interned),
//! which keeps idle connections small and lets a batch encode one Delta per
//! distinct subscription instead of one per connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use super::catalog::Catalog;
use crate::pattern;
use crate::sample::TagId;

/// The set of tag ids a pattern list matches.
#[derive(Debug)]
pub struct Selection {
    /// Sorted, deduplicated patterns.
    pub patterns: Vec<String>,
    bits: Vec<u64>,
    count: usize,
    /// Catalog version it was resolved against; a newer catalog means tags
    /// were found or redefined since and the selection must be resolved
    /// again (and those tags' Catalog entries sent).
    pub catalog_version: u64,
}

impl Selection {
    fn build(patterns: Vec<String>, catalog: &Catalog) -> Self {
        let mut bits = vec![0u64; catalog.len() / 64 + 1];
        let mut count = 0;
        for def in catalog.iter() {
            if patterns.iter().any(|p| pattern::matches(p, &def.name)) {
                bits[def.id as usize / 64] |= 1 << (def.id % 64);
                count += 1;
            }
        }
        Selection {
            patterns,
            bits,
            count,
            catalog_version: catalog.version(),
        }
    }

    /// True if the tag is selected.
    #[inline]
    pub fn contains(&self, id: TagId) -> bool {
        self.bits
            .get(id as usize / 64)
            .is_some_and(|w| w >> (id % 64) & 1 == 1)
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
        self.bits.iter().enumerate().flat_map(|(w, &word)| {
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
}

/// Interns selections by pattern list.
#[derive(Debug, Default)]
pub struct Selections {
    map: Mutex<Interned>,
}

/// The interned lists. Entries whose selection no connection holds any
/// more are swept whenever the map has doubled since the last sweep, so
/// their keys (every intermediate pattern list of every session) do not
/// pile up, at amortised O(1) per lookup.
#[derive(Debug, Default)]
struct Interned {
    map: HashMap<Vec<String>, Weak<Selection>>,
    sweep_at: usize,
}

impl Selections {
    /// The shared selection for these patterns (order and duplicates ignored).
    pub fn get(&self, mut patterns: Vec<String>, catalog: &Catalog) -> Arc<Selection> {
        patterns.sort();
        patterns.dedup();
        let mut interned = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = interned.map.get(&patterns).and_then(Weak::upgrade) {
            if existing.catalog_version == catalog.version() {
                return existing;
            }
        }
        if interned.map.len() >= interned.sweep_at {
            interned.map.retain(|_, weak| weak.strong_count() > 0);
            interned.sweep_at = (interned.map.len() * 2).max(64);
        }
        let selection = Arc::new(Selection::build(patterns.clone(), catalog));
        interned.map.insert(patterns, Arc::downgrade(&selection));
        selection
    }

    /// Pattern lists interned (live or not yet swept).
    pub fn interned(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::catalog::TagDef;

    #[test]
    fn lists_no_connection_holds_are_swept() {
        let catalog = Catalog::new([TagDef::read_only("a/x", "s")]);
        let sels = Selections::default();
        let held = sels.get(vec!["a/#".into()], &catalog);
        // A session growing its subscription one pattern at a time leaves
        // every intermediate list behind.
        for i in 0..10_000 {
            drop(sels.get(vec![format!("p/{i}")], &catalog));
        }
        assert!(sels.interned() <= 130, "{} lists kept", sels.interned());
        assert!(Arc::ptr_eq(&held, &sels.get(vec!["a/#".into()], &catalog)));
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
        let sel = Selections::default().get(vec!["odd/#".into()], &catalog);
        let ids: Vec<TagId> = sel.ids().collect();
        assert_eq!(ids, [1, 63, 64, 65, 127, 128, 200]);
        assert_eq!(sel.len(), ids.len());
        assert!(ids.iter().all(|id| sel.contains(*id)));
        assert!(!sel.contains(2));
    }
}
