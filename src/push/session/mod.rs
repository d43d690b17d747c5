//! One client's session, split by job: [`state`] is the protocol as a
//! sans-IO state machine (no socket, no clock), [`driver`] the thin async
//! shell that feeds it, [`frames`] the encoders of what it sends,
//! [`writes`] the checks and the wait of a setpoint write, and [`history`]
//! the answer to a HistoryRequest, made off the shard thread.

pub mod driver;
pub mod frames;
pub mod history;
pub mod state;
pub mod writes;

#[cfg(test)]
mod tests;

pub use driver::run;
pub use state::{Action, End, MAX_PUBLISH_INTERVAL, Now, SessionContext, SessionState};
