// The SDK's client, with the same behaviour as the Rust SDK's `Client`:
// one connection at a time, an exact mirror, reconnect with exponential
// backoff and full jitter honouring the server's hints (1001 delay,
// 4000-4499 fresh token, 4500-4999 stop), resume with {epoch, seq}, a
// Refresh before the token expires, writes and browses as promises.
// Runs in browsers (global WebSocket; the token as the `bearer.`
// subprotocol entry) and in Node (pass `ws`'s WebSocket; the token as an
// Authorization header). Events are dispatched as messages arrive: there
// is no queue inside, and pending requests are bounded by maxInFlight.

import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { type Backoff, defaultBackoff, delay, serverHint } from "./backoff.js";
import {
  type BrowseResult,
  ClientMessageSchema,
  type Error as ErrorMessage,
  type HistoryPoint,
  type HistoryResult,
  type ResumeOutcome,
  type ServerMessage,
  ServerMessageSchema,
  type TagInfo,
  type TagUpdate,
  type Value,
  ValueSchema,
  type Welcome,
} from "./gen/tagstream/v1/tagstream_pb.js";
import { GapError, Mirror, ProtocolError } from "./mirror.js";
import { Status, statusName } from "./status.js";

export const SUBPROTOCOL = "tagstream.v1";

/** The WebSocket API both browsers and `ws` provide. */
export interface SocketLike {
  binaryType: string;
  readonly readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
}

export type SocketConstructor = new (
  url: string,
  protocols: string[],
  options?: { headers: Record<string, string> },
) => SocketLike;

export interface Options {
  /** ws://host:port/api/v1/stream or wss://... */
  url: string;
  /** Sent in Hello. */
  clientName?: string;
  /** Patterns subscribed at connect and at every reconnect (default ["#"]). */
  subscribe?: string[];
  /** A fixed token, or a provider asked before each connect and before expiry (then sent as Refresh). */
  token?: string | (() => string | Promise<string>);
  /** "header" (Node with ws) or "subprotocol" (browsers). Default: header with a custom constructor. */
  tokenIn?: "header" | "subprotocol";
  /** The WebSocket constructor (Node: `import WebSocket from "ws"`); default: the global one. */
  WebSocket?: SocketConstructor;
  backoff?: Backoff;
  writeTimeoutMs?: number;
  /** 0: never ping. */
  pingIntervalMs?: number;
  refreshBeforeMs?: number;
  maxInFlight?: number;
  /**
   * At most one Delta per this many ms (protocol.md Pacing): a wallboard
   * or a slow link asks for the latest value every second, not every
   * change. 0 (default): every change as it comes. The server may revise
   * it: `publishIntervalMs` holds what it granted.
   */
  publishIntervalMs?: number;
  /** For tests of the schedule. */
  random?: () => number;
}

export type Stop =
  | { reason: "closed" }
  | { reason: "refused"; status: number }
  | { reason: "told"; code: number; message: string };

export type State =
  | { kind: "connecting"; attempt: number }
  | { kind: "live"; outcome: ResumeOutcome }
  | { kind: "waiting"; delayMs: number; reason: string }
  | { kind: "stopped"; stop: Stop };

/** One tag's new state. */
export interface Change {
  name: string;
  info: TagInfo;
  update: TagUpdate;
}

export interface WriteOutcome {
  status: number;
  statusName: string;
  message: string;
  good: boolean;
}

export type WriteErrorCode = "not-connected" | "connection-lost" | "timeout" | "busy" | "stopped";

/** A request that got no answer from the server. */
export class WriteError extends Error {
  constructor(
    readonly code: WriteErrorCode,
    message: string,
  ) {
    super(message);
    this.name = "WriteError";
  }
}

/** One tag's recent values (protocol.md History), oldest first. */
export interface Series {
  name: string;
  info: TagInfo;
  points: HistoryPoint[];
  /** The kept values reach back to the start asked for. */
  complete: boolean;
  /** Thinned to maxPoints (first, min, max, last per time bucket and status changes). */
  decimated: boolean;
}

/**
 * Recent values as of `seq`, the connection's position: each series ends
 * with its tag's state there, and the changes after it continue it.
 */
export interface History {
  seq: bigint;
  /** A tag missing here is unknown, hidden, or keeps no history. */
  series: Series[];
}

type Events = {
  state: [State];
  welcome: [Welcome];
  catalog: [TagInfo[]];
  /** One batch (a Snapshot chunk or a Delta). */
  changes: [Change[]];
  /** Each tag of each batch. */
  change: [Change];
  /** Ping round trip, ms. */
  latency: [number];
  /** The pacing the server granted, ms (Welcome, then each Paced). */
  paced: [number];
  /** A history answer, in its place among the changes (the changes after it continue it). */
  history: [History];
  serverError: [ErrorMessage];
  /** Every server message, after the mirror applied it (diagnostics, tests). */
  message: [ServerMessage];
};

type Listener<K extends keyof Events> = (...args: Events[K]) => void;

interface Pending<T> {
  resolve: (v: T) => void;
  reject: (e: WriteError) => void;
  timer: ReturnType<typeof setTimeout>;
}

type Ended = { kind: "closed" } | { kind: "gap"; why: string } | { kind: "broken"; why: string };

/** Accepts a JS value for a write: number -> f64, bigint -> i64, boolean, string. */
export function toValue(v: number | bigint | boolean | string): Value {
  switch (typeof v) {
    case "number":
      return create(ValueSchema, { kind: { case: "f64", value: v } });
    case "bigint":
      return create(ValueSchema, { kind: { case: "i64", value: v } });
    case "boolean":
      return create(ValueSchema, { kind: { case: "bool", value: v } });
    default:
      return create(ValueSchema, { kind: { case: "text", value: v } });
  }
}

function nowUs(): bigint {
  return BigInt(Math.round((performance.timeOrigin + performance.now()) * 1000));
}

export class Client {
  readonly mirror = new Mirror();
  state: State = { kind: "connecting", attempt: 0 };
  welcome: Welcome | undefined;
  latencyMs: number | undefined;
  /** The pacing in force, ms, as the server granted it (0: unpaced). */
  publishIntervalMs = 0;

  private readonly opts: Required<Omit<Options, "token" | "tokenIn" | "WebSocket">> & Pick<Options, "token">;
  private readonly ctor: SocketConstructor;
  private readonly header: boolean;
  private readonly listeners = new Map<keyof Events, Set<unknown>>();
  private ws: SocketLike | undefined;
  private attempt = 0;
  private nextId = 1n;
  private ended: Ended | undefined;
  private refusedStatus: number | undefined;
  private stopped = false;
  private readonly writes = new Map<bigint, Pending<WriteOutcome>>();
  private readonly browses = new Map<bigint, Pending<BrowseResult>>();
  private readonly histories = new Map<bigint, Pending<History>>();
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private pingTimer: ReturnType<typeof setInterval> | undefined;
  private refreshTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(options: Options) {
    this.opts = {
      url: options.url,
      clientName: options.clientName ?? "tagstream-client-ts",
      subscribe: [...(options.subscribe ?? ["#"])],
      token: options.token,
      backoff: options.backoff ?? defaultBackoff,
      writeTimeoutMs: options.writeTimeoutMs ?? 10_000,
      pingIntervalMs: options.pingIntervalMs ?? 5_000,
      refreshBeforeMs: options.refreshBeforeMs ?? 30_000,
      maxInFlight: options.maxInFlight ?? 64,
      publishIntervalMs: options.publishIntervalMs ?? 0,
      random: options.random ?? Math.random,
    };
    const global = (globalThis as { WebSocket?: SocketConstructor }).WebSocket;
    const ctor = options.WebSocket ?? global;
    if (!ctor) throw new Error("no WebSocket: pass options.WebSocket (Node: the ws package)");
    this.ctor = ctor;
    this.header = (options.tokenIn ?? (options.WebSocket ? "header" : "subprotocol")) === "header";
  }

  /** Subscribes to an event; returns the unsubscribe function. */
  on<K extends keyof Events>(event: K, fn: Listener<K>): () => void {
    let set = this.listeners.get(event);
    if (!set) {
      set = new Set();
      this.listeners.set(event, set);
    }
    set.add(fn);
    return () => set.delete(fn);
  }

  /** Connects (and keeps reconnecting until close() or a stop). */
  start(): this {
    void this.connect();
    return this;
  }

  /**
   * Resolves once the session is live (at once if it is): `start()` then
   * `await ready()` before a write. Rejects with WriteError "stopped" if
   * the client stops first, "timeout" after `timeoutMs`.
   */
  ready(timeoutMs = 10_000): Promise<void> {
    if (this.state.kind === "live") return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      let off = () => {};
      const timer = setTimeout(() => {
        off();
        reject(new WriteError("timeout", `not live within ${timeoutMs} ms`));
      }, timeoutMs);
      off = this.on("state", (s) => {
        if (s.kind !== "live" && s.kind !== "stopped") return;
        clearTimeout(timer);
        off();
        if (s.kind === "live") resolve();
        else reject(new WriteError("stopped", "client stopped before it was live"));
      });
    });
  }

  /** Closes the connection and stops for good. */
  close(): void {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    if (this.ws) {
      this.ended = { kind: "closed" };
      this.ws.close(1000);
    } else {
      this.setState({ kind: "stopped", stop: { reason: "closed" } });
    }
  }

  /** Writes a value and resolves with the WriteResult (rejects with WriteError without one). */
  write(tag: string, value: number | bigint | boolean | string | Value): Promise<WriteOutcome> {
    const v = typeof value === "object" ? value : toValue(value);
    return this.request(this.writes, (requestId) => ({
      case: "write",
      value: { requestId, tag, value: v },
    }));
  }

  /** One page of the tags matching `pattern`, subscribed or not. */
  browse(pattern: string, limit = 0, after = ""): Promise<BrowseResult> {
    return this.request(this.browses, (requestId) => ({
      case: "browse",
      value: { requestId, pattern, limit, after },
    }));
  }

  /**
   * Recent values of `tags` (names, at most 100) with source times in
   * `start`..`end` (Dates; undefined: as far back as kept / now), at most
   * `maxPoints` per tag (0: the server's cap). The answer also comes as
   * the `history` event, in its place among the `change` events: a trend
   * that starts from it and appends the changes after it has no gap and
   * no overlap.
   */
  history(tags: string[], start?: Date, end?: Date, maxPoints = 0): Promise<History> {
    const us = (d?: Date) => (d ? BigInt(d.getTime()) * 1000n : 0n);
    return this.request(this.histories, (requestId) => ({
      case: "history",
      value: { requestId, tags, startUs: us(start), endUs: us(end), maxPoints },
    }));
  }

  /**
   * Asks for at most one Delta per `ms` from now on (0: every change), on
   * this connection and the next ones; the `paced` event reports what the
   * server granted.
   */
  pace(ms: number): void {
    this.opts.publishIntervalMs = ms;
    this.send({ case: "pace", value: { publishIntervalMs: ms } });
  }

  subscribe(patterns: string[]): void {
    for (const p of patterns) if (!this.opts.subscribe.includes(p)) this.opts.subscribe.push(p);
    this.send({ case: "subscribe", value: { patterns } });
  }

  unsubscribe(patterns: string[]): void {
    this.opts.subscribe = this.opts.subscribe.filter((p) => !patterns.includes(p));
    this.send({ case: "unsubscribe", value: { patterns } });
  }

  private emit<K extends keyof Events>(event: K, ...args: Events[K]): void {
    for (const fn of this.listeners.get(event) ?? []) (fn as Listener<K>)(...args);
  }

  private setState(state: State): void {
    this.state = state;
    this.emit("state", state);
  }

  private request<T>(
    pending: Map<bigint, Pending<T>>,
    message: (id: bigint) => Parameters<Client["send"]>[0],
  ): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      if (this.stopped) return reject(new WriteError("stopped", "client stopped"));
      if (this.state.kind !== "live" || !this.ws) {
        // Never queued for later: a setpoint sent minutes late is worse
        // than one refused now.
        return reject(new WriteError("not-connected", "not connected"));
      }
      if (this.writes.size + this.browses.size + this.histories.size >= this.opts.maxInFlight) {
        return reject(new WriteError("busy", "too many requests in flight"));
      }
      const id = this.nextId++;
      const ms = this.opts.writeTimeoutMs;
      const timer = setTimeout(() => {
        pending.delete(id);
        reject(new WriteError("timeout", `no answer within ${ms} ms`));
      }, ms);
      pending.set(id, { resolve, reject, timer });
      this.send(message(id));
    });
  }

  private send(kind: NonNullable<Parameters<typeof create<typeof ClientMessageSchema>>[1]>["kind"]): void {
    const ws = this.ws;
    if (ws?.readyState !== 1) return;
    ws.send(toBinary(ClientMessageSchema, create(ClientMessageSchema, { kind })));
  }

  private async token(): Promise<string | undefined> {
    const t = this.opts.token;
    return typeof t === "function" ? await t() : t;
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    this.setState({ kind: "connecting", attempt: this.attempt });
    let token: string | undefined;
    try {
      token = await this.token();
    } catch (e) {
      this.retry(delay(this.opts.backoff, this.attempt, this.opts.random), `no token: ${e}`);
      return;
    }
    const protocols = [SUBPROTOCOL];
    let ws: SocketLike;
    try {
      if (token && this.header) {
        ws = new this.ctor(this.opts.url, protocols, { headers: { Authorization: `Bearer ${token}` } });
      } else {
        if (token) protocols.push(`bearer.${token}`);
        ws = new this.ctor(this.opts.url, protocols);
      }
    } catch (e) {
      this.retry(delay(this.opts.backoff, this.attempt, this.opts.random), String(e));
      return;
    }
    this.ws = ws;
    this.ended = undefined;
    this.refusedStatus = undefined;
    ws.binaryType = "arraybuffer";
    ws.onopen = () => {
      const resume = this.mirror.resume();
      this.send({
        case: "hello",
        value: {
          clientName: this.opts.clientName,
          resume,
          subscribe: this.opts.subscribe,
          publishIntervalMs: this.opts.publishIntervalMs,
        },
      });
      if (this.opts.pingIntervalMs > 0) {
        this.pingTimer = setInterval(() => {
          this.send({ case: "ping", value: { nonce: this.nextId, clientTimeUs: nowUs() } });
        }, this.opts.pingIntervalMs);
      }
    };
    ws.onerror = (ev) => {
      // ws (Node) reports a refused handshake's status here; a browser
      // reports nothing (the web view asks /api/v1/info instead).
      const m = /Unexpected server response: (\d+)/.exec(String((ev as { message?: string })?.message));
      if (m) this.refusedStatus = Number(m[1]);
    };
    ws.onmessage = (ev) => this.onMessage(ws, ev.data);
    ws.onclose = (ev) => this.onClose(ws, ev.code, ev.reason);
  }

  private onMessage(ws: SocketLike, data: unknown): void {
    if (ws !== this.ws || this.ended) return;
    if (!(data instanceof ArrayBuffer)) {
      this.end({ kind: "broken", why: "server sent a text frame" });
      return;
    }
    let msg: ServerMessage;
    try {
      msg = fromBinary(ServerMessageSchema, new Uint8Array(data));
    } catch (e) {
      this.end({ kind: "broken", why: `undecodable server message: ${e}` });
      return;
    }
    try {
      this.mirror.apply(msg);
    } catch (e) {
      if (e instanceof GapError) this.end({ kind: "gap", why: e.message });
      else if (e instanceof ProtocolError) this.end({ kind: "broken", why: e.message });
      else throw e;
      return;
    }
    this.emit("message", msg);
    const k = msg.kind;
    switch (k.case) {
      case "welcome": {
        this.attempt = 0;
        this.welcome = k.value;
        this.scheduleRefresh(k.value.tokenExpiresAtUs);
        this.emit("welcome", k.value);
        this.publishIntervalMs = k.value.publishIntervalMs;
        this.emit("paced", k.value.publishIntervalMs);
        this.setState({ kind: "live", outcome: k.value.resume });
        break;
      }
      case "paced":
        this.publishIntervalMs = k.value.publishIntervalMs;
        this.emit("paced", k.value.publishIntervalMs);
        break;
      case "catalog":
        this.emit("catalog", k.value.tags);
        break;
      case "snapshot":
        this.changes(k.value.tags);
        break;
      case "delta":
        this.changes(k.value.updates);
        break;
      case "writeResult": {
        const p = this.writes.get(k.value.requestId);
        if (p) {
          this.writes.delete(k.value.requestId);
          clearTimeout(p.timer);
          const { status, message } = k.value;
          p.resolve({ status, statusName: statusName(status), message, good: status >>> 30 === 0 });
        }
        break;
      }
      case "browseResult": {
        const p = this.browses.get(k.value.requestId);
        if (p) {
          this.browses.delete(k.value.requestId);
          clearTimeout(p.timer);
          p.resolve(k.value);
        }
        break;
      }
      case "historyResult": {
        const history = this.toHistory(k.value);
        this.emit("history", history);
        const p = this.histories.get(k.value.requestId);
        if (p) {
          this.histories.delete(k.value.requestId);
          clearTimeout(p.timer);
          p.resolve(history);
        }
        break;
      }
      case "pong": {
        const rtt = Number(nowUs() - k.value.clientTimeUs) / 1000;
        this.latencyMs = Math.max(0, rtt);
        this.emit("latency", this.latencyMs);
        break;
      }
      case "refreshed":
        this.scheduleRefresh(k.value.expiresAtUs);
        break;
      case "error":
        this.emit("serverError", k.value);
        break;
    }
  }

  private toHistory(h: HistoryResult): History {
    const series: Series[] = [];
    for (const s of h.series) {
      const info = this.mirror.catalog.get(s.id);
      if (info) {
        series.push({
          name: info.name,
          info,
          points: s.points,
          complete: s.complete,
          decimated: s.decimated,
        });
      }
    }
    return { seq: h.seq, series };
  }

  private changes(updates: TagUpdate[]): void {
    if (updates.length === 0) return;
    const batch: Change[] = [];
    for (const update of updates) {
      const info = this.mirror.catalog.get(update.id);
      if (info) batch.push({ name: info.name, info, update });
    }
    this.emit("changes", batch);
    for (const c of batch) this.emit("change", c);
  }

  private scheduleRefresh(expiresAtUs: bigint): void {
    clearTimeout(this.refreshTimer);
    if (expiresAtUs <= 0n || typeof this.opts.token !== "function") return;
    const leftMs = Number(expiresAtUs - nowUs()) / 1000;
    const early = Math.min(this.opts.refreshBeforeMs, leftMs / 2);
    this.refreshTimer = setTimeout(
      async () => {
        try {
          const token = await this.token();
          if (token) this.send({ case: "refresh", value: { token } });
        } catch {
          // Without a fresh token the server closes with 4001 at expiry;
          // the reconnect asks the provider again.
        }
      },
      Math.max(0, leftMs - early),
    );
  }

  /** Ends the connection from this side (a gap, a violation). */
  private end(ended: Ended): void {
    this.ended = ended;
    this.ws?.close(1000);
  }

  private onClose(ws: SocketLike, code: number, reason: string): void {
    if (ws !== this.ws) return;
    this.ws = undefined;
    clearInterval(this.pingTimer);
    clearTimeout(this.refreshTimer);
    for (const pending of [this.writes, this.browses, this.histories] as Map<bigint, Pending<unknown>>[]) {
      for (const p of pending.values()) {
        clearTimeout(p.timer);
        p.reject(new WriteError("connection-lost", "connection lost before the answer"));
      }
      pending.clear();
    }
    const ended = this.ended;
    const b = this.opts.backoff;
    const random = this.opts.random;
    if (this.stopped || ended?.kind === "closed") {
      this.setState({ kind: "stopped", stop: { reason: "closed" } });
      return;
    }
    const status = this.refusedStatus;
    if ((status === 401 || status === 403) && typeof this.opts.token !== "function") {
      // Retrying does not make a fixed token valid.
      this.stopped = true;
      this.setState({ kind: "stopped", stop: { reason: "refused", status } });
      return;
    }
    if (code >= 4500 && code <= 4999) {
      this.stopped = true;
      this.setState({ kind: "stopped", stop: { reason: "told", code, message: reason } });
      return;
    }
    let wait: number;
    let why: string;
    if (ended?.kind === "gap") {
      [wait, why] = [delay(b, 0, random), ended.why];
    } else if (ended?.kind === "broken") {
      this.mirror.clear();
      [wait, why] = [delay(b, this.attempt, random), ended.why];
    } else if (code === 1001) {
      [wait, why] = [serverHint(reason, b.capMs) ?? delay(b, 0, random), "server going away (1001)"];
    } else {
      const what = status ? `handshake refused (${status})` : `closed: ${code} ${reason}`.trim();
      [wait, why] = [delay(b, this.attempt, random), what];
    }
    this.retry(wait, why);
  }

  private retry(delayMs: number, reason: string): void {
    this.attempt += 1;
    this.setState({ kind: "waiting", delayMs, reason });
    this.retryTimer = setTimeout(() => void this.connect(), delayMs);
  }
}

export { Status, statusName };
