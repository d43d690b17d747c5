//! tagstream: industrial telemetry push server.
//!
//! # Layout
//!
//! ```text
//!  source/modbus ──┐                     ┌─> push/session (one per client)
//!  source/sim    ──┼─ flume<Sample> ─> engine ─ broadcast<Arc<Batch>> ─┤
//!  (mqtt: next)  ──┘   (bounded)      (TagTable, encode once)        └─> push/session ...
//!                                         ^  read for snapshot / catch-up
//!        source/writes <── WriteRequest ───── push/session
//! ```
//!
//! - [`source`]: field side. Pollers turn device registers into [`sample::Sample`]s.
//! - [`engine`]: one task owns the [`engine::table::TagTable`], applies
//!   batches (seq, deadband, status) and publishes each change encoded once.
//! - [`push`]: HTTP + WebSocket on one listener; sessions assemble deltas
//!   from the shared encoded bytes and answer catch-up from the table.
//! - [`client`]: the Rust client used by `tagstream tail`, tests and benches.
//! - [`app`]: wiring and shutdown order; [`config`]: the TOML contract.

pub mod app;
pub mod bench;
pub mod client;
pub mod config;
pub mod engine;
pub mod pattern;
pub mod proto;
pub mod push;
pub mod sample;
pub mod source;
pub mod status;
pub mod tail;
pub mod telemetry;
