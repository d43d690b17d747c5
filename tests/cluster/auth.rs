//! The NATS link's credentials: a token from the environment, refused
//! with NATS's reason when wrong, never logged.

use std::process::{Command, Stdio};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_the_environment_joins_and_a_wrong_one_is_refused_at_start() {
    let Some(program) = require("nats-server") else {
        return;
    };
    let dir = Scratch::new("nats-auth");
    let port = tagstream_testkit::free_port().unwrap();
    let mut child = Command::new(program)
        .args([
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "--auth",
            "s3cret-token",
            "-sd",
        ])
        .arg(dir.dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[cluster]\nnats_url = \"nats://127.0.0.1:{port}\"\nrole = \"all\"\nstream = \"A1\"\nnats_token_env = \"TS_NATS_TOKEN\"\n"
    );
    let server = spawn_with_env(&toml, &["t/x"], &[("TS_NATS_TOKEN", "s3cret-token")]).await;
    set(&server, "t/x", 4.0).await;
    let mut c = connect_synced(&server, &["t/#"]).await;
    until_state(&mut c, |c| f64_of(c, "t/x") == Some(4.0)).await;
    server.stop().await;

    let config = tagstream::config::Config::parse(&toml).unwrap();
    for token in [Some("wrong"), None] {
        let vars: Vec<(String, String)> = token
            .map(|t| ("TS_NATS_TOKEN".to_string(), t.to_string()))
            .into_iter()
            .collect();
        let env = move |v: &str| vars.iter().find(|(k, _)| k == v).map(|(_, t)| t.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let started = tokio::time::timeout(
            DEADLINE,
            tagstream::app::start_with_env(config.clone(), listener, Vec::new(), &env),
        )
        .await
        .expect("refused promptly, not retried forever");
        let why = started.err().expect("refused").to_string();
        let expected = if token.is_some() {
            "authorization"
        } else {
            "ts_nats_token"
        };
        assert!(why.to_lowercase().contains(expected), "{why}");
        assert!(!why.contains("wrong"), "the token is not echoed: {why}");
    }
    let _ = child.kill();
    let _ = child.wait();
}
