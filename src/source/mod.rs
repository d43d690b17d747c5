//! Field side: sources read devices and brokers and send `Sample`s into the
//! engine's channel. Each source owns its reconnect/backoff and reports
//! failures as tag status, never as a crash.

pub mod modbus;
pub mod mqtt;
pub mod sim;
pub mod writes;

use crate::sample::{Sample, TagId};

/// Sends a Bad status for each tag (the last value stays). Returns false
/// when the engine is gone, so the caller can stop.
pub(crate) async fn report_bad(
    samples: &flume::Sender<Sample>,
    tags: impl IntoIterator<Item = (TagId, u32)>,
) -> bool {
    for (id, status) in tags {
        if samples.send_async(Sample::bad(id, status)).await.is_err() {
            return false;
        }
    }
    true
}
