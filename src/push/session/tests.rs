//! The session protocol driven through the state machine alone: no socket,
//! no clock. An engine (without its task) applies inputs, the state answers
//! into an `Outbox`, and the frames are decoded as a client would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use tokio::sync::watch;

use super::state::{Action, End, News, Now, SessionContext, SessionState, decode, expect_hello};
use super::writes::PendingWrite;
use crate::auth::Principal;
use crate::command::{LocalSources, WriteCommand};
use crate::engine::catalog::{Catalog, TagDef};
use crate::engine::seq::Counter;
use crate::engine::{BATCH_RING, Engine};
use crate::proto::{
    self, ErrorCode, ResumeOutcome, client_message::Kind as C, server_message::Kind,
};
use crate::push::close;
use crate::push::outbox::Outbox;
use crate::sample::{Input, Sample, TagKey, Value};
use crate::status;
use crate::telemetry::PushMetrics;

const EPOCH: u64 = 0xE90C;

struct Harness {
    engine: Engine,
    cx: Arc<SessionContext>,
    commands: flume::Receiver<WriteCommand>,
    _clock: watch::Sender<u64>,
}

/// Tags `a/x`, `a/y` (writable f64 with limits 0..=100), `b/z`, `b/flag`
/// (writable bool), all owned by source 0.
fn harness() -> Harness {
    harness_with(1 << 20)
}

fn harness_with(max_pending_bytes: u64) -> Harness {
    harness_opts(max_pending_bytes, Duration::ZERO)
}

fn harness_opts(max_pending_bytes: u64, min_publish_interval: Duration) -> Harness {
    harness_full(max_pending_bytes, min_publish_interval, None)
}

/// With `history`, `b/flag` is the one tag with its history off.
fn harness_full(
    max_pending_bytes: u64,
    min_publish_interval: Duration,
    history: Option<crate::engine::history::HistoryConfig>,
) -> Harness {
    let catalog = Catalog::new([
        TagDef::read_only("a/x", "s"),
        TagDef {
            writable: true,
            min: Some(0.0),
            max: Some(100.0),
            ..TagDef::read_only("a/y", "s")
        },
        TagDef::read_only("b/z", "s"),
        TagDef {
            writable: true,
            data_type: proto::DataType::Bool,
            history: false,
            ..TagDef::read_only("b/flag", "s")
        },
    ]);
    let engine = Engine::with_history(catalog, Box::new(Counter::new(EPOCH)), history);
    let mut sources = LocalSources::default();
    let commands = sources.add(0, Duration::from_secs(1));
    let (clock, heartbeat) = watch::channel(0);
    let cx = Arc::new(SessionContext {
        engine: engine.shared().clone(),
        commands: Arc::new(sources),
        auth: Arc::new(jwt_auth()),
        drain_window: Duration::from_secs(10),
        server_id: "test".into(),
        heartbeat_ms: 25_000,
        max_pending_bytes,
        max_patterns: 4,
        max_pattern_bytes: 64,
        max_writes_per_s: 10,
        hello_timeout: Duration::from_secs(10),
        min_publish_interval,
        history_slots: tokio::sync::Semaphore::new(2),
        resume_wait: Duration::ZERO,
        heartbeat,
        metrics: PushMetrics::new(),
    });
    Harness {
        engine,
        cx,
        commands,
        _clock: clock,
    }
}

const PEER: std::net::SocketAddr = std::net::SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    40000,
));
/// The HS256 secret of the harness's JWT verifier.
const JWT_SECRET: &str = "session-tests-secret-0123456789ab";

/// Anonymous access to everything, and HS256 JWTs (Refresh tests).
fn jwt_auth() -> crate::auth::Auth {
    let config = crate::config::Config::parse(
        "[auth]\njwt = { hs256_secret_env = \"S\", leeway = \"0s\" }\n",
    )
    .expect("config");
    crate::auth::Auth::load_with(config.auth.as_ref(), &|_| Some(JWT_SECRET.into())).expect("auth")
}

fn key(local: u32) -> TagKey {
    TagKey { source: 0, local }
}

impl Harness {
    /// Applies one batch setting tag `local` (0-based, `a/x` = 0) to `v`.
    fn set(&mut self, local: u32, v: f64) {
        self.set_many(&[(local, v)]);
    }

    fn set_many(&mut self, values: &[(u32, f64)]) {
        let inputs = values
            .iter()
            .map(|&(l, v)| Input::Sample(Sample::good(key(l), Value::F64(v))));
        self.engine.apply(inputs.collect::<Vec<_>>());
    }

    fn open(&self, hello: proto::Hello, out: &mut Outbox) -> SessionState {
        self.open_as(Principal::open(), hello, out)
    }

    fn open_as(&self, p: Principal, hello: proto::Hello, out: &mut Outbox) -> SessionState {
        SessionState::on_hello(self.cx.clone(), Arc::new(p), hello, out).expect("hello accepted")
    }
}

fn hello(patterns: &[&str], resume: Option<(u64, u64)>) -> proto::Hello {
    proto::Hello {
        publish_interval_ms: 0,
        client_name: "unit".into(),
        resume: resume.map(|(epoch, seq)| proto::Resume { epoch, seq }),
        subscribe: patterns.iter().map(|p| p.to_string()).collect(),
    }
}

/// What the session queued, decoded; a ping is `None`.
fn sent(out: &mut Outbox) -> Vec<Option<Kind>> {
    out.take_frames()
        .into_iter()
        .map(|(opcode, payload)| match opcode {
            9 => None,
            2 => Some(
                proto::ServerMessage::decode(&payload[..])
                    .expect("decodes")
                    .kind
                    .expect("kind"),
            ),
            other => panic!("unexpected opcode {other}"),
        })
        .collect()
}

fn kinds(out: &mut Outbox) -> Vec<Kind> {
    sent(out)
        .into_iter()
        .map(|k| k.expect("not a ping"))
        .collect()
}

fn names(catalog: &proto::Catalog) -> Vec<&str> {
    catalog.tags.iter().map(|t| t.name.as_str()).collect()
}

fn ids(updates: &[proto::TagUpdate]) -> Vec<u32> {
    updates.iter().map(|u| u.id).collect()
}

/// Feeds every ready batch to the session.
fn pump(s: &mut SessionState, out: &mut Outbox) {
    while let Some(batch) = s.try_batch() {
        assert!(matches!(s.on_batch(batch, out), Action::Nothing));
    }
}

fn msg(kind: C) -> proto::ClientMessage {
    proto::client(kind)
}

fn now() -> Now {
    Now {
        wall_us: 1_234,
        at: tokio::time::Instant::now(),
    }
}

#[test]
fn hello_fresh_gets_welcome_catalog_snapshot_then_deltas() {
    let mut h = harness();
    h.set(0, 1.0);
    let mut out = Outbox::default();
    let mut s = h.open(hello(&["a/#"], None), &mut out);
    let k = kinds(&mut out);
    let [Kind::Welcome(w), Kind::Catalog(c), Kind::Snapshot(snap)] = &k[..] else {
        panic!("{k:?}");
    };
    assert_eq!(
        (w.epoch, w.seq, w.resume()),
        (EPOCH, 1, ResumeOutcome::Fresh)
    );
    assert_eq!((names(c), c.last), (vec!["a/x", "a/y"], true));
    assert_eq!(
        (snap.seq, ids(&snap.tags), snap.last),
        (1, vec![1, 2], true)
    );
    assert_eq!(snap.tags[1].status, status::BAD_WAITING_FOR_INITIAL_DATA);

    h.set_many(&[(1, 5.0), (2, 9.0)]);
    pump(&mut s, &mut out);
    let k = kinds(&mut out);
    let [Kind::Delta(d)] = &k[..] else {
        panic!("{k:?}")
    };
    assert_eq!(
        (d.from_seq, d.to_seq, ids(&d.updates)),
        (1, 3, vec![2]),
        "b/z not selected"
    );
    assert_eq!(s.position(), 3);
}

#[test]
fn resume_same_epoch_gets_exactly_one_delta_of_the_changes_since() {
    let mut h = harness();
    h.set(0, 1.0);
    h.set(1, 2.0);
    h.set(0, 3.0);
    let mut out = Outbox::default();
    let s = h.open(hello(&["#"], Some((EPOCH, 2))), &mut out);
    let k = kinds(&mut out);
    let [Kind::Welcome(w), Kind::Delta(d)] = &k[..] else {
        panic!("{k:?}")
    };
    assert_eq!((w.resume(), w.seq), (ResumeOutcome::Resumed, 2));
    assert_eq!((d.from_seq, d.to_seq, ids(&d.updates)), (2, 3, vec![1]));
    assert_eq!(s.position(), 3);

    // Nothing changed since: still exactly one, empty Delta.
    let _s = h.open(hello(&["#"], Some((EPOCH, 3))), &mut out);
    let k = kinds(&mut out);
    let [Kind::Welcome(_), Kind::Delta(d)] = &k[..] else {
        panic!("{k:?}")
    };
    assert_eq!((d.from_seq, d.to_seq, d.updates.len()), (3, 3, 0));
}

#[test]
fn resume_foreign_epoch_or_future_seq_resyncs_with_a_snapshot() {
    let mut h = harness();
    h.set(0, 1.0);
    let mut out = Outbox::default();
    for resume in [(EPOCH + 1, 1), (EPOCH, 99)] {
        let _s = h.open(hello(&["a/x"], Some(resume)), &mut out);
        let k = kinds(&mut out);
        let [Kind::Welcome(w), Kind::Catalog(_), Kind::Snapshot(snap)] = &k[..] else {
            panic!("{resume:?}: {k:?}");
        };
        assert_eq!((w.resume(), w.seq, snap.seq), (ResumeOutcome::Resync, 1, 1));
    }
}

#[test]
fn resume_after_a_tag_appeared_sends_its_catalog_entry_before_the_delta() {
    let mut h = harness();
    h.set(0, 1.0);
    let def = TagDef::read_only("a/late", "s");
    h.engine.apply([
        Input::Define {
            key: key(9),
            def: Box::new(def),
        },
        Input::Sample(Sample::good(key(9), Value::F64(4.0))),
    ]);
    let mut out = Outbox::default();
    let _s = h.open(hello(&["a/#"], Some((EPOCH, 1))), &mut out);
    let k = kinds(&mut out);
    let [Kind::Welcome(w), Kind::Catalog(c), Kind::Delta(d)] = &k[..] else {
        panic!("{k:?}");
    };
    assert_eq!(w.resume(), ResumeOutcome::Resumed);
    assert_eq!(names(c), ["a/late"], "only the tag the client cannot know");
    assert_eq!((d.from_seq, ids(&d.updates)), (1, vec![5]));
}

#[test]
fn subscribe_mid_session_brings_the_connection_current_then_catalog_and_snapshot() {
    let mut h = harness();
    let mut out = Outbox::default();
    let mut s = h.open(hello(&["a/x"], None), &mut out);
    kinds(&mut out);
    // A change the session has not been told yet (its batch is pending).
    h.set_many(&[(0, 1.0), (2, 2.0)]);
    let step = s.on_message(
        msg(C::Subscribe(proto::Subscribe {
            patterns: vec!["b/#".into(), "bad/#/x".into()],
        })),
        now(),
        PEER,
        &mut out,
    );
    assert!(matches!(step, Action::Nothing));
    let k = kinds(&mut out);
    let [
        Kind::Error(e),
        Kind::Delta(d),
        Kind::Catalog(c),
        Kind::Snapshot(snap),
    ] = &k[..]
    else {
        panic!("{k:?}");
    };
    assert_eq!(
        e.code(),
        ErrorCode::Malformed,
        "the invalid pattern is named, the session stays"
    );
    assert_eq!((d.from_seq, d.to_seq, ids(&d.updates)), (0, 2, vec![1]));
    assert_eq!(names(c), ["b/z", "b/flag"]);
    assert_eq!((snap.seq, ids(&snap.tags)), (2, vec![3, 4]));
    // The pending batch is already covered: no duplicate Delta.
    pump(&mut s, &mut out);
    assert!(kinds(&mut out).is_empty());

    // Unsubscribe needs no answer; later deltas leave those tags out.
    let step = s.on_message(
        msg(C::Unsubscribe(proto::Unsubscribe {
            patterns: vec!["b/#".into()],
        })),
        now(),
        PEER,
        &mut out,
    );
    assert!(matches!(step, Action::Nothing));
    assert!(kinds(&mut out).is_empty());
    h.set_many(&[(0, 7.0), (2, 8.0)]);
    pump(&mut s, &mut out);
    let k = kinds(&mut out);
    let [Kind::Delta(d)] = &k[..] else {
        panic!("{k:?}")
    };
    assert_eq!((d.from_seq, ids(&d.updates)), (2, vec![1]));
}

fn browse(pattern: &str, request_id: u64, limit: u32, after: &str) -> proto::ClientMessage {
    msg(C::Browse(proto::Browse {
        pattern: pattern.into(),
        request_id,
        limit,
        after: after.into(),
    }))
}

#[tokio::test(start_paused = true)]
async fn browse_pages_in_name_order_without_subscribing_and_is_rate_limited() {
    let mut h = harness();
    let mut out = Outbox::default();
    let mut s = h.open(hello(&[], None), &mut out);
    kinds(&mut out);
    let page = |s: &mut SessionState, b: proto::ClientMessage, out: &mut Outbox| {
        assert!(matches!(s.on_message(b, now(), PEER, out), Action::Nothing));
        let k = kinds(out);
        match &k[..] {
            [Kind::BrowseResult(r)] => {
                let names: Vec<String> = r.tags.iter().map(|t| t.name.clone()).collect();
                Ok((r.request_id, names, r.next_after.clone()))
            }
            [Kind::Error(e)] => Err(e.code()),
            other => panic!("{other:?}"),
        }
    };
    // Name order, `limit` per page, `next_after` empty on the last.
    assert_eq!(
        page(&mut s, browse("#", 7, 3, ""), &mut out),
        Ok((
            7,
            vec!["a/x".into(), "a/y".into(), "b/flag".into()],
            "b/flag".into()
        ))
    );
    assert_eq!(
        page(&mut s, browse("#", 8, 3, "b/flag"), &mut out),
        Ok((8, vec!["b/z".into()], String::new()))
    );
    assert_eq!(
        page(&mut s, browse("b/+", 9, 0, ""), &mut out),
        Ok((9, vec!["b/flag".into(), "b/z".into()], String::new())),
        "limit 0: the server's cap"
    );
    h.set(2, 1.0);
    pump(&mut s, &mut out);
    assert!(kinds(&mut out).is_empty(), "browsing subscribed nothing");
    // A bad pattern: MALFORMED, the session stays.
    assert_eq!(
        page(&mut s, browse("#/b", 10, 0, ""), &mut out),
        Err(ErrorCode::Malformed)
    );
    // Twice the rate at once (3 used above, 1 refused-for-pattern counts
    // too), then LIMIT_EXCEEDED without closing, then the rate again.
    let burst = 2 * super::state::BROWSE_PER_S - 4;
    for i in 0..burst {
        assert!(page(&mut s, browse("a/#", 100 + u64::from(i), 0, ""), &mut out).is_ok());
    }
    assert_eq!(
        page(&mut s, browse("a/#", 200, 0, ""), &mut out),
        Err(ErrorCode::LimitExceeded)
    );
    tokio::time::advance(Duration::from_millis(110)).await;
    assert!(page(&mut s, browse("a/#", 201, 0, ""), &mut out).is_ok());
}

#[test]
fn a_late_tag_gets_its_catalog_entry_and_snapshot_before_its_first_update() {
    let mut h = harness();
    let mut out = Outbox::default();
    let mut s = h.open(hello(&["a/#"], None), &mut out);
    kinds(&mut out);
    h.set(0, 1.0);
    let def = TagDef::read_only("a/new", "s");
    h.engine.apply([
        Input::Define {
            key: key(7),
            def: Box::new(def),
        },
        Input::Sample(Sample::good(key(7), Value::F64(3.0))),
        Input::Sample(Sample::good(key(0), Value::F64(2.0))),
    ]);
    pump(&mut s, &mut out);
    let k = kinds(&mut out);
    let [Kind::Delta(d1), Kind::Catalog(c), Kind::Snapshot(snap)] = &k[..] else {
        panic!("{k:?}");
    };
    assert_eq!((d1.from_seq, d1.to_seq), (0, 3));
    assert_eq!(ids(&d1.updates), [1], "the old selection brought current");
    assert_eq!(names(c), ["a/new"]);
    assert_eq!((snap.seq, ids(&snap.tags)), (3, vec![5]));
    assert_eq!(
        snap.tags[0]
            .value
            .as_ref()
            .and_then(crate::sample::Value::from_wire),
        Some(Value::F64(3.0))
    );
    assert_eq!(s.position(), 3);
}

#[test]
fn a_redefined_tag_gets_its_catalog_entry_again_before_its_next_update() {
    let mut h = harness();
    let mut out = Outbox::default();
    let mut s = h.open(hello(&["b/z"], None), &mut out);
    kinds(&mut out);
    let def = TagDef {
        unit: "rpm".into(),
        ..TagDef::read_only("b/z", "s")
    };
    h.engine.apply([
        Input::Define {
            key: key(2),
            def: Box::new(def),
        },
        Input::Sample(Sample::good(key(2), Value::F64(10.0))),
    ]);
    pump(&mut s, &mut out);
    let k = kinds(&mut out);
    let [Kind::Catalog(c), Kind::Delta(d)] = &k[..] else {
        panic!("{k:?}")
    };
    assert_eq!(
        (c.tags[0].id, c.tags[0].unit.as_str()),
        (3, "rpm"),
        "same id"
    );
    assert_eq!(ids(&d.updates), [3]);
}

#[test]
fn a_slow_consumer_drops_its_backlog_and_catches_up_in_one_delta() {
    let mut h = harness();
    let mut out = Outbox::default();
    let mut s = h.open(hello(&["a/x"], None), &mut out);
    kinds(&mut out);
    // More batches than the ring keeps: the session has lagged.
    for i in 0..(BATCH_RING as u64 + 10) {
        h.set(0, i as f64 + 1.0);
    }
    let first = s.try_batch().expect("something ready");
    assert!(matches!(s.on_batch(first, &mut out), Action::Nothing));
    let k = kinds(&mut out);
    let [Kind::Delta(d)] = &k[..] else {
        panic!("{k:?}")
    };
    let last = BATCH_RING as u64 + 10;
    assert_eq!((d.from_seq, d.to_seq, ids(&d.updates)), (0, last, vec![1]));
    // Continues from there without a gap.
    h.set(0, -1.0);
    pump(&mut s, &mut out);
    let k = kinds(&mut out);
    let [Kind::Delta(d)] = &k[..] else {
        panic!("{k:?}")
    };
    assert_eq!((d.from_seq, d.to_seq), (last, last + 1));

    // The byte bound: a session more than max_pending_bytes behind.
    let mut h = harness_with(1);
    let mut s = h.open(hello(&["#"], None), &mut out);
    kinds(&mut out);
    h.set(0, 1.0);
    h.set(1, 2.0);
    pump(&mut s, &mut out);
    let k = kinds(&mut out);
    let [Kind::Delta(d)] = &k[..] else {
        panic!("{k:?}")
    };
    assert_eq!((d.from_seq, d.to_seq, ids(&d.updates)), (0, 2, vec![1, 2]));
}

fn write(id: u64, tag: &str, value: Option<proto::value::Kind>) -> proto::ClientMessage {
    msg(C::Write(proto::WriteRequest {
        request_id: id,
        tag: tag.into(),
        value: value.map(|k| proto::Value { kind: Some(k) }),
    }))
}

fn results(out: &mut Outbox) -> Vec<(u64, u32)> {
    kinds(out)
        .into_iter()
        .map(|k| match k {
            Kind::WriteResult(r) => (r.request_id, r.status),
            other => panic!("not a WriteResult: {other:?}"),
        })
        .collect()
}

#[test]
fn writes_are_checked_in_the_specs_order_before_anything_reaches_a_source() {
    use proto::value::Kind as V;
    let h = harness();
    let mut out = Outbox::default();
    let mut s = h.open(hello(&[], None), &mut out);
    kinds(&mut out);
    let cases = [
        (1, "no/such", Some(V::F64(1.0)), status::BAD_NODE_ID_UNKNOWN),
        (2, "a/x", Some(V::F64(1.0)), status::BAD_NOT_WRITABLE),
        (3, "a/y", None, status::BAD_TYPE_MISMATCH),
        (
            4,
            "a/y",
            Some(V::Text("hot".into())),
            status::BAD_TYPE_MISMATCH,
        ),
        (5, "a/y", Some(V::F64(101.0)), status::BAD_OUT_OF_RANGE),
        (6, "b/flag", Some(V::U64(7)), status::BAD_TYPE_MISMATCH),
    ];
    for (id, tag, value, want) in cases {
        assert!(matches!(
            s.on_message(write(id, tag, value), now(), PEER, &mut out),
            Action::Nothing
        ));
        assert_eq!(results(&mut out), [(id, want)], "{tag}");
    }
    assert!(h.commands.is_empty(), "nothing was handed to the source");

    // A principal without write scope: BadUserAccessDenied after the
    // writable check, before the value checks.
    let reader = Principal {
        write: vec!["b/#".into()],
        ..Principal::open()
    };
    let mut s = h.open_as(reader, hello(&[], None), &mut out);
    kinds(&mut out);
    let step = s.on_message(write(7, "a/y", None), now(), PEER, &mut out);
    assert!(matches!(step, Action::Nothing));
    assert_eq!(results(&mut out), [(7, status::BAD_USER_ACCESS_DENIED)]);
}

#[tokio::test(start_paused = true)]
async fn a_write_is_answered_once_by_its_owner_or_bad_timeout_and_never_written_late() {
    use proto::value::Kind as V;
    let h = harness();
    let mut out = Outbox::default();
    let mut s = h.open(hello(&[], None), &mut out);
    kinds(&mut out);

    // Acknowledged by the owner: its key and the converted value arrive.
    let Action::StartWrite(pending) =
        s.on_message(write(1, "a/y", Some(V::I64(42))), now(), PEER, &mut out)
    else {
        panic!("write not started");
    };
    assert!(out.is_empty(), "no answer before the owner's");
    let cmd = h.commands.try_recv().expect("queued for source 0");
    assert_eq!((cmd.tag, cmd.value.clone()), (key(1), Value::F64(42.0)));
    cmd.reply.send(Ok("")).expect("session waits");
    s.on_write_done(pending.finish().await, PEER, &mut out);
    assert_eq!(results(&mut out), [(1, status::GOOD)]);

    // No answer: BadTimeout at the deadline, and the source can tell.
    let Action::StartWrite(pending) =
        s.on_message(write(2, "a/y", Some(V::F64(1.0))), now(), PEER, &mut out)
    else {
        panic!("write not started");
    };
    let cmd = h.commands.try_recv().expect("queued");
    let done = pending.finish().await;
    assert_eq!((done.request_id, done.status), (2, status::BAD_TIMEOUT));
    assert!(
        cmd.reply.is_closed(),
        "an answered write is never carried out"
    );
    s.on_write_done(done, PEER, &mut out);
    assert_eq!(s.writes_in_flight(), 0);
    assert_eq!(results(&mut out), [(2, status::BAD_TIMEOUT)]);
}

/// Sends a write of `b/flag`: `None` when it started (kept in `pending`),
/// else its immediate result.
fn send(
    s: &mut SessionState,
    pending: &mut Vec<PendingWrite>,
    id: u64,
    out: &mut Outbox,
) -> Option<(u64, u32)> {
    use proto::value::Kind as V;
    match s.on_message(write(id, "b/flag", Some(V::Bool(true))), now(), PEER, out) {
        Action::StartWrite(p) => {
            pending.push(p);
            None
        }
        Action::Nothing => results(out).pop(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn writes_past_the_device_share_or_the_rate_get_bad_too_many_operations() {
    let h = harness();
    let mut out = Outbox::default();
    let mut s = h.open(hello(&[], None), &mut out);
    kinds(&mut out);
    let mut pending = Vec::new();
    // One connection holds at most its share of one device's queue.
    for id in 0..u64::from(super::writes::MAX_QUEUED_PER_SOURCE) {
        assert_eq!(
            send(&mut s, &mut pending, id, &mut out),
            None,
            "write {id} queued"
        );
    }
    assert_eq!(
        send(&mut s, &mut pending, 99, &mut out),
        Some((99, status::BAD_TOO_MANY_OPERATIONS))
    );
    assert_eq!(h.commands.len(), 8, "the refused one never queued");
    // Answered, they free the share; the rate (10/s, a second's worth at
    // once) still allows one more, then refuses until time passes.
    for cmd in h.commands.drain() {
        cmd.reply.send(Ok("")).expect("session waits");
    }
    for p in pending.drain(..) {
        s.on_write_done(p.finish().await, PEER, &mut out);
    }
    assert_eq!(results(&mut out).len(), 8);
    assert_eq!(send(&mut s, &mut pending, 100, &mut out), None);
    // The write refused for the device share counted too: 11th request.
    assert_eq!(
        send(&mut s, &mut pending, 101, &mut out),
        Some((101, status::BAD_TOO_MANY_OPERATIONS)),
        "11th write within a second"
    );
    tokio::time::advance(Duration::from_millis(150)).await;
    assert_eq!(
        send(&mut s, &mut pending, 103, &mut out),
        None,
        "refilled at 10/s"
    );
    assert_eq!(
        send(&mut s, &mut pending, 104, &mut out),
        Some((104, status::BAD_TOO_MANY_OPERATIONS))
    );
}

#[tokio::test(start_paused = true)]
async fn refused_writes_count_against_the_rate_and_echo_a_bounded_name() {
    use proto::value::Kind as V;
    let h = harness();
    let mut out = Outbox::default();
    let mut s = h.open(hello(&[], None), &mut out);
    kinds(&mut out);
    // A read-only client's writes to unknown tags, with a 60 kB name.
    let name = format!("nope/{}\nforged", "x".repeat(60_000));
    let mut answered = Vec::new();
    for id in 0..200 {
        let action = s.on_message(write(id, &name, Some(V::F64(1.0))), now(), PEER, &mut out);
        assert!(matches!(action, Action::Nothing));
        for kind in kinds(&mut out) {
            if let Kind::WriteResult(r) = kind {
                answered.push((r.status, r.message));
            }
        }
    }
    assert_eq!(answered.len(), 200, "every request answered");
    let unknown = answered
        .iter()
        .filter(|(st, _)| *st == status::BAD_NODE_ID_UNKNOWN)
        .count();
    assert_eq!(unknown, 10, "only the rate's worth were looked at");
    assert!(
        answered
            .iter()
            .all(|(_, m)| m.len() < 300 && !m.contains('\n')),
        "bounded, escaped messages"
    );
}

#[test]
fn the_in_flight_limit_counts_every_device_and_frees_on_answer() {
    use super::writes::{MAX_WRITES_IN_FLIGHT, WriteAllowance};
    let mut a = WriteAllowance::new(0);
    for i in 0..MAX_WRITES_IN_FLIGHT {
        a.admit(i % 3).expect("within the limits");
    }
    let (status, why) = a.admit(3).expect_err("17th in flight");
    assert_eq!(status, status::BAD_TOO_MANY_OPERATIONS);
    assert!(why.contains("in flight"), "{why}");
    a.release(0);
    a.admit(3).expect("one answered, one more may go");
    assert_eq!(a.in_flight(), usize::from(MAX_WRITES_IN_FLIGHT));
}

#[test]
fn bad_input_rows_end_the_session_with_their_codes() {
    let code = |end: End| match end {
        End::Close(code, _, error) => (code, error.map(|(c, _)| c)),
        other => panic!("{other:?}"),
    };
    // Undecodable, and a message without a kind: Error MALFORMED, 1007.
    let garbage = decode(bytes::Bytes::from_static(&[0xff, 0xff, 0xff])).expect_err("garbage");
    assert_eq!(
        code(garbage),
        (close::INVALID_PAYLOAD, Some(ErrorCode::Malformed))
    );
    let empty = decode(bytes::Bytes::new()).expect_err("no kind");
    assert_eq!(
        code(empty),
        (close::INVALID_PAYLOAD, Some(ErrorCode::Malformed))
    );
    // First message not a Hello: UNEXPECTED_MESSAGE, 1008.
    let ping = msg(C::Ping(proto::Ping::default()));
    let first = expect_hello(ping).expect_err("not a hello");
    assert_eq!(
        code(first),
        (close::POLICY_VIOLATION, Some(ErrorCode::UnexpectedMessage))
    );
    // A second Hello.
    let h = harness();
    let mut out = Outbox::default();
    let mut s = h.open(hello(&["#", "a/#/b", "+x"], None), &mut out);
    let k = kinds(&mut out);
    let errors: Vec<&proto::Error> = k
        .iter()
        .filter_map(|k| match k {
            Kind::Error(e) => Some(e),
            _ => None,
        })
        .collect();
    assert_eq!(errors.len(), 1, "one Error for all invalid patterns: {k:?}");
    assert_eq!(errors[0].code(), ErrorCode::Malformed);
    assert!(
        errors[0].message.contains("a/#/b") && errors[0].message.contains("+x"),
        "it names them: {}",
        errors[0].message
    );
    let Action::End(end) = s.on_message(msg(C::Hello(hello(&[], None))), now(), PEER, &mut out)
    else {
        panic!("a second Hello must end the session");
    };
    assert_eq!(
        code(end),
        (close::POLICY_VIOLATION, Some(ErrorCode::UnexpectedMessage))
    );
}

#[test]
fn ping_is_answered_with_the_injected_time_and_a_silent_peer_is_dropped() {
    let h = harness();
    let mut out = Outbox::default();
    let mut s = h.open(hello(&[], None), &mut out);
    kinds(&mut out);
    let ping = msg(C::Ping(proto::Ping {
        nonce: 5,
        client_time_us: 77,
    }));
    assert!(matches!(
        s.on_message(ping, now(), PEER, &mut out),
        Action::Nothing
    ));
    let k = kinds(&mut out);
    let [Kind::Pong(p)] = &k[..] else {
        panic!("{k:?}")
    };
    assert_eq!(
        (p.nonce, p.client_time_us, p.server_time_us),
        (5, 77, 1_234)
    );

    // A tick pings; a peer heard from stays; one silent for a period goes.
    assert!(matches!(s.on_tick(&mut out), Action::Nothing));
    assert_eq!(sent(&mut out), [None], "a WebSocket ping");
    s.on_heard();
    assert!(matches!(s.on_tick(&mut out), Action::Nothing));
    sent(&mut out);
    assert!(matches!(s.on_tick(&mut out), Action::End(End::Gone(_))));
}

#[test]
fn a_pong_follows_a_delta_that_makes_the_connection_current_and_carries_its_seq() {
    let mut h = harness();
    let mut out = Outbox::default();
    let mut s = h.open(hello(&["a/x"], None), &mut out);
    kinds(&mut out);
    let ping = |n| {
        msg(C::Ping(proto::Ping {
            nonce: n,
            client_time_us: 0,
        }))
    };
    // Current already: only the Pong, at the position.
    assert!(matches!(
        s.on_message(ping(1), now(), PEER, &mut out),
        Action::Nothing
    ));
    let k = kinds(&mut out);
    let [Kind::Pong(p)] = &k[..] else {
        panic!("{k:?}")
    };
    assert_eq!((p.nonce, p.seq), (1, 0));
    // Changes the subscription does not take: no Delta while following...
    h.set(2, 1.0);
    h.set(2, 2.0);
    pump(&mut s, &mut out);
    assert!(kinds(&mut out).is_empty());
    assert_eq!(s.position(), 0);
    // ...and one more still unread when the Ping comes: an empty Delta to
    // the newest seq, then the Pong at it.
    h.set(2, 3.0);
    assert!(matches!(
        s.on_message(ping(2), now(), PEER, &mut out),
        Action::Nothing
    ));
    let k = kinds(&mut out);
    let [Kind::Delta(d), Kind::Pong(p)] = &k[..] else {
        panic!("{k:?}")
    };
    assert_eq!((d.from_seq, d.to_seq, d.updates.len()), (0, 3, 0));
    assert_eq!((p.nonce, p.seq), (2, 3));
    assert_eq!(s.position(), 3);
}

#[test]
fn pings_past_the_allowance_of_one_heartbeat_close_1008() {
    let h = harness();
    let mut out = Outbox::default();
    let mut s = h.open(hello(&[], None), &mut out);
    kinds(&mut out);
    for _ in 0..super::state::MAX_PINGS_PER_TICK {
        assert!(matches!(s.on_ping(), Action::Nothing));
    }
    // A tick starts a new allowance.
    assert!(matches!(s.on_tick(&mut out), Action::Nothing));
    for _ in 0..super::state::MAX_PINGS_PER_TICK {
        assert!(matches!(s.on_ping(), Action::Nothing));
    }
    let Action::End(End::Close(code, _, None)) = s.on_ping() else {
        panic!("a ping flood must close");
    };
    assert_eq!(code, close::POLICY_VIOLATION);
}

#[test]
fn a_pattern_longer_than_max_pattern_bytes_is_malformed_and_the_session_stays() {
    let h = harness();
    let mut out = Outbox::default();
    // max_pattern_bytes is 64 in the harness.
    let long = format!("a/{}", "x".repeat(60_000));
    let mut s = h.open(hello(&[&long, "a/#"], None), &mut out);
    let k = kinds(&mut out);
    let errors: Vec<&proto::Error> = k
        .iter()
        .filter_map(|k| match k {
            Kind::Error(e) => Some(e),
            _ => None,
        })
        .collect();
    assert_eq!(errors.len(), 1, "{k:?}");
    assert_eq!(errors[0].code(), ErrorCode::Malformed);
    assert!(
        errors[0].message.contains("max_pattern_bytes"),
        "{}",
        errors[0].message
    );
    assert!(
        errors[0].message.len() < 400,
        "the pattern is not echoed whole"
    );
    let sub = msg(C::Subscribe(proto::Subscribe {
        patterns: vec![long.clone(), "b/#".into()],
    }));
    assert!(matches!(
        s.on_message(sub, now(), PEER, &mut out),
        Action::Nothing
    ));
    assert!(
        kinds(&mut out)
            .iter()
            .any(|k| matches!(k, Kind::Error(e) if e.code() == ErrorCode::Malformed))
    );
    let browse = msg(C::Browse(proto::Browse {
        request_id: 1,
        pattern: long,
        limit: 0,
        after: String::new(),
    }));
    assert!(matches!(
        s.on_message(browse, now(), PEER, &mut out),
        Action::Nothing
    ));
    assert!(
        kinds(&mut out)
            .iter()
            .any(|k| matches!(k, Kind::Error(e) if e.code() == ErrorCode::Malformed))
    );
    // What it holds is the two short patterns.
    assert_eq!(s.patterns(), ["a/#", "b/#"]);
}

#[test]
fn the_bytes_of_held_patterns_are_bounded_too() {
    let within: Vec<String> = (0..60)
        .map(|i| format!("{i:04}/{}", "p".repeat(1000)))
        .collect();
    assert_eq!(super::state::over_held_limits(&within, 1000), None);
    let over: Vec<String> = (0..70)
        .map(|i| format!("{i:04}/{}", "p".repeat(1000)))
        .collect();
    let why = super::state::over_held_limits(&over, 1000).expect("over 64 KiB");
    assert!(why.contains("bytes of patterns"), "{why}");
    assert!(
        super::state::over_held_limits(&within, 10).is_some(),
        "max_patterns"
    );
}

#[test]
fn holding_more_than_max_patterns_is_limit_exceeded_and_1008() {
    let h = harness();
    let limit = |end: End| match end {
        End::Close(code, _, Some((error, _))) => (code, error),
        other => panic!("{other:?}"),
    };
    // In the Hello (duplicates count once: four distinct are allowed).
    let mut out = Outbox::default();
    let five = hello(&["a/1", "a/2", "a/3", "a/4", "a/5"], None);
    let end = SessionState::on_hello(h.cx.clone(), Arc::new(Principal::open()), five, &mut out)
        .err()
        .expect("refused");
    assert_eq!(
        limit(end),
        (close::POLICY_VIOLATION, ErrorCode::LimitExceeded)
    );
    let mut s = h.open(hello(&["a/1", "a/1", "a/2"], None), &mut out);
    kinds(&mut out);
    // Across Subscribes: the held set is what counts.
    let sub = |p: &[&str]| {
        msg(C::Subscribe(proto::Subscribe {
            patterns: p.iter().map(|p| p.to_string()).collect(),
        }))
    };
    assert!(matches!(
        s.on_message(sub(&["a/2", "a/3", "a/4"]), now(), PEER, &mut out),
        Action::Nothing
    ));
    let Action::End(end) = s.on_message(sub(&["a/5"]), now(), PEER, &mut out) else {
        panic!("a fifth pattern must be refused");
    };
    assert_eq!(
        limit(end),
        (close::POLICY_VIOLATION, ErrorCode::LimitExceeded)
    );
}

#[test]
fn the_batch_stream_closing_is_a_1001_with_a_reconnect_delay() {
    let h = harness();
    let mut out = Outbox::default();
    let mut s = h.open(hello(&[], None), &mut out);
    let closed = super::state::News::Closed;
    let Action::End(End::Close(code, reason, None)) = s.on_batch(closed, &mut out) else {
        panic!("expected a close");
    };
    assert_eq!(code, close::GOING_AWAY);
    let delay: u64 = reason.parse().expect("a delay in ms");
    assert!(delay < 10_000, "within the drain window");
    // Spread over the whole window, not bunched (1,000 draws: a tenth of
    // the window empty at either end has odds of 0.9^1000).
    let window = Duration::from_secs(10);
    let delays: Vec<u64> = (0..1000)
        .map(|_| match End::shutting_down(window) {
            End::Close(_, reason, _) => reason.parse().expect("ms"),
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(delays.iter().all(|&d| d < 10_000));
    assert!(delays.iter().any(|&d| d < 1_000) && delays.iter().any(|&d| d >= 9_000));
}

/// Access: read scopes, Welcome's principal, Refresh and expiry.
mod access;

/// Pacing: what is granted, and the driver's hold under paused time.
mod pacing;

/// History: answers at the position, scope, limits.
mod history;

/// The driver's writes: a peer that stops reading, pongs between frames.
mod driver;

#[tokio::test(start_paused = true)]
async fn subscribe_churn_is_limited_by_the_tags_it_sends() {
    use super::state::{SUBSCRIBED_TAGS_BURST, SUBSCRIBED_TAGS_PER_S};
    let mut h = harness();
    let many = (0..20_000u32).map(|i| Input::Define {
        key: TagKey {
            source: 1,
            local: i,
        },
        def: Box::new(TagDef::read_only(format!("m/g{}/t{i}", i / 100), "s1")),
    });
    h.engine.apply(many.collect::<Vec<_>>());
    let mut out = Outbox::default();
    let mut s = h.open(hello(&[], None), &mut out);
    kinds(&mut out);
    let patterns = |p: &str| vec![p.to_string()];
    let (mut entries, mut limited) = (0usize, 0usize);
    for _ in 0..100 {
        let sub = msg(C::Subscribe(proto::Subscribe {
            patterns: patterns("#"),
        }));
        let unsub = msg(C::Unsubscribe(proto::Unsubscribe {
            patterns: patterns("#"),
        }));
        for m in [sub, unsub] {
            assert!(matches!(
                s.on_message(m, now(), PEER, &mut out),
                Action::Nothing
            ));
        }
        for k in kinds(&mut out) {
            match k {
                Kind::Catalog(c) => entries += c.tags.len(),
                Kind::Error(e) if e.code() == ErrorCode::LimitExceeded => limited += 1,
                _ => {}
            }
        }
    }
    // 20,004 tags per Subscribe: the burst's worth went out, no more.
    assert!(
        entries <= SUBSCRIBED_TAGS_BURST as usize + 20_004,
        "{entries} catalog entries"
    );
    assert!(limited >= 90, "{limited} refusals");
    // A second later the budget allows one more.
    tokio::time::advance(Duration::from_secs(
        u64::from(SUBSCRIBED_TAGS_BURST / SUBSCRIBED_TAGS_PER_S) + 1,
    ))
    .await;
    let sub = msg(C::Subscribe(proto::Subscribe {
        patterns: patterns("#"),
    }));
    assert!(matches!(
        s.on_message(sub, now(), PEER, &mut out),
        Action::Nothing
    ));
    let k = kinds(&mut out);
    assert!(
        k.iter().any(|k| matches!(k, Kind::Catalog(_))),
        "{}",
        k.len()
    );
    assert_eq!(s.patterns(), ["#"]);
}

/// A waker that counts its wakes.
struct Wakes(std::sync::atomic::AtomicUsize);

impl std::task::Wake for Wakes {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

fn counting_waker() -> (Arc<Wakes>, std::task::Waker) {
    let wakes = Arc::new(Wakes(0.into()));
    (wakes.clone(), std::task::Waker::from(wakes))
}

fn woken(w: &Wakes) -> usize {
    w.0.load(std::sync::atomic::Ordering::SeqCst)
}

/// Polls the session's wait once with `waker`.
fn poll_wait(s: &mut SessionState, waker: &std::task::Waker) -> std::task::Poll<News> {
    let mut cx = std::task::Context::from_waker(waker);
    let mut wait = std::pin::pin!(s.next_batch(false));
    wait.as_mut().poll(&mut cx)
}

#[test]
fn a_batch_wakes_only_the_sessions_whose_selection_it_touches() {
    let mut h = harness();
    let mut out = Outbox::default();
    let mut on_a = h.open(hello(&["a/#"], None), &mut out);
    let mut on_b = h.open(hello(&["b/#"], None), &mut out);
    kinds(&mut out);
    let (wakes_a, waker_a) = counting_waker();
    let (wakes_b, waker_b) = counting_waker();
    assert!(poll_wait(&mut on_a, &waker_a).is_pending());
    assert!(poll_wait(&mut on_b, &waker_b).is_pending());
    h.set(0, 1.0); // a/x
    on_a.shard().advance(); // what the shard's hub does on each batch
    assert_eq!((woken(&wakes_a), woken(&wakes_b)), (1, 0));
    assert_eq!(
        poll_wait(&mut on_a, &waker_a),
        std::task::Poll::Ready(News::Batches)
    );
    assert!(poll_wait(&mut on_b, &waker_b).is_pending());
    // Ten batches for b: b is woken once (its waker is taken), a never.
    for i in 0..10 {
        h.set(2, f64::from(i));
    }
    on_b.shard().advance();
    assert_eq!((woken(&wakes_a), woken(&wakes_b)), (1, 1));
    assert!(matches!(
        on_b.on_batch(News::Batches, &mut out),
        Action::Nothing
    ));
    let k = kinds(&mut out);
    let [Kind::Delta(d)] = &k[..] else {
        panic!("{k:?}")
    };
    assert_eq!(
        (d.from_seq, d.to_seq, ids(&d.updates)),
        (0, 11, vec![3; 10])
    );
    // a's Delta starts at its position and runs to the newest batch.
    assert!(matches!(
        on_a.on_batch(News::Batches, &mut out),
        Action::Nothing
    ));
    let k = kinds(&mut out);
    let [Kind::Delta(d)] = &k[..] else {
        panic!("{k:?}")
    };
    assert_eq!((d.from_seq, d.to_seq, ids(&d.updates)), (0, 11, vec![1]));
}

#[test]
fn sessions_of_one_selection_behind_at_one_position_share_one_catch_up() {
    let mut h = harness();
    let mut out = Outbox::default();
    let mut sessions: Vec<_> = (0..3)
        .map(|_| h.open(hello(&["a/x"], None), &mut out))
        .collect();
    kinds(&mut out);
    let before = sessions[0].shard().counters();
    for i in 0..(BATCH_RING as u64 + 10) {
        h.set(0, i as f64 + 1.0);
    }
    let mut frames = Vec::new();
    for s in &mut sessions {
        assert!(matches!(
            s.on_batch(News::Batches, &mut out),
            Action::Nothing
        ));
        frames.push(out.take_frames());
    }
    assert!(frames.iter().all(|f| f == &frames[0]), "the same Delta");
    let after = sessions[0].shard().counters();
    assert_eq!(after.catch_ups_encoded - before.catch_ups_encoded, 1);
    assert_eq!(after.catch_ups_shared - before.catch_ups_shared, 2);
}

#[test]
fn heartbeats_and_the_clocks_end_reach_waiting_sessions_through_their_shard() {
    let h = harness();
    let mut out = Outbox::default();
    let mut s = h.open(hello(&["a/x"], None), &mut out);
    kinds(&mut out);
    let (wakes, waker) = counting_waker();
    assert!(poll_wait(&mut s, &waker).is_pending());
    s.shard().heartbeat(false);
    assert_eq!(woken(&wakes), 1);
    let tick = s.shard().tick();
    assert_eq!(
        poll_wait(&mut s, &waker),
        std::task::Poll::Ready(News::Tick(tick))
    );
    assert!(matches!(
        s.on_batch(News::Tick(tick), &mut out),
        Action::Nothing
    ));
    let frames = out.take_frames();
    assert_eq!(frames.len(), 1, "a ping");
    assert!(poll_wait(&mut s, &waker).is_pending(), "one tick, one ping");
    s.shard().heartbeat(true);
    assert_eq!(
        poll_wait(&mut s, &waker),
        std::task::Poll::Ready(News::Closed)
    );
}

#[test]
fn a_hub_wakes_a_crowd_in_chunks_and_lets_the_runtime_poll_between_them() {
    use crate::push::shard::{WAKE_CHUNK, hub};
    let mut h = harness();
    let mut out = Outbox::default();
    let total = 3 * WAKE_CHUNK + 5;
    let mut sessions: Vec<_> = (0..total)
        .map(|_| h.open(hello(&["a/#"], None), &mut out))
        .collect();
    kinds(&mut out);
    let shard = sessions[0].shard().clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let seen = runtime.block_on(async {
        tokio::spawn(hub(Arc::downgrade(&shard), None));
        tokio::task::yield_now().await; // the hub starts: wakeups now go through it
        let wakes: Vec<_> = sessions
            .iter_mut()
            .map(|s| {
                let (wakes, waker) = counting_waker();
                assert!(poll_wait(s, &waker).is_pending());
                wakes
            })
            .collect();
        h.set(0, 1.0); // one batch for every session
        let mut seen = Vec::new();
        for _ in 0..100 {
            tokio::task::yield_now().await;
            let n = wakes.iter().filter(|w| woken(w) == 1).count();
            if seen.last() != Some(&n) {
                seen.push(n);
            }
            if n == total {
                break;
            }
        }
        seen
    });
    // Every session woken once, and not all in one turn: other tasks (a
    // handshake, a Pong) ran between the chunks.
    assert_eq!(seen.last(), Some(&total), "{seen:?}");
    assert!(
        seen.iter().any(|&n| n > 0 && n < total),
        "all woken at once: {seen:?}"
    );
    assert!(
        seen.windows(2).all(|w| w[1] - w[0] <= WAKE_CHUNK),
        "{seen:?}"
    );
}
