//! `[[sparkplug]]` (config.md): one Sparkplug B host application on one
//! broker. The broker keys are those of `[[mqtt]]`.

use std::time::Duration;

use serde::Deserialize;

use crate::pattern;
use crate::source::mqtt::broker::{self, Broker};
use crate::validate::Problems;

/// One Sparkplug host (`[[sparkplug]]`).
#[derive(Debug, Clone, Deserialize)]
pub struct SparkplugConfig {
    /// Source name, used in logs, metrics and `TagInfo.source`.
    pub name: String,
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    /// Its host id: it publishes `spBv1.0/STATE/<host_id>`.
    #[serde(default = "default_host_id")]
    pub host_id: String,
    /// Group ids followed (`"+"`: all).
    #[serde(default = "default_groups")]
    pub groups: Vec<String>,
    /// Tag name of a metric: `{group}`, `{node}`, `{device}`, `{metric}`;
    /// a node's own metrics drop `{device}/`.
    #[serde(default = "default_template")]
    pub name_template: String,
    /// Tag patterns a write may send NCMD/DCMD to.
    #[serde(default)]
    pub writable: Vec<String>,
    /// A seq gap, an unknown alias or data before a birth asks the node for
    /// a rebirth (NCMD `Node Control/Rebirth`).
    #[serde(default = "default_true")]
    pub rebirth_on_gap: bool,
    /// Metrics it may create; past it new ones are dropped, counted and
    /// logged (an edge node cannot grow the catalog without bound).
    #[serde(default = "default_max_tags")]
    pub max_tags: usize,
    /// Extension, as `[[mqtt]]`: MQTT client id; default
    /// `tagstream-<server_id>-<name>`.
    #[serde(default)]
    pub client_id: String,
    /// Extension, as `[[mqtt]]`: user name, inline.
    #[serde(default)]
    pub username: Option<String>,
    /// Extension, as `[[mqtt]]`: environment variable holding the user name.
    #[serde(default)]
    pub username_env: Option<String>,
    /// Extension, as `[[mqtt]]`: environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Extension, as `[[mqtt]]`: a PEM CA bundle for `mqtts://`.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Extension, as `[[mqtt]]`: MQTT keep-alive.
    #[serde(default = "default_keep_alive", with = "humantime_serde")]
    pub keep_alive: Duration,
}

fn default_host_id() -> String {
    "tagstream".into()
}
fn default_groups() -> Vec<String> {
    vec!["+".into()]
}
fn default_template() -> String {
    "{group}/{node}/{device}/{metric}".into()
}
fn default_true() -> bool {
    true
}
fn default_max_tags() -> usize {
    100_000
}
fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}

/// The fields a name template may use.
const FIELDS: [&str; 4] = ["{group}", "{node}", "{device}", "{metric}"];

/// A topic level of the Sparkplug namespace: no separators, no wildcards.
fn is_level(s: &str) -> bool {
    !s.is_empty() && !s.contains(['/', '+', '#'])
}

impl SparkplugConfig {
    /// Its broker keys, with the client id `client_id`.
    pub fn broker(&self, client_id: String) -> Broker<'_> {
        Broker {
            source: &self.name,
            url: &self.url,
            client_id,
            username: self.username.as_deref(),
            username_env: self.username_env.as_deref(),
            password_env: self.password_env.as_deref(),
            ca_file: self.ca_file.as_deref(),
            keep_alive: self.keep_alive,
        }
    }

    /// The MQTT client id on node `node_id`.
    pub fn client_id(&self, node_id: &str) -> String {
        broker::client_id(&self.client_id, node_id, &self.name)
    }

    /// The tag name of metric `metric` of `node` (and `device`) in `group`.
    /// `+` and `#` in the metric name become `_`.
    pub fn tag_name(&self, group: &str, node: &str, device: Option<&str>, metric: &str) -> String {
        let metric = metric.replace(['+', '#'], "_");
        let template = match device {
            Some(_) => self.name_template.clone(),
            None => self.template_without_device(),
        };
        template
            .replace("{group}", group)
            .replace("{node}", node)
            .replace("{device}", device.unwrap_or_default())
            .replace("{metric}", &metric)
    }

    /// The template of a node's own metrics: the device level dropped.
    fn template_without_device(&self) -> String {
        self.name_template
            .replace("{device}/", "")
            .replace("/{device}", "")
            .replace("{device}", "")
    }

    /// The shapes of the names its births can make: per followed group,
    /// with and without a device (`check` compares them with configured
    /// names and topic maps).
    pub fn shapes(&self) -> Vec<Vec<pattern::Level>> {
        use pattern::Level;
        let with_device = self.name_template.clone();
        let without = self.template_without_device();
        let mut out = Vec::new();
        for group in &self.groups {
            for template in [&with_device, &without] {
                let shape = template
                    .split('/')
                    .map(|level| {
                        if level.contains("{metric}") {
                            Level::Many
                        } else if level == "{group}" && group != "+" {
                            Level::Literal(group.clone())
                        } else if FIELDS.iter().any(|f| level.contains(f)) {
                            Level::One
                        } else {
                            Level::Literal(level.to_string())
                        }
                    })
                    .collect();
                if !out.contains(&shape) {
                    out.push(shape);
                }
            }
        }
        out
    }

    /// Whether a write may go to the tag named `name`.
    pub fn is_writable(&self, name: &str) -> bool {
        self.writable.iter().any(|p| pattern::matches(p, name))
    }

    pub(crate) fn check(&self, key: &str, p: &mut Problems) {
        if self.name.is_empty() {
            p.push(format!("{key}.name"), "must not be empty");
        }
        self.broker(String::new()).check(key, p);
        if !is_level(&self.host_id) {
            p.push(
                format!("{key}.host_id"),
                "must be one topic level: not empty, no `/`, `+` or `#`",
            );
        }
        if self.groups.is_empty() {
            p.push(
                format!("{key}.groups"),
                "follow at least one group (\"+\": all)",
            );
        }
        for (i, g) in self.groups.iter().enumerate() {
            if g != "+" && !is_level(g) {
                p.push(
                    format!("{key}.groups[{i}]"),
                    format!("{g:?} must be a group id (one topic level) or \"+\""),
                );
            }
        }
        let t = &self.name_template;
        if !t.contains("{metric}") {
            p.push(
                format!("{key}.name_template"),
                "must contain {metric}, or every metric maps to one tag",
            );
        }
        let mut rest = t.clone();
        for f in FIELDS {
            rest = rest.replace(f, "x");
        }
        if rest.contains(['{', '}']) {
            p.push(
                format!("{key}.name_template"),
                format!("{t:?}: the fields are {}", FIELDS.join(", ")),
            );
        } else if let Err(e) = crate::validate::check_tag_name(&rest) {
            p.push(format!("{key}.name_template"), e);
        }
        for (i, w) in self.writable.iter().enumerate() {
            if let Err(e) = pattern::validate(w) {
                p.push(format!("{key}.writable[{i}]"), e.to_string());
            }
        }
        if !(1..=1_000_000).contains(&self.max_tags) {
            p.push(format!("{key}.max_tags"), "must be 1..=1000000");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> SparkplugConfig {
        toml::from_str(&format!("name = \"s\"\nurl = \"mqtt://h:1883\"\n{extra}")).expect("toml")
    }

    #[test]
    fn names_follow_the_template_and_node_metrics_drop_the_device_level() {
        let c = config("");
        assert_eq!(c.tag_name("g", "n", Some("d"), "m/x"), "g/n/d/m/x");
        assert_eq!(c.tag_name("g", "n", None, "a+b#"), "g/n/a_b_");
        let c = config("name_template = \"site/{node}/{metric}@{device}\"");
        assert_eq!(c.tag_name("g", "n", Some("d"), "m"), "site/n/m@d");
        assert_eq!(c.tag_name("g", "n", None, "m"), "site/n/m@");
    }

    #[test]
    fn bad_keys_are_named() {
        let mut p = Problems::default();
        config(
            "host_id = \"a/b\"\ngroups = [\"x/y\"]\nname_template = \"{group}/{nope}\"\nwritable = [\"a/#/b\"]\nmax_tags = 0",
        )
        .check("sparkplug[0]", &mut p);
        assert_eq!(
            p.keys(),
            [
                "sparkplug[0].host_id",
                "sparkplug[0].groups[0]",
                "sparkplug[0].name_template",
                "sparkplug[0].name_template",
                "sparkplug[0].writable[0]",
                "sparkplug[0].max_tags",
            ]
        );
        let mut p = Problems::default();
        config("").check("sparkplug[0]", &mut p);
        assert!(p.keys().is_empty(), "{:?}", p.keys());
    }
}
