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

pub mod bus;
pub mod codec;
pub mod config;
pub mod plan;
pub mod probe;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, sleep_until};
use tokio_modbus::{ExceptionCode, Request, Response};

use bus::{Bus, Endpoint, Turn};

pub use config::{ModbusConfig, ModbusTagConfig, RegisterType, Table};
use plan::ReadGroup;

use super::{Backoff, EngineGone, SourceConfig, SourceContext, SourceTask};
use crate::command::{WriteCommand, WriteFailure};
use crate::proto;
use crate::sample::TagDef;
use crate::sample::Value;
use crate::status;
use crate::validate::Problems;

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
        // On a shared bus, the other units may each hold it for one
        // request first.
        self.timeout.saturating_mul(2) + self.timeout / WRITES_PER_READ as u32 + self.bus_wait
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
                history: t.history,
                resolution: resolution(t),
                decimals: t.decimals,
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
    bus: Arc<Bus>,
    cx: SourceContext,
}

/// Whether the unit answers, and when to try it again if not.
struct Health {
    /// The unit answered since its last failure: only then is it healthy
    /// (a device that accepts TCP and answers garbage must back off, not
    /// be retried every 200 ms).
    answered: bool,
    backoff: Backoff,
    /// Failing: nothing is polled before this (a dead unit on a shared
    /// bus is tried less and less often, so it costs the others little).
    retry_at: Option<Instant>,
}

impl ModbusSource {
    /// A poller for `config` (on its own line unless `bus::attach` gave
    /// it a shared one).
    pub fn new(config: Arc<ModbusConfig>, cx: SourceContext) -> Self {
        let bus = config.bus.clone().unwrap_or_else(|| {
            let address = config.address.clone().unwrap_or_default();
            Arc::new(Bus::new(
                Endpoint::of(&config).unwrap_or(Endpoint::Tcp(address)),
            ))
        });
        ModbusSource { config, bus, cx }
    }

    /// Polls until shutdown. Never returns early on device errors.
    pub async fn run(self) {
        let shutdown = self.cx.shutdown.clone();
        let groups = plan::plan(&self.config);
        let mut due: Vec<Instant> = vec![Instant::now(); groups.len()];
        let mut health = Health {
            answered: false,
            backoff: Backoff::new(),
            retry_at: None,
        };
        // A device without writable tags has no write senders at all.
        let mut writes_open = true;
        // Writes taken from the queue, served connection by connection.
        let mut fair = crate::command::FairWrites::default();
        tracing::info!(device = %self.config.name, line = %self.bus.endpoint(), unit = self.config.unit_id, reads = groups.len(), tags = self.config.tags.len(), "modbus source started");
        loop {
            let next = due
                .iter()
                .copied()
                .min()
                .unwrap_or_else(|| Instant::now() + self.config.poll_interval);
            let wake = health.retry_at.map_or(next, |at| next.max(at));
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = sleep_until(wake) => {}
                cmd = self.cx.commands.recv_async(), if writes_open => {
                    writes_open = cmd.is_ok();
                    if let Ok(cmd) = cmd {
                        fair.push(cmd);
                    }
                    continue;
                }
                // One waiting write per turn, connections in turn; reads
                // that are due interleave (select! picks at random).
                () = std::future::ready(()), if !fair.is_empty() => {
                    self.cx.commands.try_iter().for_each(|c| fair.push(c));
                    if let Some(cmd) = fair.pop() {
                        let _lost = self.serve_write(&mut health, cmd, &groups, &mut due).await;
                    }
                    continue;
                }
            }
            if health.retry_at.is_some_and(|at| Instant::now() < at) {
                continue;
            }
            let now = Instant::now();
            for (g, group) in groups.iter().enumerate() {
                if due[g] > now {
                    continue;
                }
                // Queued writes go before each read, a few at a time, so
                // neither starves the other (their deadlines count on it).
                self.cx.commands.try_iter().for_each(|c| fair.push(c));
                let queued: Vec<WriteCommand> = std::iter::from_fn(|| fair.pop())
                    .take(WRITES_PER_READ)
                    .collect();
                let mut lost = false;
                for cmd in queued {
                    lost |= self.serve_write(&mut health, cmd, &groups, &mut due).await;
                }
                if lost {
                    // A write found the unit gone; the loop waits it out.
                    break;
                }
                due[g] = (due[g] + group.interval).max(now);
                let started = std::time::Instant::now();
                let result = self.read(group).await;
                if result.is_ok() {
                    self.answered(&mut health);
                }
                metrics::histogram!("tagstream_modbus_poll_seconds", "device" => self.config.name.clone())
                    .record(started.elapsed().as_secs_f64());
                match self.publish(group, result).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        let _ = self.unit_lost(&mut health, &e).await;
                        break;
                    }
                    Err(EngineGone) => return,
                }
            }
        }
        tracing::info!(device = %self.config.name, "modbus source stopped");
    }

    /// The device replied (data, an acknowledgement or a Modbus
    /// exception): it is healthy again.
    fn answered(&self, health: &mut Health) {
        health.retry_at = None;
        if !health.answered {
            health.answered = true;
            health.backoff.reset();
            self.cx.up();
        }
    }

    /// Marks every tag Bad and schedules a retry.
    async fn unit_lost(&self, health: &mut Health, error: &RequestError) -> Result<(), EngineGone> {
        // Loud once per outage: when a healthy unit fails, or on the first
        // failure; quiet while a broken device keeps failing.
        if std::mem::take(&mut health.answered) || health.backoff.is_first() {
            tracing::warn!(device = %self.config.name, line = %self.bus.endpoint(), unit = self.config.unit_id, %error, retry_in = ?health.backoff.upcoming(), "modbus device unreachable");
        }
        let status = match error {
            _ if !self.bus.ever_open() => status::BAD_NO_COMMUNICATION,
            RequestError::Timeout(_) => status::BAD_TIMEOUT,
            _ => status::BAD_COMMUNICATION_ERROR,
        };
        health.retry_at = Some(Instant::now() + health.backoff.delay());
        self.cx.down(status, status::BAD_NO_COMMUNICATION).await
    }

    async fn read(&self, g: &ReadGroup) -> Result<Result<Vec<u16>, ExceptionCode>, RequestError> {
        let request = match g.table {
            Table::Holding => Request::ReadHoldingRegisters(g.start, g.count),
            Table::Input => Request::ReadInputRegisters(g.start, g.count),
            Table::Coil => Request::ReadCoils(g.start, g.count),
            Table::Discrete => Request::ReadDiscreteInputs(g.start, g.count),
        };
        let mut turn = self.bus.acquire().await;
        let answer = turn
            .call(self.config.unit_id, request, self.config.timeout)
            .await?;
        let bits = |r: Vec<bool>| r.into_iter().map(u16::from).collect::<Vec<u16>>();
        Ok(answer.and_then(|response| match response {
            Response::ReadHoldingRegisters(words) | Response::ReadInputRegisters(words) => {
                Ok(words)
            }
            Response::ReadCoils(b) | Response::ReadDiscreteInputs(b) => Ok(bits(b)),
            // tokio-modbus checks the function code: not reached.
            _ => Err(ExceptionCode::ServerDeviceFailure),
        }))
    }

    /// Sends the samples of one read; the inner error marks the unit lost.
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
        if !answer_fits(g, words.len()) {
            // A device that answers another count than asked is not to be
            // trusted with any of it.
            tracing::warn!(device = %self.config.name, table = ?g.table, start = g.start, count = g.count, answered = words.len(), "modbus answer of the wrong length: tags Bad");
            for &i in &g.tags {
                self.cx.bad(i as u32, status::BAD_DEVICE_FAILURE).await?;
            }
            return Ok(Ok(()));
        }
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
    /// it, and reads the tag back at once after a success. True if the
    /// unit was lost on it.
    async fn serve_write(
        &self,
        health: &mut Health,
        cmd: WriteCommand,
        groups: &[ReadGroup],
        due: &mut [Instant],
    ) -> bool {
        let Some(cmd) = cmd.still_wanted(Instant::now()) else {
            tracing::debug!(device = %self.config.name, "write dropped: answered already or too late to start");
            return false;
        };
        let failing = health.retry_at.is_some();
        let result = self.write(health, &cmd).await;
        if result.is_ok() {
            let local = cmd.tag.local as usize;
            for (g, group) in groups.iter().enumerate() {
                if group.tags.contains(&local) {
                    due[g] = Instant::now();
                }
            }
        }
        let _ = cmd.reply.send(result.map(|()| ""));
        !failing && health.retry_at.is_some()
    }

    /// Carries out one write; `Ok` only after the device acknowledged.
    async fn write(&self, health: &mut Health, cmd: &WriteCommand) -> Result<(), WriteFailure> {
        let Some(tag) = self.config.tags.get(cmd.tag.local as usize) else {
            return Err((
                status::BAD_NODE_ID_UNKNOWN,
                "tag is not on this device".into(),
            ));
        };
        let words = match tag.table {
            Table::Coil => Vec::new(),
            _ => codec::encode_registers(tag, &cmd.value).map_err(|e| {
                let status = match e {
                    codec::EncodeError::TypeMismatch(_) => status::BAD_TYPE_MISMATCH,
                    codec::EncodeError::OutOfRange(_) => status::BAD_OUT_OF_RANGE,
                };
                (status, e.to_string())
            })?,
        };
        let mut turn = self.bus.acquire().await;
        // The wait for a shared bus counts against the write's deadline.
        if Instant::now() > cmd.start_by {
            let why = "waited for the bus past its deadline; never sent".to_string();
            return Err((status::BAD_TIMEOUT, why));
        }
        let result = self.write_tag(&mut turn, tag, &cmd.value, &words).await;
        drop(turn);
        if result.is_ok() {
            self.answered(health);
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
                let why = write_failure(&e);
                let _ = self.unit_lost(health, &e).await;
                Err((status, why))
            }
        }
    }

    async fn write_tag(
        &self,
        turn: &mut Turn<'_>,
        tag: &ModbusTagConfig,
        value: &Value,
        words: &[u16],
    ) -> Result<Result<(), ExceptionCode>, RequestError> {
        let (unit, limit) = (self.config.unit_id, self.config.timeout);
        let request = match (tag.table, tag.bit) {
            (Table::Coil, _) => {
                Request::WriteSingleCoil(tag.address, codec::as_bool(value).unwrap_or(false))
            }
            (_, Some(bit)) => {
                // Read-modify-write of one bit, in one turn of the bus; the
                // device has no atomic bit write over FC 06.
                let read = Request::ReadHoldingRegisters(tag.address, 1);
                let current = match turn.call(unit, read, limit).await? {
                    Ok(Response::ReadHoldingRegisters(r)) => r.first().copied().unwrap_or(0),
                    Ok(_) => return Ok(Err(ExceptionCode::ServerDeviceFailure)),
                    Err(code) => return Ok(Err(code)),
                };
                let mask = 1u16 << bit;
                let next = if words.first().copied().unwrap_or(0) != 0 {
                    current | mask
                } else {
                    current & !mask
                };
                Request::WriteSingleRegister(tag.address, next)
            }
            (_, None) if words.len() == 1 => Request::WriteSingleRegister(tag.address, words[0]),
            (_, None) => Request::WriteMultipleRegisters(tag.address, words.into()),
        };
        Ok(turn.call(unit, request, limit).await?.map(|_| ()))
    }
}

/// A failed write in words a plant engineer reads: what happened and
/// what it means for the setpoint (the OS error only as a detail).
pub fn write_failure(e: &RequestError) -> String {
    match e {
        RequestError::Timeout(d) => format!(
            "the device did not acknowledge within {d:?}: the write may or may not have been carried out; read the tag back"
        ),
        RequestError::Communication(detail) => format!(
            "the connection to the device failed during the write ({detail}): it may or may not have been carried out; read the tag back"
        ),
        RequestError::Exception(code) => {
            format!("the device refused the write (Modbus exception {code})")
        }
    }
}

/// True if an answer of `len` words is what a read of `g` asks for:
/// exactly its count of registers; for bits, its count or the count
/// rounded up to whole bytes (the padding of the last byte).
pub fn answer_fits(g: &ReadGroup, len: usize) -> bool {
    let count = usize::from(g.count);
    if g.table.is_bits() {
        len == count || len == count.div_ceil(8) * 8
    } else {
        len == count
    }
}

#[cfg(test)]
mod tests;
