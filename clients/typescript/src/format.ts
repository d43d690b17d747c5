// Values as a person reads them, by the same rules as the Rust SDK's
// `display`: an F32 tag at f32's shortest form (56.1767, not the f64
// widening 56.176700592041016), a scaled tag rounded to the decimals its
// resolution implies (scale 0.1: 55.9, not 55.900000000000006).

import { DataType, type TagInfo, type Value } from "./gen/tagstream/v1/tagstream_pb.js";

/** The decimals a resolution implies (0.1 -> 1, 0.25 -> 2); undefined when it says nothing. */
export function decimals(resolution: number): number | undefined {
  if (!(Number.isFinite(resolution) && resolution > 0)) return undefined;
  for (let d = 0; d <= 12; d++) {
    const scaled = resolution * 10 ** d;
    if (Math.abs(scaled - Math.round(scaled)) < 1e-9 * Math.max(scaled, 1)) return d;
  }
  return 12;
}

/** The shortest decimal that reads back as the same f32. */
export function shortestF32(v: number): string {
  const f = Math.fround(v);
  if (!Number.isFinite(f) || f === 0) return String(f);
  for (let p = 1; p <= 9; p++) {
    const s = f.toPrecision(p);
    if (Math.fround(Number(s)) === f) return String(Number(s));
  }
  return String(f);
}

/** Formats one value for a tag (info may be unknown). */
export function formatValue(value: Value | undefined, info?: TagInfo): string {
  const kind = value?.kind;
  switch (kind?.case) {
    case undefined:
      return "-";
    case "f64": {
      if (!info) return String(kind.value);
      const d = decimals(info.resolution);
      if (d !== undefined) return kind.value.toFixed(d);
      if (info.type === DataType.F32) return shortestF32(kind.value);
      return String(kind.value);
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
