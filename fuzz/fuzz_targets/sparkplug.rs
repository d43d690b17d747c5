//! The Sparkplug host fed any sequence of messages from a broker: births,
//! data, deaths and commands of two nodes with two devices, each payload
//! arbitrary bytes; node and device ids short, 200 bytes long (past
//! `MAX_ID_BYTES`) or made up per step (never born). Never a panic, never
//! more tags than `max_tags`, never a tag name past 256 bytes, and the
//! nodes and scopes tracked stay bounded.
//! Input: frames of [u16 BE length][topic pick][payload].
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use tagstream::source::sparkplug::SparkplugConfig;
use tagstream::source::sparkplug::host::{Action, Host};

const MAX_TAGS: usize = 64;

fn config() -> SparkplugConfig {
    SparkplugConfig {
        name: "fuzz".into(),
        url: "mqtt://127.0.0.1".into(),
        host_id: "fuzz".into(),
        groups: vec!["+".into()],
        name_template: "{group}/{node}/{device}/{metric}".into(),
        writable: vec!["#".into()],
        rebirth_on_gap: true,
        max_tags: MAX_TAGS,
        client_id: String::new(),
        username: None,
        username_env: None,
        password_env: None,
        ca_file: None,
        keep_alive: Duration::from_secs(30),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut host = Host::new(Arc::new(config()), 0);
    let start = Instant::now();
    let mut rest = data;
    let mut defined = std::collections::HashSet::new();
    let mut step = 0u64;
    while rest.len() >= 3 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let pick = rest[2];
        let body = &rest[3..];
        let (payload, next) = body.split_at(len.min(body.len()));
        rest = next;
        let kind = [
            "NBIRTH", "NDATA", "NDEATH", "DBIRTH", "DDATA", "DDEATH", "NCMD", "STATE",
        ][usize::from(pick) % 8];
        let long = "x".repeat(200);
        let ghost = format!("ghost{step}");
        let node = match (pick & 0x08 == 0, pick & 0x20 == 0) {
            (true, _) => "n1",
            (false, true) => "n2",
            // A made-up node is never born (its births would be real).
            (false, false) if pick & 0x40 == 0 || kind == "NBIRTH" => long.as_str(),
            (false, false) => ghost.as_str(),
        };
        let device = if pick & 0x10 == 0 {
            "d1"
        } else {
            long.as_str()
        };
        let topic = match kind {
            "STATE" => "spBv1.0/STATE/other".to_string(),
            k if k.starts_with('D') => format!("spBv1.0/g/{k}/{node}/{device}"),
            k => format!("spBv1.0/g/{k}/{node}"),
        };
        step += 1;
        let now = start + Duration::from_secs(step * u64::from(pick >> 5));
        for action in host.handle(&topic, payload, now) {
            if let Action::Define(local, def) = action {
                assert!(
                    def.name.len() <= tagstream::config::MAX_TAG_NAME_BYTES,
                    "{}",
                    def.name.len()
                );
                defined.insert(local);
            }
        }
        assert!(defined.len() <= MAX_TAGS, "{} tags defined", defined.len());
        let (nodes, unborn, scopes) = host.tracked();
        assert!(
            nodes <= 2 && unborn <= 1_000 && scopes <= 4,
            "{nodes} {unborn} {scopes}"
        );
    }
});
