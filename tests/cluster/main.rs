//! The cluster (protocol.md "Cluster") against a real nats-server with
//! JetStream on loopback: edges publish, gateways follow, clients resume
//! on any gateway. Without `nats-server` every test prints SKIPPED (a
//! failure under TAGSTREAM_REQUIRE_ALL=1).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;

mod resume;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use tagstream::app::Running;

/// A nats-server with JetStream in a scratch directory, killed on drop.
pub struct Nats {
    child: Child,
    pub port: u16,
    _dir: Scratch,
}

impl Nats {
    /// Starts one on a free port, or `None` after a loud SKIPPED.
    pub async fn start() -> Option<Nats> {
        let program = require("nats-server")?;
        let dir = Scratch::new("nats");
        let port = tagstream_testkit::free_port().unwrap();
        let child = Command::new(program)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        let nats = Nats {
            child,
            port,
            _dir: dir,
        };
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "nats-server listens"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Some(nats)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
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
"#,
        url = nats.url()
    );
    spawn_server(&toml, tags).await
}
