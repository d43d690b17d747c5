"""Values as a person reads them, by the same rules as the Rust SDK's
``display``: a tag with ``decimals`` (its TagInfo) at that many digits
after the point (85.2, not 85.21194), else a scaled tag rounded to the
decimals its resolution implies (scale 0.1: 55.9, not 55.900000000000006),
else an F32 tag at f32's shortest form (56.1767, not the f64 widening
56.176700592041016). Rounding is half to even on the exact value, a
rounded zero has no sign, and the non-finite print as NaN, inf, -inf.
Integers print whole. clients/format-vectors.txt checks all three SDKs."""

from __future__ import annotations

import json
import math
import struct

from ._proto import tagstream_pb2 as pb

MAX_DECIMALS = 12
"""The most decimals a tag may ask for, or a resolution imply (more would print binary noise)."""


def decimals(resolution: float) -> int | None:
    """The decimals a resolution implies (0.1 -> 1, 0.25 -> 2); None when it says nothing."""
    if not (math.isfinite(resolution) and resolution > 0):
        return None
    for d in range(MAX_DECIMALS + 1):
        scaled = resolution * 10**d
        if abs(scaled - round(scaled)) < 1e-9 * max(scaled, 1.0):
            return d
    return MAX_DECIMALS


def _f32(v: float) -> float:
    return struct.unpack("<f", struct.pack("<f", v))[0]


def plain(x: float) -> str:
    """A number as the other SDKs print it: `70`, not `70.0` or `7e+01`."""
    if math.isnan(x):
        return "NaN"
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


def fixed(x: float, d: int) -> str:
    """`x` with `d` digits after the point, half to even on its exact value."""
    if not math.isfinite(x):
        return plain(x)
    text = f"{x:.{d}f}"
    if text.startswith("-") and set(text[1:]) <= {"0", "."}:
        return text[1:]
    return text


def format_value(value: pb.Value | None, info: pb.TagInfo | None = None) -> str:
    """Formats one value for a tag (info may be unknown)."""
    kind = value.WhichOneof("kind") if value is not None else None
    if kind is None:
        return "-"
    v = getattr(value, kind)
    if kind == "f64":
        if info is None:
            return plain(v)
        d = min(info.decimals, MAX_DECIMALS) if info.HasField("decimals") else decimals(info.resolution)
        if d is not None:
            return fixed(v, d)
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
