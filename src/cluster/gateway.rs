//! The gateway's follower: one ordered consumer on the whole stream (never
//! one per client), whose messages become the gateway engine's inputs with
//! their stream seqs. It starts from the last message of every subject
//! (each tag's claim, definition and latest state) and then follows live;
//! the async-nats ordered consumer recreates itself after a gap from the
//! last sequence it delivered.
//!
//! "Caught up" is decided against the stream's last sequence read at the
//! start, never `num_pending` (which can reach 0 and rise again).
//!
//! Receives: stream messages. Emits: `Input::Replicated` to the engine and
//! the caught-up signal.

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt as _;
use prost::Message as _;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::link::Link;
use super::wire::{self, ClusterDef, Kind, Subjects};
use crate::engine::table::TagState;
use crate::engine::{Local, Replicated};
use crate::sample::{Input, SourceId, TagId, TagKey, Value};

/// The edges a gateway has seen claim tags, numbered in the order seen:
/// a tag's owner key is `{source: its edge's number, local: its id}`, so
/// a write finds the edge to send it to.
#[derive(Debug, Default)]
pub struct Edges(std::sync::RwLock<Vec<String>>);

impl Edges {
    /// The number of edge `name`, given one if new (`None` past 65,535
    /// edges).
    pub fn number(&self, name: &str) -> Option<SourceId> {
        let mut edges = self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(i) = edges.iter().position(|e| e == name) {
            return SourceId::try_from(i).ok();
        }
        let i = SourceId::try_from(edges.len())
            .ok()
            .filter(|&i| i < SourceId::MAX)?;
        edges.push(name.to_string());
        Some(i)
    }

    /// The number of a known edge.
    pub fn find(&self, name: &str) -> Option<SourceId> {
        let edges = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let i = edges.iter().position(|e| e == name)?;
        SourceId::try_from(i).ok()
    }

    /// How many edges are numbered.
    pub fn len(&self) -> usize {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// No edge numbered yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The edge with number `i`.
    pub fn name(&self, i: SourceId) -> Option<String> {
        let edges = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        edges.get(usize::from(i)).cloned()
    }
}

/// Id `id` claimed for `def` at `seq`: its owner key names the claiming
/// edge (where its writes go) and the id.
fn claim(edges: &Edges, id: TagId, def: &ClusterDef, seq: u64) -> Replicated {
    Replicated::Claim {
        seq,
        id,
        owner: TagKey {
            source: edges.number(&def.edge).unwrap_or(SourceId::MAX),
            local: id,
        },
        def: def.to_def(),
    }
}

/// What one stream message means to a gateway's engine.
pub fn replicated(
    subjects: &Subjects,
    edges: &Edges,
    subject: &str,
    seq: u64,
    payload: &[u8],
) -> Replicated {
    let skip = Replicated::Skip { seq };
    match subjects.kind(subject) {
        Kind::Claim(id) => match ClusterDef::decode(payload) {
            Ok(def) => claim(edges, id, &def, seq),
            Err(_) => skip,
        },
        Kind::Define(id) => match ClusterDef::decode(payload) {
            Ok(def) => Replicated::Define {
                seq,
                id,
                def: def.to_def(),
            },
            Err(_) => skip,
        },
        Kind::Value(id) => match wire::decode_value(payload) {
            Some(samples) => Replicated::Update {
                id,
                seq,
                samples: samples
                    .into_iter()
                    .map(|update| TagState {
                        value: update.value.as_ref().and_then(Value::from_wire),
                        status: update.status,
                        source_time_us: update.source_time_us,
                        server_time_us: update.server_time_us,
                        seq,
                    })
                    .collect(),
            },
            None => skip,
        },
        Kind::Other => skip,
    }
}

/// A claim or definition message: what it is, its content, its seq.
pub fn decode_def(subjects: &Subjects, m: &jetstream::Message) -> Option<(Kind, ClusterDef, u64)> {
    let kind = subjects.kind(&m.subject);
    let def = ClusterDef::decode(m.payload.as_ref()).ok()?;
    let seq = m.info().ok()?.stream_sequence;
    Some((kind, def, seq))
}

/// The last message of each subject `filters` match, as many as a fresh
/// consumer counted when it was made (later ones follow on the returned
/// consumer): claims and definitions, read before anything else.
pub async fn read_last(
    stream: &stream::Stream,
    subjects: &Subjects,
    filters: Vec<String>,
) -> Result<(Vec<(Kind, ClusterDef, u64)>, consumer::pull::Ordered), String> {
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subjects: filters,
            deliver_policy: consumer::DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let pending = consumer.cached_info().num_pending;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    let mut read = Vec::with_capacity(usize::try_from(pending).unwrap_or(0).min(1 << 20));
    for _ in 0..pending {
        let message = tokio::time::timeout(super::link::REQUEST_TIMEOUT * 2, messages.next())
            .await
            .map_err(|_| "timed out reading claims".to_string())?
            .ok_or_else(|| "the claims consumer ended".to_string())?
            .map_err(|e| e.to_string())?;
        if let Some(def) = decode_def(subjects, &message) {
            read.push(def);
        }
    }
    Ok((read, messages))
}

/// How often a gateway checks that its stream is still the one it follows.
const STREAM_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// Follows the stream into `input` until shutdown; `caught_up` holds the
/// seq it first caught up to (the stream's last sequence at its start).
/// While the link is down every tag shows Uncertain ([`Local::LinkLost`]);
/// once caught up again, the stream's statuses ([`Local::LinkBack`]).
pub async fn follow(
    link: Link,
    edges: std::sync::Arc<Edges>,
    mut stream: stream::Stream,
    (replicas, epoch, fatal): (usize, u64, super::Fatal),
    input: flume::Sender<Input>,
    caught_up: watch::Sender<Option<u64>>,
    shutdown: CancellationToken,
) {
    let subjects = link.subjects.clone();
    let mut reconnects = link.reconnects();
    let mut up = link.watch_up();
    let mut backoff = std::time::Duration::from_millis(100);
    let mut next: Option<u64> = None;
    let mut lost = false;
    let send = |i: Input| input.send_async(i);
    loop {
        if !*up.borrow_and_update() {
            if next.is_some() && !lost {
                lost = true;
                if send(Input::Local(Local::LinkLost)).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                _ = up.wait_for(|u| *u) => {}
                () = shutdown.cancelled() => return,
            }
            // Many gateways come back at once: spread their consumers.
            if wait(&shutdown, &mut std::time::Duration::from_millis(50)).await {
                return;
            }
        }
        let target = match stream.info().await {
            Ok(info) if super::link::epoch_of(info) != epoch => {
                super::check_epoch(&link, replicas, epoch, &fatal).await;
                return;
            }
            Ok(info) => info.state.last_sequence,
            Err(e) => {
                // Deleted? Then it is made again, in a new epoch.
                tracing::warn!(error = %e, "cluster: stream info");
                if super::check_epoch(&link, replicas, epoch, &fatal).await
                    && fatal.watch().borrow().is_some()
                {
                    return;
                }
                if wait(&shutdown, &mut backoff).await {
                    return;
                }
                continue;
            }
        };
        let current = next.is_none_or(|n| n > target);
        if current {
            if caught_up.borrow().is_none() {
                caught_up.send_replace(Some(target));
            }
            if lost {
                lost = false;
                if send(Input::Local(Local::LinkBack)).await.is_err() {
                    return;
                }
            }
        }
        if next.is_none() {
            // Every claim first, in id order: a claim moved to the
            // stream's end (republished) would otherwise come after
            // higher ids, and ids are taken in order.
            match read_last(&stream, &subjects, vec![subjects.claims()]).await {
                Ok((mut claims, _)) => {
                    claims.sort_unstable_by_key(|(kind, _, _)| match kind {
                        Kind::Claim(id) => *id,
                        _ => TagId::MAX,
                    });
                    // All in one input: one engine batch, so the catalog is
                    // copied once, not once per batch of 1,024 as sessions
                    // hold the previous one.
                    let all: Vec<Replicated> = claims
                        .into_iter()
                        .filter_map(|(kind, def, seq)| match kind {
                            Kind::Claim(id) => Some(claim(&edges, id, &def, seq)),
                            _ => None,
                        })
                        .collect();
                    if send(Input::ReplicatedMany(all)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cluster: cannot read the claims");
                    if wait(&shutdown, &mut backoff).await {
                        return;
                    }
                    continue;
                }
            }
        }
        let deliver_policy = match next {
            None => consumer::DeliverPolicy::LastPerSubject,
            Some(start_sequence) => consumer::DeliverPolicy::ByStartSequence { start_sequence },
        };
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subjects.all(),
                deliver_policy,
                // Pull requests expire (and heartbeats come) this often:
                // a consumer lost with a restarted server is noticed in
                // seconds, not in the default 30.
                max_expires: std::time::Duration::from_secs(2),
                ..Default::default()
            })
            .await;
        let messages = match consumer {
            Ok(consumer) => consumer.messages().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let mut messages = match messages {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cluster: cannot follow the stream");
                if wait(&shutdown, &mut backoff).await {
                    return;
                }
                continue;
            }
        };
        backoff = std::time::Duration::from_millis(100);
        reconnects.borrow_and_update();
        // A deleted stream takes its consumer along, and the ordered
        // consumer retries quietly: look at the stream now and then.
        let mut check = tokio::time::interval(STREAM_CHECK);
        check.reset();
        loop {
            let message = tokio::select! {
                m = messages.next() => m,
                _ = check.tick() => {
                    let same = stream
                        .info()
                        .await
                        .is_ok_and(|info| super::link::epoch_of(info) == epoch);
                    if same {
                        continue;
                    }
                    break;
                }
                // A new connection: the consumer may have died with the
                // server; follow again from the next seq.
                _ = reconnects.changed() => break,
                changed = up.changed() => {
                    if changed.is_err() || !*up.borrow() {
                        break;
                    }
                    continue;
                }
                () = shutdown.cancelled() => return,
            };
            let message = match message {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    // Follow again from the next seq, after checking the
                    // stream is still there and the same.
                    tracing::debug!(error = %e, "cluster: stream consumer");
                    break;
                }
                None => break,
            };
            let Some(seq) = sequence(&message) else {
                continue;
            };
            let r = replicated(&subjects, &edges, &message.subject, seq, &message.payload);
            if send(Input::Replicated(Box::new(r))).await.is_err() {
                return;
            }
            next = Some(seq + 1);
            if seq >= target {
                if caught_up.borrow().is_none() {
                    caught_up.send_replace(Some(seq));
                }
                if lost {
                    lost = false;
                    tracing::info!(seq, "cluster: gateway caught up with the stream again");
                    if send(Input::Local(Local::LinkBack)).await.is_err() {
                        return;
                    }
                }
            }
        }
        tracing::info!(next = ?next, "cluster: following the stream again");
    }
}

fn sequence(message: &jetstream::Message) -> Option<u64> {
    message.info().ok().map(|i| i.stream_sequence)
}

/// Sleeps a backoff with jitter (doubling up to 5 s); true at shutdown.
async fn wait(shutdown: &CancellationToken, backoff: &mut std::time::Duration) -> bool {
    let jitter = std::time::Duration::from_millis(fastrand::u64(0..=backoff.as_millis() as u64));
    let stop = tokio::select! {
        () = tokio::time::sleep(*backoff + jitter) => false,
        () = shutdown.cancelled() => true,
    };
    *backoff = (*backoff * 2).min(std::time::Duration::from_secs(5));
    stop
}
