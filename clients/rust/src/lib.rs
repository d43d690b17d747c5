//! The Rust SDK of tagstream's wire protocol (`proto/`, protocol.md).
//!
//! ```text
//! Client::start(Options) ──> task: Connection (ws/wss, token) ──> Mirror (exact: catalog,
//!    │   write / browse /        │  reconnect: backoff + jitter,      values, epoch, position)
//!    │   subscribe (bounded)     │  resume {epoch, seq}, Refresh        │
//!    └────────────────────────── └──> Updates (bounded): State, Welcome, Catalog, Changes
//! ```
//!
//! # Layout
//! - [`proto`]: the generated wire types.
//! - [`mirror`]: the protocol's continuity rules, without I/O.
//! - [`connection`]: one socket: connect, Hello, read and apply.
//! - [`client`]: the SDK proper: reconnect, resume, writes, token refresh.
//! - [`backoff`]: the reconnect schedule and the server's hints.
//! - [`status`], [`display`]: status names and values as people read them.
//!
//! ```no_run
//! # async fn demo() {
//! use tagstream_client::{Client, Options, Update};
//! let (client, mut updates) = Client::start(Options::new("ws://127.0.0.1:8080/api/v1/stream"));
//! while let Some(update) = updates.next().await {
//!     if let Update::Changes(changes) = update {
//!         for c in changes {
//!             println!("{} = {}", c.name, tagstream_client::format_value(c.update.value.as_ref(), Some(&c.info)));
//!         }
//!     }
//! }
//! # let _ = client.write("plant/boiler1/setpoint", 65.0).await;
//! # }
//! ```

pub mod backoff;
pub mod client;
pub mod connection;
pub mod display;
pub mod mirror;
pub mod proto;
pub mod status;

pub use backoff::Backoff;
pub use client::{
    Change, Client, History, Options, Series, State, Stop, Token, Update, Updates, WriteError,
    WriteOutcome,
};
pub use connection::{ClientError, Connect, Connection, Incoming, tls_config};
pub use display::format_value;
pub use mirror::{Event, Mirror, Violation};
