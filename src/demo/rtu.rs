//! Simulated units behind one Modbus RTU line: each unit id has its own
//! register bank, served over a serial port (one end of a pty pair in the
//! tests) or as RTU frames over TCP (a serial gateway). A pty has no line
//! speed, so each answer waits the time its request and its answer would
//! take on the wire at the emulated baud rate. A unit that is absent or
//! `stalled` never answers, as a dead slave on a real bus: the line stays
//! free for the others.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_modbus::prelude::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_modbus::server::Service;
use tokio_util::sync::CancellationToken;

use super::device::{Bank, Registers, answer, lock, write_seen};

/// The units on one line and the emulated character time.
#[derive(Clone)]
struct LineService {
    units: Arc<BTreeMap<u8, Bank>>,
    char_time: Duration,
}

/// Bytes of an RTU request and of its answer (unit id, PDU, CRC).
fn frame_bytes(req: &Request<'_>) -> (u32, u32) {
    let bits = |n: u16| 5 + u32::from(n).div_ceil(8);
    match req {
        Request::ReadHoldingRegisters(_, n) | Request::ReadInputRegisters(_, n) => {
            (8, 5 + 2 * u32::from(*n))
        }
        Request::ReadCoils(_, n) | Request::ReadDiscreteInputs(_, n) => (8, bits(*n)),
        Request::WriteMultipleRegisters(_, w) => (9 + 2 * w.len() as u32, 8),
        _ => (8, 8),
    }
}

impl Service for LineService {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Result<Option<Response>, ExceptionCode>> + Send>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let bank = self.units.get(&req.slave).cloned();
        let char_time = self.char_time;
        Box::pin(async move {
            let Some(bank) = bank else {
                return Ok(None);
            };
            let (sent, answered) = frame_bytes(&req.request);
            let delay = {
                let mut r = lock(&bank);
                if r.stalled {
                    return Ok(None);
                }
                if let (Some(log), Some(seen)) = (r.write_log.as_mut(), write_seen(&req.request)) {
                    log.push(seen);
                }
                r.delay + char_time * (sent + answered)
            };
            tokio::time::sleep(delay).await;
            answer(&mut lock(&bank), req.request).map(Some)
        })
    }
}

/// A running line of simulated units.
pub struct RtuLine {
    units: Arc<BTreeMap<u8, Bank>>,
    stop: CancellationToken,
    addr: Option<SocketAddr>,
    connections: Arc<AtomicU32>,
}

impl RtuLine {
    fn new(units: &[u8], char_time: Duration) -> (RtuLine, LineService) {
        let units: BTreeMap<u8, Bank> = units
            .iter()
            .map(|&u| (u, Arc::new(Mutex::new(Registers::default()))))
            .collect();
        let units = Arc::new(units);
        let service = LineService {
            units: units.clone(),
            char_time,
        };
        let line = RtuLine {
            units,
            stop: CancellationToken::new(),
            addr: None,
            connections: Arc::new(AtomicU32::new(0)),
        };
        (line, service)
    }

    /// Serves `units` on the serial port at `path` (the device end of a
    /// pty pair), answering as fast as a line with `char_time` allows.
    pub fn serial(path: &str, units: &[u8], char_time: Duration) -> io::Result<RtuLine> {
        let port = tokio_serial::SerialStream::open(&tokio_serial::new(path, 19_200))
            .map_err(io::Error::other)?;
        let (line, service) = RtuLine::new(units, char_time);
        let abort = line.stop.clone().cancelled_owned();
        tokio::spawn(async move {
            let server = tokio_modbus::server::rtu::Server::new(port);
            if let Err(e) = server.serve_until(service, abort).await {
                tracing::warn!(error = %e, "simulated RTU line stopped");
            }
        });
        Ok(line)
    }

    /// Serves `units` as RTU frames over TCP on `addr` (`127.0.0.1:0`
    /// picks a port): a serial gateway with its line behind it.
    pub async fn tcp(addr: SocketAddr, units: &[u8], char_time: Duration) -> io::Result<RtuLine> {
        let listener = TcpListener::bind(addr).await?;
        let (mut line, service) = RtuLine::new(units, char_time);
        line.addr = Some(listener.local_addr()?);
        let abort = line.stop.clone().cancelled_owned();
        let connections = line.connections.clone();
        tokio::spawn(async move {
            let on_connected = move |stream: tokio::net::TcpStream, _addr| {
                let service = service.clone();
                connections.fetch_add(1, Ordering::Relaxed);
                async move {
                    let _ = stream.set_nodelay(true);
                    Ok(Some((service, stream)))
                }
            };
            let server = tokio_modbus::server::rtu_over_tcp::Server::new(listener);
            if let Err(e) = server.serve_until(&on_connected, |_| {}, abort).await {
                tracing::warn!(error = %e, "simulated RTU gateway stopped");
            }
        });
        Ok(line)
    }

    /// The gateway's address (RTU over TCP only).
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// TCP connections the gateway accepted.
    pub fn connections(&self) -> u32 {
        self.connections.load(Ordering::Relaxed)
    }

    /// The registers of `unit`.
    ///
    /// # Panics
    /// If the line has no such unit (a test's mistake).
    pub fn unit(&self, unit: u8) -> MutexGuard<'_, Registers> {
        match self.units.get(&unit) {
            Some(bank) => lock(bank),
            None => panic!("no unit {unit} on this line"),
        }
    }
}

impl Drop for RtuLine {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
