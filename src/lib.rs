//! tagstream: industrial telemetry push server.
//!
//! # Layout
//!
//! ```text
//!  source/modbus    ──┐                          ┌─> push/session (one per client)
//!  source/mqtt      ──┤                          │
//!  source/sparkplug ──┼─ flume<Input> ─> engine ─┤  broadcast<Arc<Batch>>
//!  source/sim       ──┘   (bounded)    (TagTable, └─> push/session ...
//!                                       seq, encode once)
//!        ^                                 ^  read for snapshot / catch-up
//!        └── WriteCommand ── command ──────┴──── push/session (checked writes)
//! ```
//!
//! - [`source`]: field side. Each kind builds itself from a
//!   [`source::SourceContext`] and sends [`sample::Input`]s: readings, tags
//!   found at run time, lost devices.
//! - [`engine`]: one task owns the [`engine::table::TagTable`] and the
//!   sequencer, applies batches (seq, deadband, status, definitions) and
//!   publishes each change encoded once.
//! - [`push`]: HTTP + WebSocket on one listener; each session is a sans-IO
//!   state machine behind a thin driver, assembling deltas from the shared
//!   encoded bytes and answering catch-up from the table.
//! - [`command`]: writes from sessions, routed by the tag's owner to the
//!   source that carries them out. [`auth`]: who a connection is (static
//!   token, JWT or anonymous) and its read and write scopes; the read
//!   scope reaches the engine only as part of an interned selection's key.
//! - [`rate`]: token buckets for what peers can trigger at will;
//!   [`peer_text`]: a peer's strings quoted, escaped and clipped for logs.
//! - [`tail`]: `tagstream tail` and `write`, on the Rust SDK
//!   (`clients/rust`, crate `tagstream-client`, which also owns the
//!   generated wire types [`proto`] re-exports).
//! - [`demo`]: the simulated plant of `tagstream demo` (and test devices).
//! - [`app`]: wiring and shutdown order; [`config`]: the TOML contract;
//!   [`validate`]: the problem list and name rules every section's
//!   config uses (a leaf, so sources need not import `config`).
//!
//! `engine` and `push` import nothing from `source`: they know no device
//! protocol.

pub mod app;
pub mod auth;
pub mod check;
pub mod cluster;
pub mod command;
pub mod config;
pub mod demo;
pub mod engine;
pub mod files;
pub mod log_budget;
pub mod pattern;
pub mod peer_text;
pub mod proto;
pub mod push;
pub mod rate;
pub mod sample;
pub mod source;
pub mod status;
pub mod tail;
pub mod telemetry;
#[cfg(test)]
mod test_log;
pub mod validate;
