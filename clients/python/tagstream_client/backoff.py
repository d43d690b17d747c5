"""When to try again: exponential backoff with full jitter (uniform in
[0, min(cap, initial * 2^attempt)]), and the server's hint in a close 1001's
reason (ms), as in the Rust SDK."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    initial: float = 0.25
    """Ceiling of the first retry's delay, seconds."""
    cap: float = 30.0
    """No delay is longer, seconds."""

    def ceiling(self, attempt: int) -> float:
        return min(self.cap, self.initial * 2 ** min(attempt, 31))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        return (rng or random).uniform(0, self.ceiling(attempt))


def server_hint(reason: str, cap: float) -> float | None:
    """The delay (seconds) in a close 1001's reason, capped; None if it holds none."""
    text = reason.strip()
    if not text.isdigit():
        return None
    return min(int(text) / 1000, cap)
