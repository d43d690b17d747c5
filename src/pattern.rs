//! MQTT-style tag name patterns: `+` matches one level, `#` the rest (last
//! level only). Shared by subscriptions, Browse and (later) auth rules.

use thiserror::Error;

use crate::peer_text::shown;

/// Why a pattern was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PatternError {
    /// Empty patterns match nothing and are almost always a client bug.
    #[error("empty pattern")]
    Empty,
    /// `#` may only stand alone as the last level (the pattern, quoted
    /// and clipped: it may be a peer's).
    #[error("`#` must be the whole last level in {0}")]
    MisplacedHash(String),
    /// `+` must be a whole level.
    #[error("`+` must be a whole level in {0}")]
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
            return Err(PatternError::MisplacedHash(shown(pattern).to_string()));
        }
        if level.contains('+') && *level != "+" {
            return Err(PatternError::MisplacedPlus(shown(pattern).to_string()));
        }
    }
    Ok(())
}

/// Checks a pattern's syntax and that it is at most `max_bytes` long;
/// `limit` names the bound in the message (a config key a peer can look
/// up). The message quotes a clipped prefix: the pattern may be a peer's.
pub fn validate_within(pattern: &str, max_bytes: usize, limit: &str) -> Result<(), String> {
    if pattern.len() > max_bytes {
        return Err(format!(
            "{} is {} bytes, longer than {limit} = {max_bytes}",
            shown(pattern),
            pattern.len()
        ));
    }
    validate(pattern).map_err(|e| e.to_string())
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

/// Fills `{N}` in `template` with the N-th capture (1-based), in one pass:
/// a capture that itself contains `{2}` stays as it is. A `{N}` without
/// such a capture stays literal.
pub fn fill(template: &str, captures: &[&str]) -> String {
    let mut name = String::with_capacity(template.len() + 16);
    for piece in pieces(template) {
        match piece {
            Piece::Text(t) => name.push_str(t),
            Piece::Capture(n, raw) => name.push_str(captures.get(n - 1).copied().unwrap_or(raw)),
        }
    }
    name
}

/// A template split into literal text and `{N}` references.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Piece<'a> {
    Text(&'a str),
    /// 1-based capture index and its text as written.
    Capture(usize, &'a str),
}

fn pieces(template: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        let index = after[..digits].parse::<usize>().ok().filter(|n| *n > 0);
        match index {
            Some(n) if after[digits..].starts_with('}') => {
                if open > 0 {
                    out.push(Piece::Text(&rest[..open]));
                }
                out.push(Piece::Capture(n, &rest[open..open + digits + 2]));
                rest = &rest[open + digits + 2..];
            }
            _ => {
                out.push(Piece::Text(&rest[..=open]));
                rest = after;
            }
        }
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    out
}

/// Whether a topic map (`filter` → `template`) can produce `name` for some
/// topic. A `+` capture is one level (any text without `/`), a `#` capture
/// any text; a capture used twice has one value. `check` uses it to refuse
/// maps that could take over a configured tag.
pub fn can_produce(filter: &str, template: &str, name: &str) -> bool {
    let wildcards: Vec<bool> = filter
        .split('/')
        .filter(|l| *l == "+" || *l == "#")
        .map(|l| l == "#")
        .collect();
    let pieces = pieces(template);
    let mut bound = vec![None; wildcards.len()];
    produce(&pieces, &wildcards, name, &mut bound)
}

/// Backtracking match of `pieces` against `name`; `multi[i]`: capture i+1
/// may span levels; `bound`: values already given to captures.
fn produce<'a>(
    pieces: &[Piece<'_>],
    multi: &[bool],
    name: &'a str,
    bound: &mut Vec<Option<&'a str>>,
) -> bool {
    let Some((first, rest)) = pieces.split_first() else {
        return name.is_empty();
    };
    let (n, raw) = match *first {
        Piece::Text(t) => {
            return name.starts_with(t) && produce(rest, multi, &name[t.len()..], bound);
        }
        Piece::Capture(n, raw) => (n, raw),
    };
    let Some(&spans) = multi.get(n - 1) else {
        // No such capture: fill leaves the text as written.
        return name.starts_with(raw) && produce(rest, multi, &name[raw.len()..], bound);
    };
    if let Some(value) = bound[n - 1] {
        return name.starts_with(value) && produce(rest, multi, &name[value.len()..], bound);
    }
    let longest = if spans {
        name.len()
    } else {
        name.find('/').unwrap_or(name.len())
    };
    for end in (0..=longest).filter(|e| name.is_char_boundary(*e)) {
        bound[n - 1] = Some(&name[..end]);
        if produce(rest, multi, &name[end..], bound) {
            return true;
        }
    }
    bound[n - 1] = None;
    false
}

/// One level of a name shape: the names a source's template can produce,
/// level by level (`check` compares them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Level {
    /// Exactly this level.
    Literal(String),
    /// Any one level.
    One,
    /// One or more levels.
    Many,
}

/// The shape of a topic map's names: its template's levels, a level that
/// is exactly a `+` capture is [`Level::One`], one with a `#` capture
/// [`Level::Many`], one mixing text and a capture is taken as the widest
/// it can be (so an overlap is never missed).
pub fn map_shape(filter: &str, template: &str) -> Vec<Level> {
    let multi: Vec<bool> = filter
        .split('/')
        .filter(|l| *l == "+" || *l == "#")
        .map(|l| l == "#")
        .collect();
    template
        .split('/')
        .map(|level| {
            let captures: Vec<usize> = pieces(level)
                .into_iter()
                .filter_map(|p| match p {
                    Piece::Capture(n, _) if n >= 1 && n <= multi.len() => Some(n),
                    _ => None,
                })
                .collect();
            if captures.is_empty() {
                Level::Literal(level.to_string())
            } else if captures.iter().any(|&n| multi[n - 1]) {
                Level::Many
            } else {
                Level::One
            }
        })
        .collect()
}

/// Whether some name fits both shapes. `Many` is one level then any
/// number more; the search walks pairs of positions, each once.
pub fn shapes_overlap(a: &[Level], b: &[Level]) -> bool {
    // Expanded: `Many` becomes `One` followed by a star (zero or more
    // levels), written as `None`.
    fn expand(shape: &[Level]) -> Vec<Option<&Level>> {
        shape
            .iter()
            .flat_map(|l| match l {
                Level::Many => vec![Some(&Level::One), None],
                other => vec![Some(other)],
            })
            .collect()
    }
    let (a, b) = (expand(a), expand(b));
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![(0usize, 0usize)];
    while let Some((i, j)) = stack.pop() {
        if !seen.insert((i, j)) {
            continue;
        }
        if i == a.len() && j == b.len() {
            return true;
        }
        let (x, y) = (a.get(i).copied(), b.get(j).copied());
        // A star may match nothing more, or one more level of the other.
        if x == Some(None) {
            stack.push((i + 1, j));
            if j < b.len() {
                stack.push((i, j + 1));
            }
        }
        if y == Some(None) {
            stack.push((i, j + 1));
            if i < a.len() {
                stack.push((i + 1, j));
            }
        }
        if let (Some(Some(x)), Some(Some(y))) = (x, y) {
            let meet = match (x, y) {
                (Level::Literal(p), Level::Literal(q)) => p == q,
                _ => true,
            };
            if meet {
                stack.push((i + 1, j + 1));
            }
        }
    }
    false
}

/// The shape of one name: every level literal.
pub fn name_shape(name: &str) -> Vec<Level> {
    name.split('/')
        .map(|l| Level::Literal(l.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_overlap_when_some_name_fits_both() {
        let lit = |s: &str| Level::Literal(s.into());
        let (one, many) = (Level::One, Level::Many);
        // The squat: a Sparkplug node `line4` in the demo's old layout.
        let sparkplug = [lit("plant"), one.clone(), many.clone()];
        let mqtt_map = map_shape("plant/line4/+/value", "plant/line4/{1}");
        assert_eq!(mqtt_map, [lit("plant"), lit("line4"), one.clone()]);
        assert!(shapes_overlap(&sparkplug, &mqtt_map));
        assert!(shapes_overlap(
            &sparkplug,
            &name_shape("plant/boiler1/temperature")
        ));
        assert!(
            !shapes_overlap(&sparkplug, &name_shape("plant/x")),
            "Many is one level at least"
        );
        let cells = [
            lit("plant"),
            lit("cells"),
            one.clone(),
            one.clone(),
            many.clone(),
        ];
        assert!(!shapes_overlap(&cells, &mqtt_map));
        assert!(!shapes_overlap(
            &cells,
            &name_shape("plant/boiler1/temperature")
        ));
        assert!(shapes_overlap(
            &[many.clone(), lit("x")],
            &[lit("a"), many.clone()]
        ));
        assert!(!shapes_overlap(
            &[lit("a"), many.clone()],
            &[lit("b"), many.clone()]
        ));
        assert_eq!(map_shape("a/#", "x/{1}/y"), [lit("x"), many, lit("y")]);
        assert_eq!(map_shape("a/+", "x-{1}"), [one]);
    }

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

    #[test]
    fn fill_substitutes_once_and_leaves_unknown_references() {
        assert_eq!(fill("p/{1}/{2}", &["a", "b"]), "p/a/b");
        assert_eq!(
            fill("p/{1}/x", &["{2}", "b"]),
            "p/{2}/x",
            "no re-substitution"
        );
        assert_eq!(fill("p/{3}/{x}/{}", &["a"]), "p/{3}/{x}/{}");
        assert_eq!(fill("{1}{1}", &["ab"]), "abab");
    }

    #[test]
    fn can_produce_decides_whether_a_map_reaches_a_name() {
        assert!(can_produce(
            "evil/+",
            "plant/boiler/{1}",
            "plant/boiler/temp"
        ));
        assert!(
            !can_produce("evil/+", "plant/boiler/{1}", "plant/boiler/a/b"),
            "+ is one level"
        );
        assert!(can_produce(
            "evil/#",
            "plant/boiler/{1}",
            "plant/boiler/a/b"
        ));
        assert!(!can_produce(
            "evil/+",
            "plant/line4/{1}",
            "plant/boiler/temp"
        ));
        assert!(can_produce("a/+/+", "x/{2}-{1}", "x/b-a"));
        assert!(
            !can_produce("a/+", "x/{1}/{1}", "x/a/b"),
            "one value per capture"
        );
        assert!(can_produce("a/+", "x/{1}/{1}", "x/a/a"));
        assert!(
            can_produce("a/+", "x/{2}", "x/{2}"),
            "an unknown reference is literal"
        );
        assert!(!can_produce("a/+", "x/{2}", "x/y"));
        assert!(can_produce("a", "fixed/name", "fixed/name"));
    }
}
