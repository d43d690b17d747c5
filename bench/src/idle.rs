//! RSS per idle connection of a `tagstream demo` child process.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use tagstream::proto;
use tagstream_client::Connection;
use tagstream_testkit::{free_port, rss_bytes};

use crate::Report;

/// Opens `clients` idle sessions and reports the server's RSS growth.
pub async fn run(bin: &Path, connections: usize) -> anyhow::Result<Report> {
    crate::raise_fd_limit();
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let mut child = tokio::process::Command::new(bin)
        .args(["demo", "--listen", &listen])
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().context("child pid")?;
    let url = format!("ws://{listen}/api/v1/stream");
    // Wait until it serves, and warm it up with a few sessions.
    let mut warm = Vec::new();
    for _ in 0..50 {
        if let Ok(c) = Connection::connect(&url, proto::Hello::default()).await {
            warm.push(c);
            if warm.len() == 10 {
                break;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    anyhow::ensure!(!warm.is_empty(), "demo server did not start");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_bytes(&pid.to_string()) / 1024.0;
    let mut clients = Vec::with_capacity(connections);
    for i in 0..connections {
        let hello = proto::Hello {
            publish_interval_ms: 0,
            client_name: format!("idle-{i}"),
            resume: None,
            subscribe: vec!["plant/boiler1/running".into()],
        };
        clients.push(Connection::connect(&url, hello).await?);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_bytes(&pid.to_string()) / 1024.0;
    let per = (after - before).max(0.0) * 1024.0 / connections as f64;
    drop(clients);
    drop(warm);
    let _ = child.kill().await;
    let mut report = Report::default();
    report.add("connections", connections as f64, "");
    report.add("server_rss_before", before / 1024.0, "MiB");
    report.add("server_rss_after", after / 1024.0, "MiB");
    report.add("rss_per_idle_connection", per, "bytes");
    Ok(report)
}
