//! `[[modbus]]` and `[[modbus.tags]]` (config.md), with their validation.

use std::time::Duration;

use std::sync::Arc;

use serde::Deserialize;

use super::bus::{Bus, Framing, LineSettings, Parity};

use crate::validate::{DAY, HOUR, MIN_TIMER, Problems, check_tag_name};

/// One Modbus device (`[[modbus]]`).
#[derive(Debug, Clone, Deserialize)]
pub struct ModbusConfig {
    /// Source name, used in logs, metrics and `TagInfo.source`.
    pub name: String,
    /// `host:port` for Modbus TCP.
    #[serde(default)]
    pub address: Option<String>,
    /// Serial port for Modbus RTU; entries naming one port share its bus.
    #[serde(default)]
    pub serial: Option<String>,
    /// With `address`: `rtu` for RTU frames over TCP (a serial gateway);
    /// entries with one RTU address share its connection.
    #[serde(default)]
    pub framing: Option<Framing>,
    /// Serial baud rate (19200).
    #[serde(default)]
    pub baud: Option<u32>,
    /// Serial parity (`even`).
    #[serde(default)]
    pub parity: Option<Parity>,
    /// Serial data bits, 7 or 8 (8).
    #[serde(default)]
    pub data_bits: Option<u8>,
    /// Serial stop bits, 1 or 2 (1).
    #[serde(default)]
    pub stop_bits: Option<u8>,
    /// Modbus unit (slave) id.
    #[serde(default = "default_unit_id")]
    pub unit_id: u8,
    /// Default poll period of the device's tags.
    #[serde(default = "default_second", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Every request must answer within this, or the connection is rebuilt.
    #[serde(default = "default_second", with = "humantime_serde")]
    pub timeout: Duration,
    /// Largest read; adjacent tags are merged up to this many registers.
    #[serde(default = "default_max_registers")]
    pub max_registers_per_read: u16,
    /// Extension: unused registers a merged read may span. 0 by default,
    /// because many devices answer IllegalDataAddress for a read that
    /// crosses an unmapped register, and that would fail every tag of it.
    #[serde(default)]
    pub max_gap_registers: u16,
    /// The device's tags.
    #[serde(default)]
    pub tags: Vec<ModbusTagConfig>,
    /// The line it is polled over (`bus::attach`; `None` before that).
    #[serde(skip)]
    pub bus: Option<Arc<Bus>>,
    /// How long the other entries on its bus may hold it ahead of one of
    /// its requests (each one request within its timeout).
    #[serde(skip)]
    pub bus_wait: Duration,
}

fn default_unit_id() -> u8 {
    1
}
fn default_second() -> Duration {
    Duration::from_secs(1)
}
fn default_max_registers() -> u16 {
    125
}
fn default_scale() -> f64 {
    1.0
}

/// Which Modbus data table a tag lives in.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[serde(rename_all = "lowercase")]
pub enum Table {
    /// Holding registers (read/write, FC 03/06/16).
    #[default]
    Holding,
    /// Input registers (read-only, FC 04).
    Input,
    /// Coils (read/write bits, FC 01/05).
    Coil,
    /// Discrete inputs (read-only bits, FC 02).
    Discrete,
}

impl Table {
    /// Coils and discrete inputs hold bits, not registers.
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::Discrete)
    }
}

/// The register type of a tag, as configured.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RegisterType {
    /// A bit (coil, discrete input, register bit, or register != 0).
    Bool,
    /// One register, unsigned.
    U16,
    /// One register, signed.
    I16,
    /// Two registers, unsigned.
    U32,
    /// Two registers, signed.
    I32,
    /// Four registers, unsigned.
    U64,
    /// Four registers, signed.
    I64,
    /// Two registers, IEEE 754.
    F32,
    /// Four registers, IEEE 754.
    F64,
    /// `length` registers, two characters each.
    String,
}

impl RegisterType {
    /// Registers one value occupies (strings: `length`).
    pub fn registers(self, length: u16) -> u16 {
        match self {
            RegisterType::Bool | RegisterType::U16 | RegisterType::I16 => 1,
            RegisterType::U32 | RegisterType::I32 | RegisterType::F32 => 2,
            RegisterType::U64 | RegisterType::I64 | RegisterType::F64 => 4,
            RegisterType::String => length,
        }
    }
}

/// One tag of a device (`[[modbus.tags]]`).
#[derive(Debug, Clone, Deserialize)]
pub struct ModbusTagConfig {
    /// `/`-separated tag name.
    pub name: String,
    /// Data table.
    #[serde(default)]
    pub table: Table,
    /// 0-based register or bit address.
    pub address: u16,
    /// Register type.
    #[serde(rename = "type")]
    pub kind: RegisterType,
    /// Wire byte order, letters in significance order (A most significant).
    #[serde(default)]
    pub byte_order: Option<String>,
    /// Registers, for strings.
    #[serde(default)]
    pub length: u16,
    /// A bool taken from one bit (0-15) of a register.
    #[serde(default)]
    pub bit: Option<u8>,
    /// Overrides the device's poll interval, for slow-moving tags.
    #[serde(default, with = "humantime_serde")]
    pub poll_interval: Option<Duration>,
    /// `value = raw * scale + offset`.
    #[serde(default = "default_scale")]
    pub scale: f64,
    /// `value = raw * scale + offset`.
    #[serde(default)]
    pub offset: f64,
    /// Engineering unit shown to clients.
    #[serde(default)]
    pub unit: String,
    /// Extension: human description in `TagInfo`.
    #[serde(default)]
    pub description: String,
    /// Absolute, in scaled units; a status change always passes.
    #[serde(default)]
    pub deadband: f64,
    /// Clients may write it.
    #[serde(default)]
    pub writable: bool,
    /// Lower write limit.
    #[serde(default)]
    pub min: Option<f64>,
    /// Upper write limit.
    #[serde(default)]
    pub max: Option<f64>,
    /// Never conflate this tag.
    #[serde(default)]
    pub keep_samples: bool,
    /// Keep recent values (protocol.md History; `[history]` on).
    #[serde(default = "crate::sample::yes")]
    pub history: bool,
    /// Digits after the decimal point a person reads (0 to 12).
    #[serde(default)]
    pub decimals: Option<u8>,
}

impl ModbusTagConfig {
    /// Registers (or bits) this tag reads.
    pub fn width(&self) -> u16 {
        if self.table.is_bits() {
            1
        } else {
            self.kind.registers(self.length)
        }
    }

    /// Scale or offset turn the value into an F64.
    pub fn is_scaled(&self) -> bool {
        self.scale != 1.0 || self.offset != 0.0
    }

    /// The byte order with the spec's defaults filled in.
    pub fn byte_order(&self) -> &str {
        match (&self.byte_order, self.kind.registers(self.length)) {
            (Some(order), _) => order,
            (None, 1) => "AB",
            (None, 2) => "ABCD",
            (None, 4) => "ABCDEFGH",
            // Strings: `AB` (high byte first) per register.
            (None, _) => "AB",
        }
    }
}

impl ModbusConfig {
    /// The serial settings with config.md's defaults (19200 8E1).
    pub fn line_settings(&self) -> LineSettings {
        LineSettings {
            baud: self.baud.unwrap_or(19_200),
            parity: self.parity.unwrap_or_default(),
            data_bits: self.data_bits.unwrap_or(8),
            stop_bits: self.stop_bits.unwrap_or(1),
        }
    }

    /// RTU (serial, or RTU frames over TCP): unit ids are bus addresses.
    pub fn is_rtu(&self) -> bool {
        self.serial.is_some() || self.framing == Some(Framing::Rtu)
    }

    pub(crate) fn check(&self, key: &str, p: &mut Problems) {
        if self.name.is_empty() {
            p.push(format!("{key}.name"), "must not be empty");
        }
        match (&self.address, &self.serial) {
            (Some(address), None) => {
                if address
                    .rsplit_once(':')
                    .and_then(|(_, port)| port.parse::<u16>().ok())
                    .is_none()
                {
                    p.push(
                        format!("{key}.address"),
                        format!("{address:?} is not host:port"),
                    );
                }
            }
            (None, Some(port)) => {
                if port.is_empty() {
                    p.push(format!("{key}.serial"), "must not be empty");
                }
                if self.framing == Some(Framing::Tcp) {
                    p.push(
                        format!("{key}.framing"),
                        "a serial port speaks RTU: `framing` applies to `address`",
                    );
                }
            }
            (Some(_), Some(_)) => p.push(
                format!("{key}.serial"),
                "give `address` or `serial`, not both",
            ),
            (None, None) => p.push(format!("{key}.address"), "required (host:port)"),
        }
        if self.serial.is_none() {
            for (field, given) in [
                ("baud", self.baud.is_some()),
                ("parity", self.parity.is_some()),
                ("data_bits", self.data_bits.is_some()),
                ("stop_bits", self.stop_bits.is_some()),
            ] {
                if given {
                    p.push(
                        format!("{key}.{field}"),
                        "applies to `serial` only (a gateway's serial side is set on the gateway)",
                    );
                }
            }
        }
        if matches!(self.baud, Some(b) if !(300..=1_000_000).contains(&b)) {
            p.push(format!("{key}.baud"), "must be 300..=1000000");
        }
        if matches!(self.data_bits, Some(b) if !(7..=8).contains(&b)) {
            p.push(format!("{key}.data_bits"), "must be 7 or 8");
        }
        if matches!(self.stop_bits, Some(b) if !(1..=2).contains(&b)) {
            p.push(format!("{key}.stop_bits"), "must be 1 or 2");
        }
        if self.is_rtu() && !(1..=247).contains(&self.unit_id) {
            p.push(
                format!("{key}.unit_id"),
                "an RTU unit id is 1..=247 (0 is broadcast: nothing answers it)",
            );
        }
        p.duration(
            format!("{key}.poll_interval"),
            self.poll_interval,
            MIN_TIMER,
            DAY,
        );
        p.duration(format!("{key}.timeout"), self.timeout, MIN_TIMER, HOUR);
        if !(1..=125).contains(&self.max_registers_per_read) {
            p.push(
                format!("{key}.max_registers_per_read"),
                "must be 1..=125 (the Modbus limit)",
            );
        }
        for (j, tag) in self.tags.iter().enumerate() {
            tag.validate(&format!("{key}.tags[{j}]"), p);
        }
    }
}

impl ModbusTagConfig {
    fn validate(&self, key: &str, p: &mut Problems) {
        if let Err(e) = check_tag_name(&self.name) {
            p.push(format!("{key}.name"), e);
        }
        let is_string = self.kind == RegisterType::String;
        if self.table.is_bits() && self.kind != RegisterType::Bool {
            p.push(
                format!("{key}.type"),
                "coil and discrete tags must be `bool`",
            );
        }
        if is_string && self.length == 0 {
            p.push(
                format!("{key}.length"),
                "a string needs `length` (registers) above zero",
            );
        }
        if !is_string && self.length != 0 {
            p.push(format!("{key}.length"), "only string tags take `length`");
        }
        if let Some(bit) = self.bit {
            if bit > 15 {
                p.push(format!("{key}.bit"), "must be 0..=15");
            }
            if self.table.is_bits() || self.kind != RegisterType::Bool {
                p.push(
                    format!("{key}.bit"),
                    "`bit` needs a `bool` tag in a register table",
                );
            }
        }
        if u32::from(self.address) + u32::from(self.width()) > 65_536 {
            p.push(format!("{key}.address"), "tag runs past address 65535");
        }
        if self.width() > 125 {
            p.push(
                format!("{key}.length"),
                "a tag may span at most 125 registers",
            );
        }
        if let Some(order) = &self.byte_order {
            let words = if is_string { 1 } else { self.kind.registers(0) };
            if self.table.is_bits() || self.kind == RegisterType::Bool {
                p.push(format!("{key}.byte_order"), "bool tags have no byte order");
            } else if !is_permutation(order, usize::from(words) * 2) {
                p.push(
                    format!("{key}.byte_order"),
                    format!(
                        "{order:?} is not a byte order for {} bytes (e.g. {})",
                        words * 2,
                        ["AB", "ABCD", "", "ABCDEFGH"][usize::from(words.clamp(1, 4)) - 1]
                    ),
                );
            }
        }
        if !self.scale.is_finite() || self.scale == 0.0 {
            p.push(format!("{key}.scale"), "must be finite and non-zero");
        }
        if !self.offset.is_finite() {
            p.push(format!("{key}.offset"), "must be finite");
        }
        if (is_string || self.kind == RegisterType::Bool) && self.is_scaled() {
            p.push(format!("{key}.scale"), "scale/offset apply to numbers only");
        }
        if !(self.deadband >= 0.0 && self.deadband.is_finite()) {
            p.push(format!("{key}.deadband"), "must be a finite number >= 0");
        }
        p.decimals(format!("{key}.decimals"), self.decimals);
        if let (Some(min), Some(max)) = (self.min, self.max)
            && min > max
        {
            p.push(format!("{key}.min"), "min is above max");
        }
        if self.writable && matches!(self.table, Table::Input | Table::Discrete) {
            p.push(
                format!("{key}.writable"),
                "input registers and discrete inputs are read-only",
            );
        }
        if let Some(d) = self.poll_interval {
            p.duration(format!("{key}.poll_interval"), d, MIN_TIMER, DAY);
        }
    }
}

/// True if `order` is `len` distinct letters from `A`.
fn is_permutation(order: &str, len: usize) -> bool {
    let mut seen = [false; 8];
    order.len() == len
        && order.bytes().all(|b| {
            let i = usize::from(b.wrapping_sub(b'A'));
            i < len && !std::mem::replace(&mut seen[i], true)
        })
}
