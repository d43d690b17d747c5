//! The cluster (protocol.md "Cluster") against a real nats-server with
//! JetStream on loopback: edges publish, gateways follow, clients resume
//! on any gateway. Without `nats-server` every test prints SKIPPED (a
//! failure under TAGSTREAM_REQUIRE_ALL=1).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;

mod auth;
mod faults;
mod outage;
mod resume;
mod writes;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use tagstream::app::Running;

/// A nats-server with JetStream in a scratch directory, killed on drop.
pub struct Nats {
    child: Child,
    pub port: u16,
    program: std::path::PathBuf,
    dir: Scratch,
    args: Vec<String>,
}

impl Nats {
    /// Starts one on a free port, or `None` after a loud SKIPPED.
    pub async fn start() -> Option<Nats> {
        Nats::start_with(|_, _| Vec::new()).await
    }

    /// Starts one with more arguments, made from its port and directory
    /// (`-c FILE` replaces the command-line listener and store).
    pub async fn start_with(args: impl FnOnce(u16, &Scratch) -> Vec<String>) -> Option<Nats> {
        let program = require("nats-server")?;
        let dir = Scratch::new("nats");
        let port = tagstream_testkit::free_port().unwrap();
        let args = args(port, &dir);
        let child = spawn(&program, port, &dir, &args);
        let nats = Nats {
            child,
            port,
            program,
            dir,
            args,
        };
        nats.listening().await;
        Some(nats)
    }

    async fn listening(&self) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "nats-server listens"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the server (every link drops; its store stays).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port with the same store.
    pub async fn restart(&mut self) {
        self.child = spawn(&self.program, self.port, &self.dir, &self.args);
        self.listening().await;
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

fn spawn(program: &std::path::Path, port: u16, dir: &Scratch, args: &[String]) -> Child {
    let mut command = Command::new(program);
    if args.first().is_some_and(|a| a == "-c") {
        command.args(args);
    } else {
        command
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.dir())
            .args(args);
    }
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server starts")
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node of `role` on stream `stream`; edges carry `tags` as synthetic
/// tags fed through `set`.
pub async fn node(nats: &Nats, role: &str, id: &str, stream: &str, tags: &[&str]) -> Running {
    node_with(nats, role, id, stream, tags, "").await
}

/// [`node`] with more TOML after `[cluster]` (sources, `[auth]`).
pub async fn node_with(
    nats: &Nats,
    role: &str,
    id: &str,
    stream: &str,
    tags: &[&str],
    extra: &str,
) -> Running {
    node_at(&nats.url(), role, id, stream, tags, extra).await
}

/// [`node_with`] reaching NATS at `url` (a relay in front of it, which a
/// test cuts to cut this node alone).
pub async fn node_at(
    url: &str,
    role: &str,
    id: &str,
    stream: &str,
    tags: &[&str],
    extra: &str,
) -> Running {
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:0"
server_id = "{id}"

[cluster]
nats_url = "{url}"
role = "{role}"
stream = "{stream}"
resume_wait = "5s"

{extra}
"#
    );
    spawn_server(&toml, tags).await
}
