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
    fn syntax() {
        assert_eq!(validate(""), Err(PatternError::Empty));
        assert!(validate("a/#/b").is_err());
        assert!(validate("a/b#").is_err());
        assert!(validate("a/b+/c").is_err());
        assert!(validate("a/+/#").is_ok());
    }
}
