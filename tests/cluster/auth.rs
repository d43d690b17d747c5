//! The NATS link's credentials: a token from the environment, refused
//! with NATS's reason when wrong, never logged.

use crate::Nats;
use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_the_environment_joins_and_a_wrong_one_is_refused_at_start() {
    let Some(nats) = Nats::start_with(|_, _| vec!["--auth".into(), "s3cret-token".into()]).await
    else {
        return;
    };
    let port = nats.port;
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_nats_with_the_configured_ca_and_refused_without_it() {
    let mut pki = None;
    let Some(nats) = Nats::start_with(|port, dir| {
        let p = Pki::new(dir.dir(), "nats");
        let conf = dir.path("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: \"127.0.0.1:{port}\"\njetstream {{ store_dir: {:?} }}\ntls {{ cert_file: {:?}, key_file: {:?} }}\n",
                dir.path("js").display().to_string(),
                p.cert.display().to_string(),
                p.key.display().to_string()
            ),
        )
        .unwrap();
        pki = Some(p);
        vec!["-c".into(), conf.display().to_string()]
    })
    .await
    else {
        return;
    };
    let (pki, port) = (pki.expect("made"), nats.port);
    let toml = |ca: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[cluster]\nnats_url = \"tls://localhost:{port}\"\nrole = \"all\"\nstream = \"T1\"\n{ca}"
        )
    };
    let trusted = toml(&format!("nats_ca = {:?}\n", pki.ca.display().to_string()));
    let server = spawn_server(&trusted, &["t/y"]).await;
    set(&server, "t/y", 8.0).await;
    let mut c = connect_synced(&server, &["t/#"]).await;
    until_state(&mut c, |c| f64_of(c, "t/y") == Some(8.0)).await;
    server.stop().await;

    // Without the CA the server's certificate is not trusted: no start.
    let config = tagstream::config::Config::parse(&toml("")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let started = tokio::time::timeout(
        DEADLINE,
        tagstream::app::start_with(config, listener, Vec::new()),
    )
    .await
    .expect("refused promptly");
    let why = started.err().expect("refused").to_string();
    assert!(why.contains("cannot connect to NATS"), "{why}");
}
