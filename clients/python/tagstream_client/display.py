"""Values as a person reads them, by the same rules as the Rust SDK's
``display``: an F32 tag at f32's shortest form (56.1767, not the f64
widening 56.176700592041016), a scaled tag rounded to the decimals its
resolution implies (scale 0.1: 55.9, not 55.900000000000006)."""

from __future__ import annotations

import json
import math
import struct

from ._proto import tagstream_pb2 as pb


def decimals(resolution: float) -> int | None:
    """The decimals a resolution implies (0.1 -> 1, 0.25 -> 2); None when it says nothing."""
    if not (math.isfinite(resolution) and resolution > 0):
        return None
    for d in range(13):
        scaled = resolution * 10**d
        if abs(scaled - round(scaled)) < 1e-9 * max(scaled, 1.0):
            return d
    return 12


def _f32(v: float) -> float:
    return struct.unpack("<f", struct.pack("<f", v))[0]


def plain(x: float) -> str:
    """A number as the other SDKs print it: `70`, not `70.0` or `7e+01`."""
    if math.isfinite(x) and x == int(x) and abs(x) < 1e15:
        return str(int(x))
    return repr(x)


def shortest_f32(v: float) -> str:
    """The shortest decimal that reads back as the same f32."""
    f = _f32(v)
    if not math.isfinite(f) or f == 0:
        return plain(f)
    for p in range(1, 10):
        s = f"{f:.{p}g}"
        if _f32(float(s)) == f:
            return plain(float(s))
    return plain(f)


def format_value(value: pb.Value | None, info: pb.TagInfo | None = None) -> str:
    """Formats one value for a tag (info may be unknown)."""
    kind = value.WhichOneof("kind") if value is not None else None
    if kind is None:
        return "-"
    v = getattr(value, kind)
    if kind == "f64":
        if info is None:
            return plain(v)
        d = decimals(info.resolution)
        if d is not None:
            return f"{v:.{d}f}"
        if info.type == pb.F32:
            return shortest_f32(v)
        return plain(v)
    if kind == "bool":
        return "true" if v else "false"
    if kind == "text":
        return json.dumps(v)
    if kind == "raw":
        return f"{len(v)} bytes"
    return str(v)
