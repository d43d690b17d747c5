//! The deployment kit (deploy/) tested through real programs on loopback:
//! nginx and HAProxy in front of real tagstream servers, systemd-analyze on
//! the unit, and the kernel tuning files. The shipped files are used as they
//! are, with only addresses and timeouts rewritten (each rewrite must match,
//! so the test follows the files). A missing program prints SKIPPED loudly;
//! with TAGSTREAM_REQUIRE_ALL=1 (set by .ci/run) it fails instead.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use tagstream::config::Config;
use tagstream_client::{Connection, Event};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");

/// A proxy process, killed on drop.
struct Proxy {
    child: Child,
    port: u16,
    _dir: Scratch,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    tagstream_testkit::free_port().unwrap()
}

/// `text` with each `(from, to)` replaced; every `from` must occur.
fn rewrite(text: &str, edits: &[(&str, String)]) -> String {
    edits.iter().fold(text.to_string(), |t, (from, to)| {
        assert!(t.contains(from), "shipped file no longer contains {from:?}");
        t.replace(from, to)
    })
}

async fn wait_port(port: u16, child: &mut Child, log: &Path) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "proxy exited with {status}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "proxy did not listen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The nginx main config that includes a rendered deploy file.
fn nginx_main(dir: &Scratch, site: &Path) -> PathBuf {
    let tmp = dir.path("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let d = dir.dir().display();
    let main = format!(
        "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/tmp/body;\n  proxy_temp_path {d}/tmp/proxy;\n  \
         fastcgi_temp_path {d}/tmp/fcgi;\n  uwsgi_temp_path {d}/tmp/uwsgi;\n  scgi_temp_path {d}/tmp/scgi;\n  \
         include {};\n}}\n",
        site.display()
    );
    let path = dir.path("nginx.conf");
    std::fs::write(&path, main).unwrap();
    path
}

/// Renders deploy/nginx/snippets with the given idle timeout.
fn nginx_snippet(dir: &Scratch, timeout: &str) -> PathBuf {
    let text = std::fs::read_to_string(format!("{DEPLOY}/nginx/snippets/tagstream-locations.conf"))
        .unwrap();
    let text = rewrite(
        &text,
        &[
            (
                "proxy_read_timeout 75s;",
                format!("proxy_read_timeout {timeout};"),
            ),
            (
                "proxy_send_timeout 75s;",
                format!("proxy_send_timeout {timeout};"),
            ),
        ],
    );
    let path = dir.path("tagstream-locations.conf");
    std::fs::write(&path, text).unwrap();
    path
}

async fn start_nginx(backend: SocketAddr, idle_timeout: &str) -> Option<Proxy> {
    let port = free_port();
    let dir = Scratch::new("nginx");
    let snippet = nginx_snippet(&dir, idle_timeout);
    let edits = [
        ("listen 80;", format!("listen 127.0.0.1:{port};")),
        ("server 127.0.0.1:8080;", format!("server {backend};")),
        (
            "include snippets/tagstream-locations.conf;",
            format!("include {};", snippet.display()),
        ),
    ];
    run_nginx(dir, "tagstream.conf", &edits, port).await
}

/// Runs nginx on a shipped site file with `edits`, until dropped.
async fn run_nginx(dir: Scratch, site: &str, edits: &[(&str, String)], port: u16) -> Option<Proxy> {
    let bin = require("nginx")?;
    let text = std::fs::read_to_string(format!("{DEPLOY}/nginx/{site}")).unwrap();
    let site_path = dir.path(site);
    std::fs::write(&site_path, rewrite(&text, edits)).unwrap();
    let main = nginx_main(&dir, &site_path);
    let log = dir.path("error.log");
    let mut child = Command::new(bin)
        .arg("-p")
        .arg(dir.dir())
        .arg("-e")
        .arg(&log)
        .arg("-c")
        .arg(&main)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_port(port, &mut child, &log).await;
    Some(Proxy {
        child,
        port,
        _dir: dir,
    })
}

async fn start_haproxy(nodes: [SocketAddr; 2], tunnel: &str) -> Option<Proxy> {
    let bin = require("haproxy")?;
    let dir = Scratch::new("haproxy");
    let port = free_port();
    let cfg = std::fs::read_to_string(format!("{DEPLOY}/haproxy/haproxy.cfg")).unwrap();
    let cfg = rewrite(
        &cfg,
        &[
            ("bind :80", format!("bind 127.0.0.1:{port}")),
            ("maxconn 100000", "maxconn 4000".into()),
            (
                "server node1 10.20.0.21:8080 check",
                format!("server node1 {} check", nodes[0]),
            ),
            (
                "server node2 10.20.0.22:8080 check",
                format!("server node2 {} check", nodes[1]),
            ),
            ("timeout tunnel 75s", format!("timeout tunnel {tunnel}")),
            (
                "default-server inter 2s fall 2 rise 2",
                "default-server inter 100ms fall 1 rise 1".into(),
            ),
        ],
    );
    let path = dir.path("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap();
    let log = dir.path("haproxy.log");
    let mut child = Command::new(bin)
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.path("haproxy.err")).unwrap())
        .spawn()
        .unwrap();
    wait_port(port, &mut child, &log).await;
    Some(Proxy {
        child,
        port,
        _dir: dir,
    })
}

/// Status line of a plain HTTP GET.
/// The status line of a GET through the proxy.
async fn get(port: u16, path: &str) -> String {
    response(port, path)
        .await
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The whole response to a GET through the proxy.
async fn response(port: u16, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).to_string()
}

/// The web view's page, assets and the info it asks first all pass.
async fn web_view_passes(port: u16) {
    let page = response(port, "/").await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("src=\"app.js\""), "{page}");
    for path in ["/app.js", "/app.css", "/api/v1/info"] {
        assert!(get(port, path).await.contains("200"), "{path}");
    }
}

async fn server(heartbeat: Duration, id: &str, max_connections: usize) -> tagstream::app::Running {
    let mut config = Config::default();
    config.server.heartbeat_interval = heartbeat;
    config.server.server_id = id.into();
    config.server.max_connections = max_connections;
    spawn_config(config, &["a/x"]).await
}

/// Connects through a proxy; returns the client (synced) and its node.
async fn connect_via(port: u16) -> Result<(Connection, String), tagstream_client::ClientError> {
    let url = format!("ws://127.0.0.1:{port}/api/v1/stream");
    let mut c = Connection::connect(&url, hello(&["#"])).await?;
    let mut node = String::new();
    loop {
        match next(&mut c).await {
            Event::Welcome(w) => node = w.server_id,
            Event::Snapshot(s) if s.last => return Ok((c, node)),
            _ => {}
        }
    }
}

/// Reads for `span`, handling pings; fails if the stream ends meanwhile.
async fn stays_open(c: &mut Connection, span: Duration) {
    match tokio::time::timeout(span, c.next_event()).await {
        Err(_) => {}
        Ok(event) => panic!("stream ended or sent data while idle: {event:?}"),
    }
}

async fn delta_arrives(server: &tagstream::app::Running, c: &mut Connection, v: f64) {
    set(server, "a/x", v).await;
    until_state(c, |c| f64_of(c, "a/x") == Some(v)).await;
}

#[tokio::test]
async fn nginx_carries_the_stream_past_its_idle_timeout_and_answers_426() {
    let node = server(Duration::from_millis(300), "n1", 100).await;
    let Some(nginx) = start_nginx(node.addr, "1s").await else {
        return;
    };
    assert!(
        get(nginx.port, "/api/v1/stream").await.contains("426"),
        "plain GET through nginx"
    );
    assert!(get(nginx.port, "/healthz").await.contains("200"));
    assert!(get(nginx.port, "/readyz").await.contains("200"));
    assert!(get(nginx.port, "/metrics").await.contains("200"));
    web_view_passes(nginx.port).await;
    let (mut c, id) = connect_via(nginx.port).await.expect("101 through nginx");
    assert_eq!(id, "n1");
    delta_arrives(&node, &mut c, 1.0).await;
    // Three idle proxy timeouts: the 300 ms heartbeat keeps it open.
    stays_open(&mut c, Duration::from_secs(3)).await;
    delta_arrives(&node, &mut c, 2.0).await;
    node.stop().await;
}

#[tokio::test]
async fn without_a_shorter_heartbeat_nginx_cuts_the_idle_stream() {
    // The control for the test above: the proxy timeout is real.
    let node = server(Duration::from_secs(60), "n1", 100).await;
    let Some(nginx) = start_nginx(node.addr, "1s").await else {
        return;
    };
    let (mut c, _) = connect_via(nginx.port).await.expect("101 through nginx");
    let ended = tokio::time::timeout(Duration::from_secs(5), c.next_event()).await;
    assert!(
        matches!(ended, Ok(Ok(Event::Closed(_))) | Ok(Err(_))),
        "nginx should close an idle stream after 1 s: {ended:?}"
    );
    node.stop().await;
}

#[tokio::test]
async fn nginx_tls_variant_carries_wss() {
    let node = server(Duration::from_millis(300), "n1", 100).await;
    let dir = Scratch::new("nginx-tls");
    let pki = Pki::new(dir.dir(), "nginx");
    let snippet = nginx_snippet(&dir, "75s");
    let port = free_port();
    let edits = [
        ("listen 443 ssl;", format!("listen 127.0.0.1:{port} ssl;")),
        ("listen 80;", format!("listen 127.0.0.1:{};", free_port())),
        ("server 127.0.0.1:8080;", format!("server {};", node.addr)),
        (
            "/etc/tagstream/tls/fullchain.pem",
            pki.cert.display().to_string(),
        ),
        (
            "/etc/tagstream/tls/privkey.pem",
            pki.key.display().to_string(),
        ),
        (
            "include snippets/tagstream-locations.conf;",
            format!("include {};", snippet.display()),
        ),
    ];
    let Some(nginx) = run_nginx(dir, "tagstream-tls.conf", &edits, port).await else {
        return;
    };
    let how = tagstream_client::Connect {
        token: None,
        tls: Some(tagstream_client::tls_config(&pki.ca).unwrap()),
    };
    let url = format!("wss://localhost:{}/api/v1/stream", nginx.port);
    let mut c = Connection::connect_how(&url, hello(&["#"]), &how)
        .await
        .expect("wss through nginx");
    next_until(&mut c, |e| matches!(e, Event::Snapshot(s) if s.last)).await;
    delta_arrives(&node, &mut c, 7.0).await;
    node.stop().await;
}

#[tokio::test]
async fn behind_nginx_on_a_non_default_port_a_same_origin_page_connects() {
    let node = server(Duration::from_millis(300), "n1", 100).await;
    let Some(nginx) = start_nginx(node.addr, "75s").await else {
        return;
    };
    let host = format!("127.0.0.1:{}", nginx.port);
    for (origin, want) in [
        (format!("http://{host}"), "101"),
        ("http://evil.example".to_string(), "403"),
        ("http://127.0.0.1".to_string(), "403"),
    ] {
        let mut s = tokio::net::TcpStream::connect(&host).await.unwrap();
        let req = format!(
            "GET /api/v1/stream HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 256];
        let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let head = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(
            head.starts_with(&format!("HTTP/1.1 {want}")),
            "{origin}: {head}"
        );
    }
    node.stop().await;
}

#[tokio::test]
async fn haproxy_routes_new_clients_around_a_full_node_while_its_sessions_stream() {
    let nodes = [
        server(Duration::from_millis(300), "node1", 2).await,
        server(Duration::from_millis(300), "node2", 2).await,
    ];
    let Some(haproxy) = start_haproxy([nodes[0].addr, nodes[1].addr], "1s").await else {
        return;
    };
    assert!(
        get(haproxy.port, "/api/v1/stream").await.contains("426"),
        "plain GET through HAProxy"
    );
    web_view_passes(haproxy.port).await;
    // Source hashing: both clients from 127.0.0.1 land on the same node.
    let (mut a, first) = connect_via(haproxy.port)
        .await
        .expect("101 through HAProxy");
    let (mut b, again) = connect_via(haproxy.port)
        .await
        .expect("101 through HAProxy");
    assert_eq!(first, again, "consistent source hashing");
    let (full, other) = if first == "node1" {
        (&nodes[0], &nodes[1])
    } else {
        (&nodes[1], &nodes[0])
    };
    assert!(full.push.is_full_or_draining());
    // New clients: refused by the full node until its /readyz takes it out,
    // then served by the other node.
    let mut served_by = None;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while served_by.is_none() && tokio::time::Instant::now() < deadline {
        match connect_via(haproxy.port).await {
            Ok((c, node)) => served_by = Some((c, node)),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let (_c, node) = served_by.expect("a new client was served");
    assert_ne!(node, first, "HAProxy sent a new client to the full node");
    assert_eq!(other.push.connections(), 1);
    // The full node's sessions keep streaming, also past the tunnel timeout.
    delta_arrives(full, &mut a, 1.0).await;
    until_state(&mut b, |c| f64_of(c, "a/x") == Some(1.0)).await;
    // Both keep reading (and so answering pings) through three tunnel timeouts.
    tokio::join!(
        stays_open(&mut a, Duration::from_secs(3)),
        stays_open(&mut b, Duration::from_secs(3))
    );
    delta_arrives(full, &mut a, 2.0).await;
    until_state(&mut b, |c| f64_of(c, "a/x") == Some(2.0)).await;
    for n in nodes {
        n.stop().await;
    }
}

#[test]
fn systemd_unit_verifies() {
    let Some(analyze) = require("systemd-analyze") else {
        return;
    };
    let unit = std::fs::read_to_string(format!("{DEPLOY}/systemd/tagstream.service")).unwrap();
    for line in [
        "LimitNOFILE=65535",
        "Restart=on-failure",
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} missing");
    }
    let dir = Scratch::new("systemd");
    let unit = rewrite(
        &unit,
        &[(
            "/usr/local/bin/tagstream",
            env!("CARGO_BIN_EXE_tagstream").to_string(),
        )],
    );
    let path = dir.path("tagstream.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg("--man=no")
        .arg(&path)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    // verify exits 0 on unknown keys but complains: any output is a finding.
    assert!(said.trim().is_empty(), "systemd-analyze verify: {said}");
}

#[test]
fn kernel_tuning_files_name_real_settings_each_with_a_reason() {
    let sysctl = std::fs::read_to_string(format!("{DEPLOY}/sysctl.d/60-tagstream.conf")).unwrap();
    let mut settings = 0;
    let mut previous = "";
    for line in sysctl.lines() {
        if !line.starts_with('#') && !line.trim().is_empty() {
            let (key, value) = line.split_once('=').expect("key = value");
            let proc = Path::new("/proc/sys").join(key.trim().replace('.', "/"));
            assert!(proc.exists(), "{} is not a kernel setting", key.trim());
            assert!(
                value.split_whitespace().all(|v| v.parse::<u64>().is_ok()),
                "{line}"
            );
            assert!(
                previous.starts_with('#'),
                "{line} has no comment saying why"
            );
            settings += 1;
        }
        previous = line;
    }
    for key in [
        "net.core.somaxconn",
        "net.ipv4.tcp_max_syn_backlog",
        "fs.file-max",
    ] {
        assert!(sysctl.contains(key), "{key} missing");
    }
    assert!(settings >= 3);
    let limits = std::fs::read_to_string(format!("{DEPLOY}/limits.d/60-tagstream.conf")).unwrap();
    let entries: Vec<Vec<&str>> = limits
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(entries.len(), 2);
    for e in entries {
        assert_eq!(e.len(), 4);
        assert_eq!(e[2], "nofile");
        assert!(["soft", "hard"].contains(&e[1]));
        assert!(e[3].parse::<u64>().unwrap() >= 65_535);
    }
}
