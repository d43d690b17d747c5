//! Fixtures shared by the integration tests: servers on 127.0.0.1:0,
//! clients, and waiting helpers with generous deadlines (they bound a hang,
//! they do not measure speed).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use tagstream::app::{self, Running};
use tagstream::config::Config;
use tagstream::engine::catalog::TagDef;
use tagstream::proto;
use tagstream::sample::{Input, Sample, Value, now_us};
use tagstream_client::{Connection, Event};

/// Upper bound on any wait: a hang fails the test instead of blocking CI.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Starts a server from TOML text plus synthetic tags.
pub async fn spawn_server(toml: &str, synthetic: &[&str]) -> Running {
    let config = Config::parse(toml).expect("test config parses");
    spawn_config(config, synthetic).await
}

/// Starts a server from a parsed config plus synthetic tags.
pub async fn spawn_config(config: Config, synthetic: &[&str]) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tags = synthetic.iter().map(|n| synthetic_tag(n)).collect();
    app::start_with(config, listener, tags)
        .await
        .expect("server starts")
}

/// Starts a server whose `[auth]` secrets come from `vars`.
pub async fn spawn_with_env(toml: &str, synthetic: &[&str], vars: &[(&str, &str)]) -> Running {
    let config = Config::parse(toml).expect("test config parses");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tags = synthetic.iter().map(|n| synthetic_tag(n)).collect();
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let env = move |var: &str| vars.iter().find(|(k, _)| k == var).map(|(_, v)| v.clone());
    app::start_with_env(config, listener, tags, &env)
        .await
        .expect("server starts")
}

/// An F64 tag fed through `Running::samples`.
pub fn synthetic_tag(name: &str) -> TagDef {
    TagDef {
        unit: "u".into(),
        ..TagDef::read_only(name, "test")
    }
}

/// The stream URL of a server.
pub fn url(server: &Running) -> String {
    format!("ws://{}/api/v1/stream", server.addr)
}

/// A Hello subscribing to `patterns`.
pub fn hello(patterns: &[&str]) -> proto::Hello {
    proto::Hello {
        publish_interval_ms: 0,
        client_name: "test".into(),
        resume: None,
        subscribe: patterns.iter().map(|p| p.to_string()).collect(),
    }
}

/// Puts one value into the engine's channel.
pub async fn set(server: &Running, name: &str, v: f64) {
    let tag = server.key(name).expect("known tag");
    let sample = Sample {
        tag,
        value: Some(Value::F64(v)),
        status: 0,
        source_time_us: now_us(),
    };
    server
        .input
        .send_async(Input::Sample(sample))
        .await
        .unwrap();
}

/// Connects and reads through Welcome, Catalog and the last Snapshot chunk.
pub async fn connect_synced(server: &Running, patterns: &[&str]) -> Connection {
    let mut c = Connection::connect(&url(server), hello(patterns))
        .await
        .expect("connects");
    next_until(&mut c, |e| matches!(e, Event::Snapshot(s) if s.last)).await;
    c
}

/// Reads events until one matches; panics on error or deadline.
pub async fn next_until(c: &mut Connection, mut pred: impl FnMut(&Event) -> bool) -> Event {
    tokio::time::timeout(DEADLINE, async {
        loop {
            let e = c.next_event().await.expect("valid stream");
            if pred(&e) {
                return e;
            }
        }
    })
    .await
    .expect("event before deadline")
}

/// Reads one event within the deadline.
pub async fn next(c: &mut Connection) -> Event {
    tokio::time::timeout(DEADLINE, c.next_event())
        .await
        .expect("event before deadline")
        .expect("valid stream")
}

/// The F64 value of a tag in the client's mirror.
pub fn f64_of(c: &Connection, name: &str) -> Option<f64> {
    match c.value(name)?.value.as_ref()?.kind.as_ref()? {
        proto::value::Kind::F64(v) => Some(*v),
        _ => None,
    }
}

/// Waits until the client's mirror satisfies `pred`.
pub async fn until_state(c: &mut Connection, mut pred: impl FnMut(&Connection) -> bool) {
    tokio::time::timeout(DEADLINE, async {
        while !pred(c) {
            c.next_event().await.expect("valid stream");
        }
    })
    .await
    .expect("state reached before deadline")
}

/// The program's path, or `None` after a loud SKIPPED (a failure when
/// TAGSTREAM_REQUIRE_ALL=1).
pub fn require(program: &str) -> Option<PathBuf> {
    tagstream_testkit::require(program)
}

/// A scratch directory removed on drop.
pub struct Scratch(tagstream_testkit::Scratch);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        Scratch(tagstream_testkit::Scratch::new(tag).unwrap())
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.path(name)
    }
    pub fn dir(&self) -> &std::path::Path {
        self.0.dir()
    }
}

/// A TCP relay in front of a server: `stop` cuts every connection and
/// refuses new ones (a network outage), `restart` restores the same port.
pub struct Relay {
    /// Where clients connect.
    pub addr: std::net::SocketAddr,
    target: std::net::SocketAddr,
    stop: Option<tokio_util::sync::CancellationToken>,
}

impl Relay {
    /// Relays a free loopback port to `target`.
    pub async fn start(target: std::net::SocketAddr) -> Relay {
        let mut relay = Relay {
            addr: ([127, 0, 0, 1], 0).into(),
            target,
            stop: None,
        };
        relay.listen();
        relay
    }

    fn listen(&mut self) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(self.addr).unwrap();
        let listener = socket.listen(64).unwrap();
        self.addr = listener.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let (token, target) = (stop.clone(), self.target);
        tokio::spawn(async move {
            loop {
                let (mut inbound, _) = tokio::select! {
                    accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => break },
                    () = token.cancelled() => break,
                };
                let token = token.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        () = token.cancelled() => {}
                    }
                });
            }
        });
        self.stop = Some(stop);
    }

    /// Cuts every relayed connection and stops listening.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.cancel();
        }
    }

    /// Listens again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.listen();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until something accepts on `addr` (a started broker or proxy).
pub async fn wait_listening(addr: std::net::SocketAddr) {
    tokio::time::timeout(DEADLINE, async {
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("listening before deadline");
}

/// A test PKI in `dir`: a CA (`<tag>-ca.pem`) and a server certificate for
/// `localhost` and 127.0.0.1 it signed (`<tag>-cert.pem`, `<tag>-key.pem`).
pub struct Pki {
    /// The CA certificate (what clients trust).
    pub ca: PathBuf,
    /// The server's chain.
    pub cert: PathBuf,
    /// The server's key.
    pub key: PathBuf,
    /// The CA, to sign more (client certificates).
    pub issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    /// Generates the CA and a server certificate.
    pub fn new(dir: &std::path::Path, tag: &str) -> Pki {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("tagstream test CA {tag}"),
        );
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let params =
            rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let path = |what: &str| dir.join(format!("{tag}-{what}.pem"));
        std::fs::write(path("ca"), ca_cert.pem()).unwrap();
        std::fs::write(path("cert"), cert.pem()).unwrap();
        std::fs::write(path("key"), key.serialize_pem()).unwrap();
        Pki {
            ca: path("ca"),
            cert: path("cert"),
            key: path("key"),
            issuer,
        }
    }
}

/// Sends one WriteRequest and waits for its WriteResult.
pub async fn write(
    c: &mut Connection,
    id: u64,
    tag: &str,
    value: proto::value::Kind,
) -> proto::WriteResult {
    let request = proto::WriteRequest {
        request_id: id,
        tag: tag.into(),
        value: Some(proto::Value { kind: Some(value) }),
    };
    c.send(proto::client_message::Kind::Write(request))
        .await
        .unwrap();
    match next_until(
        c,
        |e| matches!(e, Event::WriteResult(w) if w.request_id == id),
    )
    .await
    {
        Event::WriteResult(w) => w,
        _ => unreachable!(),
    }
}
