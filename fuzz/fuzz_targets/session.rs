//! `ClientMessage` decoding and the session state machine on arbitrary
//! sequences: the input is a list of steps, each a client message (raw
//! bytes, decoded as the driver would), an engine batch, a heartbeat tick,
//! a WebSocket ping or a token expiry check. The session must answer every
//! step (frames or an orderly end), never panic, keep its position
//! continuous (every Delta it queues starts where the last one ended), and
//! hold no pattern past `max_pattern_bytes` nor more than `max_patterns`.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use tagstream::auth::{Auth, Principal};
use tagstream::command::LocalSources;
use tagstream::engine::Engine;
use tagstream::engine::catalog::{Catalog, TagDef};
use tagstream::engine::seq::Counter;
use tagstream::proto::{self, server_message::Kind};
use tagstream::push::outbox::Outbox;
use tagstream::push::session::state::{
    Action, Now, SessionContext, SessionState, decode, expect_hello,
};
use tagstream::sample::{Input, Sample, TagKey, Value};
use tagstream::telemetry::PushMetrics;

const NAMES: [&str; 6] = ["a/x", "a/y", "a/b/c", "b/z", "b/flag", "c/s"];
const PEER: std::net::SocketAddr = std::net::SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    1,
));

fn auth() -> Arc<Auth> {
    static AUTH: OnceLock<Arc<Auth>> = OnceLock::new();
    AUTH.get_or_init(|| {
        let config = tagstream::config::Config::parse(
            "[auth]\nanonymous = { read = [\"#\"], write = [\"#\"] }\njwt = { hs256_secret_env = \"S\" }\n",
        )
        .expect("config");
        Arc::new(Auth::load_with(config.auth.as_ref(), &|_| Some("fuzz-secret-fuzz-secret-fuzz-sec".into())).expect("auth"))
    })
    .clone()
}

/// Reads one length-prefixed chunk.
fn chunk<'a>(data: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (&len, rest) = data.split_first()?;
    let len = usize::from(len).min(rest.len());
    let (c, rest) = rest.split_at(len);
    *data = rest;
    Some(c)
}

/// Checks the continuity of what the session queued.
fn check(out: &mut Outbox, position: &mut u64) {
    for (opcode, payload) in out.take_frames() {
        if opcode != 2 {
            continue;
        }
        let msg = proto::ServerMessage::decode(&payload[..]).expect("the server sends protobuf");
        match msg.kind {
            Some(Kind::Welcome(w)) => *position = w.seq,
            Some(Kind::Snapshot(s)) => assert_eq!(s.seq, *position, "snapshot off position"),
            Some(Kind::HistoryResult(h)) => assert_eq!(h.seq, *position, "history off position"),
            Some(Kind::Delta(d)) => {
                assert_eq!(d.from_seq, *position, "delta gap");
                assert!(d.to_seq >= d.from_seq);
                *position = d.to_seq;
            }
            _ => {}
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let mut data = input;
    let catalog = Catalog::new(NAMES.map(|n| TagDef {
        writable: n.ends_with("flag") || n == "a/y",
        ..TagDef::read_only(n, "s")
    }));
    let history = tagstream::engine::history::HistoryConfig {
        max_points_per_tag: 16,
        ..Default::default()
    };
    let mut engine = Engine::with_history(catalog, Box::new(Counter::new(7)), Some(history));
    let mut sources = LocalSources::default();
    let commands = sources.add(0, Duration::from_millis(100));
    let (_clock, heartbeat) = tokio::sync::watch::channel(0);
    let cx = Arc::new(SessionContext {
        engine: engine.shared().clone(),
        commands: Arc::new(sources),
        auth: auth(),
        server_id: "fuzz".into(),
        heartbeat_ms: 1000,
        max_pending_bytes: 4096,
        max_patterns: 8,
        max_pattern_bytes: 16,
        max_writes_per_s: 20,
        drain_window: Duration::from_secs(1),
        hello_timeout: Duration::from_secs(1),
        min_publish_interval: Duration::ZERO,
        history_slots: tokio::sync::Semaphore::new(1),
        resume_wait: std::time::Duration::ZERO,
        heartbeat,
        metrics: PushMetrics::new(),
    });
    let mut out = Outbox::default();
    let Some(first) = chunk(&mut data) else {
        return;
    };
    let hello = match decode(bytes::Bytes::copy_from_slice(first)).and_then(expect_hello) {
        Ok(h) => h,
        Err(_) => return,
    };
    let read = if data.first().is_some_and(|b| b & 1 == 1) {
        vec!["a/#".to_string()]
    } else {
        vec!["#".to_string()]
    };
    let principal = Arc::new(Principal::anonymous(read, vec!["#".into()]));
    let Ok(mut s) = SessionState::on_hello(cx, principal, hello, &mut out) else {
        return;
    };
    let mut position = 0;
    check(&mut out, &mut position);
    while let Some((&op, rest)) = data.split_first() {
        data = rest;
        let now = Now::current();
        let action = match op % 6 {
            0 | 1 => {
                let Some(bytes) = chunk(&mut data) else { break };
                match decode(bytes::Bytes::copy_from_slice(bytes)) {
                    Ok(msg) => s.on_message(msg, now, PEER, &mut out),
                    Err(end) => Action::End(end),
                }
            }
            2 => {
                let Some(bytes) = chunk(&mut data) else { break };
                let inputs = bytes.chunks(2).map(|c| {
                    let local = u32::from(c[0]) % NAMES.len() as u32;
                    let v = f64::from(*c.get(1).unwrap_or(&0));
                    Input::Sample(Sample::good(TagKey { source: 0, local }, Value::F64(v)))
                });
                engine.apply(inputs.collect::<Vec<_>>());
                match s.try_batch() {
                    Some(b) => s.on_batch(b, &mut out),
                    None => Action::Nothing,
                }
            }
            3 => s.on_tick(&mut out),
            4 => s.on_ping(),
            _ => s.on_expiry(now, PEER),
        };
        // A history answer is made at once here (the driver makes it off
        // the thread, before anything else is sent).
        let action = match action {
            Action::History(job) => {
                out.message(job.answer());
                Action::Nothing
            }
            other => other,
        };
        // Writes are handed to the source: drop them (the owner went away).
        while commands.try_recv().is_ok() {}
        // What a session holds stays within max_patterns and
        // max_pattern_bytes, whatever it was sent.
        assert!(s.patterns().len() <= 8);
        assert!(
            s.patterns().iter().all(|p| p.len() <= 16),
            "{:?}",
            s.patterns()
        );
        check(&mut out, &mut position);
        if let Action::End(_) = action {
            break;
        }
    }
});
