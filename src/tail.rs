//! `tagstream tail`: prints the live stream as lines (name, value, unit,
//! status) and reconnects with resume after a drop, as an HMI would.

use std::time::Duration;

use crate::client::{Client, ClientError, Connect, Event, Mirror, format_value};
use crate::proto;
use crate::status;

/// Runs until Ctrl-C, or until the server says not to come back (a close
/// code 4500-4999).
pub async fn run(url: &str, how: Connect, mut patterns: Vec<String>) -> anyhow::Result<()> {
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
        match Client::reconnect(url, hello, &how, mirror.clone()).await {
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
                    Ok(Some((code, reason))) if (4500..5000).contains(&code) => {
                        anyhow::bail!("closed by server with {code} {reason}: not reconnecting");
                    }
                    Ok(Some((code, reason))) => eprintln!("# closed by server: {code} {reason}"),
                    Ok(None) => eprintln!("# connection closed"),
                    Err(e) if fresh_start => eprintln!("# {e}; starting over without resume"),
                    Err(e) => eprintln!("# {e}"),
                }
            }
            Err(e @ ClientError::Tls(_)) => return Err(e.into()),
            // Retrying does not make a token valid or an origin allowed.
            Err(ClientError::Connect(e)) if refused(&e) => {
                anyhow::bail!("{e}: check --token / TAGSTREAM_TOKEN")
            }
            Err(e) => eprintln!("# {e}; retrying in {delay:?}"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// A handshake answered 401 or 403.
fn refused(e: &tokio_tungstenite::tungstenite::Error) -> bool {
    matches!(e, tokio_tungstenite::tungstenite::Error::Http(r) if matches!(r.status().as_u16(), 401 | 403))
}

async fn print_stream(client: &mut Client) -> Result<Option<(u16, String)>, ClientError> {
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
            Event::Closed(frame) => {
                return Ok(frame.map(|f| (u16::from(f.code), f.reason.to_string())));
            }
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

/// `tagstream write`: one WriteRequest, its WriteResult printed; an error
/// unless the status is Good.
pub async fn write(url: &str, how: Connect, tag: &str, value: &str) -> anyhow::Result<()> {
    use proto::value::Kind;
    let kind = if let Ok(b) = value.parse::<bool>() {
        Kind::Bool(b)
    } else if let Ok(i) = value.parse::<i64>() {
        Kind::I64(i)
    } else if let Ok(f) = value.parse::<f64>() {
        Kind::F64(f)
    } else {
        Kind::Text(value.to_string())
    };
    let hello = proto::Hello {
        client_name: "tagstream-write".into(),
        resume: None,
        subscribe: Vec::new(),
    };
    let mut client = Client::connect_how(url, hello, &how).await?;
    let request = proto::WriteRequest {
        request_id: 1,
        tag: tag.to_string(),
        value: Some(proto::Value { kind: Some(kind) }),
    };
    client
        .send(proto::client_message::Kind::Write(request))
        .await?;
    let answer = tokio::time::timeout(Duration::from_secs(35), async {
        loop {
            match client.next_event().await? {
                Event::WriteResult(r) if r.request_id == 1 => return Ok(r),
                Event::Closed(frame) => {
                    let why = frame.map_or("-".into(), |f| format!("{} {}", f.code, f.reason));
                    return Err(anyhow::anyhow!("closed by server before the answer: {why}"));
                }
                Event::Error(e) => eprintln!("# server error {:?}: {}", e.code(), e.message),
                _ => {}
            }
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("no WriteResult within 35 s"))??;
    println!("{tag} {} {}", status::name(answer.status), answer.message);
    client.close().await;
    anyhow::ensure!(
        answer.status == status::GOOD,
        "write refused: {}",
        status::name(answer.status)
    );
    Ok(())
}
