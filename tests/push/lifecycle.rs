//! Heartbeats, shutdown, and `tagstream check`.

use std::time::Duration;

use super::*;

#[tokio::test]
async fn heartbeat_drops_a_silent_peer_and_keeps_a_live_one() {
    let mut config = Config::default();
    config.server.heartbeat_interval = Duration::from_millis(200);
    let server = spawn_config(config, TAGS).await;
    let mut live = connect_synced(&server, &["#"]).await;
    // A peer that says Hello and then never reads, so never answers a ping.
    let mut silent = raw_ws(&server).await;
    silent
        .send(Message::Binary(hello_bytes().into()))
        .await
        .unwrap();
    tokio::time::timeout(DEADLINE, async {
        while server.push.connections() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    // The live client reads (and so pongs) across many heartbeats.
    for i in 0..10 {
        set(&server, "a/x", f64::from(i)).await;
        until_state(&mut live, |c| f64_of(c, "a/x") == Some(f64::from(i))).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        server.push.connections(),
        1,
        "silent peer terminated, live one kept"
    );
    server.stop().await;
}

#[tokio::test]
async fn shutdown_closes_1001_with_reconnect_delays_spread_over_the_drain_window() {
    let mut config = Config::default();
    config.server.drain_window = Duration::from_secs(2);
    let server = spawn_config(config, TAGS).await;
    let mut clients = Vec::new();
    for _ in 0..40 {
        clients.push(connect_synced(&server, &["#"]).await);
    }
    let stopping = tokio::spawn(server.stop());
    let mut delays = Vec::new();
    for c in &mut clients {
        let Event::Closed(Some(frame)) = next_until(c, |e| matches!(e, Event::Closed(_))).await
        else {
            panic!("close frame expected")
        };
        assert_eq!(frame.code, CloseCode::Away);
        delays.push(
            frame
                .reason
                .parse::<u32>()
                .expect("reason is a delay in ms"),
        );
    }
    stopping.await.unwrap();
    delays.sort_unstable();
    assert!(delays.iter().all(|&d| d < 2000), "{delays:?}");
    // Spread, not bunched: 40 uniform draws leave neither a third of the
    // window empty at either end (odds below 1e-7).
    assert!(delays[0] < 700 && delays[39] > 1300, "{delays:?}");
}

#[test]
fn check_prints_the_tag_table_or_every_error() {
    let bin = env!("CARGO_BIN_EXE_tagstream");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/config.example.toml");
    // Without the token's variable the example would not start: check
    // says so, naming the key and the variable, and fails.
    let missing = std::process::Command::new(bin)
        .args(["check", "--config", example])
        .env_remove("TAGSTREAM_BOILER_HMI_TOKEN")
        .env("TAGSTREAM_JWT_SECRET", "a-jwt-secret-of-32-bytes-or-more!")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&missing.stdout);
    assert!(!missing.status.success(), "{out}");
    assert!(
        out.lines().any(|l| l.contains("auth.tokens[0].token_env")
            && l.contains("env TAGSTREAM_BOILER_HMI_TOKEN")
            && l.contains("not set")),
        "{out}"
    );
    let ok = std::process::Command::new(bin)
        .args(["check", "--config", example])
        .env(
            "TAGSTREAM_BOILER_HMI_TOKEN",
            "a-secret-that-is-never-printed",
        )
        .env("TAGSTREAM_JWT_SECRET", "a-jwt-secret-of-32-bytes-or-more!")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(!out.contains("a-secret-that-is-never-printed"), "{out}");
    assert!(ok.status.success(), "{out}");
    assert!(out.contains("plant/boiler1/temperature"), "{out}");
    assert!(
        out.contains("17 tags from 5 device(s) and 2 broker(s): OK"),
        "{out}"
    );
    assert!(
        out.contains("{group}/{node}/{device}/{metric}") && out.contains("spBv1.0/site-a/#"),
        "the Sparkplug host's template: {out}"
    );

    let dir = std::env::temp_dir().join(format!("tagstream-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[server]\nlisten = \"x\"\ncolour = 1\n[[modbus]]\nname = \"d\"\n",
    )
    .unwrap();
    let failed = std::process::Command::new(bin)
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success());
    assert!(err.contains("line 3: server.colour: unknown key"), "{err}");
    assert!(err.contains("server.listen"), "{err}");
    assert!(err.contains("modbus[0].address"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn the_cli_never_logs_a_token_even_at_trace() {
    let server = spawn_server("", TAGS).await;
    let bin = env!("CARGO_BIN_EXE_tagstream");
    let token = "eyJ-secret-token-in-the-header";
    let query = "secret-token-in-the-query";
    for (url, token) in [
        (url(&server), Some(token)),
        (format!("{}?access_token={query}", url(&server)), None),
    ] {
        let mut cmd = tokio::process::Command::new(bin);
        cmd.args(["write", "--url", &url, "a/x", "1"])
            .env("RUST_LOG", "trace")
            .env_remove("TAGSTREAM_TOKEN")
            .kill_on_drop(true);
        if let Some(t) = token {
            cmd.args(["--token", t]);
        }
        let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
            .await
            .expect("write ends")
            .expect("runs");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            all.contains("TRACE") || all.contains("DEBUG"),
            "trace is on: {all}"
        );
        assert!(!all.contains("secret-token"), "{all}");
    }
    server.stop().await;
}

#[tokio::test]
async fn tail_into_a_closed_pipe_exits_quietly() {
    use tokio::io::AsyncBufReadExt;
    let server = spawn_server("", TAGS).await;
    let mut child = spawn_tail(&["--url", &url(&server), "#"]);
    // Read one line, then close the pipe as `head -1` would.
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("a line")
        .unwrap();
    assert!(first.is_some());
    drop(lines);
    // The next change makes tail write into the closed pipe.
    for i in 0..20 {
        set(&server, "a/x", f64::from(i)).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("tail ends")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
    server.stop().await;
}

#[tokio::test]
async fn write_takes_a_negative_value_without_dashes() {
    let server = spawn_server("", TAGS).await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tagstream"))
        .args(["write", "--url", &url(&server), "a/x", "-1"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Parsed as the value and sent: the server's answer is printed (no
    // [auth]: nobody writes), not a usage error about `-1`.
    assert!(
        stdout.starts_with("a/x Bad"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop().await;
}
