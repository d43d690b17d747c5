//! The validation helpers every configuration section uses: the problem
//! list (all problems of a file reported at once, each with its key), the
//! timer bounds, and the rule for tag names. A leaf: the root `config`
//! and each source's own config import it, so the arrows run one way
//! (`config` → `source` → `validate`).

use std::time::Duration;

/// Shortest timer a config may set.
pub const MIN_TIMER: Duration = Duration::from_millis(1);
/// One hour: the longest heartbeat, handshake or request timeout.
pub const HOUR: Duration = Duration::from_secs(3600);
/// One day: the longest poll interval.
pub const DAY: Duration = Duration::from_secs(86_400);

/// One problem with one key.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// Dotted key path, e.g. `modbus[0].tags[2].type`.
    pub key: String,
    /// 1-based line in the file, when it can be found.
    pub line: Option<usize>,
    /// What is wrong and what is expected.
    pub message: String,
}

/// Collects problems during validation so all are reported at once.
#[derive(Debug, Default)]
pub struct Problems(Vec<Problem>);

impl Problems {
    /// Records a problem with `key`.
    pub fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            line: None,
            message: message.into(),
        });
    }

    /// Records a problem unless `value` lies in `min..=max`. A duration a
    /// timer cannot add to an `Instant` (years) would panic in the task
    /// that uses it, long after `check` said OK.
    pub fn duration(
        &mut self,
        key: impl Into<String>,
        value: Duration,
        min: Duration,
        max: Duration,
    ) {
        if value < min || value > max {
            self.push(
                key,
                format!(
                    "must be between {} and {}",
                    humantime_serde::re::humantime::format_duration(min),
                    humantime_serde::re::humantime::format_duration(max)
                ),
            );
        }
    }

    /// Records a problem unless a tag's display `decimals` is within
    /// 0..=[`MAX_DECIMALS`](crate::sample::MAX_DECIMALS).
    pub fn decimals(&mut self, key: impl Into<String>, value: Option<u8>) {
        let max = crate::sample::MAX_DECIMALS;
        if value.is_some_and(|d| d > max) {
            self.push(key, format!("must be between 0 and {max}"));
        }
    }

    /// The problems, in order.
    pub fn into_vec(self) -> Vec<Problem> {
        self.0
    }

    /// True if there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The keys of the problems so far, in order.
    pub fn keys(&self) -> Vec<String> {
        self.0.iter().map(|p| p.key.clone()).collect()
    }
}

/// Longest tag name, in bytes (UTF-8), for every source kind: names are
/// in every Catalog and Browse page, and a rogue publisher must not make
/// one 60 KB.
pub const MAX_TAG_NAME_BYTES: usize = 256;
/// Most `/`-separated levels in a tag name.
pub const MAX_TAG_LEVELS: usize = 16;

/// Checks a tag name: `/`-separated, no empty level, no wildcard, no
/// control character, at most [`MAX_TAG_NAME_BYTES`] bytes and
/// [`MAX_TAG_LEVELS`] levels. The message quotes a bounded prefix.
pub fn check_tag_name(name: &str) -> Result<(), String> {
    let shown = crate::peer_text::shown(name);
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > MAX_TAG_NAME_BYTES {
        return Err(format!("{shown} is longer than {MAX_TAG_NAME_BYTES} bytes"));
    }
    if name.split('/').count() > MAX_TAG_LEVELS {
        return Err(format!("{shown} has more than {MAX_TAG_LEVELS} levels"));
    }
    if name.split('/').any(str::is_empty) {
        return Err(format!("{shown} has an empty level"));
    }
    if name.contains(['+', '#']) {
        return Err(format!("{shown} contains a wildcard (`+` or `#`)"));
    }
    if crate::peer_text::has_control(name) {
        return Err(format!("{shown} contains a control character"));
    }
    Ok(())
}
