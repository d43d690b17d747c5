//! The Modbus register codec for every type, byte order, scale and bit:
//! decoding any registers gives a value, encoding any value gives
//! registers or an EncodeError, and what encodes decodes back to a value.
//! Never a panic. The first bytes pick the tag; the rest are registers and
//! a value.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tagstream::sample::Value;
use tagstream::source::modbus::codec::{decode_registers, encode_registers};
use tagstream::source::modbus::config::ModbusTagConfig;

fn tags() -> &'static [ModbusTagConfig] {
    static TAGS: OnceLock<Vec<ModbusTagConfig>> = OnceLock::new();
    TAGS.get_or_init(|| {
        let shapes = [
            ("bool", ""), ("bool", "bit = 7\n"), ("bool", "bit = 15\n"),
            ("u16", ""), ("u16", "byte_order = \"BA\"\n"), ("i16", "scale = 0.1\noffset = -5.0\n"),
            ("u32", ""), ("u32", "byte_order = \"CDAB\"\n"), ("i32", "byte_order = \"DCBA\"\nscale = 1e-3\n"),
            ("u64", ""), ("i64", "byte_order = \"GHEFCDAB\"\n"), ("u64", "byte_order = \"HGFEDCBA\"\nscale = 2.5\n"),
            ("f32", ""), ("f32", "byte_order = \"BADC\"\n"), ("f64", ""), ("f64", "byte_order = \"BADCFEHG\"\n"),
            ("string", "length = 4\n"), ("string", "length = 1\nbyte_order = \"BA\"\n"),
        ];
        let mut toml = String::from("[[modbus]]\nname = \"f\"\naddress = \"127.0.0.1:1\"\n");
        for (i, (kind, extra)) in shapes.iter().enumerate() {
            toml.push_str(&format!(
                "[[modbus.tags]]\nname = \"t/{i}\"\naddress = 0\ntype = \"{kind}\"\nwritable = true\n{extra}"
            ));
        }
        let config = tagstream::config::Config::parse(&toml).expect("fuzz tag table parses");
        config.modbus[0].tags.clone()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let tags = tags();
    let tag = &tags[usize::from(pick) % tags.len()];
    let regs: Vec<u16> = rest
        .chunks(2)
        .take(8)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))
        .collect();
    let _ = decode_registers(tag, &regs);
    let tail = rest.get(16..).unwrap_or_default();
    let value = match pick >> 5 {
        0 => Value::F64(f64::from_le_bytes(pad(tail))),
        1 => Value::I64(i64::from_le_bytes(pad(tail))),
        2 => Value::U64(u64::from_le_bytes(pad(tail))),
        3 => Value::Bool(tail.first().is_some_and(|b| b & 1 == 1)),
        _ => Value::Text(String::from_utf8_lossy(tail).into()),
    };
    if let Ok(regs) = encode_registers(tag, &value) {
        let _ = decode_registers(tag, &regs);
    }
});

fn pad(bytes: &[u8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    for (o, b) in out.iter_mut().zip(bytes) {
        *o = *b;
    }
    out
}
