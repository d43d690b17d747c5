//! `tagstream probe`: reads a register range from a Modbus device (TCP, RTU
//! over TCP, or RTU on a serial port) once
//! and shows, for each offset, every type and byte order the registers
//! could mean, through the same codec the poller uses. Setting up a new
//! device's tags is mostly guessing word order (229.01 read as `CDAB`
//! shows up as 2.4e-41): this puts every guess side by side.

use std::fmt::Write as _;
use std::time::Duration;

use tokio_modbus::{Request, Response};

use super::bus::{Bus, Endpoint};
use super::codec::decode_registers;
use super::config::{ModbusTagConfig, Table};

/// What to read.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The device's line.
    pub endpoint: Endpoint,
    /// Unit id.
    pub unit: u8,
    /// Register table.
    pub table: Table,
    /// First register (0-based).
    pub register: u16,
    /// Registers (or bits) to read, 1..=125.
    pub count: u16,
    /// Connect and request timeout.
    pub timeout: Duration,
}

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// Connecting, reading or a Modbus exception.
    #[error("{0}")]
    Device(String),
}

/// Every (type, byte order) a register sequence can be read as.
const SHAPES: &[(&str, &[&str])] = &[
    ("u16", &["AB", "BA"]),
    ("i16", &["AB", "BA"]),
    ("u32", &["ABCD", "CDAB", "BADC", "DCBA"]),
    ("i32", &["ABCD", "CDAB", "BADC", "DCBA"]),
    ("f32", &["ABCD", "CDAB", "BADC", "DCBA"]),
    ("u64", &["ABCDEFGH", "GHEFCDAB", "BADCFEHG", "HGFEDCBA"]),
    ("i64", &["ABCDEFGH", "GHEFCDAB", "BADCFEHG", "HGFEDCBA"]),
    ("f64", &["ABCDEFGH", "GHEFCDAB", "BADCFEHG", "HGFEDCBA"]),
];

/// The tag configurations of every shape, read from the TOML a
/// `[[modbus.tags]]` entry would hold, so they are exactly what one gives.
fn shapes() -> Result<Vec<(String, ModbusTagConfig)>, ProbeError> {
    let mut shapes = Vec::new();
    for (kind, orders) in SHAPES {
        for order in *orders {
            let entry = format!(
                "name = \"p/{kind}/{order}\"\naddress = 0\ntype = \"{kind}\"\nbyte_order = \"{order}\"\n"
            );
            let tag: ModbusTagConfig =
                toml::from_str(&entry).map_err(|e| ProbeError::Usage(e.to_string()))?;
            shapes.push((format!("{kind} {order}"), tag));
        }
    }
    Ok(shapes)
}

/// Reads the range once.
pub async fn read(p: &Probe) -> Result<Vec<u16>, ProbeError> {
    if !(1..=125).contains(&p.count) {
        return Err(ProbeError::Usage("--count must be 1..=125".into()));
    }
    let fail = |e: String| ProbeError::Device(format!("{}: {e}", p.endpoint));
    let (start, count) = (p.register, p.count);
    let request = match p.table {
        Table::Holding => Request::ReadHoldingRegisters(start, count),
        Table::Input => Request::ReadInputRegisters(start, count),
        Table::Coil => Request::ReadCoils(start, count),
        Table::Discrete => Request::ReadDiscreteInputs(start, count),
    };
    let bus = Bus::new(p.endpoint.clone());
    let reply = bus
        .acquire()
        .await
        .call(p.unit, request, p.timeout)
        .await
        .map_err(|e| fail(e.to_string()))?
        .map_err(|e| fail(format!("Modbus exception {e:?}")))?;
    let bits = |r: Vec<bool>| {
        r.into_iter()
            .take(usize::from(count))
            .map(u16::from)
            .collect()
    };
    match reply {
        Response::ReadHoldingRegisters(words) | Response::ReadInputRegisters(words) => Ok(words),
        Response::ReadCoils(b) | Response::ReadDiscreteInputs(b) => Ok(bits(b)),
        other => Err(fail(format!("unexpected answer {other:?}"))),
    }
}

/// A float as people compare it: an f32 at f32's shortest form (229.01,
/// not 229.00999450683594), and far from 1 in exponent form (2.1e-37, not
/// 37 zeros), so a wrong byte order stands out.
fn readable(value: &crate::sample::Value, is_f32: bool) -> String {
    let crate::sample::Value::F64(v) = *value else {
        return value.to_string();
    };
    let plain = v == 0.0 || !v.is_finite() || (1e-4..1e15).contains(&v.abs());
    match (is_f32, plain) {
        (true, true) => format!("{}", v as f32),
        (true, false) => format!("{:e}", v as f32),
        (false, true) => format!("{v}"),
        (false, false) => format!("{v:e}"),
    }
}

/// The report: the raw registers, then per offset every reading that fits
/// in the range, then the range as a string (both byte orders).
pub fn report(p: &Probe, regs: &[u16]) -> Result<String, ProbeError> {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} unit {} {:?} {}..{}",
        p.endpoint,
        p.unit,
        p.table,
        p.register,
        u32::from(p.register) + regs.len() as u32
    );
    if matches!(p.table, Table::Coil | Table::Discrete) {
        for (i, bit) in regs.iter().enumerate() {
            let _ = writeln!(
                out,
                "{:>6}  {}",
                u32::from(p.register) + i as u32,
                *bit != 0
            );
        }
        return Ok(out);
    }
    for (i, r) in regs.iter().enumerate() {
        let _ = writeln!(
            out,
            "{:>6}  0x{r:04x}  {r:>5}",
            u32::from(p.register) + i as u32
        );
    }
    let shapes = shapes()?;
    for offset in 0..regs.len() {
        let _ = writeln!(out, "at {}:", u32::from(p.register) + offset as u32);
        for (label, tag) in &shapes {
            let width = usize::from(tag.width());
            if let Some(window) = regs.get(offset..offset + width) {
                let value = decode_registers(tag, window);
                let _ = writeln!(
                    out,
                    "  {label:<13} {}",
                    readable(&value, label.starts_with("f32"))
                );
            }
        }
    }
    for (order, swap) in [("AB", false), ("BA", true)] {
        let text: String = regs
            .iter()
            .flat_map(|r| {
                let [hi, lo] = r.to_be_bytes();
                if swap { [lo, hi] } else { [hi, lo] }
            })
            .map(|b| {
                if b.is_ascii_graphic() || b == b' ' {
                    b as char
                } else {
                    '.'
                }
            })
            .collect();
        let _ = writeln!(out, "string {order}: {text:?}");
    }
    Ok(out)
}
