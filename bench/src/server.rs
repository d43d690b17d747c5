//! A `tagstream run` child process for a measurement: the server binary
//! under test, with a configuration written for the run, on a free port.
//! Its CPU and RSS are its own, read from `/proc`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tagstream_testkit::{Scratch, free_port};
use tokio::net::TcpStream;

/// A running server.
pub struct Server {
    child: tokio::process::Child,
    /// Its pid, for `/proc` readings.
    pub pid: String,
    /// Where clients connect (`ws://…/api/v1/stream`).
    pub url: String,
    _dir: Scratch,
}

/// The `tagstream` binary beside this one (`target/release/tagstream`
/// next to `target/release/tagstream-bench`).
pub fn default_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("tagstream")))
        .unwrap_or_else(|| PathBuf::from("tagstream"))
}

/// Waits until something accepts on loopback `port`, at most `within`.
pub async fn wait_port(port: u16, within: Duration) -> anyhow::Result<()> {
    tokio::time::timeout(within, async {
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .with_context(|| format!("nothing listening on {port} after {within:?}"))
}

/// Where the server under test runs: `--push-threads` and
/// `--server-cpus`, set once by `main`.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// Session threads (`[server] push_threads`); `None`: half the cores.
    pub push_threads: Option<usize>,
    /// CPU list for `taskset -c` (e.g. `0-1`); `None`: anywhere.
    pub cpus: Option<String>,
}

static PLACEMENT: std::sync::OnceLock<Placement> = std::sync::OnceLock::new();

/// Sets where every server of this run goes (first call wins).
pub fn place(p: Placement) {
    let _ = PLACEMENT.set(p);
}

/// Session threads for a benchmark server: `--push-threads`, else half the
/// cores, because the load generator runs on the same machine and takes
/// the other half (on the 2-core reference machine: one).
pub fn push_threads() -> usize {
    PLACEMENT
        .get()
        .and_then(|p| p.push_threads)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)))
}

/// Pins the calling process, all its threads, to `cpus` (a `taskset`
/// list): threads made later inherit it.
pub fn pin_self(cpus: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("taskset")
        .args(["-a", "-c", "-p", cpus, &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status()
        .context("running taskset (util-linux)")?;
    anyhow::ensure!(status.success(), "taskset -a -c -p {cpus} failed: {status}");
    Ok(())
}

impl Server {
    /// Starts `bin run` with `[server]` on a free loopback port (plus
    /// `server` lines) and the given source sections; waits until it
    /// accepts.
    pub async fn start(bin: &Path, server: &str, sources: &str) -> anyhow::Result<Server> {
        Server::start_env(bin, server, sources, &[]).await
    }

    /// Like `start`, with environment variables for the child (secrets
    /// that `[auth]` names).
    pub async fn start_env(
        bin: &Path,
        server: &str,
        sources: &str,
        env: &[(String, String)],
    ) -> anyhow::Result<Server> {
        anyhow::ensure!(
            bin.is_file(),
            "server binary {} not found: build it first (cargo build --release)",
            bin.display()
        );
        let dir = Scratch::new("bench")?;
        let port = free_port()?;
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\npush_threads = {}\n{server}\n{sources}",
            push_threads()
        );
        let path = dir.path("tagstream.toml");
        std::fs::write(&path, config)?;
        let mut command = match PLACEMENT.get().and_then(|p| p.cpus.as_deref()) {
            Some(cpus) => {
                let mut c = tokio::process::Command::new("taskset");
                c.args(["-c", cpus]).arg(bin);
                c
            }
            None => tokio::process::Command::new(bin),
        };
        let child = command
            .arg("run")
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("server pid")?.to_string();
        wait_port(port, Duration::from_secs(30)).await?;
        Ok(Server {
            child,
            pid,
            url: format!("ws://127.0.0.1:{port}/api/v1/stream"),
            _dir: dir,
        })
    }

    /// Kills it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }

    /// Kills it and keeps the handle (a node that dies mid-run).
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}
