// Values as a person reads them, by the same rules as the Rust SDK's
// `display`: a tag with `decimals` (its TagInfo) at that many digits after
// the point (85.2, not 85.21194), else a scaled tag rounded to the
// decimals its resolution implies (scale 0.1: 55.9, not
// 55.900000000000006), else an F32 tag at f32's shortest form (56.1767,
// not the f64 widening 56.176700592041016). Rounding is half to even on
// the exact value (as Rust's and Python's formatters do; toFixed rounds
// an exact tie away from zero), a rounded zero has no sign, and the
// non-finite print as NaN, inf, -inf. Integers print whole. The vectors
// in clients/format-vectors.txt check all three SDKs.

import { DataType, type TagInfo, type Value } from "./gen/tagstream/v1/tagstream_pb.js";

/** The most decimals a tag may ask for, or a resolution imply (more would print binary noise). */
const MAX_DECIMALS = 12;

/** The decimals a resolution implies (0.1 -> 1, 0.25 -> 2); undefined when it says nothing. */
export function decimals(resolution: number): number | undefined {
  if (!(Number.isFinite(resolution) && resolution > 0)) return undefined;
  for (let d = 0; d <= MAX_DECIMALS; d++) {
    const scaled = resolution * 10 ** d;
    if (Math.abs(scaled - Math.round(scaled)) < 1e-9 * Math.max(scaled, 1)) return d;
  }
  return MAX_DECIMALS;
}

/** A number the way the other SDKs print it: NaN, inf and -inf for the non-finite. */
function plain(x: number): string {
  if (Number.isNaN(x)) return "NaN";
  if (!Number.isFinite(x)) return x > 0 ? "inf" : "-inf";
  return String(x);
}

/** The shortest decimal that reads back as the same f32. */
export function shortestF32(v: number): string {
  const f = Math.fround(v);
  if (!Number.isFinite(f) || f === 0) return plain(f);
  for (let p = 1; p <= 9; p++) {
    const s = f.toPrecision(p);
    if (Math.fround(Number(s)) === f) return String(Number(s));
  }
  return String(f);
}

/** `x` with `d` digits after the point, half to even on its exact value. */
export function fixed(x: number, d: number): string {
  if (!Number.isFinite(x)) return plain(x);
  let text = x.toFixed(d);
  // toFixed(100) is exact for a tie: a double whose expansion ends in a 5
  // at digit d+1 (d <= 12) has at most 13 fractional digits.
  const exact = x.toFixed(100);
  const point = exact.indexOf(".");
  const rest = exact.slice(point + 1 + d);
  if (/^50*$/.test(rest)) {
    // An exact tie: toFixed went away from zero; keep the even neighbour.
    const toward = exact.slice(0, d > 0 ? point + 1 + d : point);
    const last = Number(toward.replace(/\D/g, "").slice(-1));
    if (last % 2 === 0) text = toward;
  }
  return /^-[0.]*$/.test(text) ? text.slice(1) : text;
}

/** Formats one value for a tag (info may be unknown). */
export function formatValue(value: Value | undefined, info?: TagInfo): string {
  const kind = value?.kind;
  switch (kind?.case) {
    case undefined:
      return "-";
    case "f64": {
      if (!info) return plain(kind.value);
      const d =
        info.decimals !== undefined ? Math.min(info.decimals, MAX_DECIMALS) : decimals(info.resolution);
      if (d !== undefined) return fixed(kind.value, d);
      if (info.type === DataType.F32) return shortestF32(kind.value);
      return plain(kind.value);
    }
    case "i64":
    case "u64":
    case "bool":
      return String(kind.value);
    case "text":
      return JSON.stringify(kind.value);
    case "raw":
      return `${kind.value.length} bytes`;
  }
}
