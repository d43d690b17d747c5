//! `[[sim]]`: a synthetic source. `tags` F64 tags named
//! `<prefix>/g<i / group>/t<i>` change `rate` times per second in all,
//! at random, each value stamped with the time it entered the engine's
//! channel (its source time). Load runs configure it to measure the
//! server alone: source time -> client decode is the server's latency.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::{SourceConfig, SourceContext, SourceTask};
use crate::sample::TagDef;
use crate::sample::{Sample, Value, now_us};
use crate::validate::Problems;

/// Largest `tags`: far above any load run, low enough that a typo does not
/// allocate gigabytes.
const MAX_TAGS: usize = 1_000_000;

/// One synthetic source (`[[sim]]`).
#[derive(Debug, Clone, Deserialize)]
pub struct SimConfig {
    /// Source name.
    pub name: String,
    /// How many tags.
    pub tags: usize,
    /// First level of every tag name.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Tags per group (the `g<N>` level), so clients can subscribe to a
    /// group with `<prefix>/g<N>/#`.
    #[serde(default = "default_group")]
    pub group: usize,
    /// Changes per second over all its tags; 0: the tags never change.
    #[serde(default)]
    pub rate: u64,
}

fn default_prefix() -> String {
    "sim".into()
}
fn default_group() -> usize {
    100
}

impl SimConfig {
    /// The name of tag `i`.
    pub fn tag_name(&self, i: usize) -> String {
        format!("{}/g{}/t{i}", self.prefix, i / self.group.max(1))
    }
}

impl SourceConfig for SimConfig {
    fn kind(&self) -> &'static str {
        "sim"
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn tags(&self) -> Vec<TagDef> {
        (0..self.tags)
            .map(|i| TagDef::read_only(self.tag_name(i), &self.name))
            .collect()
    }

    fn validate(&self, key: &str, p: &mut Problems) {
        if self.tags == 0 || self.tags > MAX_TAGS {
            p.push(format!("{key}.tags"), format!("must be 1..={MAX_TAGS}"));
        }
        if self.group == 0 {
            p.push(format!("{key}.group"), "must be at least 1");
        }
        if let Err(e) = crate::validate::check_tag_name(&self.prefix) {
            p.push(format!("{key}.prefix"), e);
        }
    }

    fn build(&self, cx: SourceContext) -> SourceTask {
        Box::pin(run(Arc::new(self.clone()), cx))
    }
}

/// Sends what is due every millisecond; waits when the engine's channel is
/// full (so an overloaded engine shows as a lower rate, not lost samples).
async fn run(config: Arc<SimConfig>, cx: SourceContext) {
    cx.up();
    if config.rate == 0 {
        cx.shutdown.cancelled().await;
        return;
    }
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let (mut sent, mut value) = (0u64, 0.0);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = cx.shutdown.cancelled() => return,
        }
        let due = (started.elapsed().as_secs_f64() * config.rate as f64) as u64;
        while sent < due {
            value += 1.0;
            let local = fastrand::usize(..config.tags.max(1)) as u32;
            let sample = Sample {
                tag: cx.key(local),
                value: Some(Value::F64(value)),
                status: 0,
                source_time_us: now_us(),
            };
            if cx.send(sample).await.is_err() {
                return;
            }
            sent += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_groups_and_bad_shapes_are_refused() {
        let c: SimConfig =
            toml::from_str("name = \"s\"\ntags = 250\nprefix = \"b\"\ngroup = 100\n")
                .expect("toml");
        let tags = c.tags();
        assert_eq!(tags.len(), 250);
        assert_eq!(tags[0].name, "b/g0/t0");
        assert_eq!(tags[249].name, "b/g2/t249");
        let bad: SimConfig =
            toml::from_str("name = \"s\"\ntags = 0\nprefix = \"a/\"\ngroup = 0\n").expect("toml");
        let mut p = Problems::default();
        bad.validate("sim[0]", &mut p);
        let keys: Vec<String> = p.keys();
        assert_eq!(keys, ["sim[0].tags", "sim[0].group", "sim[0].prefix"]);
    }
}
