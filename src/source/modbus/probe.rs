//! `tagstream probe`: reads a register range from a Modbus TCP device once
//! and shows, for each offset, every type and byte order the registers
//! could mean, through the same codec the poller uses. Setting up a new
//! device's tags is mostly guessing word order (229.01 read as `CDAB`
//! shows up as 2.4e-41): this puts every guess side by side.

use std::fmt::Write as _;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_modbus::Slave;
use tokio_modbus::client::Reader;

use super::codec::decode_registers;
use super::config::{ModbusTagConfig, Table};
use crate::config::Config;

/// What to read.
#[derive(Debug, Clone)]
pub struct Probe {
    /// `host:port`.
    pub address: String,
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

/// The tag configurations of every shape, built through the config
/// loader so they are exactly what a `[[modbus.tags]]` entry would give.
fn shapes() -> Result<Vec<(String, ModbusTagConfig)>, ProbeError> {
    let mut toml = String::from("[[modbus]]\nname = \"probe\"\naddress = \"127.0.0.1:1\"\n");
    let mut labels = Vec::new();
    for (kind, orders) in SHAPES {
        for order in *orders {
            let _ = write!(
                toml,
                "[[modbus.tags]]\nname = \"p/{kind}/{order}\"\naddress = 0\ntype = \"{kind}\"\nbyte_order = \"{order}\"\n"
            );
            labels.push(format!("{kind} {order}"));
        }
    }
    let config = Config::parse(&toml).map_err(|e| ProbeError::Usage(e.to_string()))?;
    let tags = config
        .modbus
        .into_iter()
        .next()
        .map(|m| m.tags)
        .unwrap_or_default();
    Ok(labels.into_iter().zip(tags).collect())
}

/// Reads the range once.
pub async fn read(p: &Probe) -> Result<Vec<u16>, ProbeError> {
    if !(1..=125).contains(&p.count) {
        return Err(ProbeError::Usage("--count must be 1..=125".into()));
    }
    let fail = |e: String| ProbeError::Device(format!("{}: {e}", p.address));
    let stream = tokio::time::timeout(p.timeout, TcpStream::connect(&p.address))
        .await
        .map_err(|_| fail(format!("no connection within {:?}", p.timeout)))?
        .map_err(|e| fail(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    let mut ctx = tokio_modbus::client::tcp::attach_slave(stream, Slave(p.unit));
    let (start, count) = (p.register, p.count);
    let reply = tokio::time::timeout(p.timeout, async {
        let bits = |r: Vec<bool>| r.into_iter().map(u16::from).collect::<Vec<u16>>();
        match p.table {
            Table::Holding => ctx.read_holding_registers(start, count).await,
            Table::Input => ctx.read_input_registers(start, count).await,
            Table::Coil => ctx.read_coils(start, count).await.map(|r| r.map(bits)),
            Table::Discrete => ctx
                .read_discrete_inputs(start, count)
                .await
                .map(|r| r.map(bits)),
        }
    })
    .await
    .map_err(|_| fail(format!("no answer within {:?}", p.timeout)))?
    .map_err(|e| fail(e.to_string()))?;
    reply.map_err(|e| fail(format!("Modbus exception {e:?}")))
}

/// The report: the raw registers, then per offset every reading that fits
/// in the range, then the range as a string (both byte orders).
pub fn report(p: &Probe, regs: &[u16]) -> Result<String, ProbeError> {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} unit {} {:?} {}..{}",
        p.address,
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
                let _ = writeln!(out, "  {label:<13} {}", decode_registers(tag, window));
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
