//! Field side: every source kind behind one interface. A kind's config
//! implements [`SourceConfig`]: it names its configured tags as `TagDef`s
//! (the engine assigns ids), validates itself, and builds its task from a
//! [`SourceContext`] — the engine input, its command queue, shutdown and
//! its telemetry. Sources own their reconnects ([`Backoff`]) and report
//! failures as tag status, never as a crash.
//!
//! Adding a kind: its own module here, one field in `config::Config` and
//! one line in `Config::sources`.

pub mod modbus;
pub mod mqtt;
pub mod sim;
pub mod sparkplug;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::command::WriteCommand;
use crate::sample::TagDef;
use crate::sample::{Input, Sample, SourceId, TagKey, Value};
use crate::validate::Problems;

/// A running source.
pub type SourceTask = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The engine is gone (shutdown): the source should stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the engine stopped")]
pub struct EngineGone;

/// A map that defines tags at run time (an MQTT wildcard map).
#[derive(Debug, Clone)]
pub struct Discovery {
    /// Its key under the source's (`topics[1]`).
    pub key: String,
    /// The topic filter whose wildcards are the captures.
    pub filter: String,
    /// The definition of each tag it makes; the name is the template.
    pub def: TagDef,
    /// Where they come from, for `check`'s listing.
    pub from: String,
}

/// One configured source of any kind.
pub trait SourceConfig: Send + Sync {
    /// The kind, as its config table is named (`modbus`, `mqtt`, `sim`).
    fn kind(&self) -> &'static str;

    /// Its `name` (logs, metrics, `TagInfo.source`).
    fn name(&self) -> &str;

    /// Its configured tags; their local keys are their positions here.
    /// Keys a source defines at run time start after them.
    fn tags(&self) -> Vec<TagDef>;

    /// Tags it will define at run time, for `tagstream check`: one entry
    /// per topic map.
    fn discovered(&self) -> Vec<Discovery> {
        Vec::new()
    }

    /// The longest one write of this source takes once started; a write's
    /// deadline is counted in these (command.rs). Sources without writes
    /// keep the default.
    fn write_operation(&self) -> Duration {
        Duration::from_secs(5)
    }

    /// Every problem of this entry, with keys under `key` (`modbus[0]`).
    fn validate(&self, key: &str, problems: &mut Problems);

    /// The source's task. It runs until `cx.shutdown`.
    fn build(&self, cx: SourceContext) -> SourceTask;
}

/// What a running source is given.
pub struct SourceContext {
    /// Its index: the `source` of its keys.
    pub id: SourceId,
    /// Its name.
    pub name: String,
    /// This node's id (`[server] server_id` or the host name): part of
    /// default broker client ids, so two nodes with one config do not take
    /// each other's session.
    pub node_id: String,
    /// Writes for its tags, by key; bounded (`command::WRITE_QUEUE`).
    pub commands: flume::Receiver<WriteCommand>,
    /// Cancelled at shutdown.
    pub shutdown: CancellationToken,
    input: flume::Sender<Input>,
    up: metrics::Gauge,
}

impl SourceContext {
    /// A context for source `id`.
    pub fn new(
        id: SourceId,
        name: &str,
        node_id: &str,
        input: flume::Sender<Input>,
        commands: flume::Receiver<WriteCommand>,
        shutdown: CancellationToken,
    ) -> Self {
        SourceContext {
            id,
            name: name.to_string(),
            node_id: node_id.to_string(),
            commands,
            shutdown,
            input,
            up: metrics::gauge!("tagstream_device_up", "device" => name.to_string()),
        }
    }

    /// The key of this source's tag number `local`.
    pub fn key(&self, local: u32) -> TagKey {
        TagKey {
            source: self.id,
            local,
        }
    }

    /// Sends a reading; waits while the engine's channel is full
    /// (backpressure: readings are never dropped).
    pub async fn send(&self, sample: Sample) -> Result<(), EngineGone> {
        self.input
            .send_async(Input::Sample(sample))
            .await
            .map_err(|_| EngineGone)
    }

    /// A good reading of tag `local`, taken now.
    pub async fn good(&self, local: u32, value: Value) -> Result<(), EngineGone> {
        self.send(Sample::good(self.key(local), value)).await
    }

    /// A failed reading of tag `local`: its last value stays.
    pub async fn bad(&self, local: u32, status: u32) -> Result<(), EngineGone> {
        self.send(Sample::bad(self.key(local), status)).await
    }

    /// Defines (or redefines) tag `local` at run time; samples may follow
    /// at once. Never waits for an answer.
    pub async fn define(&self, local: u32, def: TagDef) -> Result<(), EngineGone> {
        let key = self.key(local);
        self.input
            .send_async(Input::Define {
                key,
                def: Box::new(def),
            })
            .await
            .map_err(|_| EngineGone)
    }

    /// The device or broker answers again.
    pub fn up(&self) {
        self.up.set(1.0);
    }

    /// The device or broker is lost: every tag of this source turns
    /// `status` (never read: `unread`), keeping its last value.
    pub async fn down(&self, status: u32, unread: u32) -> Result<(), EngineGone> {
        self.up.set(0.0);
        self.input
            .send_async(Input::SourceDown {
                source: self.id,
                status,
                unread,
            })
            .await
            .map_err(|_| EngineGone)
    }
}

/// Runs a source until it ends (shutdown, or the engine gone). A panic in
/// it cannot die silently: it is caught (the source runs as its own task),
/// logged and counted, the source's tags turn BadInternalError keeping
/// their last values, and the source is built again after a backoff.
/// `context` makes a fresh context for each start (the command queue is
/// shared, so queued writes survive a restart).
pub async fn supervise(source: Arc<dyn SourceConfig>, context: impl Fn() -> SourceContext) {
    let mut backoff = Backoff::new();
    loop {
        let cx = context();
        let shutdown = cx.shutdown.clone();
        let started = tokio::time::Instant::now();
        let outcome = tokio::spawn(source.build(cx)).await;
        let panic = match outcome {
            Ok(()) => return,
            Err(e) if e.is_panic() => e.into_panic(),
            Err(_) => return,
        };
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        metrics::counter!("tagstream_source_panics_total", "source" => source.name().to_string())
            .increment(1);
        if started.elapsed() > Backoff::MAX * 2 {
            backoff.reset();
        }
        let delay = backoff.delay();
        tracing::error!(source = %source.name(), panic = %why, restart_in = ?delay, "source panicked; its tags are Bad until it runs again");
        let status = crate::status::BAD_INTERNAL_ERROR;
        if context().down(status, status).await.is_err() {
            return;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Reconnect delays: 200 ms doubling to 5 s, each with up to 20% jitter so
/// a plant's sources do not retry in lockstep after a network blip.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    /// First delay.
    pub const MIN: Duration = Duration::from_millis(200);
    /// Longest delay.
    pub const MAX: Duration = Duration::from_secs(5);

    /// At the first delay.
    pub fn new() -> Self {
        Backoff { next: Self::MIN }
    }

    /// After a success: the next failure waits the first delay again.
    pub fn reset(&mut self) {
        self.next = Self::MIN;
    }

    /// True until a failure moved it on (log the first failure loudly).
    pub fn is_first(&self) -> bool {
        self.next == Self::MIN
    }

    /// The delay before the next attempt, with jitter, and doubles.
    pub fn delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        base + base.mul_f64(fastrand::f64() * 0.2)
    }

    /// The delay the next call to `delay` starts from (for logs).
    pub fn upcoming(&self) -> Duration {
        self.next
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Panics on its first start; on the next it reports one reading.
    struct Flaky(Arc<AtomicU32>);

    impl SourceConfig for Flaky {
        fn kind(&self) -> &'static str {
            "flaky"
        }
        fn name(&self) -> &str {
            "flaky"
        }
        fn tags(&self) -> Vec<TagDef> {
            vec![TagDef::read_only("f/x", "flaky")]
        }
        fn validate(&self, _: &str, _: &mut Problems) {}
        fn build(&self, cx: SourceContext) -> SourceTask {
            let starts = self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                assert!(starts > 0, "the first start fails");
                let _ = cx.good(0, Value::F64(1.0)).await;
                cx.shutdown.cancelled().await;
            })
        }
    }

    #[tokio::test]
    async fn a_panicking_source_turns_its_tags_bad_and_runs_again() {
        let (input, inputs) = flume::bounded(16);
        let (_, commands) = flume::bounded(1);
        let shutdown = CancellationToken::new();
        let starts = Arc::new(AtomicU32::new(0));
        let context = {
            let shutdown = shutdown.clone();
            move || {
                SourceContext::new(
                    3,
                    "flaky",
                    "node",
                    input.clone(),
                    commands.clone(),
                    shutdown.clone(),
                )
            }
        };
        let running = tokio::spawn(supervise(Arc::new(Flaky(starts.clone())), context));
        let first = inputs.recv_async().await.expect("an input");
        assert!(
            matches!(first, Input::SourceDown { source: 3, status, .. } if status == crate::status::BAD_INTERNAL_ERROR),
            "{first:?}"
        );
        let second = inputs.recv_async().await.expect("an input");
        assert!(
            matches!(second, Input::Sample(ref s) if s.tag.source == 3),
            "{second:?}"
        );
        assert_eq!(starts.load(Ordering::SeqCst), 2);
        shutdown.cancel();
        running.await.expect("supervisor ends at shutdown");
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_bounded_jitter_and_resets() {
        let mut b = Backoff::new();
        assert!(b.is_first());
        let d = b.delay();
        assert!(d >= Backoff::MIN && d <= Backoff::MIN.mul_f64(1.2), "{d:?}");
        assert!(!b.is_first());
        for _ in 0..10 {
            let d = b.delay();
            assert!(d <= Backoff::MAX.mul_f64(1.2), "{d:?}");
        }
        assert_eq!(b.upcoming(), Backoff::MAX);
        b.reset();
        assert!(b.is_first());
    }
}
