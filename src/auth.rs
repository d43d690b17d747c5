//! Principals: who a connection is and what it may read and write. The
//! principal is decided at the upgrade and travels with the session; the
//! engine never sees one. Tokens and JWTs come with the security issue;
//! until then every connection is the open principal (read and write
//! everything, as before).

use crate::pattern;

/// A connection's identity and scopes (protocol.md "Access").
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// Who, for the audit log.
    pub subject: String,
    /// Patterns of the tags it may see.
    pub read: Vec<String>,
    /// Patterns of the tags it may write.
    pub write: Vec<String>,
}

impl Principal {
    /// Everything readable and writable: the behaviour without `[auth]`
    /// until access control lands.
    pub fn open() -> Self {
        Principal {
            subject: "anonymous".into(),
            read: vec!["#".into()],
            write: vec!["#".into()],
        }
    }

    /// True if it may write the tag named `name`.
    pub fn may_write(&self, name: &str) -> bool {
        self.write.iter().any(|p| pattern::matches(p, name))
    }
}
