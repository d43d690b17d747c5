//! `tagstream tail`: prints the live stream as lines (name, value, unit,
//! status) and reconnects with resume after a drop, as an HMI would.

use std::time::Duration;

use crate::client::{Client, ClientError, Event, Mirror, format_value};
use crate::proto;
use crate::status;

/// Runs until Ctrl-C.
pub async fn run(url: &str, token: Option<&str>, mut patterns: Vec<String>) -> anyhow::Result<()> {
    if patterns.is_empty() {
        patterns.push("#".into());
    }
    // What the last connection knew: a reconnect resumes from it and keeps
    // its catalog, so a blip costs one Delta. A resume the stream then
    // contradicts (a gap, an unknown id) starts over with a fresh Hello.
    let mut mirror = Mirror::default();
    let mut delay = Duration::from_millis(250);
    loop {
        let hello = proto::Hello {
            client_name: "tagstream-tail".into(),
            resume: None,
            subscribe: patterns.clone(),
        };
        match Client::reconnect(url, hello, token, mirror.clone()).await {
            Ok(mut client) => {
                delay = Duration::from_millis(250);
                let result = tokio::select! {
                    r = print_stream(&mut client) => r,
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                };
                let fresh_start = matches!(
                    result,
                    Err(ClientError::Protocol(_) | ClientError::Gap { .. })
                );
                if !fresh_start {
                    mirror = client.into_mirror();
                }
                match result {
                    Ok(Some(reason)) => eprintln!("# closed by server: {reason}"),
                    Ok(None) => eprintln!("# connection closed"),
                    Err(e) if fresh_start => eprintln!("# {e}; starting over without resume"),
                    Err(e) => eprintln!("# {e}"),
                }
            }
            Err(e) => eprintln!("# {e}; retrying in {delay:?}"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

async fn print_stream(client: &mut Client) -> Result<Option<String>, ClientError> {
    loop {
        let updates = match client.next_event().await? {
            Event::Welcome(w) => {
                eprintln!(
                    "# connected to {} epoch {:016x} seq {} ({:?})",
                    w.server_id,
                    w.epoch,
                    w.seq,
                    w.resume()
                );
                continue;
            }
            Event::Snapshot(s) => s.tags,
            Event::Delta(d) => d.updates,
            Event::Error(e) => {
                eprintln!("# server error {:?}: {}", e.code(), e.message);
                continue;
            }
            Event::Closed(frame) => return Ok(frame.map(|f| format!("{} {}", f.code, f.reason))),
            _ => continue,
        };
        for u in updates {
            let (name, unit) = client
                .catalog
                .get(&u.id)
                .map(|t| (t.name.as_str(), t.unit.as_str()))
                .unwrap_or(("?", ""));
            println!(
                "{name:<40} {:>14} {unit:<6} {}",
                format_value(u.value.as_ref()),
                status::name(u.status)
            );
        }
    }
}
