// When to try again: exponential backoff with full jitter (uniform in
// [0, min(cap, initial * 2^attempt)]), and the server's own hint in a
// close 1001's reason (ms), as in the Rust SDK.

export interface Backoff {
  /** Ceiling of the first retry's delay, ms. */
  initialMs: number;
  /** No delay is longer, ms. */
  capMs: number;
}

export const defaultBackoff: Backoff = { initialMs: 250, capMs: 30_000 };

/** The ceiling for retry `attempt` (0-based). */
export function ceiling(b: Backoff, attempt: number): number {
  return Math.min(b.capMs, b.initialMs * 2 ** Math.min(attempt, 31));
}

/** The delay before retry `attempt`: uniform in [0, ceiling]. */
export function delay(b: Backoff, attempt: number, random: () => number = Math.random): number {
  return random() * ceiling(b, attempt);
}

/** The delay in a close 1001's reason, capped; undefined if it holds none. */
export function serverHint(reason: string, capMs: number): number | undefined {
  if (!/^\s*\d+\s*$/.test(reason)) return undefined;
  return Math.min(Number(reason), capMs);
}
