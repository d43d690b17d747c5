//! The line a Modbus device is reached over, shared by every `[[modbus]]`
//! entry on it. A Modbus TCP device gets a line of its own; an RS-485 port
//! (`serial`) or a serial gateway (`address` with `framing = "rtu"`) is one
//! bus for all the entries naming it, each with its unit id. A bus carries
//! one request at a time (RTU has no transaction ids: an answer is known
//! only by arriving next) and keeps the 3.5-character silence between
//! frames. Waiting for the bus is fair (a FIFO lock), so a unit that times
//! out costs the others one timeout, never their turn.
//!
//! Receives requests from the entries' pollers ([`Bus::acquire`] then
//! [`Turn::call`]); owns the open port or connection, opening it on first
//! use and again after any timeout or I/O error (a late answer must not be
//! read as the next unit's).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::{Mutex, MutexGuard};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_modbus::client::{Client, Context};
use tokio_modbus::prelude::SlaveContext;
use tokio_modbus::{ExceptionCode, Request, Response, Slave};

use super::RequestError;
use super::config::ModbusConfig;
use crate::validate::Problems;

/// How frames travel over a TCP `address`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Framing {
    /// Modbus TCP (MBAP header): one connection per entry.
    #[default]
    Tcp,
    /// RTU frames (unit id + PDU + CRC) over TCP, as serial gateways
    /// forward them: one connection per address, shared.
    Rtu,
}

/// Serial parity.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    /// No parity bit.
    None,
    /// Even parity (the Modbus default).
    #[default]
    Even,
    /// Odd parity.
    Odd,
}

/// A serial port's line settings, defaults filled in (config.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineSettings {
    /// Bits per second.
    pub baud: u32,
    /// Parity.
    pub parity: Parity,
    /// Data bits (7 or 8).
    pub data_bits: u8,
    /// Stop bits (1 or 2).
    pub stop_bits: u8,
}

impl LineSettings {
    /// One character on the wire: start bit, data, parity, stop bits.
    pub fn char_time(&self) -> Duration {
        let bits = 1
            + u32::from(self.data_bits)
            + u32::from(self.parity != Parity::None)
            + u32::from(self.stop_bits);
        Duration::from_secs_f64(f64::from(bits) / f64::from(self.baud.max(1)))
    }

    /// The silence that ends a frame: 3.5 characters, and a fixed 1.75 ms
    /// above 19200 baud (Modbus over serial line, 2.5.1.1).
    pub fn frame_gap(&self) -> Duration {
        if self.baud > 19_200 {
            Duration::from_micros(1_750)
        } else {
            self.char_time().mul_f64(3.5)
        }
    }
}

impl std::fmt::Display for LineSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parity = match self.parity {
            Parity::None => 'N',
            Parity::Even => 'E',
            Parity::Odd => 'O',
        };
        write!(
            f,
            "{} baud {}{}{}",
            self.baud, self.data_bits, parity, self.stop_bits
        )
    }
}

/// Where a line goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Modbus TCP to `host:port`.
    Tcp(String),
    /// RTU frames over TCP to `host:port` (a serial gateway).
    RtuOverTcp(String),
    /// RTU over a serial port.
    Serial(String, LineSettings),
}

impl Endpoint {
    /// The endpoint of a `[[modbus]]` entry (`None` if it names neither
    /// an address nor a port: a config error reported elsewhere).
    pub fn of(config: &ModbusConfig) -> Option<Endpoint> {
        match (&config.serial, &config.address) {
            (Some(port), _) => Some(Endpoint::Serial(port.clone(), config.line_settings())),
            (None, Some(address)) if config.framing == Some(Framing::Rtu) => {
                Some(Endpoint::RtuOverTcp(address.clone()))
            }
            (None, Some(address)) => Some(Endpoint::Tcp(address.clone())),
            (None, None) => None,
        }
    }

    /// Entries with this endpoint share one bus (every RTU line).
    fn is_shared(&self) -> bool {
        !matches!(self, Endpoint::Tcp(_))
    }

    /// The key entries share a bus by: the port, or the address.
    fn bus_key(&self) -> &str {
        match self {
            Endpoint::Tcp(a) | Endpoint::RtuOverTcp(a) | Endpoint::Serial(a, _) => a,
        }
    }

    fn gap(&self) -> Duration {
        match self {
            Endpoint::Serial(_, settings) => settings.frame_gap(),
            // The gateway times the serial side itself.
            Endpoint::Tcp(_) | Endpoint::RtuOverTcp(_) => Duration::ZERO,
        }
    }

    /// Opens the port or connects, within `limit`.
    pub async fn open(&self, unit: u8, limit: Duration) -> Result<Context, RequestError> {
        let slave = Slave(unit);
        match self {
            Endpoint::Tcp(address) => {
                let stream = connect(address, limit).await?;
                Ok(tokio_modbus::client::tcp::attach_slave(stream, slave))
            }
            Endpoint::RtuOverTcp(address) => {
                let stream = connect(address, limit).await?;
                Ok(tokio_modbus::client::rtu::attach_slave(stream, slave))
            }
            Endpoint::Serial(port, s) => {
                use tokio_serial::SerialPort as _;
                let parity = match s.parity {
                    Parity::None => tokio_serial::Parity::None,
                    Parity::Even => tokio_serial::Parity::Even,
                    Parity::Odd => tokio_serial::Parity::Odd,
                };
                let data_bits = match s.data_bits {
                    7 => tokio_serial::DataBits::Seven,
                    _ => tokio_serial::DataBits::Eight,
                };
                let stop_bits = match s.stop_bits {
                    2 => tokio_serial::StopBits::Two,
                    _ => tokio_serial::StopBits::One,
                };
                let builder = tokio_serial::new(port, s.baud)
                    .parity(parity)
                    .data_bits(data_bits)
                    .stop_bits(stop_bits);
                let stream = tokio_serial::SerialStream::open(&builder)
                    .map_err(|e| RequestError::Communication(format!("open {port}: {e}")))?;
                // Whatever a unit sent before (a late answer) is not an
                // answer to the next request.
                let _ = stream.clear(tokio_serial::ClearBuffer::All);
                Ok(tokio_modbus::client::rtu::attach_slave(stream, slave))
            }
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "{a}"),
            Endpoint::RtuOverTcp(a) => write!(f, "{a} (RTU over TCP)"),
            Endpoint::Serial(p, s) => write!(f, "{p} ({s})"),
        }
    }
}

async fn connect(address: &str, limit: Duration) -> Result<TcpStream, RequestError> {
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
    Ok(stream)
}

/// One line and the requests waiting for it.
pub struct Bus {
    endpoint: Endpoint,
    gap: Duration,
    line: Mutex<Line>,
    /// The line was open at least once (a tag of a bus never reached is
    /// BadNoCommunication, of one lost BadCommunicationError).
    ever_open: AtomicBool,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bus({})", self.endpoint)
    }
}

struct Line {
    ctx: Option<Context>,
    /// When the line last fell silent (the end of the last frame).
    quiet_since: Instant,
}

/// The bus, held for one or more requests in a row.
pub struct Turn<'a> {
    bus: &'a Bus,
    line: MutexGuard<'a, Line>,
}

impl Bus {
    /// A closed bus to `endpoint`.
    pub fn new(endpoint: Endpoint) -> Bus {
        Bus {
            gap: endpoint.gap(),
            endpoint,
            line: Mutex::new(Line {
                ctx: None,
                quiet_since: Instant::now(),
            }),
            ever_open: AtomicBool::new(false),
        }
    }

    /// Where it goes.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// True once the line was open.
    pub fn ever_open(&self) -> bool {
        self.ever_open.load(Ordering::Relaxed)
    }

    /// Waits for the bus (first come, first served).
    pub async fn acquire(&self) -> Turn<'_> {
        Turn {
            bus: self,
            line: self.line.lock().await,
        }
    }
}

impl Turn<'_> {
    /// One request to `unit`, answered within `limit` (opening the line
    /// first if it is closed). A timeout or an I/O or framing error closes
    /// the line: the next request opens it again.
    pub async fn call(
        &mut self,
        unit: u8,
        request: Request<'_>,
        limit: Duration,
    ) -> Result<Result<Response, ExceptionCode>, RequestError> {
        if self.line.ctx.is_none() {
            let ctx = self.bus.endpoint.open(unit, limit).await?;
            self.bus.ever_open.store(true, Ordering::Relaxed);
            self.line.ctx = Some(ctx);
            tracing::info!(line = %self.bus.endpoint, "modbus line open");
        }
        sleep_until(self.line.quiet_since + self.bus.gap).await;
        let Some(ctx) = self.line.ctx.as_mut() else {
            return Err(RequestError::Communication("not connected".into()));
        };
        ctx.set_slave(Slave(unit));
        let answer = timeout(limit, ctx.call(request)).await;
        self.line.quiet_since = Instant::now();
        match answer {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(e)) => {
                self.line.ctx = None;
                Err(RequestError::Communication(e.to_string()))
            }
            Err(_) => {
                self.line.ctx = None;
                Err(RequestError::Timeout(limit))
            }
        }
    }
}

/// Gives every `[[modbus]]` entry its bus: one per Modbus TCP entry, one
/// per serial port or RTU address shared by all the entries naming it.
/// Each entry also learns how long the others may hold the bus ahead of
/// one of its writes.
pub fn attach(configs: &[ModbusConfig]) -> Vec<ModbusConfig> {
    let mut shared: BTreeMap<String, (Arc<Bus>, Duration)> = BTreeMap::new();
    for c in configs {
        if let Some(endpoint) = Endpoint::of(c).filter(Endpoint::is_shared) {
            let turn = c.timeout + endpoint.gap();
            shared
                .entry(endpoint.bus_key().to_string())
                .or_insert_with(|| (Arc::new(Bus::new(endpoint)), Duration::ZERO))
                .1 += turn;
        }
    }
    configs
        .iter()
        .map(|c| {
            let mut c = c.clone();
            if let Some(endpoint) = Endpoint::of(&c) {
                match shared
                    .get(endpoint.bus_key())
                    .filter(|_| endpoint.is_shared())
                {
                    Some((bus, all)) => {
                        c.bus = Some(bus.clone());
                        c.bus_wait = all.saturating_sub(c.timeout + endpoint.gap());
                    }
                    None => c.bus = Some(Arc::new(Bus::new(endpoint))),
                }
            }
            c
        })
        .collect()
}

/// Entries sharing a port must agree on its settings; a port and an
/// address are one kind of line each (an RTU address is not also a Modbus
/// TCP one).
pub fn check_shared(configs: &[ModbusConfig], p: &mut Problems) {
    let mut first: BTreeMap<String, (usize, Endpoint)> = BTreeMap::new();
    for (i, c) in configs.iter().enumerate() {
        let Some(endpoint) = Endpoint::of(c) else {
            continue;
        };
        let key = endpoint.bus_key().to_string();
        let Some((j, seen)) = first.get(&key) else {
            first.insert(key, (i, endpoint));
            continue;
        };
        match (seen, &endpoint) {
            (Endpoint::Serial(_, a), Endpoint::Serial(_, b)) if a != b => p.push(
                format!("modbus[{i}].serial"),
                format!(
                    "{key:?} is set to {b} here and {a} in modbus[{j}]: entries sharing a port must agree"
                ),
            ),
            (Endpoint::Tcp(_), Endpoint::RtuOverTcp(_)) | (Endpoint::RtuOverTcp(_), Endpoint::Tcp(_)) => {
                p.push(
                    format!("modbus[{i}].framing"),
                    format!("{key:?} is given framing {:?} in modbus[{j}]: one address speaks one framing", framing_of(seen)),
                )
            }
            _ => {}
        }
    }
}

fn framing_of(e: &Endpoint) -> &'static str {
    match e {
        Endpoint::RtuOverTcp(_) => "rtu",
        _ => "tcp",
    }
}
