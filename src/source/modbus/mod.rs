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

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_modbus::client::{Context, Reader, Writer};
use tokio_modbus::{ExceptionCode, Slave};
use tokio_util::sync::CancellationToken;

pub use config::{ModbusConfig, ModbusTagConfig, RegisterType, Table};
use plan::ReadGroup;

use super::writes::{WriteCommand, WriteFailure};
use crate::sample::{Sample, TagId, Value};
use crate::status;

/// First reconnect delay; doubles up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_millis(200);
/// Longest wait between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

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

/// One device's poller.
pub struct ModbusSource {
    config: ModbusConfig,
    /// Catalog id of each of `config.tags`.
    ids: Vec<TagId>,
    samples: flume::Sender<Sample>,
    writes: flume::Receiver<WriteCommand>,
}

struct Link {
    ctx: Option<Context>,
    ever_connected: bool,
    backoff: Duration,
    retry_at: Instant,
}

impl ModbusSource {
    /// A poller for `config`, whose tags have the given catalog ids.
    pub fn new(
        config: ModbusConfig,
        ids: Vec<TagId>,
        samples: flume::Sender<Sample>,
        writes: flume::Receiver<WriteCommand>,
    ) -> Self {
        ModbusSource {
            config,
            ids,
            samples,
            writes,
        }
    }

    /// Polls until shutdown. Never returns early on device errors.
    pub async fn run(self, shutdown: CancellationToken) {
        let groups = plan::plan(&self.config);
        let mut due: Vec<Instant> = vec![Instant::now(); groups.len()];
        let mut link = Link {
            ctx: None,
            ever_connected: false,
            backoff: MIN_BACKOFF,
            retry_at: Instant::now(),
        };
        // A device without writable tags has no write senders at all.
        let mut writes_open = true;
        tracing::info!(device = %self.config.name, reads = groups.len(), tags = self.ids.len(), "modbus source started");
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
                cmd = self.writes.recv_async(), if writes_open => {
                    writes_open = cmd.is_ok();
                    if let Ok(cmd) = cmd {
                        let result = self.write(&mut link, &cmd).await;
                        if result.is_ok() {
                            // Read the new value back at once.
                            for (g, group) in groups.iter().enumerate() {
                                if group.tags.iter().any(|&i| self.ids[i] == cmd.tag) {
                                    due[g] = Instant::now();
                                }
                            }
                        }
                        let _ = cmd.reply.send(result);
                    }
                    continue;
                }
            }
            if link.ctx.is_none() {
                if Instant::now() < link.retry_at {
                    continue;
                }
                if let Err(e) = self.connect(&mut link).await {
                    self.connection_lost(&mut link, &e).await;
                    continue;
                }
            }
            let now = Instant::now();
            for (g, group) in groups.iter().enumerate() {
                if due[g] > now {
                    continue;
                }
                due[g] = (due[g] + group.interval).max(now);
                let started = std::time::Instant::now();
                let result = self.read(&mut link, group).await;
                metrics::histogram!("tagstream_modbus_poll_seconds", "device" => self.config.name.clone())
                    .record(started.elapsed().as_secs_f64());
                if let Err(e) = self.publish(group, result).await {
                    self.connection_lost(&mut link, &e).await;
                    break;
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
        link.backoff = MIN_BACKOFF;
        tracing::info!(device = %self.config.name, %address, "modbus connected");
        metrics::gauge!("tagstream_device_up", "device" => self.config.name.clone()).set(1.0);
        Ok(())
    }

    /// Drops the connection, marks every tag Bad and schedules a retry.
    async fn connection_lost(&self, link: &mut Link, error: &RequestError) {
        if link.ctx.take().is_some() || link.backoff == MIN_BACKOFF {
            tracing::warn!(device = %self.config.name, %error, retry_in = ?link.backoff, "modbus device unreachable");
        }
        metrics::gauge!("tagstream_device_up", "device" => self.config.name.clone()).set(0.0);
        let status = match (error, link.ever_connected) {
            (_, false) => status::BAD_NO_COMMUNICATION,
            (RequestError::Timeout(_), true) => status::BAD_TIMEOUT,
            (_, true) => status::BAD_COMMUNICATION_ERROR,
        };
        let bad: Vec<(TagId, u32)> = self.ids.iter().map(|&id| (id, status)).collect();
        if !super::report_bad(&self.samples, bad).await {
            return;
        }
        let jitter = link.backoff.mul_f64(fastrand::f64() * 0.2);
        link.retry_at = Instant::now() + link.backoff + jitter;
        link.backoff = (link.backoff * 2).min(MAX_BACKOFF);
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

    /// Sends the samples of one read; returns an error that breaks the link.
    async fn publish(
        &self,
        g: &ReadGroup,
        result: Result<Result<Vec<u16>, ExceptionCode>, RequestError>,
    ) -> Result<(), RequestError> {
        let words = match result {
            Ok(Ok(words)) => words,
            Ok(Err(code)) => {
                let status = exception_status(code);
                tracing::warn!(device = %self.config.name, table = ?g.table, start = g.start, count = g.count, exception = ?code, "modbus exception");
                for &i in &g.tags {
                    let _ = self
                        .samples
                        .send_async(Sample::bad(self.ids[i], status))
                        .await;
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        for &i in &g.tags {
            let tag = &self.config.tags[i];
            let offset = usize::from(tag.address - g.start);
            let Some(regs) = words.get(offset..offset + usize::from(tag.width())) else {
                let _ = self
                    .samples
                    .send_async(Sample::bad(self.ids[i], status::BAD_DEVICE_FAILURE))
                    .await;
                continue;
            };
            let value = if tag.table.is_bits() {
                Value::Bool(regs[0] != 0)
            } else {
                codec::decode_registers(tag, regs)
            };
            if self
                .samples
                .send_async(Sample::good(self.ids[i], value))
                .await
                .is_err()
            {
                break;
            }
        }
        Ok(())
    }

    /// Carries out one write; `Ok` only after the device acknowledged.
    async fn write(&self, link: &mut Link, cmd: &WriteCommand) -> Result<(), WriteFailure> {
        let Some(index) = self.ids.iter().position(|&id| id == cmd.tag) else {
            return Err((
                status::BAD_NODE_ID_UNKNOWN,
                "tag is not on this device".into(),
            ));
        };
        let tag = &self.config.tags[index];
        if !tag.table.is_bits() {
            if let Err(e) = codec::encode_registers(tag, &cmd.value) {
                let status = match e {
                    codec::EncodeError::TypeMismatch(_) => status::BAD_TYPE_MISMATCH,
                    codec::EncodeError::OutOfRange(_) => status::BAD_OUT_OF_RANGE,
                };
                return Err((status, e.to_string()));
            }
        }
        if link.ctx.is_none() {
            if let Err(e) = self.connect(link).await {
                return Err((e.status(None), e.to_string()));
            }
        }
        let result = self.write_tag(link, tag, &cmd.value).await;
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
                    self.connection_lost(link, &e).await;
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
