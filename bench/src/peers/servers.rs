//! The servers of a side-by-side run as child processes: Mosquitto (MQTT
//! over WebSocket), nats-server (NATS over WebSocket), and `tagstream run`
//! fed by a Mosquitto over its MQTT source (or, without Mosquitto, by the
//! rumqttd broker `tagstream demo` uses, inside this process: its CPU then
//! counts as the generator's, and the relay's reads 0).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tagstream_testkit::{Scratch, free_port};

use super::Peer;
use crate::server::wait_port;

/// A server (and for tagstream the broker feeding it) in child processes.
pub struct Servers {
    children: Vec<tokio::process::Child>,
    /// Pid of the server the subscribers talk to.
    pub pid: String,
    /// Pid of the broker in front of tagstream, if any.
    pub relay_pid: Option<String>,
    /// Subscriber URL.
    pub ws_url: String,
    /// Where the publisher connects (MQTT or NATS over TCP).
    pub publish_addr: String,
    _dir: Scratch,
}

/// Programs of a side-by-side run get this long to listen.
const LISTEN_WITHIN: Duration = Duration::from_secs(20);

fn spawn(program: &Path, args: &[&str]) -> anyhow::Result<tokio::process::Child> {
    tokio::process::Command::new(program)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))
}

fn find(program: &str) -> anyhow::Result<PathBuf> {
    tagstream_testkit::find_program(program)
        .with_context(|| format!("{program} not found (see benches/peers.sh)"))
}

async fn mosquitto(dir: &Path, tcp: u16, ws: Option<u16>) -> anyhow::Result<tokio::process::Child> {
    let mut conf = format!(
        "listener {tcp} 127.0.0.1\nprotocol mqtt\nallow_anonymous true\npersistence false\nlog_dest none\nmax_queued_messages 0\n"
    );
    if let Some(ws) = ws {
        conf.push_str(&format!("listener {ws} 127.0.0.1\nprotocol websockets\n"));
    }
    let path = dir.join("mosquitto.conf");
    std::fs::write(&path, conf)?;
    let child = spawn(&find("mosquitto")?, &["-c", &path.to_string_lossy()])?;
    wait_port(tcp, LISTEN_WITHIN).await?;
    if let Some(ws) = ws {
        wait_port(ws, LISTEN_WITHIN).await?;
    }
    Ok(child)
}

impl Servers {
    /// Starts `peer` (for tagstream: Mosquitto, then `tagstream run`).
    pub async fn start(peer: Peer, tagstream: &Path) -> anyhow::Result<Servers> {
        let dir = Scratch::new("peers")?;
        let (tcp, ws) = (free_port()?, free_port()?);
        let mut children = Vec::new();
        let mut relay_pid = None;
        let ws_url = match peer {
            Peer::Mosquitto => {
                children.push(mosquitto(dir.dir(), tcp, Some(ws)).await?);
                format!("ws://127.0.0.1:{ws}/")
            }
            Peer::Nats => {
                let conf = dir.path("nats.conf");
                std::fs::write(
                    &conf,
                    format!("websocket {{ listen: \"127.0.0.1:{ws}\", no_tls: true }}\n"),
                )?;
                let args = ["-a", "127.0.0.1", "-p", &tcp.to_string()];
                let mut args = args.map(str::to_string).to_vec();
                args.extend(["-c".into(), conf.to_string_lossy().into_owned()]);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                children.push(spawn(&find("nats-server")?, &args)?);
                wait_port(tcp, LISTEN_WITHIN).await?;
                wait_port(ws, LISTEN_WITHIN).await?;
                format!("ws://127.0.0.1:{ws}/")
            }
            Peer::Tagstream => {
                if tagstream_testkit::find_program("mosquitto").is_some() {
                    let broker = mosquitto(dir.dir(), tcp, None).await?;
                    relay_pid = broker.id().map(|p| p.to_string());
                    children.push(broker);
                } else {
                    tracing::warn!(
                        "mosquitto not found: tagstream is fed by an in-process rumqttd (its CPU counts as the generator's)"
                    );
                    tagstream::demo::broker::start(tcp)?;
                }
                let conf = dir.path("tagstream.toml");
                let threads = crate::server::push_threads();
                std::fs::write(
                    &conf,
                    format!(
                        r#"[server]
listen = "127.0.0.1:{ws}"
max_connections = 10000
push_threads = {threads}

[[mqtt]]
name = "bench"
url = "mqtt://127.0.0.1:{tcp}"
client_id = "tagstream-bench"

[[mqtt.topics]]
filter = "bench/+"
name = "bench/{{1}}"
format = "number"
type = "f64"
"#
                    ),
                )?;
                let conf = conf.to_string_lossy().into_owned();
                children.push(spawn(tagstream, &["run", "--config", &conf])?);
                wait_port(ws, LISTEN_WITHIN).await?;
                format!("ws://127.0.0.1:{ws}/api/v1/stream")
            }
        };
        let pid = children
            .last()
            .and_then(|c| c.id())
            .context("server pid")?
            .to_string();
        Ok(Servers {
            children,
            pid,
            relay_pid,
            ws_url,
            publish_addr: format!("127.0.0.1:{tcp}"),
            _dir: dir,
        })
    }

    /// Kills every child.
    pub async fn stop(mut self) {
        for c in &mut self.children {
            let _ = c.kill().await;
        }
    }
}
