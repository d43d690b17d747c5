//! Browse cursors (protocol.md Browse, `next_after`). A page that stops on
//! a name the connection may see continues after that name, as the spec
//! says. A page that stops on a name outside the read scope (the scan
//! bound was hit among hidden tags) must not name it: the position is
//! sealed into an opaque cursor (ChaCha20-Poly1305 under a key made at
//! start), which only this process can open. So a cursor names nothing,
//! and nobody can make one that points at a position of their choosing.

use std::sync::OnceLock;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// The prefix of a sealed cursor. A tag name may begin with `~` too: an
/// `after` that does not open is taken as a name.
const PREFIX: &str = "~";

fn key() -> Option<&'static LessSafeKey> {
    static KEY: OnceLock<Option<LessSafeKey>> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut bytes = [0u8; 32];
        SystemRandom::new().fill(&mut bytes).ok()?;
        let key = UnboundKey::new(&CHACHA20_POLY1305, &bytes).ok()?;
        Some(LessSafeKey::new(key))
    })
    .as_ref()
}

/// An opaque cursor for the scan position `name`, or `None` if the
/// system's randomness failed (the page then ends without a cursor).
pub fn seal(name: &str) -> Option<String> {
    let key = key()?;
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new().fill(&mut nonce).ok()?;
    let mut data = name.as_bytes().to_vec();
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut data)
        .ok()?;
    let mut out = String::with_capacity(PREFIX.len() + 2 * (nonce.len() + data.len()));
    out.push_str(PREFIX);
    for b in nonce.iter().chain(&data) {
        out.push_str(&format!("{b:02x}"));
    }
    Some(out)
}

/// The position a cursor of [`seal`] holds; `None` for anything else.
pub fn open(cursor: &str) -> Option<String> {
    let hex = cursor.strip_prefix(PREFIX)?;
    if hex.len() % 2 != 0 || hex.len() < 2 * (NONCE_LEN + 16) {
        return None;
    }
    let mut bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    let (nonce, data) = bytes.split_at_mut(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let plain = key()?.open_in_place(nonce, Aad::empty(), data).ok()?;
    String::from_utf8(plain.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_opens_to_its_position_and_names_nothing() {
        let c = seal("plant/secret/g4/t4999").expect("sealed");
        assert!(!c.contains("secret"));
        assert_eq!(open(&c).as_deref(), Some("plant/secret/g4/t4999"));
        // Two cursors of one position differ (a fresh nonce each).
        assert_ne!(seal("a").expect("sealed"), seal("a").expect("sealed"));
        // Forged, altered or foreign strings open to nothing.
        let mut altered = c.clone().into_bytes();
        let last = altered.len() - 1;
        altered[last] = if altered[last] == b'0' { b'1' } else { b'0' };
        let altered = String::from_utf8(altered).expect("hex");
        for bad in ["", "~", "~00", "plant/x", altered.as_str(), "~zz"] {
            assert_eq!(open(bad), None, "{bad:?}");
        }
    }
}
