//! Registers <-> values: every type of config.md in every byte order, scale
//! and offset. Pure functions, so each case is unit-tested without a device.

use std::sync::Arc;

use super::config::{ModbusTagConfig, RegisterType};
use crate::sample::Value;

/// Why a value cannot be encoded for a write.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EncodeError {
    /// The value's kind does not convert to the tag's type.
    #[error("{0}")]
    TypeMismatch(String),
    /// The value does not fit the register type.
    #[error("{0}")]
    OutOfRange(String),
}

/// Orders wire bytes by significance: `order[i]` names wire byte `i`. A
/// byte the wire lacks reads as 0: the poller only passes a tag's full
/// width, but a short slice must not panic (found by fuzzing).
fn to_big_endian(wire: &[u8], order: &[u8]) -> [u8; 8] {
    let mut be = [0u8; 8];
    for (i, letter) in order.iter().enumerate() {
        if let Some(slot) = be.get_mut(usize::from(letter.wrapping_sub(b'A'))) {
            *slot = wire.get(i).copied().unwrap_or(0);
        }
    }
    be
}

fn to_wire(be: &[u8], order: &[u8]) -> Vec<u8> {
    order
        .iter()
        .map(|letter| be[usize::from(letter - b'A')])
        .collect()
}

fn registers_to_bytes(regs: &[u16]) -> Vec<u8> {
    regs.iter().flat_map(|r| r.to_be_bytes()).collect()
}

fn bytes_to_registers(bytes: &[u8]) -> Vec<u16> {
    bytes
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]))
        .collect()
}

/// Decodes a tag from its registers (exactly `tag.width()` of them).
pub fn decode_registers(tag: &ModbusTagConfig, regs: &[u16]) -> Value {
    let order = tag.byte_order().as_bytes();
    let wire = registers_to_bytes(regs);
    let raw = match tag.kind {
        RegisterType::Bool => {
            let reg = regs.first().copied().unwrap_or(0);
            return Value::Bool(match tag.bit {
                Some(bit) => reg >> bit & 1 == 1,
                None => reg != 0,
            });
        }
        RegisterType::String => {
            let swap = order == b"BA";
            let mut bytes = wire;
            if swap {
                bytes.chunks_mut(2).for_each(|c| c.swap(0, 1));
            }
            let text = String::from_utf8_lossy(&bytes);
            return Value::Text(Arc::from(text.trim_end_matches(['\0', ' '])));
        }
        kind => {
            let be = to_big_endian(&wire, order);
            let n = wire.len();
            match kind {
                RegisterType::U16 => Raw::U(u64::from(u16::from_be_bytes([be[0], be[1]]))),
                RegisterType::I16 => Raw::I(i64::from(i16::from_be_bytes([be[0], be[1]]))),
                RegisterType::U32 => {
                    Raw::U(u64::from(u32::from_be_bytes([be[0], be[1], be[2], be[3]])))
                }
                RegisterType::I32 => {
                    Raw::I(i64::from(i32::from_be_bytes([be[0], be[1], be[2], be[3]])))
                }
                RegisterType::F32 => {
                    Raw::F(f64::from(f32::from_be_bytes([be[0], be[1], be[2], be[3]])))
                }
                RegisterType::U64 => Raw::U(u64::from_be_bytes(be)),
                RegisterType::I64 => Raw::I(i64::from_be_bytes(be)),
                RegisterType::F64 => Raw::F(f64::from_be_bytes(be)),
                RegisterType::Bool | RegisterType::String => unreachable!("handled above, n={n}"),
            }
        }
    };
    if tag.is_scaled() {
        let x = match raw {
            Raw::U(v) => v as f64,
            Raw::I(v) => v as f64,
            Raw::F(v) => v,
        };
        return Value::F64(x * tag.scale + tag.offset);
    }
    match raw {
        Raw::U(v) => Value::U64(v),
        Raw::I(v) => Value::I64(v),
        Raw::F(v) => Value::F64(v),
    }
}

enum Raw {
    U(u64),
    I(i64),
    F(f64),
}

/// Encodes a value for a register write: `raw = round((value - offset) /
/// scale)`. For `bit` tags the caller merges into the current register.
pub fn encode_registers(tag: &ModbusTagConfig, value: &Value) -> Result<Vec<u16>, EncodeError> {
    let order = tag.byte_order().as_bytes();
    match tag.kind {
        RegisterType::Bool => {
            let b = as_bool(value)?;
            Ok(vec![u16::from(b)])
        }
        RegisterType::String => {
            let Value::Text(text) = value else {
                return Err(EncodeError::TypeMismatch("a string tag takes text".into()));
            };
            let max = usize::from(tag.length) * 2;
            if text.len() > max {
                return Err(EncodeError::OutOfRange(format!(
                    "text is longer than {max} bytes"
                )));
            }
            let mut bytes = text.as_bytes().to_vec();
            bytes.resize(max, 0);
            if order == b"BA" {
                bytes.chunks_mut(2).for_each(|c| c.swap(0, 1));
            }
            Ok(bytes_to_registers(&bytes))
        }
        kind => {
            let x = as_number(value)?;
            // Unscaled integers stay exact (an f64 holds only 53 bits).
            let exact: Option<i128> = match value {
                Value::U64(v) if !tag.is_scaled() => Some(i128::from(*v)),
                Value::I64(v) if !tag.is_scaled() => Some(i128::from(*v)),
                _ => None,
            };
            let raw = if tag.is_scaled() {
                (x - tag.offset) / tag.scale
            } else {
                x
            };
            let float_fits = |max: f64| {
                if raw.is_finite() && raw.abs() <= max {
                    Ok(())
                } else {
                    Err(EncodeError::OutOfRange(format!(
                        "{raw} does not fit the register type"
                    )))
                }
            };
            let be: Vec<u8> = match kind {
                RegisterType::F32 => {
                    float_fits(f64::from(f32::MAX))?;
                    (raw as f32).to_be_bytes().to_vec()
                }
                RegisterType::F64 => {
                    float_fits(f64::MAX)?;
                    raw.to_be_bytes().to_vec()
                }
                RegisterType::U16 => int_in::<u16>(exact, raw)?.to_be_bytes().to_vec(),
                RegisterType::I16 => int_in::<i16>(exact, raw)?.to_be_bytes().to_vec(),
                RegisterType::U32 => int_in::<u32>(exact, raw)?.to_be_bytes().to_vec(),
                RegisterType::I32 => int_in::<i32>(exact, raw)?.to_be_bytes().to_vec(),
                RegisterType::U64 => int_in::<u64>(exact, raw)?.to_be_bytes().to_vec(),
                RegisterType::I64 => int_in::<i64>(exact, raw)?.to_be_bytes().to_vec(),
                RegisterType::Bool | RegisterType::String => unreachable!("handled above"),
            };
            Ok(bytes_to_registers(&to_wire(&be, order)))
        }
    }
}

fn int_in<T: TryFrom<i128>>(exact: Option<i128>, raw: f64) -> Result<T, EncodeError> {
    let rounded = raw.round();
    if exact.is_none() && !rounded.is_finite() {
        return Err(EncodeError::OutOfRange("not a finite number".into()));
    }
    T::try_from(exact.unwrap_or(rounded as i128))
        .map_err(|_| EncodeError::OutOfRange(format!("{raw} does not fit the register type")))
}

/// A write value as a bool (coils, bit tags).
pub fn as_bool(value: &Value) -> Result<bool, EncodeError> {
    match value {
        Value::Bool(b) => Ok(*b),
        Value::U64(v) if *v <= 1 => Ok(*v == 1),
        Value::I64(v) if (0..=1).contains(v) => Ok(*v == 1),
        _ => Err(EncodeError::TypeMismatch(
            "a bool tag takes true/false or 0/1".into(),
        )),
    }
}

fn as_number(value: &Value) -> Result<f64, EncodeError> {
    match value {
        Value::Text(_) | Value::Raw(_) | Value::Bool(_) => Err(EncodeError::TypeMismatch(
            "a numeric tag takes a number".into(),
        )),
        v => v
            .as_f64()
            .ok_or_else(|| EncodeError::TypeMismatch("not a number".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::modbus::config::Table;

    #[test]
    fn fewer_registers_than_the_width_read_as_zero_not_a_panic() {
        // Found by the modbus_codec fuzz target: a u16 tag given no
        // registers indexed past the slice.
        for (kind, order) in [
            (RegisterType::U16, ""),
            (RegisterType::I16, "BA"),
            (RegisterType::U32, "CDAB"),
            (RegisterType::F32, ""),
            (RegisterType::U64, "HGFEDCBA"),
            (RegisterType::F64, ""),
            (RegisterType::String, ""),
        ] {
            let t = tag(kind, order);
            let _ = decode_registers(&t, &[]);
            let _ = decode_registers(&t, &[0x1234]);
        }
        assert_eq!(
            decode_registers(&tag(RegisterType::U32, ""), &[0x0001]),
            Value::U64(0x0001_0000)
        );
    }

    fn tag(kind: RegisterType, order: &str) -> ModbusTagConfig {
        let text = format!(
            "name = \"t\"\naddress = 0\ntype = \"{}\"\n{}",
            format!("{kind:?}").to_lowercase(),
            if order.is_empty() {
                String::new()
            } else {
                format!("byte_order = \"{order}\"\n")
            }
        );
        toml::from_str(&text).expect("tag")
    }

    /// Places big-endian bytes on the wire in `order`, as a device would.
    fn wire_regs(be: &[u8], order: &str) -> Vec<u16> {
        bytes_to_registers(&to_wire(be, order.as_bytes()))
    }

    #[test]
    fn every_width_in_every_byte_order_round_trips() {
        let cases: &[(RegisterType, Value, &[&str])] = &[
            (RegisterType::U16, Value::U64(0xBEEF), &["AB", "BA"]),
            (RegisterType::I16, Value::I64(-12345), &["AB", "BA"]),
            (
                RegisterType::U32,
                Value::U64(0xDEAD_BEEF),
                &["ABCD", "CDAB", "BADC", "DCBA"],
            ),
            (
                RegisterType::I32,
                Value::I64(-2_000_000_000),
                &["ABCD", "CDAB", "BADC", "DCBA"],
            ),
            (
                RegisterType::F32,
                Value::F64(f64::from(3.25f32)),
                &["ABCD", "CDAB", "BADC", "DCBA"],
            ),
            (
                RegisterType::U64,
                Value::U64(0x0102_0304_0506_0708),
                &["ABCDEFGH", "GHEFCDAB", "BADCFEHG", "HGFEDCBA"],
            ),
            (
                RegisterType::I64,
                Value::I64(-0x0102_0304_0506_0708),
                &["ABCDEFGH", "GHEFCDAB", "BADCFEHG", "HGFEDCBA"],
            ),
            (
                RegisterType::F64,
                Value::F64(-1234.5678),
                &["ABCDEFGH", "GHEFCDAB", "BADCFEHG", "HGFEDCBA"],
            ),
        ];
        for (kind, value, orders) in cases {
            for order in *orders {
                let t = tag(*kind, order);
                let regs = encode_registers(&t, value).expect("encode");
                assert_eq!(&decode_registers(&t, &regs), value, "{kind:?} {order}");
            }
        }
    }

    #[test]
    fn byte_orders_read_the_wire_as_documented() {
        // 0x11223344 as u32: A=0x11 .. D=0x44.
        let be = [0x11, 0x22, 0x33, 0x44];
        assert_eq!(wire_regs(&be, "ABCD"), vec![0x1122, 0x3344]);
        assert_eq!(wire_regs(&be, "CDAB"), vec![0x3344, 0x1122]);
        assert_eq!(wire_regs(&be, "BADC"), vec![0x2211, 0x4433]);
        assert_eq!(wire_regs(&be, "DCBA"), vec![0x4433, 0x2211]);
        for order in ["ABCD", "CDAB", "BADC", "DCBA"] {
            let t = tag(RegisterType::U32, order);
            assert_eq!(
                decode_registers(&t, &wire_regs(&be, order)),
                Value::U64(0x1122_3344),
                "{order}"
            );
        }
        // 16-bit default AB, and BA.
        assert_eq!(
            decode_registers(&tag(RegisterType::U16, ""), &[0x1234]),
            Value::U64(0x1234)
        );
        assert_eq!(
            decode_registers(&tag(RegisterType::U16, "BA"), &[0x1234]),
            Value::U64(0x3412)
        );
    }

    #[test]
    fn scale_offset_and_inverse() {
        let mut t = tag(RegisterType::I16, "");
        t.scale = 0.1;
        t.offset = -40.0;
        assert_eq!(
            decode_registers(&t, &[(-5i16) as u16]),
            Value::F64(-5.0 * 0.1 - 40.0)
        );
        let regs = encode_registers(&t, &Value::F64(25.0)).expect("encode");
        assert_eq!(regs, vec![650]);
        assert!(matches!(
            encode_registers(&t, &Value::F64(1e9)),
            Err(EncodeError::OutOfRange(_))
        ));
    }

    #[test]
    fn strings_pack_two_chars_per_register_and_trim() {
        let mut t = tag(RegisterType::String, "");
        t.length = 4;
        let regs = [u16::from_be_bytes(*b"AB"), u16::from_be_bytes(*b"C "), 0, 0];
        assert_eq!(decode_registers(&t, &regs), Value::Text("ABC".into()));
        t.byte_order = Some("BA".into());
        assert_eq!(decode_registers(&t, &regs), Value::Text("BA C".into()));
        let back = encode_registers(&t, &Value::Text("BA C".into())).expect("encode");
        assert_eq!(&back[..2], &regs[..2]);
    }

    #[test]
    fn bits_and_bools() {
        let mut t = tag(RegisterType::Bool, "");
        assert_eq!(decode_registers(&t, &[0]), Value::Bool(false));
        assert_eq!(decode_registers(&t, &[7]), Value::Bool(true));
        t.bit = Some(3);
        assert_eq!(decode_registers(&t, &[0b1000]), Value::Bool(true));
        assert_eq!(decode_registers(&t, &[0b0111]), Value::Bool(false));
        t.table = Table::Coil;
        assert_eq!(as_bool(&Value::U64(1)), Ok(true));
        assert!(as_bool(&Value::F64(0.5)).is_err());
    }

    #[test]
    fn write_type_mismatch() {
        let t = tag(RegisterType::U16, "");
        assert!(matches!(
            encode_registers(&t, &Value::Text("x".into())),
            Err(EncodeError::TypeMismatch(_))
        ));
        assert!(matches!(
            encode_registers(&t, &Value::I64(-1)),
            Err(EncodeError::OutOfRange(_))
        ));
    }

    #[test]
    fn non_finite_and_oversized_floats_never_reach_the_registers() {
        for kind in [RegisterType::F32, RegisterType::F64] {
            let t = tag(kind, "");
            for v in [f64::INFINITY, f64::NEG_INFINITY, f64::NAN] {
                assert!(
                    matches!(
                        encode_registers(&t, &Value::F64(v)),
                        Err(EncodeError::OutOfRange(_))
                    ),
                    "{kind:?} {v}"
                );
            }
        }
        let f32_tag = tag(RegisterType::F32, "");
        assert!(matches!(
            encode_registers(&f32_tag, &Value::F64(1e39)),
            Err(EncodeError::OutOfRange(_))
        ));
        assert!(encode_registers(&f32_tag, &Value::F64(3.0e38)).is_ok());
        // After inverse scaling: 1e38 / 0.01 is past f32's range.
        let mut scaled = tag(RegisterType::F32, "");
        scaled.scale = 0.01;
        assert!(matches!(
            encode_registers(&scaled, &Value::F64(1e38)),
            Err(EncodeError::OutOfRange(_))
        ));
    }
}
