//! The log budget of third-party crates. Owns, per crate (the first segment
//! of an event's target), a count of lines in the current second; receives
//! every event's metadata from the subscriber; emits a yes or no, and
//! counts what it drops in `tagstream_log_lines_dropped_total{crate}`.
//!
//! Why: tagstream's own warnings are rate-limited where they are logged,
//! but a crate below it logs at its own pace (tokio_modbus warned ~25 times
//! a second about CRC errors on a noisy RTU line). tagstream's lines and
//! the audit log always pass.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use tracing::Metadata;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

/// Lines per second one third-party crate may log.
pub const LINES_PER_SECOND: u32 = 5;

/// Crates tracked at once; a target past it shares the budget of "other".
const MAX_CRATES: usize = 64;

/// The per-crate counts of the current second.
pub struct LogBudget {
    start: Instant,
    counts: Mutex<HashMap<&'static str, (u64, u32)>>,
}

impl Default for LogBudget {
    fn default() -> Self {
        LogBudget {
            start: Instant::now(),
            counts: Mutex::new(HashMap::new()),
        }
    }
}

impl LogBudget {
    /// True if the event may be written: always for tagstream's own
    /// targets (and the audit log), else while its crate's budget for this
    /// second lasts.
    pub fn allows(&self, meta: &Metadata<'_>) -> bool {
        let target = meta.target();
        let krate = target.split("::").next().unwrap_or(target);
        if !meta.is_event() || matches!(krate, "tagstream" | "tagstream_client" | "audit") {
            return true;
        }
        let second = self.start.elapsed().as_secs();
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let key = if counts.len() < MAX_CRATES || counts.contains_key(krate) {
            leak_once(krate, &counts)
        } else {
            "other"
        };
        let entry = counts.entry(key).or_insert((second, 0));
        if entry.0 != second {
            *entry = (second, 0);
        }
        entry.1 += 1;
        if entry.1 <= LINES_PER_SECOND {
            return true;
        }
        drop(counts);
        metrics::counter!("tagstream_log_lines_dropped_total", "crate" => key).increment(1);
        false
    }
}

/// The budget as a per-layer filter (called for every event: a callsite
/// is not cached, since one callsite logs again and again).
///
/// Its level hint is TRACE, "no opinion": without a hint, the filter it is
/// `and`ed with loses its own, the subscriber's maximum level is TRACE,
/// and `tracing-log` sets the `log` crate's maximum to match. Every
/// `log::trace!` of tokio-tungstenite (several per socket poll) then went
/// through the dispatcher to be refused there: 9% of the session thread
/// in `wall`. With the hint, the `log` macros stop them at one compare.
pub fn filter<S: tracing::Subscriber>() -> impl tracing_subscriber::layer::Filter<S> {
    let budget = LogBudget::default();
    tracing_subscriber::filter::dynamic_filter_fn(move |m, _| budget.allows(m))
        .with_max_level_hint(LevelFilter::TRACE)
}

/// The level filter of the logs: `RUST_LOG` when given (`rust_log`), else
/// `info` with the embedded broker's chatter off; tungstenite is held at
/// debug at most, whatever it asks.
pub fn levels(rust_log: Option<&str>) -> EnvFilter {
    // rumqttd is only the embedded demo/test broker: its connection
    // chatter (readiness probes included) is not the operator's concern.
    let filter = rust_log
        .and_then(|s| EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| EnvFilter::new("info,rumqttd=off"));
    // tungstenite traces a client handshake's request bytes whole: the
    // `Authorization: Bearer` header and an `?access_token=` URL. Its
    // trace level is never on. A directive sets a level, so it is the
    // lower of debug and the most the filter enables anywhere: a plain
    // `info` must not turn tungstenite's debug lines on.
    let most = filter.max_level_hint().unwrap_or(LevelFilter::TRACE);
    let cap = most.min(LevelFilter::DEBUG);
    ["tungstenite", "tokio_tungstenite"]
        .into_iter()
        .filter_map(|t| format!("{t}={cap}").parse().ok())
        .fold(filter, EnvFilter::add_directive)
}

/// The `&'static str` for a crate name: a target is usually `'static`
/// already (a `log` record's is not), and at most [`MAX_CRATES`] names
/// are ever kept, so leaking each once is bounded.
fn leak_once(krate: &str, counts: &HashMap<&'static str, (u64, u32)>) -> &'static str {
    match counts.get_key_value(krate) {
        Some((k, _)) => k,
        None => Box::leak(krate.to_string().into_boxed_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt as _;

    /// A crate's flood is cut to its budget; tagstream's own lines and
    /// another crate's pass.
    #[test]
    fn a_chatty_crate_is_cut_to_its_budget_and_ours_pass() {
        let written = std::sync::Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = written.clone();
        let filter = super::filter();
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || Line(sink.clone()));
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::Layer::with_filter(layer, filter));
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..100 {
                tracing::warn!(target: "tokio_modbus::codec", i, "crc mismatch");
                tracing::warn!(target: "tagstream::source", i, "ours");
            }
            tracing::warn!(target: "rustls::conn", "another crate");
        });
        let lines = written.lock().unwrap_or_else(|e| e.into_inner());
        let count = |s: &str| lines.iter().filter(|l| l.contains(s)).count();
        // The loop may straddle a second: at most two budgets.
        let chatty = count("crc mismatch");
        assert!(
            (1..=2 * LINES_PER_SECOND as usize).contains(&chatty),
            "{chatty}"
        );
        assert_eq!(count("ours"), 100);
        assert_eq!(count("another crate"), 1);
    }

    /// The subscriber's level hint survives the budget, so `log`'s
    /// maximum (which `tracing-log` sets from it) stops tungstenite's
    /// per-poll `trace!` records at the macro.
    #[test]
    fn the_budget_keeps_the_level_hint_so_log_records_stop_at_the_macro() {
        use tracing_subscriber::filter::FilterExt as _;
        let hint = |rust_log| {
            let f = levels(rust_log).and(filter::<tracing_subscriber::Registry>());
            tracing_subscriber::layer::Filter::<tracing_subscriber::Registry>::max_level_hint(&f)
        };
        assert_eq!(hint(None), Some(LevelFilter::INFO));
        assert_eq!(hint(Some("warn,tagstream=debug")), Some(LevelFilter::DEBUG));
        assert_eq!(hint(Some("trace")), Some(LevelFilter::TRACE));
    }

    /// tungstenite is at most debug: never its trace (it would print a
    /// handshake's bearer token), and not even debug under a plain `info`.
    #[test]
    fn tungstenite_is_held_at_debug_and_follows_a_quieter_filter() {
        let lines = |rust_log| {
            let written = std::sync::Arc::new(Mutex::new(Vec::<String>::new()));
            let sink = written.clone();
            let layer = tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || Line(sink.clone()));
            let subscriber = tracing_subscriber::registry().with(
                tracing_subscriber::Layer::with_filter(layer, levels(rust_log)),
            );
            tracing::subscriber::with_default(subscriber, || {
                tracing::trace!(target: "tungstenite::handshake", "t-trace");
                tracing::debug!(target: "tungstenite::protocol", "t-debug");
                tracing::info!(target: "tokio_tungstenite", "tt-info");
                tracing::trace!(target: "tagstream::push", "ours-trace");
                tracing::info!(target: "rumqttd::router", "broker");
            });
            let lines = written.lock().unwrap_or_else(|e| e.into_inner()).concat();
            ["t-trace", "t-debug", "tt-info", "ours-trace", "broker"]
                .into_iter()
                .filter(|w| lines.contains(w))
                .collect::<Vec<_>>()
        };
        assert_eq!(lines(None), ["tt-info"]);
        assert_eq!(
            lines(Some("trace")),
            ["t-debug", "tt-info", "ours-trace", "broker"]
        );
        assert_eq!(lines(Some("warn")), Vec::<&str>::new());
        // A RUST_LOG that does not parse is the default, not silence.
        assert_eq!(lines(Some("=[")), ["tt-info"]);
    }

    struct Line(std::sync::Arc<Mutex<Vec<String>>>);

    impl std::io::Write for Line {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(String::from_utf8_lossy(b).into_owned());
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
