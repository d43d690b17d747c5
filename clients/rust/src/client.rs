//! The SDK's client: one task that owns the connection, keeps the shared
//! [`Mirror`] exact, reconnects with backoff and resumes, refreshes the
//! token before it expires, and answers writes and browses. Receives
//! commands from [`Client`] handles (bounded); emits [`Update`]s into a
//! bounded queue read by [`Updates::next`]. Nothing inside grows without
//! bound: a consumer that stops reading stalls the socket, and the server
//! then conflates (fewer, larger deltas; nothing lost).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};

use crate::backoff::{Backoff, server_hint};
use crate::connection::{ClientError, Connect, Connection, Incoming};
use crate::mirror::{Event, Mirror, Violation};
use crate::proto::{self, client_message::Kind as Out};

/// A future that yields a fresh token (or why there is none).
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;

/// Where the token comes from.
#[derive(Clone)]
pub enum Token {
    /// The same token every time: no `Refresh`, and a refused one stops
    /// the client (retrying does not make it valid).
    Static(String),
    /// Asked before each connect and before the session's token expires
    /// (then sent as `Refresh`).
    Provider(Arc<dyn Fn() -> TokenFuture + Send + Sync>),
}

impl Token {
    /// A provider from an async closure.
    pub fn provider<F, Fut>(f: F) -> Token
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        Token::Provider(Arc::new(move || Box::pin(f())))
    }

    async fn get(&self) -> Result<String, String> {
        match self {
            Token::Static(t) => Ok(t.clone()),
            Token::Provider(f) => f().await,
        }
    }
}

/// How the client connects and behaves.
#[derive(Clone)]
pub struct Options {
    /// `ws://host:port/api/v1/stream` or `wss://…`.
    pub url: String,
    /// Sent in Hello (the server logs it).
    pub client_name: String,
    /// Patterns subscribed at connect (and again at every reconnect).
    pub subscribe: Vec<String>,
    /// Bearer token, sent as `Authorization: Bearer`.
    pub token: Option<Token>,
    /// Trust for `wss://` ([`crate::tls_config`]).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The reconnect schedule.
    pub backoff: Backoff,
    /// How long a write waits for its `WriteResult`.
    pub write_timeout: Duration,
    /// How often to Ping (latency, and the Pong's seq proves nothing was
    /// lost). Zero: never.
    pub ping_interval: Duration,
    /// Refresh this long before the token expires (at most half its
    /// remaining life).
    pub refresh_before: Duration,
    /// Bound of the update queue.
    pub queue: usize,
    /// Writes and browses awaiting an answer, at most.
    pub max_in_flight: usize,
    /// At most one Delta per this interval (protocol.md Pacing): a
    /// wallboard or a slow link asks for the latest value every second,
    /// not every change. Zero: every change as it comes. The server may
    /// revise it (`Welcome.publish_interval_ms`).
    pub publish_interval: Duration,
}

impl Options {
    /// Defaults for `url`: everything subscribed, no token.
    pub fn new(url: impl Into<String>) -> Options {
        Options {
            url: url.into(),
            client_name: "tagstream-client-rust".into(),
            subscribe: vec!["#".into()],
            token: None,
            tls: None,
            backoff: Backoff::default(),
            write_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(5),
            refresh_before: Duration::from_secs(30),
            queue: 256,
            max_in_flight: 64,
            publish_interval: Duration::ZERO,
        }
    }
}

/// Where the connection is.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Connecting (attempt 0 is the first since the last Welcome).
    Connecting {
        /// Consecutive attempts without a Welcome.
        attempt: u32,
    },
    /// Welcomed: the mirror follows the server.
    Live {
        /// FRESH, RESUMED or RESYNC.
        outcome: proto::ResumeOutcome,
    },
    /// Waiting to reconnect.
    Waiting {
        /// How long.
        delay: Duration,
        /// Why the last connection ended.
        reason: String,
    },
    /// Stopped for good.
    Stopped(Stop),
}

/// Why the client stopped.
#[derive(Debug, Clone, PartialEq)]
pub enum Stop {
    /// [`Client::close`], or every handle dropped.
    Closed,
    /// The handshake was refused (401 token, 403 origin) and retrying
    /// cannot help.
    Refused {
        /// The HTTP status.
        status: u16,
    },
    /// The server closed with 4500–4999: do not reconnect.
    Told {
        /// The close code.
        code: u16,
        /// Its reason.
        reason: String,
    },
    /// TLS cannot work as configured.
    Tls(String),
}

/// One tag's new state.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The tag's name.
    pub name: String,
    /// Its description (unit, type, resolution).
    pub info: proto::TagInfo,
    /// Its new state.
    pub update: proto::TagUpdate,
}

/// What the application hears, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// The connection state changed.
    State(State),
    /// A session started; the scopes say what this principal may see and
    /// write.
    Welcome(proto::Welcome),
    /// Tags were described (or redescribed).
    Catalog(Vec<proto::TagInfo>),
    /// One batch of changes (a Snapshot chunk or a Delta), each tag once
    /// or, for a keep-samples tag, in order.
    Changes(Vec<Change>),
    /// A Pong came back: the round trip.
    Latency(Duration),
    /// The pacing the server granted (after the Welcome and each
    /// [`Client::pace`]); zero: every change as it comes.
    Paced(Duration),
    /// The server reported an error (the session goes on unless a close
    /// follows).
    ServerError(proto::Error),
    /// The answer to a [`Client::history`], in its place among the
    /// changes: the `Changes` after it continue each series.
    History(History),
}

/// Recent values of some tags (protocol.md History), as of `seq`.
#[derive(Debug, Clone, PartialEq)]
pub struct History {
    /// The connection's position when the answer was made: each series
    /// ends with its tag's state there, and later changes continue it.
    pub seq: u64,
    /// One per tag the server keeps history of and this principal may
    /// read; a tag missing here is unknown, hidden or without history.
    pub series: Vec<Series>,
}

/// One tag's recent values, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The tag's name.
    pub name: String,
    /// Its description (unit, type, resolution).
    pub info: proto::TagInfo,
    /// Its changes, in the order the server applied them.
    pub points: Vec<proto::HistoryPoint>,
    /// The kept values reach back to the start asked for.
    pub complete: bool,
    /// Thinned to `max_points` (first, min, max, last per time bucket and
    /// every status change).
    pub decimated: bool,
}

/// A write that did not get a Good answer from the device's side.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WriteError {
    /// Not connected: writes are never queued for later (a setpoint sent
    /// minutes late is worse than one refused now).
    #[error("not connected")]
    NotConnected,
    /// The connection ended before the answer: the write may or may not
    /// have reached the device.
    #[error("connection lost before the answer")]
    ConnectionLost,
    /// No answer within `write_timeout`.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Too many writes and browses awaiting answers.
    #[error("too many requests in flight")]
    Busy,
    /// The client stopped.
    #[error("client stopped")]
    Stopped,
}

/// A write's answer: the `WriteResult` and its status's name.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteOutcome {
    /// The OPC UA status (0 Good).
    pub status: u32,
    /// Its name (`BadOutOfRange`, …).
    pub status_name: &'static str,
    /// The server's message.
    pub message: String,
}

impl WriteOutcome {
    /// The device (or broker) acknowledged.
    pub fn is_good(&self) -> bool {
        crate::status::is_good(self.status)
    }
}

enum Command {
    Write(
        proto::WriteRequest,
        oneshot::Sender<Result<proto::WriteResult, WriteError>>,
    ),
    Browse(
        proto::Browse,
        oneshot::Sender<Result<proto::BrowseResult, WriteError>>,
    ),
    History(
        proto::HistoryRequest,
        oneshot::Sender<Result<History, WriteError>>,
    ),
    Subscribe(Vec<String>),
    Unsubscribe(Vec<String>),
    Pace(Duration),
    Close,
}

struct Shared {
    mirror: Mirror,
    state: State,
    welcome: Option<proto::Welcome>,
    latency: Option<Duration>,
}

/// A handle on the client: cheap to clone, every clone drives the same
/// connection.
#[derive(Clone)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    shared: Arc<Mutex<Shared>>,
    write_timeout: Duration,
}

/// The update queue. Read it: an unread queue stalls the connection.
pub struct Updates {
    rx: mpsc::Receiver<Update>,
}

impl Updates {
    /// The next update; `None` once the client stopped and all were read.
    pub async fn next(&mut self) -> Option<Update> {
        self.rx.recv().await
    }
}

impl Client {
    /// Starts the client's task (on the current tokio runtime).
    pub fn start(options: Options) -> (Client, Updates) {
        let (commands, rx_cmd) = mpsc::channel(options.max_in_flight.max(1));
        let (tx, rx) = mpsc::channel(options.queue.max(1));
        let shared = Arc::new(Mutex::new(Shared {
            mirror: Mirror::default(),
            state: State::Connecting { attempt: 0 },
            welcome: None,
            latency: None,
        }));
        let client = Client {
            commands,
            shared: shared.clone(),
            write_timeout: options.write_timeout,
        };
        let task = Task {
            options,
            shared,
            commands: rx_cmd,
            updates: tx,
            rng: fastrand::Rng::new(),
        };
        tokio::spawn(task.run());
        (client, Updates { rx })
    }

    /// Reads the mirror (the task waits meanwhile: keep `f` short).
    pub fn with_mirror<R>(&self, f: impl FnOnce(&Mirror) -> R) -> R {
        f(&self.lock().mirror)
    }

    /// The connection's state.
    pub fn state(&self) -> State {
        self.lock().state.clone()
    }

    /// The last Welcome (scopes, epoch, token expiry).
    pub fn welcome(&self) -> Option<proto::Welcome> {
        self.lock().welcome.clone()
    }

    /// The last measured Ping round trip.
    pub fn latency(&self) -> Option<Duration> {
        self.lock().latency
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding the lock leaves plain data behind: use it.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `value` to `tag` and waits for the `WriteResult`.
    pub async fn write(
        &self,
        tag: &str,
        value: impl Into<proto::Value>,
    ) -> Result<WriteOutcome, WriteError> {
        let request = proto::WriteRequest {
            request_id: 0,
            tag: tag.to_string(),
            value: Some(value.into()),
        };
        let (tx, rx) = oneshot::channel();
        self.request(Command::Write(request, tx)).await?;
        let result = self.answer(rx).await?;
        Ok(WriteOutcome {
            status: result.status,
            status_name: crate::status::name(result.status),
            message: result.message,
        })
    }

    /// One page of the tags matching `pattern` (subscribed or not).
    pub async fn browse(
        &self,
        pattern: &str,
        limit: u32,
        after: &str,
    ) -> Result<proto::BrowseResult, WriteError> {
        let browse = proto::Browse {
            pattern: pattern.to_string(),
            request_id: 0,
            limit,
            after: after.to_string(),
        };
        let (tx, rx) = oneshot::channel();
        self.request(Command::Browse(browse, tx)).await?;
        self.answer(rx).await
    }

    /// Recent values of `tags` (names, at most 100) with source times in
    /// `start..=end` (`None`: as far back as kept / now), at most
    /// `max_points` per tag (0: the server's cap). The answer also comes
    /// as [`Update::History`] among the updates, where the changes after
    /// it continue each series with no gap and no overlap.
    pub async fn history(
        &self,
        tags: &[&str],
        start: Option<SystemTime>,
        end: Option<SystemTime>,
        max_points: u32,
    ) -> Result<History, WriteError> {
        let us = |t: Option<SystemTime>| {
            t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        };
        let request = proto::HistoryRequest {
            request_id: 0,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            start_us: us(start),
            end_us: us(end),
            max_points,
        };
        let (tx, rx) = oneshot::channel();
        self.request(Command::History(request, tx)).await?;
        self.answer(rx).await
    }

    /// Adds patterns (kept for every reconnect).
    pub async fn subscribe(&self, patterns: &[&str]) -> Result<(), WriteError> {
        let patterns = patterns.iter().map(|p| p.to_string()).collect();
        self.request(Command::Subscribe(patterns)).await
    }

    /// Removes patterns.
    pub async fn unsubscribe(&self, patterns: &[&str]) -> Result<(), WriteError> {
        let patterns = patterns.iter().map(|p| p.to_string()).collect();
        self.request(Command::Unsubscribe(patterns)).await
    }

    /// Asks for at most one Delta per `interval` from now on (zero: every
    /// change), on this connection and the next ones; [`Update::Paced`]
    /// reports what the server granted.
    pub async fn pace(&self, interval: Duration) -> Result<(), WriteError> {
        self.request(Command::Pace(interval)).await
    }

    /// Closes the connection and stops the client.
    pub async fn close(&self) {
        let _ = self.commands.send(Command::Close).await;
    }

    async fn request(&self, command: Command) -> Result<(), WriteError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| WriteError::Stopped)
    }

    async fn answer<T>(
        &self,
        rx: oneshot::Receiver<Result<T, WriteError>>,
    ) -> Result<T, WriteError> {
        match tokio::time::timeout(self.write_timeout, rx).await {
            Err(_) => Err(WriteError::Timeout(self.write_timeout)),
            Ok(Err(_)) => Err(WriteError::Stopped),
            Ok(Ok(result)) => result,
        }
    }
}

/// How one connection ended.
enum Ended {
    /// The user closed, or every handle is gone.
    Closed,
    /// The server closed with this code and reason.
    ServerClosed(u16, String),
    /// A gap: resume from the position.
    Gap(Violation),
    /// A violation or undecodable message: start over.
    Broken(String),
    /// The socket failed.
    Lost(String),
}

type Pending<T> = HashMap<u64, oneshot::Sender<Result<T, WriteError>>>;

struct Task {
    options: Options,
    shared: Arc<Mutex<Shared>>,
    commands: mpsc::Receiver<Command>,
    updates: mpsc::Sender<Update>,
    rng: fastrand::Rng,
}

impl Task {
    async fn run(mut self) {
        let mut attempt = 0u32;
        loop {
            self.set_state(State::Connecting { attempt }).await;
            // `None`: the schedule's delay for this attempt.
            let (delay, reason) = match self.connect().await {
                Err(stop) => return self.stop(stop).await,
                Ok(Err(e)) => (None, e),
                Ok(Ok(conn)) => match self.serve(conn, &mut attempt).await {
                    Ended::Closed => return self.stop(Stop::Closed).await,
                    Ended::ServerClosed(code, reason) => match code {
                        4500..=4999 => return self.stop(Stop::Told { code, reason }).await,
                        1001 => {
                            let hint = server_hint(&reason, self.options.backoff.cap)
                                .unwrap_or(self.options.backoff.delay(0, &mut self.rng));
                            (Some(hint), format!("server going away ({code})"))
                        }
                        _ => (None, format!("closed by server: {code} {reason}")),
                    },
                    // Nothing is wrong with the server: resume soon.
                    Ended::Gap(v) => (
                        Some(self.options.backoff.delay(0, &mut self.rng)),
                        v.to_string(),
                    ),
                    Ended::Broken(why) => {
                        self.lock().mirror.clear();
                        (None, why)
                    }
                    Ended::Lost(why) => (None, why),
                },
            };
            let delay = delay.unwrap_or_else(|| self.options.backoff.delay(attempt, &mut self.rng));
            attempt = attempt.saturating_add(1);
            self.set_state(State::Waiting { delay, reason }).await;
            if !self.wait(delay).await {
                return self.stop(Stop::Closed).await;
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn set_state(&mut self, state: State) {
        self.lock().state = state.clone();
        let _ = self.updates.send(Update::State(state)).await;
    }

    async fn stop(&mut self, stop: Stop) {
        self.set_state(State::Stopped(stop)).await;
    }

    /// Connects; the outer error stops the client, the inner one retries.
    async fn connect(&mut self) -> Result<Result<Connection, String>, Stop> {
        let token = match &self.options.token {
            None => None,
            Some(t) => match t.get().await {
                Ok(t) => Some(t),
                Err(e) => return Ok(Err(format!("no token: {e}"))),
            },
        };
        let (resume, patterns) = (self.lock().mirror.resume(), self.options.subscribe.clone());
        let publish_interval_ms =
            u32::try_from(self.options.publish_interval.as_millis()).unwrap_or(u32::MAX);
        let hello = proto::Hello {
            client_name: self.options.client_name.clone(),
            resume,
            subscribe: patterns,
            publish_interval_ms,
        };
        let how = Connect {
            token,
            tls: self.options.tls.clone(),
        };
        match Connection::connect_how(&self.options.url, hello, &how).await {
            Ok(conn) => Ok(Ok(conn)),
            Err(ClientError::Tls(e)) => Err(Stop::Tls(e)),
            Err(e) => match e.http_status() {
                // A provider may hand out a better token next time; a
                // static token stays refused.
                Some(status @ (401 | 403))
                    if !matches!(self.options.token, Some(Token::Provider(_))) =>
                {
                    Err(Stop::Refused { status })
                }
                _ => Ok(Err(e.to_string())),
            },
        }
    }

    /// Waits `delay` while answering commands; false when told to close.
    async fn wait(&mut self, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        loop {
            tokio::select! {
                () = sleep_until(until) => return true,
                cmd = self.commands.recv() => match cmd {
                    None | Some(Command::Close) => return false,
                    Some(Command::Write(_, reply)) => { let _ = reply.send(Err(WriteError::NotConnected)); }
                    Some(Command::Browse(_, reply)) => { let _ = reply.send(Err(WriteError::NotConnected)); }
                    Some(Command::History(_, reply)) => { let _ = reply.send(Err(WriteError::NotConnected)); }
                    Some(Command::Subscribe(p)) => self.add_patterns(p),
                    Some(Command::Unsubscribe(p)) => self.options.subscribe.retain(|s| !p.contains(s)),
                    Some(Command::Pace(interval)) => self.options.publish_interval = interval,
                },
            }
        }
    }

    fn add_patterns(&mut self, patterns: Vec<String>) {
        for p in patterns {
            if !self.options.subscribe.contains(&p) {
                self.options.subscribe.push(p);
            }
        }
    }

    async fn serve(&mut self, mut conn: Connection, attempt: &mut u32) -> Ended {
        let mut writes: Pending<proto::WriteResult> = HashMap::new();
        let mut browses: Pending<proto::BrowseResult> = HashMap::new();
        let mut histories: Pending<History> = HashMap::new();
        let mut next_id = 1u64;
        let ping_every = self.options.ping_interval;
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        let mut ping_at = if ping_every.is_zero() {
            far
        } else {
            Instant::now() + ping_every
        };
        let mut refresh_at = far;
        let ended = loop {
            tokio::select! {
                incoming = conn.next_message() => {
                    let msg = match incoming {
                        Ok(Incoming::Message(m)) => m,
                        Ok(Incoming::Closed(frame)) => break match frame {
                            Some(f) => Ended::ServerClosed(u16::from(f.code), f.reason.to_string()),
                            None => Ended::Lost("connection closed".into()),
                        },
                        Err(ClientError::Decode(e)) => break Ended::Broken(e),
                        Err(e) => break Ended::Lost(e.to_string()),
                    };
                    let applied = self.apply(msg);
                    let event = match applied {
                        Ok(event) => event,
                        Err(v @ Violation::Gap { .. }) => break Ended::Gap(v),
                        Err(v) => break Ended::Broken(v.to_string()),
                    };
                    match event {
                        Event::Welcome(w) => {
                            *attempt = 0;
                            refresh_at = self.refresh_time(w.token_expires_at_us).unwrap_or(far);
                            let outcome = w.resume();
                            self.lock().welcome = Some(w.clone());
                            let granted = Duration::from_millis(u64::from(w.publish_interval_ms));
                            let _ = self.updates.send(Update::Welcome(w)).await;
                            let _ = self.updates.send(Update::Paced(granted)).await;
                            self.set_state(State::Live { outcome }).await;
                        }
                        Event::Catalog(c) => { let _ = self.updates.send(Update::Catalog(c.tags)).await; }
                        Event::Snapshot(s) => self.changes(s.tags).await,
                        Event::Delta(d) => self.changes(d.updates).await,
                        Event::WriteResult(r) => if let Some(tx) = writes.remove(&r.request_id) { let _ = tx.send(Ok(r)); },
                        Event::BrowseResult(b) => if let Some(tx) = browses.remove(&b.request_id) { let _ = tx.send(Ok(b)); },
                        Event::HistoryResult(h) => {
                            let (id, history) = (h.request_id, self.history(h));
                            let _ = self.updates.send(Update::History(history.clone())).await;
                            if let Some(tx) = histories.remove(&id) { let _ = tx.send(Ok(history)); }
                        }
                        Event::Pong(p) => {
                            let rtt = now_us().saturating_sub(p.client_time_us).max(0);
                            let rtt = Duration::from_micros(rtt.unsigned_abs());
                            self.lock().latency = Some(rtt);
                            let _ = self.updates.send(Update::Latency(rtt)).await;
                        }
                        Event::Refreshed(r) => refresh_at = self.refresh_time(r.expires_at_us).unwrap_or(far),
                        Event::Error(e) => { let _ = self.updates.send(Update::ServerError(e)).await; }
                        Event::Paced(p) => {
                            let granted = Duration::from_millis(u64::from(p.publish_interval_ms));
                            let _ = self.updates.send(Update::Paced(granted)).await;
                        }
                        Event::Closed(_) => {}
                    }
                }
                cmd = self.commands.recv() => {
                    let sent = match cmd {
                        None | Some(Command::Close) => { conn.close().await; break Ended::Closed; }
                        Some(Command::Write(mut w, reply)) => {
                            if in_flight(&mut writes, &mut browses, &mut histories) >= self.options.max_in_flight {
                                let _ = reply.send(Err(WriteError::Busy));
                                continue;
                            }
                            w.request_id = next_id;
                            writes.insert(next_id, reply);
                            next_id += 1;
                            conn.send(Out::Write(w)).await
                        }
                        Some(Command::Browse(mut b, reply)) => {
                            if in_flight(&mut writes, &mut browses, &mut histories) >= self.options.max_in_flight {
                                let _ = reply.send(Err(WriteError::Busy));
                                continue;
                            }
                            b.request_id = next_id;
                            browses.insert(next_id, reply);
                            next_id += 1;
                            conn.send(Out::Browse(b)).await
                        }
                        Some(Command::History(mut h, reply)) => {
                            if in_flight(&mut writes, &mut browses, &mut histories) >= self.options.max_in_flight {
                                let _ = reply.send(Err(WriteError::Busy));
                                continue;
                            }
                            h.request_id = next_id;
                            histories.insert(next_id, reply);
                            next_id += 1;
                            conn.send(Out::History(h)).await
                        }
                        Some(Command::Subscribe(p)) => {
                            self.add_patterns(p.clone());
                            conn.send(Out::Subscribe(proto::Subscribe { patterns: p })).await
                        }
                        Some(Command::Unsubscribe(p)) => {
                            self.options.subscribe.retain(|s| !p.contains(s));
                            conn.send(Out::Unsubscribe(proto::Unsubscribe { patterns: p })).await
                        }
                        Some(Command::Pace(interval)) => {
                            self.options.publish_interval = interval;
                            let publish_interval_ms = u32::try_from(interval.as_millis()).unwrap_or(u32::MAX);
                            conn.send(Out::Pace(proto::Pace { publish_interval_ms })).await
                        }
                    };
                    if let Err(e) = sent { break Ended::Lost(e.to_string()); }
                }
                () = sleep_until(ping_at) => {
                    ping_at = Instant::now() + ping_every;
                    let ping = proto::Ping { nonce: next_id, client_time_us: now_us() };
                    if let Err(e) = conn.send(Out::Ping(ping)).await { break Ended::Lost(e.to_string()); }
                }
                () = sleep_until(refresh_at) => {
                    refresh_at = far;
                    let Some(token) = &self.options.token else { continue };
                    // Without a fresh token the server closes with 4001 at
                    // expiry; the reconnect asks the provider again.
                    if let Ok(token) = token.get().await
                        && let Err(e) = conn.send(Out::Refresh(proto::Refresh { token })).await
                    {
                        break Ended::Lost(e.to_string());
                    }
                }
            }
        };
        for (_, tx) in writes {
            let _ = tx.send(Err(WriteError::ConnectionLost));
        }
        for (_, tx) in browses {
            let _ = tx.send(Err(WriteError::ConnectionLost));
        }
        for (_, tx) in histories {
            let _ = tx.send(Err(WriteError::ConnectionLost));
        }
        ended
    }

    fn apply(&mut self, msg: proto::ServerMessage) -> Result<Event, Violation> {
        self.lock().mirror.apply(msg)
    }

    /// When to send a Refresh for a token expiring at `expires_at_us`:
    /// only with a provider (a static token cannot be renewed).
    fn refresh_time(&self, expires_at_us: i64) -> Option<Instant> {
        if expires_at_us <= 0 || !matches!(self.options.token, Some(Token::Provider(_))) {
            return None;
        }
        let left =
            Duration::from_micros(expires_at_us.saturating_sub(now_us()).max(0).unsigned_abs());
        let early = self.options.refresh_before.min(left / 2);
        Some(Instant::now() + left.saturating_sub(early))
    }

    /// A HistoryResult with its tags' names (the mirror checked that each
    /// id has its Catalog entry).
    fn history(&self, h: proto::HistoryResult) -> History {
        let shared = self.lock();
        let series = h
            .series
            .into_iter()
            .filter_map(|s| {
                let info = shared.mirror.catalog.get(&s.id)?.clone();
                Some(Series {
                    name: info.name.clone(),
                    info,
                    points: s.points,
                    complete: s.complete,
                    decimated: s.decimated,
                })
            })
            .collect();
        History { seq: h.seq, series }
    }

    async fn changes(&mut self, updates: Vec<proto::TagUpdate>) {
        if updates.is_empty() {
            return;
        }
        let changes: Vec<Change> = {
            let shared = self.lock();
            updates
                .into_iter()
                .filter_map(|update| {
                    let info = shared.mirror.catalog.get(&update.id)?.clone();
                    Some(Change {
                        name: info.name.clone(),
                        info,
                        update,
                    })
                })
                .collect()
        };
        let _ = self.updates.send(Update::Changes(changes)).await;
    }
}

/// Pending requests, after dropping those whose caller gave up.
fn in_flight(
    writes: &mut Pending<proto::WriteResult>,
    browses: &mut Pending<proto::BrowseResult>,
    histories: &mut Pending<History>,
) -> usize {
    writes.retain(|_, tx| !tx.is_closed());
    browses.retain(|_, tx| !tx.is_closed());
    histories.retain(|_, tx| !tx.is_closed());
    writes.len() + browses.len() + histories.len()
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}
