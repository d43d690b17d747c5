//! The SDKs against a real server: the Rust SDK in process (`rust`), and
//! the TypeScript and Python SDKs and the web view in a real browser, each
//! running its own ecosystem's suite against the `tagstream` binary
//! (`suites`), and the README's quick starts as a user runs them
//! (`readme`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;

mod readme;
mod rust;
mod suites;

use std::path::PathBuf;
use std::process::Command;

/// The repository's root.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a command to success, or panics with its output; its stdout and
/// stderr, for a caller that reads them.
fn run(command: &mut Command) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{command:?}: {}\n{text}", out.status);
    text
}
