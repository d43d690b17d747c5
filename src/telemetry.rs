//! Typed telemetry: the Prometheus recorder and the counters the hot paths
//! bump. Handles are created once and kept, so a frame costs an atomic add,
//! not a registry lookup.

use std::sync::OnceLock;

use metrics::{Counter, Gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// The process-wide recorder (one per process; tests start many servers).
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(handle) => Some(handle),
            Err(e) => {
                tracing::warn!(error = %e, "metrics recorder not installed");
                None
            }
        })
        .as_ref()
}

/// Counters of the push layer.
#[derive(Clone)]
pub struct PushMetrics {
    /// Open WebSocket sessions.
    pub connections: Gauge,
    /// Frames written to clients.
    pub frames_out: Counter,
    /// Tag updates delivered in Deltas (one per tag per client).
    pub updates_out: Counter,
    /// Payload bytes written to clients.
    pub bytes_out: Counter,
    /// Frames received from clients.
    pub frames_in: Counter,
    /// Sessions that fell behind and caught up from the table.
    pub catch_ups: Counter,
    /// Handshakes refused (any HTTP error before the 101).
    pub refused: Counter,
}

impl PushMetrics {
    /// Registers the counters (after `prometheus()` installed the recorder).
    pub fn new() -> Self {
        prometheus();
        PushMetrics {
            connections: metrics::gauge!("tagstream_connections"),
            frames_out: metrics::counter!("tagstream_frames_out_total"),
            bytes_out: metrics::counter!("tagstream_bytes_out_total"),
            updates_out: metrics::counter!("tagstream_updates_out_total"),
            frames_in: metrics::counter!("tagstream_frames_in_total"),
            catch_ups: metrics::counter!("tagstream_catch_ups_total"),
            refused: metrics::counter!("tagstream_handshakes_refused_total"),
        }
    }
}

impl Default for PushMetrics {
    fn default() -> Self {
        Self::new()
    }
}
