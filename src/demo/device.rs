//! A simulated Modbus TCP device: a real tokio-modbus server over an
//! in-memory register bank. Tests use it as the device under test (with
//! fault injection: stop, stall, exceptions); the demo plant runs two.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio_modbus::prelude::{ExceptionCode, Request, Response};
use tokio_modbus::server::Service;
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};
use tokio_util::sync::CancellationToken;

use crate::source::modbus::Table;

/// The four Modbus tables of a device.
#[derive(Debug)]
pub struct Registers {
    /// Holding registers.
    pub holding: Vec<u16>,
    /// Input registers.
    pub input: Vec<u16>,
    /// Coils.
    pub coils: Vec<bool>,
    /// Discrete inputs.
    pub discrete: Vec<bool>,
    /// Injected faults: reads overlapping these answer the exception.
    pub exceptions: Vec<(Table, Range<u16>, ExceptionCode)>,
    /// When set, requests are never answered (a hung device).
    pub stalled: bool,
    /// Each request is carried out and answered this long after it
    /// arrived (a slow device).
    pub delay: Duration,
    /// When set, every write request is logged here as it arrives (tests
    /// check when a write reached the device).
    pub write_log: Option<Vec<WriteSeen>>,
    /// Requests answered (data or exception).
    pub answered: u64,
    /// A faulty device: register reads answer this many words more than
    /// asked.
    pub extra_words: u16,
}

/// A write request as the device received it.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteSeen {
    /// When it arrived.
    pub at: std::time::Instant,
    /// First register or coil.
    pub address: u16,
    /// The words written (a coil as 0 / 1).
    pub words: Vec<u16>,
}

pub(crate) fn write_seen(req: &Request<'_>) -> Option<WriteSeen> {
    let (address, words) = match req {
        Request::WriteSingleRegister(a, v) => (*a, vec![*v]),
        Request::WriteMultipleRegisters(a, w) => (*a, w.to_vec()),
        Request::WriteSingleCoil(a, v) => (*a, vec![u16::from(*v)]),
        _ => return None,
    };
    Some(WriteSeen {
        at: std::time::Instant::now(),
        address,
        words,
    })
}

impl Default for Registers {
    fn default() -> Self {
        Registers {
            holding: vec![0; 65_536],
            input: vec![0; 65_536],
            coils: vec![false; 65_536],
            discrete: vec![false; 65_536],
            exceptions: Vec::new(),
            stalled: false,
            delay: Duration::ZERO,
            write_log: None,
            answered: 0,
            extra_words: 0,
        }
    }
}

/// A device's registers, shared with the task that moves them.
pub type Bank = Arc<Mutex<Registers>>;

#[derive(Clone)]
struct DeviceService {
    bank: Bank,
}

/// Locks a bank (a poisoned lock still holds valid registers).
pub fn lock(bank: &Bank) -> MutexGuard<'_, Registers> {
    bank.lock().unwrap_or_else(|e| e.into_inner())
}

impl Service for DeviceService {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Result<Response, ExceptionCode>> + Send>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let bank = self.bank.clone();
        Box::pin(async move {
            let delay = {
                let mut r = lock(&bank);
                if let (Some(log), Some(seen)) = (r.write_log.as_mut(), write_seen(&req)) {
                    log.push(seen);
                }
                if r.stalled { None } else { Some(r.delay) }
            };
            match delay {
                None => std::future::pending::<()>().await,
                Some(d) if !d.is_zero() => tokio::time::sleep(d).await,
                Some(_) => {}
            }
            answer(&mut lock(&bank), req)
        })
    }
}

fn span(start: u16, count: u16) -> Result<Range<usize>, ExceptionCode> {
    let end = usize::from(start) + usize::from(count);
    if count == 0 || end > 65_536 {
        return Err(ExceptionCode::IllegalDataAddress);
    }
    Ok(usize::from(start)..end)
}

fn check_faults(r: &Registers, table: Table, start: u16, count: u16) -> Result<(), ExceptionCode> {
    let end = u32::from(start) + u32::from(count);
    for (t, range, code) in &r.exceptions {
        if *t == table && u32::from(range.start) < end && u32::from(range.end) > u32::from(start) {
            return Err(*code);
        }
    }
    Ok(())
}

pub(crate) fn answer(r: &mut Registers, req: Request<'static>) -> Result<Response, ExceptionCode> {
    r.answered += 1;
    Ok(match req {
        Request::ReadHoldingRegisters(a, n) => {
            check_faults(r, Table::Holding, a, n)?;
            let mut words = r.holding[span(a, n)?].to_vec();
            words.resize(words.len() + usize::from(r.extra_words), 0);
            Response::ReadHoldingRegisters(words)
        }
        Request::ReadInputRegisters(a, n) => {
            check_faults(r, Table::Input, a, n)?;
            Response::ReadInputRegisters(r.input[span(a, n)?].to_vec())
        }
        Request::ReadCoils(a, n) => {
            check_faults(r, Table::Coil, a, n)?;
            Response::ReadCoils(r.coils[span(a, n)?].to_vec())
        }
        Request::ReadDiscreteInputs(a, n) => {
            check_faults(r, Table::Discrete, a, n)?;
            Response::ReadDiscreteInputs(r.discrete[span(a, n)?].to_vec())
        }
        Request::WriteSingleRegister(a, v) => {
            check_faults(r, Table::Holding, a, 1)?;
            r.holding[usize::from(a)] = v;
            Response::WriteSingleRegister(a, v)
        }
        Request::WriteMultipleRegisters(a, words) => {
            check_faults(r, Table::Holding, a, words.len() as u16)?;
            let range = span(a, words.len() as u16)?;
            r.holding[range].copy_from_slice(&words);
            Response::WriteMultipleRegisters(a, words.len() as u16)
        }
        Request::WriteSingleCoil(a, v) => {
            check_faults(r, Table::Coil, a, 1)?;
            r.coils[usize::from(a)] = v;
            Response::WriteSingleCoil(a, v)
        }
        _ => return Err(ExceptionCode::IllegalFunction),
    })
}

/// A running simulated device on loopback.
pub struct ModbusDevice {
    addr: SocketAddr,
    bank: Bank,
    stop: Option<CancellationToken>,
}

impl ModbusDevice {
    /// Starts a device on `addr` (`127.0.0.1:0` picks a free port).
    pub async fn start(addr: SocketAddr) -> io::Result<Self> {
        let mut device = ModbusDevice {
            addr,
            bank: Arc::new(Mutex::new(Registers::default())),
            stop: None,
        };
        device.listen().await?;
        Ok(device)
    }

    async fn listen(&mut self) -> io::Result<()> {
        let socket = if self.addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(self.addr)?;
        let listener: TcpListener = socket.listen(64)?;
        self.addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let service = DeviceService {
            bank: self.bank.clone(),
        };
        let abort = stop.clone().cancelled_owned();
        tokio::spawn(async move {
            let new_service = move |_| Ok(Some(service.clone()));
            let on_connected = move |stream: tokio::net::TcpStream, addr| {
                let new_service = new_service.clone();
                async move {
                    let _ = stream.set_nodelay(true);
                    accept_tcp_connection(stream, addr, new_service)
                }
            };
            let result = Server::new(listener)
                .serve_until(&on_connected, |_| {}, abort)
                .await;
            if let Err(e) = result {
                tracing::warn!(error = %e, "simulated device stopped");
            }
        });
        self.stop = Some(stop);
        Ok(())
    }

    /// Where the device listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The register bank, to set or read values.
    pub fn registers(&self) -> MutexGuard<'_, Registers> {
        lock(&self.bank)
    }

    /// The bank itself, for a task that moves the signals.
    pub fn bank(&self) -> Bank {
        self.bank.clone()
    }

    /// Stops listening and drops every connection (a device powered off).
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.cancel();
        }
    }

    /// Listens again on the same port (the device is back).
    pub async fn restart(&mut self) -> io::Result<()> {
        self.stop();
        self.listen().await
    }
}

impl Drop for ModbusDevice {
    fn drop(&mut self) {
        self.stop();
    }
}
