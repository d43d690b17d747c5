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
