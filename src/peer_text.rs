//! Text a peer controls (a tag named in a request, a JWT `sub`, Sparkplug
//! and MQTT identifiers) on its way into a log line or an answer. Receives
//! any string; emits it quoted with every control character escaped, so it
//! can never start a log line of its own (a forged `audit` line), and
//! clipped to [`SHOWN_BYTES`], so a 60 KB name costs a log line or an
//! error message no more than a short one.

use std::fmt;

/// Bytes of a peer's string that a log line or a message carries.
pub const SHOWN_BYTES: usize = 128;

/// A peer's string as logs and messages show it: `"plant/x"`, escaped
/// like Rust's `{:?}`, with `…(+N bytes)` after a clipped one.
#[derive(Clone, Copy)]
pub struct Shown<'a>(&'a str);

/// Wraps `text` for display (`%shown(&tag)` in a tracing event).
pub fn shown(text: &str) -> Shown<'_> {
    Shown(text)
}

/// The longest prefix of `text` of at most `max` bytes that ends on a
/// character boundary.
pub fn clip(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let head = clip(self.0, SHOWN_BYTES);
        write!(f, "\"{}\"", head.escape_debug())?;
        if head.len() < self.0.len() {
            write!(f, "…(+{} bytes)", self.0.len() - head.len())?;
        }
        Ok(())
    }
}

impl fmt::Debug for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// True if `text` holds a control character (a newline, an escape, ...).
pub fn has_control(text: &str) -> bool {
    text.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peers_text_is_quoted_escaped_and_clipped() {
        assert_eq!(shown("plant/x").to_string(), "\"plant/x\"");
        let forged = "x\n2026-01-01T00:00:00Z INFO audit: event=\"write\"";
        let line = shown(forged).to_string();
        assert!(!line.contains('\n') && line.contains("\\n"), "{line}");
        assert!(shown("a\u{1b}[31m\r").to_string().contains("\\u{1b}"));
        let long = "é".repeat(40_000);
        let s = shown(&long).to_string();
        assert!(s.len() < SHOWN_BYTES + 40, "{} bytes", s.len());
        assert!(s.ends_with("…(+79872 bytes)"), "{s}");
        assert_eq!(clip("aé", 2), "a");
        assert!(has_control("a\tb") && !has_control("plant/ä"));
    }
}
