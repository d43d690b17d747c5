//! Modbus TCP source: one task per device polls its planned reads, decodes
//! each tag and sends `Sample`s to the engine. Every request runs under the
//! device's `timeout` (tokio-modbus has none); a timeout, I/O or protocol
//! error (e.g. a transaction-id mismatch from a late reply) drops the
//! connection, turns the device's tags Bad keeping their last value, and
//! reconnects with backoff. A Modbus exception marks only that read's tags.
//!
//! Exception -> status: 01 IllegalFunction -> BadNotSupported; 02
//! IllegalDataAddress and 03 IllegalDataValue -> BadConfigurationError (the
//! config names something the device lacks); 04 ServerDeviceFailure ->
//! BadDeviceFailure; 05 Acknowledge and 06 ServerDeviceBusy ->
//! BadTooManyOperations (retried next poll); 0A/0B gateway errors ->
//! BadCommunicationError; anything else -> BadDeviceFailure.

pub mod codec;
pub mod config;
pub mod plan;
pub mod probe;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_modbus::client::{Context, Reader, Writer};
use tokio_modbus::{ExceptionCode, Slave};

pub use config::{ModbusConfig, ModbusTagConfig, RegisterType, Table};
use plan::ReadGroup;

use super::{Backoff, EngineGone, SourceConfig, SourceContext, SourceTask};
use crate::command::{WriteCommand, WriteFailure};
use crate::config::Problems;
use crate::engine::catalog::TagDef;
use crate::proto;
use crate::sample::Value;
use crate::status;

/// Queued writes served before each read.
const WRITES_PER_READ: usize = 4;

impl SourceConfig for ModbusConfig {
    fn kind(&self) -> &'static str {
        "modbus"
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn write_operation(&self) -> Duration {
        // A write on a dropped link connects first: two requests, each
        // bounded by the device's timeout; and a read may run between
        // every WRITES_PER_READ writes.
        self.timeout.saturating_mul(2) + self.timeout / WRITES_PER_READ as u32
    }

    fn tags(&self) -> Vec<TagDef> {
        self.tags
            .iter()
            .map(|t| TagDef {
                data_type: data_type(t.kind, t.is_scaled()),
                unit: t.unit.clone(),
                description: t.description.clone(),
                writable: t.writable,
                min: t.min,
                max: t.max,
                deadband: t.deadband,
                keep_samples: t.keep_samples,
                resolution: resolution(t),
                ..TagDef::read_only(t.name.clone(), &self.name)
            })
            .collect()
    }

    fn validate(&self, key: &str, problems: &mut Problems) {
        self.check(key, problems);
    }

    fn build(&self, cx: SourceContext) -> SourceTask {
        Box::pin(ModbusSource::new(Arc::new(self.clone()), cx).run())
    }
}

/// The wire type of a register tag (protocol.md: a scaled tag is F64).
/// A scaled integer register moves in steps of |scale| (scale 0.1: one
/// decimal), which clients use to print it without binary noise; a float
/// or an unscaled register says nothing more than its type.
fn resolution(t: &config::ModbusTagConfig) -> f64 {
    let integer = !matches!(t.kind, RegisterType::F32 | RegisterType::F64);
    if t.is_scaled() && integer {
        t.scale.abs()
    } else {
        0.0
    }
}

fn data_type(kind: RegisterType, scaled: bool) -> proto::DataType {
    use proto::DataType as D;
    if scaled {
        return D::F64;
    }
    match kind {
        RegisterType::Bool => D::Bool,
        RegisterType::U16 => D::U16,
        RegisterType::I16 => D::I16,
        RegisterType::U32 => D::U32,
        RegisterType::I32 => D::I32,
        RegisterType::U64 => D::U64,
        RegisterType::I64 => D::I64,
        RegisterType::F32 => D::F32,
        RegisterType::F64 => D::F64,
        RegisterType::String => D::String,
    }
}

/// Why one request failed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RequestError {
    /// No answer within the device's timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Connect, I/O or framing error.
    #[error("communication error: {0}")]
    Communication(String),
    /// The device answered with a Modbus exception.
    #[error("Modbus exception {0}")]
    Exception(String),
}

impl RequestError {
    /// The tag status this failure maps to.
    pub fn status(&self, exception: Option<ExceptionCode>) -> u32 {
        match (self, exception) {
            (RequestError::Timeout(_), _) => status::BAD_TIMEOUT,
            (RequestError::Communication(_), _) => status::BAD_COMMUNICATION_ERROR,
            (RequestError::Exception(_), Some(code)) => exception_status(code),
            (RequestError::Exception(_), None) => status::BAD_DEVICE_FAILURE,
        }
    }

    /// True if the connection must be rebuilt.
    fn breaks_connection(&self) -> bool {
        !matches!(self, RequestError::Exception(_))
    }
}

/// The documented exception -> status mapping.
pub fn exception_status(code: ExceptionCode) -> u32 {
    match code {
        ExceptionCode::IllegalFunction => status::BAD_NOT_SUPPORTED,
        ExceptionCode::IllegalDataAddress | ExceptionCode::IllegalDataValue => {
            status::BAD_CONFIGURATION_ERROR
        }
        ExceptionCode::ServerDeviceFailure => status::BAD_DEVICE_FAILURE,
        ExceptionCode::Acknowledge | ExceptionCode::ServerDeviceBusy => {
            status::BAD_TOO_MANY_OPERATIONS
        }
        ExceptionCode::GatewayPathUnavailable | ExceptionCode::GatewayTargetDevice => {
            status::BAD_COMMUNICATION_ERROR
        }
        _ => status::BAD_DEVICE_FAILURE,
    }
}

/// One device's poller. Its tags' local keys are their indices in
/// `config.tags`.
pub struct ModbusSource {
    config: Arc<ModbusConfig>,
    cx: SourceContext,
}

struct Link {
    ctx: Option<Context>,
    ever_connected: bool,
    /// The device answered a request since the last connect: only then is
    /// the link healthy (a device that accepts TCP and answers garbage
    /// must back off, not reconnect every 200 ms).
    answered: bool,
    backoff: Backoff,
    retry_at: Instant,
}

impl ModbusSource {
    /// A poller for `config`.
    pub fn new(config: Arc<ModbusConfig>, cx: SourceContext) -> Self {
        ModbusSource { config, cx }
    }

    /// Polls until shutdown. Never returns early on device errors.
    pub async fn run(self) {
        let shutdown = self.cx.shutdown.clone();
        let groups = plan::plan(&self.config);
        let mut due: Vec<Instant> = vec![Instant::now(); groups.len()];
        let mut link = Link {
            ctx: None,
            ever_connected: false,
            answered: false,
            backoff: Backoff::new(),
            retry_at: Instant::now(),
        };
        // A device without writable tags has no write senders at all.
        let mut writes_open = true;
        tracing::info!(device = %self.config.name, reads = groups.len(), tags = self.config.tags.len(), "modbus source started");
        loop {
            let next = due
                .iter()
                .copied()
                .min()
                .unwrap_or_else(|| Instant::now() + self.config.poll_interval);
            let wake = if link.ctx.is_none() {
                next.max(link.retry_at)
            } else {
                next
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = sleep_until(wake) => {}
                cmd = self.cx.commands.recv_async(), if writes_open => {
                    writes_open = cmd.is_ok();
                    if let Ok(cmd) = cmd {
                        self.serve_write(&mut link, cmd, &groups, &mut due).await;
                    }
                    continue;
                }
            }
            if link.ctx.is_none() {
                if Instant::now() < link.retry_at {
                    continue;
                }
                if let Err(e) = self.connect(&mut link).await {
                    if self.connection_lost(&mut link, &e).await.is_err() {
                        break;
                    }
                    continue;
                }
            }
            let now = Instant::now();
            for (g, group) in groups.iter().enumerate() {
                if due[g] > now {
                    continue;
                }
                // Queued writes go before each read, a few at a time, so
                // neither starves the other (their deadlines count on it).
                let queued: Vec<WriteCommand> =
                    self.cx.commands.try_iter().take(WRITES_PER_READ).collect();
                for cmd in queued {
                    self.serve_write(&mut link, cmd, &groups, &mut due).await;
                }
                if link.ctx.is_none() {
                    // A write lost the link; the loop reconnects.
                    break;
                }
                due[g] = (due[g] + group.interval).max(now);
                let started = std::time::Instant::now();
                let result = self.read(&mut link, group).await;
                if result.is_ok() {
                    self.answered(&mut link);
                }
                metrics::histogram!("tagstream_modbus_poll_seconds", "device" => self.config.name.clone())
                    .record(started.elapsed().as_secs_f64());
                match self.publish(group, result).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        let _ = self.connection_lost(&mut link, &e).await;
                        break;
                    }
                    Err(EngineGone) => return,
                }
            }
        }
        tracing::info!(device = %self.config.name, "modbus source stopped");
    }

    async fn connect(&self, link: &mut Link) -> Result<(), RequestError> {
        let address = self.config.address.as_deref().unwrap_or_default();
        let limit = self.config.timeout;
        let stream = timeout(limit, async {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host(address).await?.collect();
            let mut last = std::io::Error::other(format!("{address} resolves to nothing"));
            for addr in addrs {
                match TcpStream::connect(addr).await {
                    Ok(s) => return Ok(s),
                    Err(e) => last = e,
                }
            }
            Err(last)
        })
        .await
        .map_err(|_| RequestError::Timeout(limit))?
        .map_err(|e| RequestError::Communication(format!("connect {address}: {e}")))?;
        let _ = stream.set_nodelay(true);
        link.ctx = Some(tokio_modbus::client::tcp::attach_slave(
            stream,
            Slave(self.config.unit_id),
        ));
        link.ever_connected = true;
        tracing::info!(device = %self.config.name, %address, "modbus connected");
        Ok(())
    }

    /// The device replied (data, an acknowledgement or a Modbus
    /// exception): the link is healthy again.
    fn answered(&self, link: &mut Link) {
        if !link.answered {
            link.answered = true;
            link.backoff.reset();
            self.cx.up();
        }
    }

    /// Drops the connection, marks every tag Bad and schedules a retry.
    async fn connection_lost(
        &self,
        link: &mut Link,
        error: &RequestError,
    ) -> Result<(), EngineGone> {
        link.ctx = None;
        // Loud once per outage: when a healthy link breaks, or on the
        // first failure; quiet while a broken device keeps failing.
        if std::mem::take(&mut link.answered) || link.backoff.is_first() {
            tracing::warn!(device = %self.config.name, %error, retry_in = ?link.backoff.upcoming(), "modbus device unreachable");
        }
        let status = match (error, link.ever_connected) {
            (_, false) => status::BAD_NO_COMMUNICATION,
            (RequestError::Timeout(_), true) => status::BAD_TIMEOUT,
            (_, true) => status::BAD_COMMUNICATION_ERROR,
        };
        link.retry_at = Instant::now() + link.backoff.delay();
        self.cx.down(status, status).await
    }

    async fn read(
        &self,
        link: &mut Link,
        g: &ReadGroup,
    ) -> Result<Result<Vec<u16>, ExceptionCode>, RequestError> {
        let ctx = link
            .ctx
            .as_mut()
            .ok_or_else(|| RequestError::Communication("not connected".into()))?;
        let limit = self.config.timeout;
        let bits = |r: Vec<bool>| r.into_iter().map(u16::from).collect::<Vec<u16>>();
        let answer = timeout(limit, async {
            match g.table {
                Table::Holding => ctx.read_holding_registers(g.start, g.count).await,
                Table::Input => ctx.read_input_registers(g.start, g.count).await,
                Table::Coil => ctx.read_coils(g.start, g.count).await.map(|r| r.map(bits)),
                Table::Discrete => ctx
                    .read_discrete_inputs(g.start, g.count)
                    .await
                    .map(|r| r.map(bits)),
            }
        })
        .await
        .map_err(|_| RequestError::Timeout(limit))?;
        answer.map_err(|e| RequestError::Communication(e.to_string()))
    }

    /// Sends the samples of one read; the inner error breaks the link.
    async fn publish(
        &self,
        g: &ReadGroup,
        result: Result<Result<Vec<u16>, ExceptionCode>, RequestError>,
    ) -> Result<Result<(), RequestError>, EngineGone> {
        let words = match result {
            Ok(Ok(words)) => words,
            Ok(Err(code)) => {
                let status = exception_status(code);
                tracing::warn!(device = %self.config.name, table = ?g.table, start = g.start, count = g.count, exception = ?code, "modbus exception");
                for &i in &g.tags {
                    self.cx.bad(i as u32, status).await?;
                }
                return Ok(Ok(()));
            }
            Err(e) => return Ok(Err(e)),
        };
        for &i in &g.tags {
            let tag = &self.config.tags[i];
            let offset = usize::from(tag.address - g.start);
            let Some(regs) = words.get(offset..offset + usize::from(tag.width())) else {
                self.cx.bad(i as u32, status::BAD_DEVICE_FAILURE).await?;
                continue;
            };
            let value = if tag.table.is_bits() {
                Value::Bool(regs[0] != 0)
            } else {
                codec::decode_registers(tag, regs)
            };
            self.cx.good(i as u32, value).await?;
        }
        Ok(Ok(()))
    }

    /// Carries out one write if its session still waits and its start
    /// deadline has not passed (else it never reaches the device), answers
    /// it, and reads the tag back at once after a success.
    async fn serve_write(
        &self,
        link: &mut Link,
        cmd: WriteCommand,
        groups: &[ReadGroup],
        due: &mut [Instant],
    ) {
        let Some(cmd) = cmd.still_wanted(Instant::now()) else {
            tracing::debug!(device = %self.config.name, "write dropped: answered already or too late to start");
            return;
        };
        let result = self.write(link, &cmd).await;
        if result.is_ok() {
            let local = cmd.tag.local as usize;
            for (g, group) in groups.iter().enumerate() {
                if group.tags.contains(&local) {
                    due[g] = Instant::now();
                }
            }
        }
        let _ = cmd.reply.send(result.map(|()| ""));
    }

    /// Carries out one write; `Ok` only after the device acknowledged.
    async fn write(&self, link: &mut Link, cmd: &WriteCommand) -> Result<(), WriteFailure> {
        let Some(tag) = self.config.tags.get(cmd.tag.local as usize) else {
            return Err((
                status::BAD_NODE_ID_UNKNOWN,
                "tag is not on this device".into(),
            ));
        };
        if !tag.table.is_bits()
            && let Err(e) = codec::encode_registers(tag, &cmd.value)
        {
            let status = match e {
                codec::EncodeError::TypeMismatch(_) => status::BAD_TYPE_MISMATCH,
                codec::EncodeError::OutOfRange(_) => status::BAD_OUT_OF_RANGE,
            };
            return Err((status, e.to_string()));
        }
        if link.ctx.is_none()
            && let Err(e) = self.connect(link).await
        {
            return Err((e.status(None), e.to_string()));
        }
        let result = self.write_tag(link, tag, &cmd.value).await;
        if result.is_ok() {
            self.answered(link);
        }
        match result {
            Ok(Ok(())) => {
                tracing::info!(device = %self.config.name, tag = %tag.name, value = %cmd.value, "write acknowledged");
                Ok(())
            }
            Ok(Err(code)) => Err((
                exception_status(code),
                format!("device answered exception {code:?}"),
            )),
            Err(e) => {
                let status = e.status(None);
                if e.breaks_connection() {
                    let _ = self.connection_lost(link, &e).await;
                }
                Err((status, e.to_string()))
            }
        }
    }

    async fn write_tag(
        &self,
        link: &mut Link,
        tag: &ModbusTagConfig,
        value: &Value,
    ) -> Result<Result<(), ExceptionCode>, RequestError> {
        let ctx = link
            .ctx
            .as_mut()
            .ok_or_else(|| RequestError::Communication("not connected".into()))?;
        let limit = self.config.timeout;
        let words = match tag.table {
            Table::Coil => None,
            _ => Some(
                codec::encode_registers(tag, value)
                    .map_err(|e| RequestError::Exception(e.to_string()))?,
            ),
        };
        let io = async {
            match (tag.table, words, tag.bit) {
                (Table::Coil, _, _) => {
                    let on = codec::as_bool(value).unwrap_or(false);
                    ctx.write_single_coil(tag.address, on).await
                }
                (_, Some(words), Some(bit)) => {
                    // Read-modify-write of one bit; the device has no
                    // atomic bit write over FC 06.
                    let current = match ctx.read_holding_registers(tag.address, 1).await? {
                        Ok(r) => r.first().copied().unwrap_or(0),
                        Err(code) => return Ok(Err(code)),
                    };
                    let mask = 1u16 << bit;
                    let next = if words.first().copied().unwrap_or(0) != 0 {
                        current | mask
                    } else {
                        current & !mask
                    };
                    ctx.write_single_register(tag.address, next).await
                }
                (_, Some(words), None) if words.len() == 1 => {
                    ctx.write_single_register(tag.address, words[0]).await
                }
                (_, Some(words), None) => ctx.write_multiple_registers(tag.address, &words).await,
                (_, None, _) => Ok(Ok(())),
            }
        };
        timeout(limit, io)
            .await
            .map_err(|_| RequestError::Timeout(limit))?
            .map_err(|e| RequestError::Communication(e.to_string()))
    }
}

#[cfg(test)]
mod tests;
