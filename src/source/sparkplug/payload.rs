//! Sparkplug B payloads: the types generated from proto/sparkplug_b.proto,
//! what each metric data type becomes in the tag table (config.md
//! `[[sparkplug]]`), a metric's value as a tag value, and the NCMD/DCMD
//! payloads the host sends (a rebirth request, a write).

use bytes::Bytes;
use prost::Message;

use crate::proto::DataType;
use crate::sample::Value;
use crate::status;

/// The generated Sparkplug B types (package `org.eclipse.tahu.protobuf`).
#[allow(missing_docs, clippy::all)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/org.eclipse.tahu.protobuf.rs"));
}

pub use pb::DataType as SpType;
pub use pb::payload::Metric;
pub use pb::payload::metric::Value as MetricValue;

/// The node control metric that asks an edge node to publish its births
/// again.
pub const REBIRTH: &str = "Node Control/Rebirth";
/// The birth/death sequence metric of NBIRTH and NDEATH.
pub const BD_SEQ: &str = "bdSeq";

/// What a metric of one Sparkplug data type becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A tag of this wire type.
    Tag(DataType),
    /// Not a tag (DataSet, Template, arrays, property sets, files): skipped
    /// and counted.
    Skipped,
}

/// The tag type of a Sparkplug data type (config.md): integers keep their
/// sign and the nearest width the wire has (8-bit ones travel as 16-bit),
/// DateTime is i64 milliseconds, String/Text/UUID are strings.
pub fn kind(datatype: u32) -> Kind {
    let Ok(t) = SpType::try_from(datatype as i32) else {
        return Kind::Skipped;
    };
    Kind::Tag(match t {
        SpType::Int8 | SpType::Int16 => DataType::I16,
        SpType::Int32 => DataType::I32,
        SpType::Int64 | SpType::DateTime => DataType::I64,
        SpType::UInt8 | SpType::UInt16 => DataType::U16,
        SpType::UInt32 => DataType::U32,
        SpType::UInt64 => DataType::U64,
        SpType::Float => DataType::F32,
        SpType::Double => DataType::F64,
        SpType::Boolean => DataType::Bool,
        SpType::String | SpType::Text | SpType::Uuid => DataType::String,
        SpType::Bytes => DataType::Bytes,
        _ => return Kind::Skipped,
    })
}

/// Why a metric's value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("metric value does not fit its datatype {datatype}: {why}")]
pub struct BadValue {
    /// The Sparkplug data type.
    pub datatype: u32,
    /// What is wrong.
    pub why: &'static str,
}

/// The value of a metric of `datatype` (`None`: `is_null` or no value).
/// Signed integers narrower than 64 bits are read from the low bits of
/// their width: Sparkplug carries them in a uint32, and implementations
/// differ on whether a negative Int8 fills all 32 bits or only 8.
pub fn value(metric: &Metric, datatype: u32) -> Result<Option<Value>, BadValue> {
    if metric.is_null() {
        return Ok(None);
    }
    let Some(v) = &metric.value else {
        return Ok(None);
    };
    let bad = |why| BadValue { datatype, why };
    let t = SpType::try_from(datatype as i32).map_err(|_| bad("unknown datatype"))?;
    Ok(Some(match (t, v) {
        (SpType::Int8, MetricValue::IntValue(i)) => Value::I64(i64::from(*i as u8 as i8)),
        (SpType::Int16, MetricValue::IntValue(i)) => Value::I64(i64::from(*i as u16 as i16)),
        (SpType::Int32, MetricValue::IntValue(i)) => Value::I64(i64::from(*i as i32)),
        (SpType::UInt8 | SpType::UInt16 | SpType::UInt32, MetricValue::IntValue(i)) => {
            Value::U64(u64::from(*i))
        }
        // Eclipse Tahu (JS, C) and Ignition send 8- to 32-bit integers in
        // `long_value` (eclipse-sparkplug/sparkplug#102, eclipse-tahu/tahu
        // #218, #397); the text says `int_value`. Either is taken when the
        // value fits the type; a negative one may come sign-extended.
        (SpType::Int8 | SpType::Int16 | SpType::Int32, MetricValue::LongValue(l)) => {
            let (lo, hi) = match t {
                SpType::Int8 => (i64::from(i8::MIN), i64::from(i8::MAX)),
                SpType::Int16 => (i64::from(i16::MIN), i64::from(i16::MAX)),
                _ => (i64::from(i32::MIN), i64::from(i32::MAX)),
            };
            let v = *l as i64;
            let width = (hi as u64) * 2 + 1;
            if (lo..=hi).contains(&v) {
                Value::I64(v)
            } else if *l <= width {
                // Widened without sign extension: read from the width.
                Value::I64(if v > hi { v - (width as i64) - 1 } else { v })
            } else {
                return Err(bad("long_value does not fit the datatype"));
            }
        }
        (SpType::UInt8 | SpType::UInt16 | SpType::UInt32, MetricValue::LongValue(l)) => {
            let hi = match t {
                SpType::UInt8 => u64::from(u8::MAX),
                SpType::UInt16 => u64::from(u16::MAX),
                _ => u64::from(u32::MAX),
            };
            if *l > hi {
                return Err(bad("long_value does not fit the datatype"));
            }
            Value::U64(*l)
        }
        (SpType::UInt64, MetricValue::IntValue(i)) => Value::U64(u64::from(*i)),
        (SpType::Int64 | SpType::DateTime, MetricValue::LongValue(l)) => Value::I64(*l as i64),
        (SpType::UInt64, MetricValue::LongValue(l)) => Value::U64(*l),
        (SpType::Float, MetricValue::FloatValue(f)) => Value::F64(f64::from(*f)),
        (SpType::Double, MetricValue::DoubleValue(d)) => Value::F64(*d),
        (SpType::Boolean, MetricValue::BooleanValue(b)) => Value::Bool(*b),
        (SpType::String | SpType::Text | SpType::Uuid, MetricValue::StringValue(s)) => {
            Value::Text(s.as_str().into())
        }
        (SpType::Bytes, MetricValue::BytesValue(b)) => Value::Raw(Bytes::copy_from_slice(b)),
        _ => return Err(bad("the value field is not the one the datatype uses")),
    }))
}

/// The engineering unit a birth gives a metric (property `engUnit`).
pub fn unit(metric: &Metric) -> String {
    let Some(props) = &metric.properties else {
        return String::new();
    };
    props
        .keys
        .iter()
        .zip(&props.values)
        .find(|(k, _)| k.as_str() == "engUnit")
        .and_then(|(_, v)| match &v.value {
            Some(pb::payload::property_value::Value::StringValue(s)) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// A written value as a metric value of `datatype`: the engine already
/// converted it to the tag's type; 8-bit types, which the tag table holds
/// in 16 bits, are range-checked here.
pub fn encode_value(value: &Value, datatype: u32) -> Result<MetricValue, (u32, String)> {
    let mismatch = |why: String| (status::BAD_TYPE_MISMATCH, why);
    let t = SpType::try_from(datatype as i32).map_err(|_| mismatch("unknown datatype".into()))?;
    let int = |v: &Value| match v {
        Value::I64(i) => Some(*i as i128),
        Value::U64(u) => Some(*u as i128),
        Value::Bool(b) => Some(i128::from(*b)),
        _ => None,
    };
    let ranged = |lo: i128, hi: i128| -> Result<i128, (u32, String)> {
        let i = int(value).ok_or_else(|| mismatch(format!("{value} is not an integer")))?;
        if (lo..=hi).contains(&i) {
            Ok(i)
        } else {
            Err((
                status::BAD_OUT_OF_RANGE,
                format!("{i} is outside {t:?} ({lo}..={hi})"),
            ))
        }
    };
    Ok(match t {
        SpType::Int8 => MetricValue::IntValue(ranged(-128, 127)? as i32 as u32),
        SpType::Int16 => MetricValue::IntValue(ranged(-32768, 32767)? as i32 as u32),
        SpType::Int32 => {
            MetricValue::IntValue(ranged(i32::MIN.into(), i32::MAX.into())? as i32 as u32)
        }
        SpType::UInt8 => MetricValue::IntValue(ranged(0, 255)? as u32),
        SpType::UInt16 => MetricValue::IntValue(ranged(0, 65535)? as u32),
        SpType::UInt32 => MetricValue::IntValue(ranged(0, u32::MAX.into())? as u32),
        SpType::Int64 | SpType::DateTime => {
            MetricValue::LongValue(ranged(i64::MIN.into(), i64::MAX.into())? as i64 as u64)
        }
        SpType::UInt64 => MetricValue::LongValue(ranged(0, u64::MAX.into())? as u64),
        SpType::Float | SpType::Double => {
            let f = value
                .as_f64()
                .ok_or_else(|| mismatch(format!("{value} is not a number")))?;
            if t == SpType::Float {
                MetricValue::FloatValue(f as f32)
            } else {
                MetricValue::DoubleValue(f)
            }
        }
        SpType::Boolean => match value {
            Value::Bool(b) => MetricValue::BooleanValue(*b),
            _ => return Err(mismatch(format!("{value} is not a boolean"))),
        },
        SpType::String | SpType::Text | SpType::Uuid => match value {
            Value::Text(s) => MetricValue::StringValue(s.to_string()),
            _ => return Err(mismatch(format!("{value} is not text"))),
        },
        SpType::Bytes => match value {
            Value::Raw(b) => MetricValue::BytesValue(b.to_vec()),
            _ => return Err(mismatch(format!("{value} is not bytes"))),
        },
        _ => return Err(mismatch(format!("{t:?} metrics are not written"))),
    })
}

/// An NCMD/DCMD payload setting one metric, by name.
pub fn command(name: &str, datatype: u32, value: MetricValue, now_ms: u64) -> Vec<u8> {
    pb::Payload {
        timestamp: Some(now_ms),
        metrics: vec![Metric {
            name: Some(name.to_string()),
            timestamp: Some(now_ms),
            datatype: Some(datatype),
            value: Some(value),
            ..Default::default()
        }],
        ..Default::default()
    }
    .encode_to_vec()
}

/// The NCMD that asks an edge node for its births again.
pub fn rebirth(now_ms: u64) -> Vec<u8> {
    command(
        REBIRTH,
        SpType::Boolean as u32,
        MetricValue::BooleanValue(true),
        now_ms,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(datatype: SpType, v: MetricValue) -> Metric {
        Metric {
            datatype: Some(datatype as u32),
            value: Some(v),
            ..Default::default()
        }
    }

    #[test]
    fn narrow_signed_integers_read_from_their_width_whichever_way_they_were_widened() {
        for raw in [0xFFFF_FFFFu32, 0xFF] {
            let m = metric(SpType::Int8, MetricValue::IntValue(raw));
            assert_eq!(value(&m, SpType::Int8 as u32), Ok(Some(Value::I64(-1))));
        }
        let m = metric(SpType::Int16, MetricValue::IntValue(0x8000));
        assert_eq!(
            value(&m, SpType::Int16 as u32),
            Ok(Some(Value::I64(-32768)))
        );
        let m = metric(SpType::UInt32, MetricValue::IntValue(u32::MAX));
        assert_eq!(
            value(&m, SpType::UInt32 as u32),
            Ok(Some(Value::U64(u64::from(u32::MAX))))
        );
        let m = metric(SpType::Int64, MetricValue::LongValue(u64::MAX));
        assert_eq!(value(&m, SpType::Int64 as u32), Ok(Some(Value::I64(-1))));
    }

    #[test]
    fn tahu_and_ignition_integers_in_long_value_are_taken_when_they_fit() {
        let read = |t: SpType, l: u64| value(&metric(t, MetricValue::LongValue(l)), t as u32);
        assert_eq!(
            read(SpType::UInt32, 4_000_000_000),
            Ok(Some(Value::U64(4_000_000_000)))
        );
        assert_eq!(read(SpType::UInt16, 65_535), Ok(Some(Value::U64(65_535))));
        assert_eq!(read(SpType::UInt8, 7), Ok(Some(Value::U64(7))));
        assert!(read(SpType::UInt32, 1 << 32).is_err());
        assert!(read(SpType::UInt8, 256).is_err());
        assert_eq!(
            read(SpType::Int32, (-5i64) as u64),
            Ok(Some(Value::I64(-5)))
        );
        assert_eq!(read(SpType::Int8, 0xFF), Ok(Some(Value::I64(-1))));
        assert_eq!(read(SpType::Int16, 0x7FFF), Ok(Some(Value::I64(32_767))));
        assert!(read(SpType::Int16, 1 << 20).is_err());
        let m = metric(SpType::UInt64, MetricValue::IntValue(9));
        assert_eq!(value(&m, SpType::UInt64 as u32), Ok(Some(Value::U64(9))));
    }

    #[test]
    fn a_value_in_the_wrong_field_is_an_error_and_null_is_no_value() {
        let m = metric(SpType::Double, MetricValue::IntValue(1));
        assert!(value(&m, SpType::Double as u32).is_err());
        let mut m = metric(SpType::Double, MetricValue::DoubleValue(1.0));
        m.is_null = Some(true);
        assert_eq!(value(&m, SpType::Double as u32), Ok(None));
    }

    #[test]
    fn types_map_as_the_config_page_says_and_composites_are_skipped() {
        assert_eq!(kind(SpType::Int8 as u32), Kind::Tag(DataType::I16));
        assert_eq!(kind(SpType::UInt64 as u32), Kind::Tag(DataType::U64));
        assert_eq!(kind(SpType::DateTime as u32), Kind::Tag(DataType::I64));
        assert_eq!(kind(SpType::Uuid as u32), Kind::Tag(DataType::String));
        assert_eq!(kind(SpType::Float as u32), Kind::Tag(DataType::F32));
        for t in [
            SpType::DataSet,
            SpType::Template,
            SpType::FloatArray,
            SpType::File,
        ] {
            assert_eq!(kind(t as u32), Kind::Skipped, "{t:?}");
        }
        assert_eq!(kind(999), Kind::Skipped);
    }

    #[test]
    fn writes_encode_in_the_metrics_field_and_8_bit_types_are_range_checked() {
        assert_eq!(
            encode_value(&Value::I64(-1), SpType::Int8 as u32),
            Ok(MetricValue::IntValue(0xFFFF_FFFF))
        );
        assert!(encode_value(&Value::I64(200), SpType::Int8 as u32).is_err());
        assert!(encode_value(&Value::U64(256), SpType::UInt8 as u32).is_err());
        assert_eq!(
            encode_value(&Value::F64(1.5), SpType::Float as u32),
            Ok(MetricValue::FloatValue(1.5))
        );
        let payload = rebirth(7);
        let p = pb::Payload::decode(payload.as_slice()).expect("decodes");
        assert_eq!(p.metrics[0].name(), REBIRTH);
        assert_eq!(p.metrics[0].value, Some(MetricValue::BooleanValue(true)));
    }
}
