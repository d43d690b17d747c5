//! History (protocol.md): a HistoryResult made at the connection's
//! position while the engine races on, the Deltas after it continuing
//! from its seq; read scope, unknown tags and history off answered alike;
//! the rate and size limits with their Error rows.

use super::*;
use crate::engine::history::HistoryConfig;
use crate::push::session::history::{HISTORY_PER_S, HistoryJob, MAX_HISTORY_TAGS};

fn with_history() -> Harness {
    harness_full(1 << 20, Duration::ZERO, Some(HistoryConfig::default()))
}

fn request(id: u64, tags: &[&str], max_points: u32) -> proto::ClientMessage {
    msg(C::History(proto::HistoryRequest {
        request_id: id,
        tags: tags.iter().map(|t| t.to_string()).collect(),
        start_us: 0,
        end_us: 0,
        max_points,
    }))
}

fn job(action: Action) -> Box<HistoryJob> {
    match action {
        Action::History(job) => job,
        other => panic!("expected a history job, got {other:?}"),
    }
}

fn result(job: &HistoryJob) -> proto::HistoryResult {
    let msg = proto::ServerMessage::decode(job.answer()).expect("decodes");
    match msg.kind {
        Some(Kind::HistoryResult(r)) => r,
        other => panic!("{other:?}"),
    }
}

fn f64s(series: &proto::TagHistory) -> Vec<f64> {
    series
        .points
        .iter()
        .map(|p| match p.value.as_ref().and_then(|v| v.kind.clone()) {
            Some(proto::value::Kind::F64(v)) => v,
            other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
fn the_answer_is_made_at_the_position_while_changes_race_it_and_deltas_continue() {
    let mut h = with_history();
    let mut out = Outbox::default();
    let mut s = h.open(hello(&["a/#"], None), &mut out);
    kinds(&mut out);
    for v in 1..=5 {
        h.set(0, f64::from(v));
    }
    h.set(2, 50.0); // b/z: not subscribed
    // Requested before the session saw those batches: it is brought
    // current first (one Delta), and b/z gets its Catalog entry.
    let job = job(s.on_message(request(7, &["a/x", "b/z"], 0), now(), PEER, &mut out));
    let k = kinds(&mut out);
    let [Kind::Delta(d), Kind::Catalog(c)] = &k[..] else {
        panic!("{k:?}")
    };
    assert_eq!(names(c), ["b/z"]);
    assert_eq!(d.to_seq, s.position());
    let at = s.position();
    assert_eq!(job.query.max_seq, at);
    // The engine races on before the job runs (it runs off the thread).
    for v in 6..=9 {
        h.set(0, f64::from(v));
    }
    let r = result(&job);
    assert_eq!((r.request_id, r.seq), (7, at));
    let x = r.series.iter().find(|t| t.id == 1).expect("a/x");
    assert_eq!(
        f64s(x),
        [1.0, 2.0, 3.0, 4.0, 5.0],
        "ends at the state at seq"
    );
    assert!(x.complete && !x.decimated);
    assert_eq!(
        r.series.iter().find(|t| t.id == 3).map(f64s),
        Some(vec![50.0])
    );
    // The next Delta continues from the answer's seq: 6..9 conflated.
    pump(&mut s, &mut out);
    let k = kinds(&mut out);
    let [Kind::Delta(d)] = &k[..] else {
        panic!("{k:?}")
    };
    assert_eq!(d.from_seq, r.seq);
    let last = d.updates.last().and_then(|u| u.value.clone());
    assert_eq!(last, Some(proto::Value::from(&Value::F64(9.0))));
}

#[test]
fn hidden_unknown_and_history_off_tags_are_absent_alike() {
    let mut h = with_history();
    h.set_many(&[(0, 1.0), (2, 2.0)]);
    h.engine
        .apply([Input::Sample(Sample::good(key(3), Value::Bool(true)))]);
    let mut out = Outbox::default();
    let p = Principal {
        read: crate::auth::scope(vec!["a/#".into(), "b/flag".into()]),
        ..Principal::open()
    };
    let mut s = h.open_as(p, hello(&["a/#"], None), &mut out);
    kinds(&mut out);
    let huge = format!("a/{}", "x".repeat(64 * 1024));
    let tags = ["a/x", "b/z", "no/such", "b/flag", "a/x", huge.as_str()];
    let r = result(&job(s.on_message(
        request(1, &tags, 0),
        now(),
        PEER,
        &mut out,
    )));
    assert_eq!(
        r.series.iter().map(|t| t.id).collect::<Vec<_>>(),
        [1],
        "b/z hidden, no/such unknown, b/flag without history, a/x once, a 64 KiB name absent"
    );
    // No Catalog entry for what it may not see either.
    assert!(kinds(&mut out).is_empty());
}

#[test]
fn max_points_thins_the_series_and_says_so() {
    let mut h = with_history();
    for v in 0..100 {
        h.set(0, f64::from(v));
    }
    let mut out = Outbox::default();
    let mut s = h.open(hello(&["a/#"], None), &mut out);
    kinds(&mut out);
    let r = result(&job(s.on_message(
        request(1, &["a/x"], 8),
        now(),
        PEER,
        &mut out,
    )));
    let x = &r.series[0];
    assert!(x.decimated);
    assert!(
        x.points.len() <= 16 && x.points.len() >= 4,
        "{}",
        x.points.len()
    );
    assert_eq!(f64s(x).last(), Some(&99.0), "the state at seq is last");
    assert_eq!(f64s(x).first(), Some(&0.0));
}

#[tokio::test(start_paused = true)]
async fn history_requests_past_the_rate_or_over_100_tags_are_limit_exceeded_and_the_session_stays()
{
    let h = with_history();
    let mut out = Outbox::default();
    let mut s = h.open(hello(&["a/#"], None), &mut out);
    kinds(&mut out);
    let at = now();
    for i in 0..2 * HISTORY_PER_S {
        job(s.on_message(request(u64::from(i), &["a/x"], 0), at, PEER, &mut out));
    }
    let refused = s.on_message(request(99, &["a/x"], 0), at, PEER, &mut out);
    assert!(matches!(refused, Action::Nothing));
    let k = kinds(&mut out);
    let [Kind::Error(e)] = &k[..] else {
        panic!("{k:?}")
    };
    assert_eq!(e.code(), ErrorCode::LimitExceeded);
    // A second later there is room again; 101 names are refused (and
    // counted: the rate applies to refused requests too).
    tokio::time::advance(Duration::from_secs(1)).await;
    let names: Vec<String> = (0..=MAX_HISTORY_TAGS).map(|i| format!("a/{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let big = s.on_message(request(100, &names, 0), now(), PEER, &mut out);
    assert!(matches!(big, Action::Nothing));
    let k = kinds(&mut out);
    let [Kind::Error(e)] = &k[..] else {
        panic!("{k:?}")
    };
    assert_eq!(e.code(), ErrorCode::LimitExceeded);
    assert!(e.message.contains("at most 100"), "{}", e.message);
    job(s.on_message(request(101, &["a/x"], 0), now(), PEER, &mut out));
}

#[test]
fn without_history_configured_the_answer_is_empty_and_tag_info_says_so() {
    let h = harness();
    let mut out = Outbox::default();
    let mut s = h.open(hello(&["a/#"], None), &mut out);
    let k = kinds(&mut out);
    let Some(Kind::Catalog(c)) = k.get(1) else {
        panic!("{k:?}")
    };
    assert!(c.tags.iter().all(|t| !t.history));
    let r = result(&job(s.on_message(
        request(1, &["a/x"], 0),
        now(),
        PEER,
        &mut out,
    )));
    assert!(r.series.is_empty());
    let h = with_history();
    let s2 = h.open(hello(&["b/#"], None), &mut out);
    let k = kinds(&mut out);
    let Some(Kind::Catalog(c)) = k.get(1) else {
        panic!("{k:?}")
    };
    let flags: Vec<(&str, bool)> = c
        .tags
        .iter()
        .map(|t| (t.name.as_str(), t.history))
        .collect();
    assert_eq!(flags, [("b/z", true), ("b/flag", false)]);
    drop(s2);
}
