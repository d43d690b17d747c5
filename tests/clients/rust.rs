//! `tagstream-client` (clients/rust) against an in-process server polling
//! a real Modbus TCP device: snapshot, a delta after a device change,
//! resume through a cut relay, resync after a restart, writes, a refused
//! token, and the reconnect schedule while the server is away.

use std::time::Duration;

use tagstream::demo::ModbusDevice;
use tagstream::proto::ResumeOutcome;
use tagstream_client::{Backoff, Client, Options, State, Stop, Token, Update, Updates, WriteError};

use crate::common::*;

/// A device whose holding register 0 is `plant/level` (scale 0.1) and 1
/// `plant/setpoint` (writable, 0..=1000).
fn config(device: &ModbusDevice, extra: &str) -> String {
    format!(
        r#"
[server]
drain_window = "200ms"
{extra}
[[modbus]]
name = "dev"
address = "{}"
poll_interval = "50ms"

[[modbus.tags]]
name = "plant/level"
address = 0
type = "u16"
scale = 0.1
unit = "%"

[[modbus.tags]]
name = "plant/setpoint"
address = 1
type = "u16"
writable = true
min = 0
max = 1000
"#,
        device.addr()
    )
}

const OPEN: &str = "[auth]\nanonymous = { read = [\"#\"], write = [\"#\"] }\n";

async fn device() -> ModbusDevice {
    let dev = ModbusDevice::start(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    dev.registers().holding[0] = 559;
    dev
}

fn options(url: String) -> Options {
    let mut o = Options::new(url);
    o.subscribe = vec!["plant/#".into()];
    o.backoff = Backoff {
        initial: Duration::from_millis(50),
        cap: Duration::from_millis(400),
    };
    o.ping_interval = Duration::from_millis(200);
    o
}

/// Reads updates until `pred` holds (within the deadline); returns what
/// was read on the way.
async fn until(updates: &mut Updates, mut pred: impl FnMut(&Update) -> bool) -> Vec<Update> {
    let mut seen = Vec::new();
    tokio::time::timeout(DEADLINE * 2, async {
        while let Some(u) = updates.next().await {
            let done = pred(&u);
            seen.push(u);
            if done {
                return;
            }
        }
        panic!("updates ended: {seen:?}");
    })
    .await
    .unwrap_or_else(|_| panic!("no such update before the deadline"));
    seen
}

fn value_of(client: &Client, name: &str) -> Option<f64> {
    client.with_mirror(|m| match m.value(name)?.value.as_ref()?.kind.as_ref()? {
        tagstream::proto::value::Kind::F64(f) => Some(*f),
        tagstream::proto::value::Kind::U64(u) => Some(*u as f64),
        _ => None,
    })
}

fn live(outcome: ResumeOutcome) -> impl FnMut(&Update) -> bool {
    move |u| matches!(u, Update::State(State::Live { outcome: o }) if *o == outcome)
}

fn changed(name: &'static str, want: f64) -> impl FnMut(&Update) -> bool {
    move |u| match u {
        Update::Changes(cs) => cs.iter().any(|c| {
            c.name == name
                && matches!(c.update.value.as_ref().and_then(|v| v.kind.as_ref()),
                    Some(tagstream::proto::value::Kind::F64(f)) if (f - want).abs() < 1e-9)
        }),
        _ => false,
    }
}

#[tokio::test]
async fn snapshot_then_a_delta_after_a_device_change() {
    let dev = device().await;
    let server = spawn_server(&config(&dev, ""), &[]).await;
    let (client, mut updates) = Client::start(options(url(&server)));
    until(&mut updates, changed("plant/level", 55.9)).await;
    let info = client
        .with_mirror(|m| m.info("plant/level").cloned())
        .unwrap();
    assert_eq!(info.resolution, 0.1);
    assert_eq!(info.unit, "%");
    let shown = client.with_mirror(|m| {
        tagstream_client::format_value(m.value("plant/level").unwrap().value.as_ref(), Some(&info))
    });
    assert_eq!(shown, "55.9", "a scaled value prints without binary noise");
    dev.registers().holding[0] = 600;
    until(&mut updates, changed("plant/level", 60.0)).await;
    assert_eq!(value_of(&client, "plant/level"), Some(60.0));
    // A Pong came back and its seq matched the position (else: a resume).
    until(&mut updates, |u| matches!(u, Update::Latency(_))).await;
    assert!(client.latency().is_some());
    client.close().await;
    until(&mut updates, |u| {
        matches!(u, Update::State(State::Stopped(Stop::Closed)))
    })
    .await;
}

#[tokio::test]
async fn a_dropped_connection_resumes_with_one_delta_and_no_snapshot() {
    let dev = device().await;
    let server = spawn_server(&config(&dev, ""), &[]).await;
    let mut relay = Relay::start(server.addr).await;
    let (client, mut updates) =
        Client::start(options(format!("ws://{}/api/v1/stream", relay.addr)));
    until(&mut updates, changed("plant/level", 55.9)).await;
    let epoch = client.welcome().unwrap().epoch;
    relay.stop();
    until(&mut updates, |u| {
        matches!(u, Update::State(State::Waiting { .. }))
    })
    .await;
    dev.registers().holding[0] = 700;
    // Let the server see the change while the client is away.
    tokio::time::sleep(Duration::from_millis(300)).await;
    relay.restart();
    let seen = until(&mut updates, live(ResumeOutcome::Resumed)).await;
    let after = until(&mut updates, changed("plant/level", 70.0)).await;
    let welcome = seen
        .iter()
        .rev()
        .find_map(|u| match u {
            Update::Welcome(w) => Some(w.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(welcome.epoch, epoch);
    // RESUMED: no catalog again, and the change arrives as one batch (the
    // Delta), not a snapshot of every tag.
    assert!(!after.iter().any(|u| matches!(u, Update::Catalog(_))));
    let batches: Vec<&Vec<_>> = after
        .iter()
        .filter_map(|u| match u {
            Update::Changes(c) => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(batches.len(), 1, "one Delta: {after:?}");
    assert!(
        batches[0].iter().all(|c| c.name == "plant/level"),
        "only what changed"
    );
    client.close().await;
}

#[tokio::test]
async fn a_server_restart_resyncs_the_mirror() {
    let dev = device().await;
    let toml = config(&dev, OPEN);
    let server = spawn_server(&toml, &[]).await;
    let addr = server.addr;
    let (client, mut updates) = Client::start(options(url(&server)));
    until(&mut updates, changed("plant/level", 55.9)).await;
    let epoch = client.welcome().unwrap().epoch;
    server.stop().await;
    until(&mut updates, |u| {
        matches!(u, Update::State(State::Waiting { .. }))
    })
    .await;
    dev.registers().holding[0] = 800;
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let config = tagstream::config::Config::parse(&toml).unwrap();
    let _again = tagstream::app::start_with(config, listener, Vec::new())
        .await
        .unwrap();
    until(&mut updates, live(ResumeOutcome::Resync)).await;
    until(&mut updates, changed("plant/level", 80.0)).await;
    let welcome = client.welcome().unwrap();
    assert_ne!(welcome.epoch, epoch, "a restart is a new epoch");
    assert_eq!(client.with_mirror(|m| m.epoch), welcome.epoch);
    client.close().await;
}

#[tokio::test]
async fn a_write_returns_its_result_and_reaches_the_device() {
    let dev = device().await;
    let server = spawn_server(&config(&dev, OPEN), &[]).await;
    let (client, mut updates) = Client::start(options(url(&server)));
    until(&mut updates, live(ResumeOutcome::Fresh)).await;
    let drain = tokio::spawn(async move { while updates.next().await.is_some() {} });
    let good = client.write("plant/setpoint", 650.0).await.unwrap();
    assert!(good.is_good(), "{good:?}");
    assert_eq!(dev.registers().holding[1], 650);
    let far = client.write("plant/setpoint", 5000.0).await.unwrap();
    assert_eq!(far.status_name, "BadOutOfRange");
    assert_eq!(dev.registers().holding[1], 650);
    let ro = client.write("plant/level", 1.0).await.unwrap();
    assert_eq!(ro.status_name, "BadNotWritable");
    let browse = client.browse("plant/+", 0, "").await.unwrap();
    let names: Vec<&str> = browse.tags.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["plant/level", "plant/setpoint"]);
    client.close().await;
    drain.await.unwrap();
    assert_eq!(
        client.write("plant/setpoint", 1.0).await,
        Err(WriteError::Stopped),
        "a stopped client refuses at once"
    );
}

#[tokio::test]
async fn a_refused_token_stops_the_client_and_a_good_one_connects() {
    let dev = device().await;
    let auth = "[auth]\ntokens = [{ name = \"hmi\", token_env = \"HMI_TOKEN\", read = [\"plant/#\"], write = [] }]\n";
    let server = spawn_with_env(
        &config(&dev, auth),
        &[],
        &[("HMI_TOKEN", "s3cret-hmi-token-0123456789")],
    )
    .await;
    let mut bad = options(url(&server));
    bad.token = Some(Token::Static("wrong".into()));
    let (_c, mut updates) = Client::start(bad);
    until(&mut updates, |u| {
        matches!(
            u,
            Update::State(State::Stopped(Stop::Refused { status: 401 }))
        )
    })
    .await;
    assert!(
        updates.next().await.is_none(),
        "a stopped client says nothing more"
    );
    let mut good = options(url(&server));
    good.token = Some(Token::Static("s3cret-hmi-token-0123456789".into()));
    let (client, mut updates) = Client::start(good);
    until(&mut updates, live(ResumeOutcome::Fresh)).await;
    let welcome = client.welcome().unwrap();
    assert_eq!(welcome.read_scope, ["plant/#"]);
    assert!(welcome.write_scope.is_empty());
    let drain = tokio::spawn(async move { while updates.next().await.is_some() {} });
    let denied = client.write("plant/setpoint", 1.0).await.unwrap();
    assert_eq!(denied.status_name, "BadUserAccessDenied");
    client.close().await;
    drain.await.unwrap();
}

#[tokio::test]
async fn while_the_server_is_away_retries_follow_the_capped_jittered_schedule() {
    // Nothing listens here yet.
    let port = tagstream_testkit::free_port().unwrap();
    let mut o = options(format!("ws://127.0.0.1:{port}/api/v1/stream"));
    o.ping_interval = Duration::ZERO;
    let backoff = o.backoff;
    let (client, mut updates) = Client::start(o);
    let mut delays = Vec::new();
    while delays.len() < 8 {
        match updates.next().await.unwrap() {
            Update::State(State::Waiting { delay, .. }) => delays.push(delay),
            Update::State(State::Connecting { attempt }) => {
                assert_eq!(attempt as usize, delays.len())
            }
            other => panic!("{other:?}"),
        }
    }
    for (attempt, d) in delays.iter().enumerate() {
        assert!(
            *d <= backoff.ceiling(attempt as u32),
            "attempt {attempt}: {d:?}"
        );
        assert!(*d <= backoff.cap);
    }
    // Then the server appears and the client gets in.
    let dev = device().await;
    let config = tagstream::config::Config::parse(&config(&dev, "")).unwrap();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let _server = tagstream::app::start_with(config, listener, Vec::new())
        .await
        .unwrap();
    until(&mut updates, live(ResumeOutcome::Fresh)).await;
    client.close().await;
}

#[tokio::test]
async fn a_token_provider_refreshes_the_session_before_its_token_expires() {
    use jsonwebtoken::{EncodingKey, Header, encode};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    const SECRET: &str = "sdk-tests-hs256-secret-0123456789";
    let dev = device().await;
    let auth = "[auth]\njwt = { hs256_secret_env = \"JWT\", leeway = \"0s\" }\n";
    let server = spawn_with_env(&config(&dev, auth), &[], &[("JWT", SECRET)]).await;
    let minted = Arc::new(AtomicUsize::new(0));
    let counter = minted.clone();
    let mut o = options(url(&server));
    // Each token lives 2 s: the session outlives several only by Refresh.
    o.token = Some(Token::provider(move || {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            let exp = tagstream::sample::now_us() / 1_000_000 + 2;
            let claims = serde_json::json!({"sub": "op", "exp": exp, "read": ["#"], "write": []});
            let key = EncodingKey::from_secret(SECRET.as_bytes()).map_err(|e| e.to_string())?;
            encode(&Header::default(), &claims, &key).map_err(|e| e.to_string())
        }
    }));
    let (client, mut updates) = Client::start(o);
    until(&mut updates, live(ResumeOutcome::Fresh)).await;
    let first = client.welcome().unwrap().token_expires_at_us;
    assert!(first > 0);
    // Past three token lifetimes: still the first session, never closed.
    let watch = tokio::time::timeout(Duration::from_secs(6), async {
        while let Some(u) = updates.next().await {
            if let Update::State(s) = u {
                panic!("the session ended or changed state: {s:?}");
            }
        }
    });
    assert!(
        watch.await.is_err(),
        "the update stream stayed open and live"
    );
    assert!(
        minted.load(Ordering::SeqCst) >= 3,
        "the provider was asked again"
    );
    assert_eq!(
        client.state(),
        State::Live {
            outcome: ResumeOutcome::Fresh
        }
    );
    client.close().await;
}

#[tokio::test]
async fn pacing_is_asked_in_the_hello_granted_in_the_welcome_and_changed_with_pace() {
    let dev = device().await;
    let server = spawn_server(&config(&dev, ""), &[]).await;
    let mut o = options(url(&server));
    o.publish_interval = Duration::from_secs(1);
    // No Pings: each Pong brings the connection current (a Delta) first.
    o.ping_interval = Duration::ZERO;
    let (client, mut updates) = Client::start(o);
    let seen = until(&mut updates, |u| matches!(u, Update::Paced(_))).await;
    assert!(
        matches!(seen.last(), Some(Update::Paced(d)) if *d == Duration::from_secs(1)),
        "{seen:?}"
    );
    // Honoured: the device is polled every 50 ms and changes each time;
    // the batches come once a second (after the Snapshot's).
    until(&mut updates, |u| matches!(u, Update::Changes(_))).await;
    let changing = async {
        for v in 0..64u16 {
            dev.registers().holding[0] = 100 + v;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let counting = async {
        let mut batches = 0;
        let _ = tokio::time::timeout(Duration::from_millis(3200), async {
            while let Some(u) = updates.next().await {
                batches += usize::from(matches!(u, Update::Changes(_)));
            }
        })
        .await;
        batches
    };
    let ((), batches) = tokio::join!(changing, counting);
    assert!(
        (2..=4).contains(&batches),
        "{batches} batches in 3.2 s paced at 1 s"
    );
    client.pace(Duration::from_secs(120)).await.unwrap();
    let seen = until(&mut updates, |u| matches!(u, Update::Paced(_))).await;
    assert!(
        matches!(seen.last(), Some(Update::Paced(d)) if *d == Duration::from_secs(60)),
        "the server caps it at 60 s: {seen:?}"
    );
    client.close().await;
}

fn f64_value(v: Option<&tagstream::proto::Value>) -> Option<f64> {
    match v?.kind.as_ref()? {
        tagstream::proto::value::Kind::F64(f) => Some(*f),
        _ => None,
    }
}

/// History (protocol.md): asked while the engine applies a stream of
/// changes, the series ends at the answer's seq and the changes after it
/// continue it: every value set is in the series or after it, none twice,
/// and the series has every applied change up to its end (not a
/// conflated stream).
#[tokio::test]
async fn history_then_live_without_a_gap_while_changes_race_the_request() {
    let server = spawn_server("[history]\n", &["t/x", "t/other"]).await;
    let mut o = Options::new(url(&server));
    o.subscribe = vec!["t/x".into()];
    let (client, mut updates) = Client::start(o);
    until(&mut updates, live(ResumeOutcome::Fresh)).await;
    const N: u32 = 400;
    for v in 1..=100 {
        set(&server, "t/x", f64::from(v)).await;
    }
    let writer = async {
        for v in 101..=N {
            set(&server, "t/x", f64::from(v)).await;
            if v % 20 == 0 {
                tokio::task::yield_now().await;
            }
        }
    };
    let (history, ()) = tokio::join!(
        client.history(&["t/x", "t/other", "no/such"], None, None, 0),
        writer
    );
    let history = history.unwrap();
    let names: Vec<&str> = history.series.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["t/x", "t/other"], "no/such absent");
    assert!(history.series[1].points.is_empty(), "t/other never changed");
    // Read the updates in order, the History among the Changes, until both
    // it and the last change came (on a loaded machine every change may
    // be applied, and sent, before the request is answered).
    let (mut last_seen, mut answer_seen, mut last_change) =
        (false, false, changed("t/x", f64::from(N)));
    let seen = until(&mut updates, |u| {
        last_seen |= last_change(u);
        answer_seen |= matches!(u, Update::History(_));
        last_seen && answer_seen
    })
    .await;
    let at = seen
        .iter()
        .position(|u| matches!(u, Update::History(h) if *h == history))
        .expect("the answer comes among the updates too");
    let series: Vec<f64> = history.series[0]
        .points
        .iter()
        .filter_map(|p| f64_value(p.value.as_ref()))
        .collect();
    let last = *series.last().expect("points");
    let expected: Vec<f64> = (1..=last as u32).map(f64::from).collect();
    assert_eq!(series, expected, "every applied change up to the answer");
    assert!(history.series[0].complete && !history.series[0].decimated);
    let after: Vec<f64> = seen[at..]
        .iter()
        .filter_map(|u| match u {
            Update::Changes(cs) => Some(cs),
            _ => None,
        })
        .flatten()
        .filter(|c| c.name == "t/x")
        .filter_map(|c| f64_value(c.update.value.as_ref()))
        .collect();
    assert!(
        after.first().is_none_or(|&first| first > last),
        "no overlap: {last} then {after:?}"
    );
    assert!(after.windows(2).all(|w| w[0] < w[1]), "in order");
    assert_eq!(after.last().copied().unwrap_or(last), f64::from(N));
    client.close().await;
}
