//! Access through the state machine: the read scope as a visibility
//! boundary (Catalog, Snapshot, Delta, resume, Browse, writes), the
//! Welcome's principal, Refresh and the token's end.

use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::json;

use super::*;
use crate::auth::{Credential, scope};

fn scoped(read: &[&str], write: &[&str]) -> Principal {
    Principal {
        subject: "op".into(),
        read: scope(read.iter().map(|p| p.to_string()).collect()),
        write: write.iter().map(|p| p.to_string()).collect(),
        expires_at_us: None,
        credential: Credential::Static,
    }
}

#[tokio::test(start_paused = true)]
async fn a_tag_outside_the_read_scope_exists_nowhere_for_the_connection() {
    let mut h = harness();
    h.set_many(&[(0, 1.0), (2, 2.0)]);
    let mut out = Outbox::default();
    let p = scoped(&["a/#"], &["a/#", "b/#"]);
    let mut s = h.open_as(p.clone(), hello(&["#"], None), &mut out);
    let k = kinds(&mut out);
    let [Kind::Welcome(w), Kind::Catalog(c), Kind::Snapshot(snap)] = &k[..] else {
        panic!("{k:?}");
    };
    assert_eq!(w.read_scope, ["a/#"]);
    assert_eq!(w.write_scope, ["a/#", "b/#"]);
    assert_eq!(w.token_expires_at_us, 0);
    assert_eq!(
        names(c),
        ["a/x", "a/y"],
        "`#` matches nothing outside the scope"
    );
    assert_eq!(ids(&snap.tags), [1, 2]);

    // Only b/ changes: nothing of it reaches this connection.
    h.set(2, 3.0);
    h.set(0, 4.0);
    pump(&mut s, &mut out);
    let k = kinds(&mut out);
    let [Kind::Delta(d)] = &k[..] else {
        panic!("{k:?}")
    };
    assert_eq!(ids(&d.updates), [1]);

    // Browse lists only visible names.
    assert!(matches!(
        s.on_message(browse("#", 1, 0, ""), now(), PEER, &mut out),
        Action::Nothing
    ));
    let k = kinds(&mut out);
    let [Kind::BrowseResult(b)] = &k[..] else {
        panic!("{k:?}")
    };
    let listed: Vec<&str> = b.tags.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(listed, ["a/x", "a/y"]);

    // A write outside the read scope: the tag does not exist, even though
    // the write scope covers it.
    let step = s.on_message(
        write(7, "b/flag", Some(proto::value::Kind::Bool(true))),
        now(),
        PEER,
        &mut out,
    );
    assert!(matches!(step, Action::Nothing));
    assert_eq!(results(&mut out), [(7, status::BAD_NODE_ID_UNKNOWN)]);
    assert!(h.commands.is_empty());

    // A resume from before the b/ changes: its Delta carries a/x only.
    let mut out2 = Outbox::default();
    let mut r = h.open_as(p, hello(&["#"], Some((EPOCH, 1))), &mut out2);
    let k = kinds(&mut out2);
    let [Kind::Welcome(w), Kind::Delta(d)] = &k[..] else {
        panic!("{k:?}")
    };
    assert_eq!(w.resume(), ResumeOutcome::Resumed);
    assert_eq!(ids(&d.updates), [1]);
    // Subscribing a b/ pattern explicitly adds nothing either.
    let sub = msg(C::Subscribe(proto::Subscribe {
        patterns: vec!["b/z".into()],
    }));
    assert!(matches!(
        r.on_message(sub, now(), PEER, &mut out2),
        Action::Nothing
    ));
    assert!(kinds(&mut out2).is_empty());
}

#[test]
fn connections_of_one_scope_share_their_selection_and_others_do_not() {
    let h = harness();
    let mut out = Outbox::default();
    let a1 = h.open_as(scoped(&["a/#"], &[]), hello(&["#"], None), &mut out);
    let a2 = h.open_as(scoped(&["a/#"], &[]), hello(&["#"], None), &mut out);
    let all = h.open(hello(&["#"], None), &mut out);
    assert!(a1.shares_selection_with(&a2));
    assert!(!a1.shares_selection_with(&all));
}

fn jwt(sub: &str, exp_s: i64, read: &[&str], write: &[&str]) -> String {
    let key = EncodingKey::from_secret(JWT_SECRET.as_bytes()).expect("key");
    let claims = json!({"sub": sub, "exp": exp_s, "read": read, "write": write});
    encode(&Header::default(), &claims, &key).expect("sign")
}

fn at(wall_s: i64) -> Now {
    Now {
        wall_us: wall_s * 1_000_000,
        at: tokio::time::Instant::now(),
    }
}

fn refresh(token: String) -> proto::ClientMessage {
    msg(C::Refresh(proto::Refresh { token }))
}

const T0: i64 = 1_800_000_000;

/// The principal the harness's verifier gives `token` at `T0`.
fn verified(h: &Harness, token: &str) -> Arc<Principal> {
    h.cx.auth
        .authenticate(Some(token), T0 * 1_000_000)
        .expect("jwt")
}

#[tokio::test(start_paused = true)]
async fn a_jwt_session_ends_4001_at_expiry_unless_refreshed() {
    let h = harness();
    let token = jwt("alice", T0 + 60, &["#"], &[]);
    let p = verified(&h, &token);
    let mut out = Outbox::default();
    let mut s = h.open_as((*p).clone(), hello(&[], None), &mut out);
    let k = kinds(&mut out);
    let [Kind::Welcome(w), ..] = &k[..] else {
        panic!("{k:?}")
    };
    assert_eq!(w.token_expires_at_us, (T0 + 60) * 1_000_000);
    assert_eq!(s.session_end_us(), Some((T0 + 60) * 1_000_000));
    assert!(matches!(s.on_expiry(at(T0 + 59), PEER), Action::Nothing));

    // A valid Refresh moves the end and replaces the write scope.
    let next = jwt("alice", T0 + 600, &["#"], &["a/#"]);
    assert!(matches!(
        s.on_message(refresh(next), at(T0 + 30), PEER, &mut out),
        Action::Nothing
    ));
    let k = kinds(&mut out);
    let [Kind::Refreshed(r)] = &k[..] else {
        panic!("{k:?}")
    };
    assert_eq!(r.expires_at_us, (T0 + 600) * 1_000_000);
    assert!(
        matches!(s.on_expiry(at(T0 + 61), PEER), Action::Nothing),
        "outlives the first token"
    );
    let step = s.on_message(
        write(1, "a/y", Some(proto::value::Kind::F64(5.0))),
        at(T0 + 62),
        PEER,
        &mut out,
    );
    assert!(
        matches!(step, Action::StartWrite(_)),
        "the new write scope applies"
    );

    match s.on_expiry(at(T0 + 600), PEER) {
        Action::End(End::Close(code, reason, None)) => {
            assert_eq!(
                (code, reason.as_str()),
                (close::TOKEN_EXPIRED, "token expired")
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_bad_refresh_is_unauthorized_and_4003() {
    let h = harness();
    let token = jwt("alice", T0 + 60, &["a/#"], &[]);
    let p = verified(&h, &token);
    let cases = [
        ("another subject", jwt("bob", T0 + 600, &["a/#"], &[])),
        ("another read scope", jwt("alice", T0 + 600, &["#"], &[])),
        ("expired", jwt("alice", T0 - 1, &["a/#"], &[])),
        ("not a JWT", "garbage".to_string()),
    ];
    for (case, bad) in cases {
        let mut out = Outbox::default();
        let mut s = h.open_as((*p).clone(), hello(&[], None), &mut out);
        kinds(&mut out);
        match s.on_message(refresh(bad), at(T0 + 1), PEER, &mut out) {
            Action::End(End::Close(code, _, Some((err, _)))) => {
                assert_eq!(
                    (code, err),
                    (close::TOKEN_REFUSED, ErrorCode::Unauthorized),
                    "{case}"
                );
            }
            other => panic!("{case}: {other:?}"),
        }
    }
}

#[test]
fn refresh_without_a_jwt_is_unexpected_and_the_session_stays() {
    let h = harness();
    let mut out = Outbox::default();
    let mut s = h.open(hello(&[], None), &mut out);
    kinds(&mut out);
    let token = jwt("alice", T0 + 60, &["#"], &[]);
    assert!(matches!(
        s.on_message(refresh(token), at(T0), PEER, &mut out),
        Action::Nothing
    ));
    let k = kinds(&mut out);
    let [Kind::Error(e)] = &k[..] else {
        panic!("{k:?}")
    };
    assert_eq!(e.code(), ErrorCode::UnexpectedMessage);
    assert_eq!(s.session_end_us(), None);
}

use crate::test_log::logged;

#[tokio::test(start_paused = true)]
async fn every_write_and_refused_refresh_is_one_audit_event_without_the_token() {
    let h = harness();
    let token = jwt("alice", T0 + 60, &["#"], &["a/#"]);
    let p = verified(&h, &token);
    let mut out = Outbox::default();
    let mut s = h.open_as((*p).clone(), hello(&[], None), &mut out);
    kinds(&mut out);
    let bad = jwt("mallory", T0 + 600, &["#"], &["#"]);
    let log = logged(|| {
        let denied = write(1, "b/flag", Some(proto::value::Kind::Bool(true)));
        assert!(matches!(
            s.on_message(denied, at(T0), PEER, &mut out),
            Action::Nothing
        ));
        let started = write(2, "a/y", Some(proto::value::Kind::F64(5.0)));
        let Action::StartWrite(pending) = s.on_message(started, at(T0), PEER, &mut out) else {
            panic!("not started")
        };
        let done = super::super::writes::WriteDone {
            request_id: 2,
            source: pending.source,
            status: status::GOOD,
            message: String::new(),
            audit: pending.audit,
        };
        s.on_write_done(done, PEER, &mut out);
        // A tag that carries a forged audit line: one event, the line
        // break escaped inside it.
        let forged = "x\n2026-12-04T00:00:00Z  INFO audit: event=\"write\" subject=root";
        let w = write(3, forged, Some(proto::value::Kind::Bool(true)));
        assert!(matches!(
            s.on_message(w, at(T0), PEER, &mut out),
            Action::Nothing
        ));
        assert!(matches!(
            s.on_message(refresh(bad.clone()), at(T0), PEER, &mut out),
            Action::End(_)
        ));
    });
    let audit: Vec<&str> = log.lines().filter(|l| l.contains(" audit:")).collect();
    assert_eq!(audit.len(), 4, "{log}");
    assert!(
        audit[2].contains("tag=\"x\\n2026") && audit[2].contains("BadNodeIdUnknown"),
        "{}",
        audit[2]
    );
    assert!(
        !log.lines().any(|l| l.starts_with("2026-12-04T00:00:00Z")),
        "a forged line: {log}"
    );
    assert!(audit[0].contains("subject=\"alice\"") && audit[0].contains("peer=127.0.0.1:40000"));
    assert!(
        audit[0].contains("tag=\"b/flag\"") && audit[0].contains("result=BadUserAccessDenied"),
        "{}",
        audit[0]
    );
    assert!(
        audit[1].contains("tag=\"a/y\"")
            && audit[1].contains("value=\"5\"")
            && audit[1].contains("result=Good"),
        "{}",
        audit[1]
    );
    assert!(audit[1].contains("latency_us="));
    assert!(
        audit[3].contains("token_refused") && audit[3].contains("reason="),
        "{}",
        audit[3]
    );
    assert!(
        !log.contains(&bad) && !log.contains(&token),
        "a token in the log"
    );
}

#[test]
fn a_scope_bypasses_no_limit() {
    let h = harness();
    let mut out = Outbox::default();
    // max_patterns is 4 in the harness: patterns outside the scope count.
    let p = scoped(&["a/#"], &["#"]);
    let five = hello(&["b/1", "b/2", "b/3", "b/4", "b/5"], None);
    let end = SessionState::on_hello(h.cx.clone(), Arc::new(p.clone()), five, &mut out);
    assert!(matches!(
        end,
        Err(End::Close(1008, _, Some((ErrorCode::LimitExceeded, _))))
    ));
    // The write rate applies to a scoped writer as to anyone (10/s here).
    let mut s = h.open_as(p, hello(&[], None), &mut out);
    kinds(&mut out);
    let mut statuses = Vec::new();
    for id in 0..12 {
        let w = write(id, "a/y", Some(proto::value::Kind::F64(1.0)));
        match s.on_message(w, now(), PEER, &mut out) {
            Action::StartWrite(_) => statuses.push(status::GOOD),
            Action::Nothing => statuses.extend(results(&mut out).into_iter().map(|(_, st)| st)),
            other => panic!("{other:?}"),
        }
    }
    assert!(
        statuses.contains(&status::BAD_TOO_MANY_OPERATIONS),
        "{statuses:x?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_browse_cursor_never_names_a_hidden_tag_and_after_must_be_one_of_ours() {
    use crate::push::session::state::BROWSE_MAX_SCAN;
    let mut h = harness();
    // 25,000 hidden tags sort before the one visible `zz/...` tag.
    let hidden = (0..25_000u32).map(|i| Input::Define {
        key: TagKey {
            source: 1,
            local: i,
        },
        def: Box::new(TagDef::read_only(
            format!("plant/secret/g{}/t{i}", i / 5000),
            "s1",
        )),
    });
    let visible = std::iter::once(Input::Define {
        key: TagKey {
            source: 1,
            local: 99_999,
        },
        def: Box::new(TagDef::read_only("zz/seen", "s1")),
    });
    h.engine.apply(hidden.chain(visible).collect::<Vec<_>>());
    let mut out = Outbox::default();
    let mut s = h.open_as(scoped(&["zz/#"], &[]), hello(&[], None), &mut out);
    kinds(&mut out);
    let browse = |after: &str, id: u64| {
        msg(C::Browse(proto::Browse {
            request_id: id,
            pattern: "#".into(),
            limit: 0,
            after: after.into(),
        }))
    };
    let mut after = String::new();
    let mut seen = Vec::new();
    for id in 1..=5 {
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(matches!(
            s.on_message(browse(&after, id), now(), PEER, &mut out),
            Action::Nothing
        ));
        let k = kinds(&mut out);
        let [Kind::BrowseResult(r)] = &k[..] else {
            panic!("{k:?}")
        };
        assert!(!r.next_after.contains("plant"), "{}", r.next_after);
        seen.extend(r.tags.iter().map(|t| t.name.clone()));
        if r.next_after.is_empty() {
            break;
        }
        after = r.next_after.clone();
    }
    assert_eq!(seen, ["zz/seen"], "the walk still reaches the visible tag");
    const { assert!(25_000 > BROWSE_MAX_SCAN, "the scan bound is hit on the way") };
    // A chosen `after` among hidden names is refused, as is any string
    // that is neither a visible name nor a sealed cursor.
    for chosen in ["plant/secret/g4/t4998", "plant/secret/g", "~00ff"] {
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(matches!(
            s.on_message(browse(chosen, 9), now(), PEER, &mut out),
            Action::Nothing
        ));
        let k = kinds(&mut out);
        let [Kind::Error(e)] = &k[..] else {
            panic!("{chosen}: {k:?}")
        };
        assert_eq!(e.code(), ErrorCode::Malformed);
    }
}
