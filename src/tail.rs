//! `tagstream tail` and `tagstream write`: the Rust SDK
//! ([`tagstream_client::Client`]) used as an operator would: tail prints
//! every change as a line (name, value, unit, status) and rides out
//! drops with resume; write sends one setpoint and prints its result.

use std::time::Duration;

use tagstream_client::{Client, Options, State, Stop, Update, format_value, status};

/// Runs until Ctrl-C, or until the server says not to come back (a
/// refused token, a close code 4500-4999).
pub async fn run(mut options: Options, patterns: Vec<String>) -> anyhow::Result<()> {
    options.client_name = "tagstream-tail".into();
    if !patterns.is_empty() {
        options.subscribe = patterns;
    }
    let patterns = options.subscribe.clone();
    let (client, mut updates) = Client::start(options);
    let mut checked = false;
    loop {
        let update = tokio::select! {
            u = updates.next() => u,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let Some(update) = update else { return Ok(()) };
        match update {
            Update::Welcome(w) => eprintln!(
                "# connected to {} epoch {:016x} seq {} ({:?})",
                w.server_id,
                w.epoch,
                w.seq,
                w.resume()
            ),
            Update::Changes(changes) => {
                use std::io::Write as _;
                let mut out = std::io::stdout().lock();
                for c in changes {
                    let line = writeln!(
                        out,
                        "{:<40} {:>14} {:<6} {}",
                        c.name,
                        format_value(c.update.value.as_ref(), Some(&c.info)),
                        c.info.unit,
                        status::name(c.update.status)
                    );
                    // `tail ... | head`: the reader left; so do we.
                    match line {
                        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                        other => other?,
                    }
                }
            }
            Update::ServerError(e) => eprintln!("# server error {:?}: {}", e.code(), e.message),
            Update::State(State::Waiting { delay, reason }) => {
                eprintln!("# {reason}; reconnecting in {delay:?}");
            }
            Update::State(State::Stopped(stop)) => return stopped(stop),
            Update::State(State::Live { .. }) if !checked => {
                checked = true;
                let (client, patterns) = (client.clone(), patterns.clone());
                tokio::spawn(async move { say_if_nothing_matches(&client, &patterns).await });
            }
            Update::Paced(granted) if !granted.is_zero() => {
                eprintln!("# paced: at most one update per {granted:?}");
            }
            Update::State(_)
            | Update::Catalog(_)
            | Update::Latency(_)
            | Update::Paced(_)
            | Update::History(_) => {}
        }
    }
}

/// Pages a Browse reads to decide that a pattern matches nothing: a page
/// scans a bounded number of names, so a sparse pattern over a large
/// catalog may need several; past this many tail says nothing.
const BROWSE_PAGES: usize = 10;

/// Says so when the patterns match no tag the connection may read (a typo,
/// or a scope that hides them): otherwise tail would wait in silence.
async fn say_if_nothing_matches(client: &Client, patterns: &[String]) {
    for pattern in patterns {
        let (mut after, mut exhausted) = (String::new(), false);
        for _ in 0..BROWSE_PAGES {
            match client.browse(pattern, 1, &after).await {
                Ok(page) if !page.tags.is_empty() => return,
                Ok(page) if page.next_after.is_empty() => {
                    exhausted = true;
                    break;
                }
                Ok(page) => after = page.next_after,
                Err(_) => return,
            }
        }
        if !exhausted {
            return;
        }
    }
    eprintln!(
        "# no tag matches {} (or the token may not read it); waiting for one to appear",
        patterns.join(" ")
    );
}

fn stopped(stop: Stop) -> anyhow::Result<()> {
    match stop {
        Stop::Closed => Ok(()),
        Stop::Refused { status } => {
            anyhow::bail!(
                "the server refused the connection ({status}): check --token / TAGSTREAM_TOKEN"
            )
        }
        Stop::Told { code, reason } => {
            anyhow::bail!("closed by server with {code} {reason}: not reconnecting")
        }
        Stop::Tls(e) => anyhow::bail!("tls: {e}"),
    }
}

/// `tagstream write`: one WriteRequest, its WriteResult printed; an error
/// unless the status is Good.
pub async fn write(mut options: Options, tag: &str, value: &str) -> anyhow::Result<()> {
    options.client_name = "tagstream-write".into();
    options.subscribe = Vec::new();
    options.write_timeout = Duration::from_secs(35);
    let (client, mut updates) = Client::start(options);
    // Wait for the session: a write before it would be refused as not
    // connected.
    let live = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(update) = updates.next().await {
            match update {
                Update::State(State::Live { .. }) => return Ok(()),
                Update::State(State::Stopped(stop)) => return stopped(stop),
                Update::State(State::Waiting { reason, .. }) => eprintln!("# {reason}"),
                _ => {}
            }
        }
        Ok(())
    });
    live.await
        .map_err(|_| anyhow::anyhow!("no session within 10 s"))??;
    // Keep reading updates while the write waits, so the queue never stalls.
    let drain = tokio::spawn(async move { while updates.next().await.is_some() {} });
    let answer = client
        .write(tag, tagstream_client::proto::Value::parse_loose(value))
        .await;
    client.close().await;
    drain.abort();
    let answer = answer?;
    println!("{tag} {} {}", answer.status_name, answer.message);
    anyhow::ensure!(answer.is_good(), "write refused: {}", answer.status_name);
    Ok(())
}
