//! Values as a person reads them: a tag with `decimals` (its `TagInfo`)
//! at that many digits after the point (`85.2`, not `85.21194`), else a
//! scaled tag rounded to the decimals its resolution implies (scale 0.1:
//! `55.9`, not `55.900000000000006`), else an F32 tag at f32's shortest
//! form (`56.1767`, not the f64 widening `56.17669677734375`). Rounding is
//! half to even on the exact value, a rounded zero has no sign, and the
//! non-finite print as `NaN`, `inf`, `-inf`. Integers print whole. The
//! TypeScript and Python SDKs and the web view follow the same rules,
//! checked by the same vectors (`clients/format-vectors.txt`).

use crate::proto::{self, DataType, value::Kind};

/// The most decimals a tag may ask for, or a resolution imply (an f64
/// carries about 15 significant digits; more would print binary noise).
pub const MAX_DECIMALS: usize = 12;

/// The decimals a resolution implies: 0.1 → 1, 0.25 → 2, 5 → 0; `None`
/// when it says nothing (0, negative, not finite).
pub fn decimals(resolution: f64) -> Option<usize> {
    if !(resolution.is_finite() && resolution > 0.0) {
        return None;
    }
    // Smallest d with resolution * 10^d an integer (to 1e-9), capped: a
    // resolution like 1/3 never ends.
    (0..=MAX_DECIMALS)
        .find(|&d| {
            let scaled = resolution * 10f64.powi(d as i32);
            (scaled - scaled.round()).abs() < 1e-9 * scaled.max(1.0)
        })
        .or(Some(MAX_DECIMALS))
}

/// Formats one value for a tag (`info` may be unknown).
pub fn format_value(value: Option<&proto::Value>, info: Option<&proto::TagInfo>) -> String {
    let Some(kind) = value.and_then(|v| v.kind.as_ref()) else {
        return "-".into();
    };
    match kind {
        Kind::F64(f) => format_number(*f, info),
        Kind::I64(i) => i.to_string(),
        Kind::U64(u) => u.to_string(),
        Kind::Bool(b) => b.to_string(),
        Kind::Text(t) => format!("{t:?}"),
        Kind::Raw(r) => format!("{} bytes", r.len()),
    }
}

fn format_number(f: f64, info: Option<&proto::TagInfo>) -> String {
    let Some(info) = info else {
        return f.to_string();
    };
    let fixed = info
        .decimals
        .map(|d| (d as usize).min(MAX_DECIMALS))
        .or_else(|| decimals(info.resolution));
    if let Some(d) = fixed {
        return fixed_point(f, d);
    }
    if info.r#type() == DataType::F32 {
        // The value was an f32 widened to f64: narrowing is exact, and
        // f32's Display is its shortest round-trip form.
        return (f as f32).to_string();
    }
    f.to_string()
}

/// `f` with `d` digits after the point, rounded half to even on its exact
/// value (what `format!` does), without the sign of a rounded zero.
fn fixed_point(f: f64, d: usize) -> String {
    if !f.is_finite() {
        return f.to_string();
    }
    let text = format!("{f:.d$}");
    match text.strip_prefix('-') {
        Some(unsigned) if unsigned.bytes().all(|b| b == b'0' || b == b'.') => unsigned.to_string(),
        _ => text,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn info(ty: DataType, resolution: f64) -> proto::TagInfo {
        proto::TagInfo {
            r#type: ty as i32,
            resolution,
            ..Default::default()
        }
    }

    fn with_decimals(ty: DataType, resolution: f64, decimals: Option<u32>) -> proto::TagInfo {
        proto::TagInfo {
            decimals,
            ..info(ty, resolution)
        }
    }

    #[test]
    fn the_shared_display_vectors() {
        // clients/format-vectors.txt: the same rule as TypeScript and Python.
        for line in include_str!("../../format-vectors.txt").lines() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let cols: Vec<&str> = line.split_whitespace().collect();
            let ty = if cols[0] == "F32" {
                DataType::F32
            } else {
                DataType::F64
            };
            let decimals = cols[2].parse().ok();
            let value: f64 = cols[3].parse().unwrap();
            let value = proto::Value::from(value);
            let info = with_decimals(ty, cols[1].parse().unwrap(), decimals);
            let text = format_value(Some(&value), Some(&info));
            assert_eq!(text, cols[4], "{line}");
        }
    }

    #[test]
    fn an_f32_prints_at_its_own_precision_and_a_scaled_value_without_binary_noise() {
        let v = |f: f64| proto::Value::from(f);
        let widened = f64::from(56.176_7_f32);
        assert_eq!(widened.to_string(), "56.176700592041016");
        assert_eq!(
            format_value(Some(&v(widened)), Some(&info(DataType::F32, 0.0))),
            "56.1767"
        );
        let scaled = 559.0 * 0.1;
        assert_eq!(scaled.to_string(), "55.900000000000006");
        assert_eq!(
            format_value(Some(&v(scaled)), Some(&info(DataType::F64, 0.1))),
            "55.9"
        );
        assert_eq!(
            format_value(Some(&v(2.5)), Some(&info(DataType::F64, 0.25))),
            "2.50"
        );
        assert_eq!(
            format_value(Some(&v(1200.0)), Some(&info(DataType::F64, 5.0))),
            "1200"
        );
        assert_eq!(
            format_value(Some(&v(0.1 + 0.2)), None),
            "0.30000000000000004"
        );
        assert_eq!(format_value(None, None), "-");
        assert_eq!(decimals(0.001), Some(3));
        assert_eq!(decimals(0.0), None);
        assert_eq!(decimals(f64::NAN), None);
    }
}
