//! MQTT-style tag name patterns: `+` matches one level, `#` the rest (last
//! level only). Shared by subscriptions, Browse and (later) auth rules.

use thiserror::Error;

/// Why a pattern was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PatternError {
    /// Empty patterns match nothing and are almost always a client bug.
    #[error("empty pattern")]
    Empty,
    /// `#` may only stand alone as the last level.
    #[error("`#` must be the whole last level in {0:?}")]
    MisplacedHash(String),
    /// `+` must be a whole level.
    #[error("`+` must be a whole level in {0:?}")]
    MisplacedPlus(String),
}

/// Checks a pattern's syntax.
pub fn validate(pattern: &str) -> Result<(), PatternError> {
    if pattern.is_empty() {
        return Err(PatternError::Empty);
    }
    let levels: Vec<&str> = pattern.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(PatternError::MisplacedHash(pattern.to_string()));
        }
        if level.contains('+') && *level != "+" {
            return Err(PatternError::MisplacedPlus(pattern.to_string()));
        }
    }
    Ok(())
}

/// True if `name` matches `pattern` (assumed valid).
pub fn matches(pattern: &str, name: &str) -> bool {
    let mut p = pattern.split('/');
    let mut n = name.split('/');
    loop {
        match (p.next(), n.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The wildcard levels of `topic` under `filter` (`+` one level each, `#`
/// the rest joined by `/`), or `None` if it does not match.
pub fn captures<'a>(filter: &str, topic: &'a str) -> Option<Vec<&'a str>> {
    let mut out = Vec::new();
    let mut levels = topic.split('/');
    let mut consumed = 0;
    for f in filter.split('/') {
        if f == "#" {
            out.push(&topic[consumed.min(topic.len())..]);
            return Some(out);
        }
        let level = levels.next()?;
        if f == "+" {
            out.push(level);
        } else if f != level {
            return None;
        }
        consumed += level.len() + 1;
    }
    levels.next().is_none().then_some(out)
}

/// Fills `{N}` in `template` with the N-th capture (1-based).
pub fn fill(template: &str, captures: &[&str]) -> String {
    let mut name = template.to_string();
    for (i, c) in captures.iter().enumerate() {
        name = name.replace(&format!("{{{}}}", i + 1), c);
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(matches("#", "a/b/c"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/+/c", "a/b/c"));
        assert!(!matches("a/+/c", "a/b/d"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(matches("a/b", "a/b"));
        assert!(!matches("a/b", "a/bc"));
        assert!(!matches("a/b/c", "a/b"));
    }

    #[test]
    fn captures_and_templates() {
        assert_eq!(captures("p/+/value", "p/m1/value"), Some(vec!["m1"]));
        assert_eq!(captures("p/+/value", "p/m1/other"), None);
        assert_eq!(captures("p/+/value", "p/m1/value/x"), None);
        assert_eq!(captures("p/+/+/v", "p/a/b/v"), Some(vec!["a", "b"]));
        assert_eq!(captures("p/#", "p/a/b/c"), Some(vec!["a/b/c"]));
        assert_eq!(captures("p/+/#", "p/a/b/c"), Some(vec!["a", "b/c"]));
        assert_eq!(captures("p/#", "q/a"), None);
        assert_eq!(fill("plant/{2}/{1}", &["m1", "temp"]), "plant/temp/m1");
    }

    #[test]
    fn syntax() {
        assert_eq!(validate(""), Err(PatternError::Empty));
        assert!(validate("a/#/b").is_err());
        assert!(validate("a/b#").is_err());
        assert!(validate("a/b+/c").is_err());
        assert!(validate("a/+/#").is_ok());
    }
}
