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
            Ok(handle) => {
                describe();
                Some(handle)
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics recorder not installed");
                None
            }
        })
        .as_ref()
}

/// Every metric's `# HELP` line: what an operator reading `/metrics` sees.
const METRICS: &[(&str, &str, &str)] = &[
    ("gauge", "tagstream_connections", "Open WebSocket sessions."),
    (
        "counter",
        "tagstream_frames_out_total",
        "WebSocket frames written to clients.",
    ),
    (
        "counter",
        "tagstream_bytes_out_total",
        "Payload bytes written to clients.",
    ),
    (
        "counter",
        "tagstream_updates_out_total",
        "Tag updates delivered in Deltas, one per tag per client.",
    ),
    (
        "counter",
        "tagstream_frames_in_total",
        "WebSocket frames received from clients.",
    ),
    (
        "counter",
        "tagstream_catch_ups_total",
        "Times a slow session dropped its queue and caught up from the tag table.",
    ),
    (
        "counter",
        "tagstream_handshakes_refused_total",
        "Handshakes refused before the 101 (origin, token, limits).",
    ),
    (
        "counter",
        "tagstream_pending_evicted_total",
        "Sockets not yet upgraded (silent, or still sending headers) dropped, oldest first, to make room for new ones.",
    ),
    ("gauge", "tagstream_tags", "Tags in the catalog."),
    (
        "gauge",
        "tagstream_seq",
        "The engine's current seq in this epoch.",
    ),
    (
        "counter",
        "tagstream_samples_in_total",
        "Samples received from sources.",
    ),
    (
        "counter",
        "tagstream_samples_dropped_total",
        "Samples dropped because the engine's input queue was full.",
    ),
    (
        "counter",
        "tagstream_updates_applied_total",
        "Tag changes applied (each takes a seq).",
    ),
    (
        "counter",
        "tagstream_tags_refused_total",
        "Tags refused because another source already has their name, by source.",
    ),
    (
        "gauge",
        "tagstream_device_up",
        "1 while a device or broker answers, else 0, by device.",
    ),
    (
        "counter",
        "tagstream_source_panics_total",
        "Source tasks that panicked and were restarted, by source.",
    ),
    (
        "histogram",
        "tagstream_modbus_poll_seconds",
        "Duration of one Modbus poll cycle, by device (seconds).",
    ),
    (
        "counter",
        "tagstream_mqtt_topics_dropped_total",
        "MQTT topics dropped because the source already holds max_tags discovered tags, by source.",
    ),
    (
        "counter",
        "tagstream_mqtt_bad_payloads_total",
        "MQTT payloads that did not decode to the tag's type, by source.",
    ),
    (
        "counter",
        "tagstream_lock_waits_total",
        "Times the fan-out found a lock held by another thread, by lock (feed: the engine's batch ring; shard: a session shard's own).",
    ),
    (
        "counter",
        "tagstream_lock_wait_microseconds_total",
        "Time the fan-out spent waiting for those locks, by lock.",
    ),
];

/// Describes every metric (a `# HELP` line each).
fn describe() {
    for &(kind, name, help) in METRICS {
        match kind {
            "gauge" => metrics::describe_gauge!(name, help),
            "histogram" => metrics::describe_histogram!(name, help),
            _ => metrics::describe_counter!(name, help),
        }
    }
}

/// The described metric names (a test checks `/metrics` against them).
pub fn described() -> impl Iterator<Item = &'static str> {
    METRICS.iter().map(|m| m.1)
}

/// Counters of the push layer.
#[derive(Clone, Debug)]
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

#[cfg(test)]
mod tests {
    use super::METRICS;

    #[test]
    fn each_help_describes_its_own_metric() {
        let help = |name: &str| {
            METRICS
                .iter()
                .find(|m| m.1 == name)
                .map(|m| m.2)
                .unwrap_or_default()
        };
        // It once described the session queue's evictions.
        assert!(help("tagstream_pending_evicted_total").contains("not yet upgraded"));
        let mut names: Vec<&str> = METRICS.iter().map(|m| m.1).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), METRICS.len(), "a metric described twice");
    }
}
