//! Files a configuration names (JWT keys, TLS certificates and keys, CA
//! bundles): read whole, but at most [`MAX_FILE_BYTES`], so `/dev/zero`
//! or a 200 MB one-line PEM is refused with its name instead of taking a
//! gigabyte or aborting the process. Errors never echo what the file
//! holds.

use std::io::Read as _;

/// The largest key or certificate file read (a CA bundle of a few hundred
/// certificates is well below it).
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// The bytes of `path`, or why not (for a message that names the key and
/// the file).
pub fn read_bounded(path: &str) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if meta.is_dir() {
        return Err("is a directory".into());
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "larger than {} KiB: not a key or certificate file",
            MAX_FILE_BYTES / 1024
        ));
    }
    if bytes.is_empty() {
        return Err("is empty".into());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_files_are_refused_with_a_reason_and_no_content() {
        assert!(
            read_bounded("/dev/zero")
                .expect_err("endless")
                .contains("larger than")
        );
        assert_eq!(read_bounded("/").expect_err("dir"), "is a directory");
        assert!(read_bounded("/nonexistent/key.pem").is_err());
        assert_eq!(read_bounded("/dev/null").expect_err("empty"), "is empty");
        let dir = std::env::temp_dir().join(format!("tagstream-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let big = dir.join("big.pem");
        std::fs::write(&big, "A".repeat(2 << 20)).expect("write");
        let why = read_bounded(&big.display().to_string()).expect_err("big");
        assert!(!why.contains("AAAA"), "{why}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
