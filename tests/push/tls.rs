//! wss on the listener: a generated PKI, TLS 1.2 and 1.3, SIGHUP-style
//! reload seen by a new handshake while an old session keeps streaming,
//! client certificates, and a start refused with the bad file's name.

use std::sync::Arc;

use super::*;
use tagstream_client::{Connect, tls_config};

fn tls_server_config(pki: &Pki, client_ca: Option<&std::path::Path>) -> String {
    let ca = client_ca.map_or(String::new(), |p| {
        format!(", client_ca = {:?}", p.display().to_string())
    });
    format!(
        "[server]\ntls = {{ cert = {:?}, key = {:?}{ca} }}\n",
        pki.cert.display().to_string(),
        pki.key.display().to_string()
    )
}

/// A rustls client trusting the CA in `ca`, for `versions`, before its
/// client-auth choice (the tests that need more than `tls_config`).
fn client_config(
    ca: &std::path::Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert> {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
}

fn wss(server: &tagstream::app::Running) -> String {
    format!("wss://localhost:{}/api/v1/stream", server.addr.port())
}

async fn connect_tls(
    url: &str,
    tls: Arc<rustls::ClientConfig>,
) -> Result<Connection, tagstream_client::ClientError> {
    let how = Connect {
        token: None,
        tls: Some(tls),
    };
    let mut c = Connection::connect_how(url, hello(&["a/#"]), &how).await?;
    next_until(&mut c, |e| matches!(e, Event::Snapshot(s) if s.last)).await;
    Ok(c)
}

#[tokio::test]
async fn wss_streams_and_a_reload_reaches_new_handshakes_while_old_sessions_stream() {
    let dir = Scratch::new("tls");
    let first = Pki::new(dir.dir(), "one");
    let server = spawn_server(&tls_server_config(&first, None), TAGS).await;
    let url = wss(&server);
    let trust_first = tls_config(&first.ca).expect("ca");
    let mut old = connect_tls(&url, trust_first.clone()).await.expect("wss");
    set(&server, "a/x", 1.0).await;
    until_state(&mut old, |c| f64_of(c, "a/x") == Some(1.0)).await;

    // TLS 1.2 only is served too.
    let tls12 = client_config(&first.ca, &[&rustls::version::TLS12]).with_no_client_auth();
    let tls12 = Arc::new(tls12);
    connect_tls(&url, tls12)
        .await
        .expect("TLS 1.2")
        .close()
        .await;
    // Plain ws to a wss listener gets no session.
    let plain = format!("ws://{}/api/v1/stream", server.addr);
    assert!(Connection::connect(&plain, hello(&["#"])).await.is_err());

    // A new certificate from another CA replaces the files; reload. (A
    // fresh client config below: a cached session would resume without
    // seeing any certificate.)
    let second = Pki::new(dir.dir(), "two");
    std::fs::copy(&second.cert, &first.cert).unwrap();
    std::fs::copy(&second.key, &first.key).unwrap();
    server.push.reload_tls();
    let trust_second = tls_config(&second.ca).expect("ca");
    connect_tls(&url, trust_second)
        .await
        .expect("new certificate served")
        .close()
        .await;
    assert!(
        connect_tls(&url, tls_config(&first.ca).unwrap())
            .await
            .is_err(),
        "old certificate no longer served"
    );
    // The session from before the reload still streams.
    set(&server, "a/x", 2.0).await;
    until_state(&mut old, |c| f64_of(c, "a/x") == Some(2.0)).await;

    // A broken file on reload: logged, the served pair stays.
    std::fs::write(&first.key, "garbage").unwrap();
    server.push.reload_tls();
    connect_tls(&url, tls_config(&second.ca).unwrap())
        .await
        .expect("still served")
        .close()
        .await;
    server.stop().await;
}

#[tokio::test]
async fn stalled_tls_handshakes_hold_no_http_permit() {
    let dir = Scratch::new("tls-stall");
    let pki = Pki::new(dir.dir(), "one");
    let server = spawn_server(&tls_server_config(&pki, None), TAGS).await;
    // 300 sockets each send the first half of a ClientHello and stall.
    let hello_start: [u8; 9] = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];
    let mut stalled = Vec::new();
    for _ in 0..300 {
        let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        s.write_all(&hello_start).await.unwrap();
        stalled.push(s);
    }
    // Each has reached its handshake (the server read its bytes) ...
    tokio::time::sleep(Duration::from_millis(500)).await;
    // ... and none holds an HTTP permit while it stalls.
    assert_eq!(
        server.push.http_permits_free(),
        tagstream::push::HTTP_IN_FLIGHT,
        "stalled handshakes hold HTTP permits"
    );
    // A valid client is served.
    let c = connect_tls(&wss(&server), tls_config(&pki.ca).expect("ca"))
        .await
        .expect("wss");
    c.close().await;
    drop(stalled);
    server.stop().await;
}

#[tokio::test]
async fn with_client_ca_a_client_needs_a_certificate_it_signed() {
    let dir = Scratch::new("mtls");
    let pki = Pki::new(dir.dir(), "srv");
    let server = spawn_server(&tls_server_config(&pki, Some(&pki.ca)), TAGS).await;
    let url = wss(&server);
    assert!(
        connect_tls(&url, tls_config(&pki.ca).unwrap())
            .await
            .is_err(),
        "no client certificate"
    );

    let params = rcgen::CertificateParams::new(vec!["hmi-1".into()]).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &pki.issuer).unwrap();
    use rustls::pki_types::pem::PemObject as _;
    let private =
        rustls::pki_types::PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap();
    let config = client_config(&pki.ca, rustls::DEFAULT_VERSIONS)
        .with_client_auth_cert(vec![cert.der().clone()], private)
        .unwrap();
    connect_tls(&url, Arc::new(config))
        .await
        .expect("client certificate accepted")
        .close()
        .await;
    server.stop().await;
}

#[tokio::test]
async fn a_missing_or_unusable_cert_or_key_refuses_the_start_naming_the_file() {
    let dir = Scratch::new("tls-bad");
    let pki = Pki::new(dir.dir(), "ok");
    let junk = dir.path("junk.pem");
    std::fs::write(&junk, "not pem").unwrap();
    let absent = dir.path("absent.pem");
    let huge = dir.path("huge.pem");
    std::fs::write(
        &huge,
        format!("-----BEGIN CERTIFICATE-----{}", "A".repeat(8 << 20)),
    )
    .unwrap();
    let other = Pki::new(dir.dir(), "other");
    let cases = [
        (
            "missing key",
            pki.cert.clone(),
            absent.clone(),
            absent.clone(),
        ),
        (
            "missing cert",
            absent.clone(),
            pki.key.clone(),
            absent.clone(),
        ),
        ("junk key", pki.cert.clone(), junk.clone(), junk.clone()),
        // Hostile files: an endless one, a directory, a huge one-line PEM.
        (
            "endless cert",
            "/dev/zero".into(),
            pki.key.clone(),
            "/dev/zero".into(),
        ),
        (
            "directory key",
            pki.cert.clone(),
            dir.dir().to_path_buf(),
            dir.dir().to_path_buf(),
        ),
        ("huge cert", huge.clone(), pki.key.clone(), huge.clone()),
        ("junk cert", junk.clone(), pki.key.clone(), junk.clone()),
        (
            "key of another cert",
            pki.cert.clone(),
            other.key.clone(),
            other.key.clone(),
        ),
    ];
    for (case, cert, key, named) in cases {
        let toml = format!(
            "[server]\ntls = {{ cert = {:?}, key = {:?} }}\n",
            cert.display().to_string(),
            key.display().to_string()
        );
        let config = Config::parse(&toml).expect("parses");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let err = match tagstream::app::start(config, listener).await {
            Ok(_) => panic!("{case}: started"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(&named.display().to_string()), "{case}: {err}");
        assert!(
            err.len() < 600 && !err.contains("AAAA"),
            "{case}: nothing echoed"
        );
    }
}

#[tokio::test]
async fn sighup_to_the_server_process_reloads_its_certificate() {
    let dir = Scratch::new("tls-hup");
    let first = Pki::new(dir.dir(), "one");
    let port = tagstream_testkit::free_port().unwrap();
    let config = dir.path("tagstream.toml");
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\ntls = {{ cert = {:?}, key = {:?} }}\n\
         [[sim]]\nname = \"s\"\ntags = 10\nrate = 50\n",
        first.cert.display().to_string(),
        first.key.display().to_string()
    );
    std::fs::write(&config, toml).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tagstream"))
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_listening(([127, 0, 0, 1], port).into()).await;
    let url = format!("wss://localhost:{port}/api/v1/stream");
    let how = Connect {
        token: None,
        tls: Some(tls_config(&first.ca).unwrap()),
    };
    let mut old = Connection::connect_how(&url, hello(&["#"]), &how)
        .await
        .expect("wss");
    next_until(&mut old, |e| matches!(e, Event::Snapshot(s) if s.last)).await;

    let second = Pki::new(dir.dir(), "two");
    std::fs::copy(&second.cert, &first.cert).unwrap();
    std::fs::copy(&second.key, &first.key).unwrap();
    let pid = child.id().unwrap().to_string();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(hup.success());
    let fresh = Connect {
        token: None,
        tls: Some(tls_config(&second.ca).unwrap()),
    };
    // The reload lands shortly after the signal.
    let reloaded = tokio::time::timeout(DEADLINE, async {
        loop {
            if let Ok(c) = Connection::connect_how(&url, hello(&["#"]), &fresh).await {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a new handshake sees the new certificate");
    reloaded.close().await;
    // The old session streams on, over its original TLS connection.
    let before = old.position;
    until_state(&mut old, |c| c.position > before).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP did not stop the server"
    );
    let _ = child.kill().await;
}
