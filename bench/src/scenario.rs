//! Named load scenarios, each against a `tagstream run` child process (so
//! its CPU and RSS are its own): `idle`, `room`, `wall`, `storm`, or any
//! shape (`channel`). The server runs a `[[sim]]` source that stamps every
//! change as it enters the engine's channel; lean subscribers measure
//! entry -> decode latency and prove continuity.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tagstream_testkit::{cpu_seconds, rss_bytes};
use tokio_util::sync::CancellationToken;

use crate::Report;
use crate::lean::{Lean, Tally};
use crate::server::Server;

/// A load shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Preset name.
    pub name: &'static str,
    /// WebSocket subscribers.
    pub clients: usize,
    /// Tags in the server.
    pub tags: usize,
    /// Tags per subscription group; each client takes one group.
    pub group: usize,
    /// Changes per second into the server's channel.
    pub rate: u64,
    /// Measurement window.
    pub duration: Duration,
    /// Drop every client at once and reconnect with resume.
    pub storm: bool,
    /// Read scopes the clients are spread over (static tokens of
    /// `[auth]`, each a distinct scope covering every tag): 1 is no
    /// `[auth]`; more measures what scoped selections cost.
    pub scopes: usize,
    /// One more client holding this many patterns (a few matching, the
    /// rest matching nothing), dropping and subscribing them again all
    /// window long: does a large subscription stall the others? 0: none.
    pub heavy: usize,
    /// The pacing every client asks for (protocol.md Pacing); 0: none.
    pub publish_interval_ms: u32,
    /// History on (protocol.md History), with 100 more tags changing 50
    /// times a second each (`h/g0/t0..t99`, not subscribed by the
    /// clients) whose rings fill to 5,000 points before the window.
    pub history: bool,
    /// With `history`: one more client asks all 100 `h/` tags × 5,000
    /// points this often during the window (zero: never, the A of an
    /// A/B).
    pub history_every: Duration,
    /// On NATS JetStream (protocol.md "Cluster"): the sim on an edge, the
    /// clients on gateway A; with `storm`, A is killed and every client
    /// resumes on gateway B.
    pub cluster: bool,
}

impl Scenario {
    /// The committed presets (BENCHMARKS.md's targets are written against these).
    pub fn preset(name: &str) -> Option<Scenario> {
        let s = |name, clients, tags, group, rate, storm| Scenario {
            name,
            clients,
            tags,
            group,
            rate,
            duration: Duration::from_secs(10),
            storm,
            scopes: 1,
            heavy: 0,
            publish_interval_ms: 0,
            history: false,
            history_every: Duration::ZERO,
            cluster: false,
        };
        Some(match name {
            "idle" => s("idle", 10_000, 1_000, 1, 0, false),
            "room" => s("room", 1_000, 10_000, 1_000, 20_000, false),
            "wall" => s("wall", 10_000, 10_000, 100, 10_000, false),
            "storm" => s("storm", 10_000, 1_000, 100, 1_000, true),
            _ => return None,
        })
    }

    /// Any shape: `clients` each taking one of the groups of `group` tags.
    pub fn custom(clients: usize, tags: usize, group: usize, rate: u64) -> Scenario {
        Scenario {
            name: "custom",
            clients,
            tags,
            group,
            rate,
            duration: Duration::from_secs(10),
            storm: false,
            scopes: 1,
            heavy: 0,
            publish_interval_ms: 0,
            history: false,
            history_every: Duration::ZERO,
            cluster: false,
        }
    }

    /// The same shape scaled down (clients and rate), for smoke tests.
    pub fn scaled(mut self, factor: f64) -> Scenario {
        self.clients = ((self.clients as f64 * factor) as usize).max(2);
        self.rate = (self.rate as f64 * factor) as u64;
        self
    }

    fn groups(&self) -> usize {
        (self.tags / self.group.max(1)).max(1)
    }
}

/// `[auth]` with `scopes` static tokens (each reads `b/#` plus a pattern
/// of its own, so every scope is a distinct set over the same tags) and
/// their secrets; nothing for one scope.
fn scoped_tokens(scopes: usize) -> (String, Vec<(String, String)>) {
    if scopes <= 1 {
        return (String::new(), Vec::new());
    }
    let entries: Vec<String> = (0..scopes)
        .map(|i| {
            format!("{{ name = \"scope{i}\", token_env = \"BENCH_TOKEN_{i}\", read = [\"b/#\", \"scope{i}/#\"] }}")
        })
        .collect();
    let auth = format!("\n[auth]\ntokens = [ {} ]\n", entries.join(", "));
    let env = (0..scopes)
        .map(|i| {
            (
                format!("BENCH_TOKEN_{i}"),
                format!("bench-scope-token-{i}-0123456789"),
            )
        })
        .collect();
    (auth, env)
}

/// Clients per loopback source address past [`SPREAD_ABOVE`] clients:
/// below the ~28,000 ephemeral ports one source address has towards the
/// server's port (storm reconnects need room for sockets in TIME_WAIT).
const CLIENTS_PER_SOURCE: usize = 12_500;
/// Up to this many clients all connect from 127.0.0.1, as the presets
/// always did (so earlier runs compare).
const SPREAD_ABOVE: usize = 20_000;

/// The source address of client `k` of `clients`: 127.0.0.1 for the
/// presets' sizes, else 127.0.0.2, .3, ... in blocks.
fn source_address(k: usize, clients: usize) -> Option<std::net::IpAddr> {
    (clients > SPREAD_ABOVE).then(|| {
        let block = (k / CLIENTS_PER_SOURCE).min(250) as u8;
        std::net::IpAddr::from([127, 0, 0, 2 + block])
    })
}

/// Runs a scenario against a server started from `server_bin`.
pub async fn run(scenario: &Scenario, server_bin: &Path) -> anyhow::Result<Report> {
    // One descriptor per client on each side, and some to spare.
    crate::ensure_fd_limit(scenario.clients as u64 + 1024)?;
    let sim = format!(
        "[[sim]]\nname = \"bench\"\ntags = {}\nprefix = \"b\"\ngroup = {}\nrate = {}\n",
        scenario.tags, scenario.group, scenario.rate
    );
    let (auth, env) = scoped_tokens(scenario.scopes);
    let history = if scenario.history { HISTORY_CONFIG } else { "" };
    // On a cluster: the sim on an edge, the clients on gateway A, B for
    // the storm's survivor.
    let mut nodes = None;
    let mut server = if scenario.cluster {
        let nats = crate::cluster::Nats::start().await?;
        let edge =
            Server::start(server_bin, &crate::cluster::node(&nats, "edge", "e1"), &sim).await?;
        crate::cluster::wait_claimed(&nats, scenario.tags).await?;
        let gateway = |id| {
            format!(
                "max_connections = 100000\n{}",
                crate::cluster::node(&nats, "gateway", id)
            )
        };
        let extra = format!("{history}{auth}");
        let a = Server::start_env(server_bin, &gateway("ga"), &extra, &env).await?;
        let b = Server::start_env(server_bin, &gateway("gb"), &extra, &env).await?;
        nodes = Some((nats, edge, b));
        a
    } else {
        Server::start_env(
            server_bin,
            "max_connections = 100000",
            &format!("{sim}{history}{auth}"),
            &env,
        )
        .await?
    };
    let failover_url = nodes.as_ref().map(|(_, _, b)| b.url.clone());
    let (mut pid, base_url) = (server.pid.clone(), server.url.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = rss_bytes(&pid);

    let stop = CancellationToken::new();
    let drop_all = CancellationToken::new();
    let all_synced = CancellationToken::new();
    let resumed = Arc::new(tokio::sync::Semaphore::new(0));
    let synced = Arc::new(tokio::sync::Semaphore::new(0));
    let groups = scenario.groups();
    let mut tasks = Vec::with_capacity(scenario.clients);
    for k in 0..scenario.clients {
        let patterns = vec![format!("b/g{}/#", k % groups)];
        let with_token = |base: &str| match env.get(k % scenario.scopes.max(1)) {
            Some((_, token)) => format!("{base}?access_token={token}"),
            None => base.to_string(),
        };
        let url = with_token(&base_url);
        let resume_url = with_token(failover_url.as_deref().unwrap_or(&base_url));
        let (stop, drop_all) = (stop.clone(), drop_all.clone());
        let all_synced = all_synced.clone();
        let (synced, resumed, storm) = (synced.clone(), resumed.clone(), scenario.storm);
        let failover = failover_url.is_some();
        let source = source_address(k, scenario.clients);
        let paced = scenario.publish_interval_ms;
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut lean = Lean::connect_from(&url, &patterns, None, source, paced).await?;
            lean.sync(&mut tally).await?;
            let first_snapshots = tally.snapshots;
            synced.add_permits(1);
            // Read (and check continuity) until every client is in sync,
            // but count deliveries and latency only from then on: the
            // first clients would otherwise add the connect phase's
            // deliveries to a window that starts after it.
            lean.run(&mut tally, &all_synced).await?;
            tally.restart();
            if storm {
                // Until the drop; on a cluster the gateway may die first
                // (its connections reset): that is the storm too.
                let lost = lean.run(&mut tally, &drop_all).await;
                if lost.is_err() && failover {
                    drop_all.cancelled().await;
                } else {
                    lost?;
                }
                let resume = lean.resume();
                drop(lean);
                lean =
                    Lean::connect_from(&resume_url, &patterns, Some(resume), source, paced).await?;
                if lean.sync(&mut tally).await? {
                    resumed.add_permits(1);
                }
            }
            tally.snapshots -= first_snapshots;
            lean.run(&mut tally, &stop).await?;
            Ok::<Tally, anyhow::Error>(tally)
        }));
        // Pace the handshakes a little: a real fleet does not connect in one µs.
        if k % 200 == 199 {
            tokio::task::yield_now().await;
        }
    }
    let connect_started = Instant::now();
    let n = scenario.clients as u32;
    let within = Duration::from_secs((scenario.clients as u64 / 200).max(120));
    tokio::time::timeout(within, synced.acquire_many(n))
        .await
        .with_context(|| format!("clients did not all sync within {within:?}"))??
        .forget();
    let connect_time = connect_started.elapsed();
    // Deliveries are counted from here (every client in sync) to the end.
    all_synced.cancel();
    let counting = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_connected = rss_bytes(&pid);

    let mut storm_time = None;
    if scenario.storm {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let t = Instant::now();
        if let Some((_, _, b)) = &nodes {
            // Gateway A dies; its clients resume on B, which serves the
            // window.
            server.kill().await;
            pid = b.pid.clone();
        }
        drop_all.cancel();
        tokio::time::timeout(Duration::from_secs(60), resumed.acquire_many(n))
            .await
            .context("not every client resumed within 60 s")??
            .forget();
        storm_time = Some(t.elapsed());
    }

    if scenario.history {
        history_full(&base_url).await?;
    }
    let asker = (scenario.history && !scenario.history_every.is_zero()).then(|| {
        let (url, stop, every) = (base_url.clone(), stop.clone(), scenario.history_every);
        tokio::spawn(history_asker(url, every, stop))
    });
    let heavy = (scenario.heavy > 0).then(|| {
        let (url, stop, n) = (base_url.clone(), stop.clone(), scenario.heavy);
        tokio::spawn(heavy_subscriber(url, n, groups, stop))
    });
    let (server_cpu0, self_cpu0, t0) = (cpu_seconds(&pid), cpu_seconds("self"), Instant::now());
    tokio::time::sleep(scenario.duration).await;
    let window = t0.elapsed().as_secs_f64();
    let server_cpu = (cpu_seconds(&pid) - server_cpu0) / window;
    let self_cpu = cpu_seconds("self") - self_cpu0;
    let rss_after = rss_bytes(&pid);
    stop.cancel();
    let counted = counting.elapsed().as_secs_f64();
    let mut total = Tally::default();
    let mut failed = 0;
    for t in tasks {
        match t.await? {
            Ok(tally) => {
                total.latency.add(&tally.latency)?;
                total.updates += tally.updates;
                total.frames += tally.frames;
                total.bytes += tally.bytes;
                total.gaps += tally.gaps;
                total.snapshots += tally.snapshots;
            }
            Err(_) => failed += 1,
        }
    }
    let heavy = match heavy {
        Some(h) => Some(h.await??),
        None => None,
    };
    let asked = match asker {
        Some(h) => Some(h.await??),
        None => None,
    };
    server.stop().await;
    if let Some((_nats, edge, b)) = nodes {
        b.stop().await;
        edge.stop().await;
    }

    let mut r = Report::default();
    if let Some(a) = asked {
        r.add("history_answers", a.answers as f64, "");
        r.add("history_points_per_answer", a.points as f64, "");
        r.add("history_answer_bytes", a.bytes as f64, "B");
        r.add("history_answer_ms_mean", a.mean_ms, "ms");
        r.add("history_answer_ms_max", a.max_ms, "ms");
    }
    if let Some((cycles, ms)) = heavy {
        r.add("heavy_patterns", scenario.heavy as f64, "");
        r.add("heavy_resubscribes", cycles as f64, "");
        r.add("heavy_resubscribe_ms", ms, "ms");
    }
    r.add("clients", scenario.clients as f64, "");
    r.add("tags", scenario.tags as f64, "");
    r.add("changes_per_s", scenario.rate as f64, "/s");
    r.add("connect_all_s", connect_time.as_secs_f64(), "s");
    if let Some(t) = storm_time {
        r.add("storm_resume_all_s", t.as_secs_f64(), "s");
        r.add("storm_snapshots", total.snapshots as f64, "");
    }
    r.add(
        "updates_delivered_per_s",
        total.updates as f64 / counted,
        "/s",
    );
    r.add("frames_per_s", total.frames as f64 / counted, "/s");
    r.add("bytes_per_s", total.bytes as f64 / counted, "B/s");
    r.add("gaps", total.gaps as f64, "");
    r.add("clients_failed", f64::from(failed), "");
    r.add("server_cpu_cores", server_cpu, "");
    r.add("server_rss", rss_after / (1 << 20) as f64, "MiB");
    r.add(
        "rss_per_connection",
        (rss_connected - rss_before) / scenario.clients as f64,
        "B",
    );
    r.add(
        "generator_cpu_us_per_update",
        if total.updates > 0 {
            self_cpu * 1e6 / total.updates as f64
        } else {
            0.0
        },
        "us",
    );
    if !total.latency.is_empty() {
        r.latency(&total.latency);
    }
    Ok(r)
}

/// `[history]` and the 100 tags its asker reads: 50 changes a second
/// each, so 5,000 points take 100 s to gather. Every preset tag keeps
/// history too (`room`'s 10,000 change twice a second): `max_memory`
/// leaves each ring its 5,000 points.
const HISTORY_CONFIG: &str = "\n[history]\nwindow = \"10m\"\nmax_points_per_tag = 5000\nmax_memory = \"4GiB\"\n\n[[sim]]\nname = \"hist\"\ntags = 100\nprefix = \"h\"\ngroup = 100\nrate = 5000\n";

/// The 100 tags of [`HISTORY_CONFIG`].
fn history_tags() -> Vec<String> {
    (0..100).map(|i| format!("h/g0/t{i}")).collect()
}

/// One HistoryRequest of all 100 `h/` tags × 5,000 points: (points, encoded
/// bytes, time to the answer).
async fn ask_history(
    c: &mut tagstream_client::Connection,
    id: u64,
) -> anyhow::Result<(usize, usize, Duration)> {
    use prost::Message as _;
    use tagstream::proto::{self, client_message::Kind as C};
    use tagstream_client::Event;
    let t = Instant::now();
    c.send(C::History(proto::HistoryRequest {
        request_id: id,
        tags: history_tags(),
        start_us: 0,
        end_us: 0,
        max_points: 5000,
    }))
    .await?;
    loop {
        match c.next_event().await? {
            Event::HistoryResult(h) if h.request_id == id => {
                let points = h.series.iter().map(|s| s.points.len()).sum();
                return Ok((points, h.encoded_len(), t.elapsed()));
            }
            Event::Error(e) => anyhow::bail!("history refused: {}", e.message),
            Event::Closed(f) => anyhow::bail!("history client closed: {f:?}"),
            _ => {}
        }
    }
}

fn history_hello() -> tagstream::proto::Hello {
    tagstream::proto::Hello {
        publish_interval_ms: 0,
        client_name: "history".into(),
        resume: None,
        subscribe: Vec::new(),
    }
}

/// Waits until the 100 `h/` tags hold 5,000 points each, or 150 s (a
/// loaded engine fills them slower: the asker then reads what is there,
/// and the report says how many points an answer held).
async fn history_full(url: &str) -> anyhow::Result<()> {
    let mut c = tagstream_client::Connection::connect(url, history_hello()).await?;
    let until = Instant::now() + Duration::from_secs(150);
    for id in 0.. {
        let (points, _, _) = ask_history(&mut c, id).await?;
        if points >= 100 * 5000 || Instant::now() >= until {
            tracing::info!(points, "history rings before the window");
            break;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    Ok(())
}

/// What the history asker measured.
struct Asked {
    answers: u64,
    points: usize,
    bytes: usize,
    mean_ms: f64,
    max_ms: f64,
}

/// Asks 100 tags × 5,000 points every `every` until `stop`.
async fn history_asker(
    url: String,
    every: Duration,
    stop: CancellationToken,
) -> anyhow::Result<Asked> {
    let mut c = tagstream_client::Connection::connect(&url, history_hello()).await?;
    let mut a = Asked {
        answers: 0,
        points: 0,
        bytes: 0,
        mean_ms: 0.0,
        max_ms: 0.0,
    };
    let mut spent = Duration::ZERO;
    let mut tick = tokio::time::interval(every);
    while !stop.is_cancelled() {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => break,
        }
        let (points, bytes, took) = ask_history(&mut c, a.answers).await?;
        a.answers += 1;
        (a.points, a.bytes) = (points, bytes);
        spent += took;
        a.max_ms = a.max_ms.max(took.as_secs_f64() * 1e3);
    }
    a.mean_ms = spent.as_secs_f64() * 1e3 / a.answers.max(1) as f64;
    Ok(a)
}

/// The `heavy` client: `n` patterns (ten matching whole groups, the rest
/// nothing), unsubscribed and subscribed again until `stop`; returns the
/// cycles and the mean time of one (Subscribe until its Snapshot's last
/// chunk).
async fn heavy_subscriber(
    url: String,
    n: usize,
    groups: usize,
    stop: CancellationToken,
) -> anyhow::Result<(u64, f64)> {
    use tagstream::proto::{self, client_message::Kind as C};
    use tagstream_client::{Connection, Event};
    let patterns: Vec<String> = (0..n)
        .map(|i| match i {
            0..10 => format!("b/g{}/#", i % groups.max(1)),
            _ => format!("b/g{}/none/{i}", i % groups.max(1)),
        })
        .collect();
    let hello = proto::Hello {
        publish_interval_ms: 0,
        client_name: "heavy".into(),
        resume: None,
        subscribe: Vec::new(),
    };
    let mut c = Connection::connect(&url, hello).await?;
    let (mut cycles, mut spent) = (0u64, Duration::ZERO);
    while !stop.is_cancelled() {
        let t = Instant::now();
        c.send(C::Subscribe(proto::Subscribe {
            patterns: patterns.clone(),
        }))
        .await?;
        // The server charges a Subscribe the tags it adds (a budget per
        // connection): past it the answer is LIMIT_EXCEEDED and nothing
        // changes, so wait a little and try again.
        let mut refused = false;
        loop {
            match c.next_event().await? {
                Event::Snapshot(s) if s.last => break,
                Event::Error(e) if e.code() == proto::ErrorCode::LimitExceeded => {
                    refused = true;
                    break;
                }
                Event::Closed(f) => anyhow::bail!("heavy client closed: {f:?}"),
                _ => {}
            }
        }
        if refused {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        spent += t.elapsed();
        cycles += 1;
        c.send(C::Unsubscribe(proto::Unsubscribe {
            patterns: patterns.clone(),
        }))
        .await?;
    }
    Ok((cycles, spent.as_secs_f64() * 1e3 / cycles.max(1) as f64))
}
