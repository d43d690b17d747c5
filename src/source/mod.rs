//! Field side: sources read devices and brokers and send `Sample`s into the
//! engine's channel. Each source owns its reconnect/backoff and reports
//! failures as tag status, never as a crash.

pub mod modbus;
pub mod mqtt;
pub mod sim;
pub mod writes;
