// The TypeScript SDK against a real `tagstream demo` (the binary in
// TAGSTREAM_BIN; `cargo test --test clients` sets it): real Modbus devices
// behind it, real sockets, node's own test runner. Cuts go through a TCP
// relay in this process; a restart kills and restarts the server.

import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { readFileSync } from "node:fs";
import { after, test } from "node:test";
import WebSocket from "ws";
import {
  Client,
  ceiling,
  formatValue,
  type Options,
  proto,
  type SocketConstructor,
  type State,
  shortestF32,
  type WriteError,
} from "../src/index.js";
import { DEADLINE_MS, Demo, freePort, Relay, sleep } from "./harness.js";

/** Resolves when `pred` holds for an event of the client (or fails at the deadline). */
function until<T>(
  client: Client,
  event: "state" | "welcome" | "change",
  pred: (arg: never) => T | undefined,
): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no matching ${event} within ${DEADLINE_MS} ms`));
    }, DEADLINE_MS);
    const off = client.on(event as "state", (arg: State) => {
      const got = pred(arg as never);
      if (got !== undefined) {
        clearTimeout(timer);
        off();
        resolve(got);
      }
    });
  });
}

const live = (outcome: proto.ResumeOutcome) => (s: State) =>
  s.kind === "live" && s.outcome === outcome ? true : undefined;

function client(url: string, extra: Partial<Options> = {}): Client {
  return new Client({
    url,
    WebSocket: WebSocket as unknown as SocketConstructor,
    subscribe: ["plant/boiler1/#"],
    backoff: { initialMs: 50, capMs: 400 },
    pingIntervalMs: 200,
    ...extra,
  });
}

const demos: Demo[] = [];
after(async () => {
  for (const d of demos) await d.kill();
});

async function demo(): Promise<Demo> {
  const d = await Demo.start();
  demos.push(d);
  return d;
}

test("snapshot, then a delta after a device change (a setpoint written and read back)", async () => {
  const d = await demo();
  const c = client(d.url);
  // Listen before start: the snapshot follows the Welcome in the same read.
  const snapshot = until(c, "change", (ch: { name: string }) =>
    ch.name === "plant/boiler1/setpoint" ? true : undefined,
  );
  c.start();
  await snapshot;
  assert.ok(c.mirror.value("plant/boiler1/temperature"), "the snapshot holds every subscribed tag");
  assert.equal(c.mirror.info("plant/boiler1/pressure")?.resolution, 0.01);
  const written = until(c, "change", (ch: { name: string; update: proto.TagUpdate }) =>
    ch.name === "plant/boiler1/setpoint" && formatValue(ch.update.value, c.mirror.info(ch.name)) === "66.5"
      ? true
      : undefined,
  );
  const outcome = await c.write("plant/boiler1/setpoint", 66.5);
  assert.equal(outcome.statusName, "Good");
  await written;
  c.close();
});

test("a write's result carries the typed status name", async () => {
  const d = await demo();
  const c = client(d.url).start();
  await until(c, "state", live(proto.ResumeOutcome.FRESH));
  const far = await c.write("plant/boiler1/setpoint", 1000);
  assert.equal(far.statusName, "BadOutOfRange");
  assert.equal(far.good, false);
  const ro = await c.write("plant/boiler1/temperature", 1);
  assert.equal(ro.statusName, "BadNotWritable");
  const page = await c.browse("plant/line1/+", 2);
  assert.equal(page.tags.length, 2);
  assert.notEqual(page.nextAfter, "");
  c.close();
  await assert.rejects(c.write("plant/boiler1/setpoint", 1), (e: WriteError) => e.code === "stopped");
});

test("start, await ready(), then write: the write is not refused as not connected", async () => {
  const d = await demo();
  const c = client(d.url).start();
  await c.ready();
  const r = await c.write("plant/boiler1/setpoint", 61);
  assert.equal(r.statusName, "Good");
  await c.ready(); // live already: at once
  c.close();
  const stopped = client("ws://127.0.0.1:9/api/v1/stream");
  await assert.rejects(stopped.start().ready(300), (e: WriteError) => e.code === "timeout");
  stopped.close();
});

test("pacing: asked in the Hello, granted in the Welcome, changed with pace()", async () => {
  const d = await demo();
  // No Pings: each Pong brings the connection current (a Delta) first.
  const c = client(d.url, { publishIntervalMs: 1000, pingIntervalMs: 0 }).start();
  await c.ready();
  assert.equal(c.publishIntervalMs, 1000);
  // Honoured: the boiler changes every 100 ms, the Deltas come once a second.
  let deltas = 0;
  const off = c.on("message", (m) => {
    if (m.kind.case === "delta") deltas++;
  });
  await sleep(3200);
  off();
  assert.ok(deltas >= 2 && deltas <= 4, `${deltas} Deltas in 3.2 s paced at 1 s`);
  const paced = new Promise<number>((resolve) => {
    const off = c.on("paced", (ms) => {
      off();
      resolve(ms);
    });
  });
  c.pace(120_000);
  assert.equal(await paced, 60_000, "the server caps it at 60 s");
  assert.equal(c.publishIntervalMs, 60_000);
  c.close();
});

test("history then live: the trend continues from the answer's seq with no gap and no overlap", async () => {
  const d = await demo();
  const c = client(d.url).start();
  await c.ready();
  await sleep(1500); // the demo's boiler changes every 100 ms
  const tag = "plant/boiler1/temperature";
  // Everything in the order it is dispatched.
  const order: Array<["history", Client["mirror"]["position"], number] | ["delta", bigint, number]> = [];
  const offHistory = c.on("history", (h) => {
    order.push(["history", c.mirror.position, h.series.length]);
  });
  const offMessage = c.on("message", (m) => {
    if (m.kind.case === "delta") order.push(["delta", m.kind.value.fromSeq, m.kind.value.updates.length]);
  });
  const h = await c.history([tag, "plant/no/such"], undefined, undefined, 0);
  await until(c, "change", (ch: { name: string }) => (ch.name === tag ? true : undefined));
  offHistory();
  offMessage();
  assert.deepEqual(
    h.series.map((s) => s.name),
    [tag],
    "an unknown tag is absent",
  );
  const series = h.series[0];
  assert.ok(series.points.length >= 5, `${series.points.length} points after 1.5 s`);
  assert.ok(series.complete && !series.decimated);
  const times = series.points.map((p) => p.sourceTimeUs);
  assert.ok(
    times.every((t, i) => i === 0 || t >= times[i - 1]),
    "in time order",
  );
  // The mirror was at the answer's seq when it was dispatched, and the
  // next Delta starts there (the mirror would have reported a gap else).
  const at = order.findIndex((e) => e[0] === "history");
  assert.ok(at >= 0, "the history event came");
  assert.equal(order[at][1], h.seq);
  const next = order.slice(at + 1).find((e) => e[0] === "delta");
  assert.ok(next, "a delta followed");
  assert.equal(next[1], h.seq);
  // The last point is the tag's state at seq; the first change after it is newer.
  const state = c.mirror.values.get(series.info.id);
  assert.ok(state && state.sourceTimeUs > times[times.length - 1]);
  // Too many names: LIMIT_EXCEEDED, the session stays.
  const errors: proto.Error[] = [];
  c.on("serverError", (e) => errors.push(e));
  const names = Array.from({ length: 101 }, (_, i) => `plant/${i}`);
  const refused = c.history(names).catch((e: WriteError) => e.code);
  await until(c, "change", () => (errors.length > 0 ? true : undefined));
  assert.equal(errors[0].code, proto.ErrorCode.LIMIT_EXCEEDED);
  assert.equal(c.state.kind, "live");
  c.close();
  assert.equal(await refused, "connection-lost");
});

test("a dropped connection resumes with one delta and no snapshot", async () => {
  const d = await demo();
  const relay = await new Relay(d.port).listen();
  const c = client(`ws://127.0.0.1:${relay.port}/api/v1/stream`).start();
  await until(c, "state", live(proto.ResumeOutcome.FRESH));
  const epoch = c.welcome?.epoch;
  const kinds: string[] = [];
  const seen = (msg: proto.ServerMessage) => kinds.push(msg.kind.case ?? "?");
  await relay.cut();
  await until(c, "state", (s: State) => (s.kind === "waiting" ? true : undefined));
  // The plant moves on while the client is away.
  await sleep(400);
  const resumed = until(c, "state", live(proto.ResumeOutcome.RESUMED));
  c.on("message", seen);
  await relay.listen();
  await resumed;
  await sleep(300);
  assert.equal(c.welcome?.epoch, epoch);
  assert.equal(kinds[0], "welcome");
  assert.equal(kinds[1], "delta", `exactly one Delta after RESUMED: ${kinds}`);
  assert.ok(!kinds.includes("snapshot"), `no snapshot after RESUMED: ${kinds}`);
  c.close();
  await relay.cut();
});

test("a server restart is a resync: new epoch, mirror rebuilt", async () => {
  const d = await demo();
  const c = client(d.url).start();
  await until(c, "state", live(proto.ResumeOutcome.FRESH));
  const epoch = c.welcome?.epoch;
  await d.kill();
  await until(c, "state", (s: State) => (s.kind === "waiting" ? true : undefined));
  const resync = until(c, "state", live(proto.ResumeOutcome.RESYNC));
  await d.spawn();
  await resync;
  assert.notEqual(c.welcome?.epoch, epoch);
  assert.equal(c.mirror.epoch, c.welcome?.epoch);
  await until(c, "change", (ch: { name: string }) =>
    ch.name === "plant/boiler1/temperature" ? true : undefined,
  );
  c.close();
});

test("a refused token stops the client with the handshake's status", async () => {
  const d = await demo();
  const c = client(d.url, { token: "not-a-token" }).start();
  const stop = await until(c, "state", (s: State) => (s.kind === "stopped" ? s.stop : undefined));
  assert.deepEqual(stop, { reason: "refused", status: 401 });
  await assert.rejects(c.write("plant/boiler1/setpoint", 1), (e: WriteError) => e.code === "stopped");
});

test("while the server is away, retries follow the capped, jittered schedule", async () => {
  const port = await freePort();
  const backoff = { initialMs: 20, capMs: 160 };
  const c = client(`ws://127.0.0.1:${port}/api/v1/stream`, { backoff, pingIntervalMs: 0 });
  const delays: number[] = [];
  const done = new Promise<void>((resolve) => {
    c.on("state", (s) => {
      if (s.kind === "waiting") delays.push(s.delayMs);
      if (delays.length === 10) resolve();
    });
  });
  c.start();
  await done;
  c.close();
  delays.forEach((ms, attempt) => {
    assert.ok(ms >= 0 && ms <= ceiling(backoff, attempt), `attempt ${attempt}: ${ms}`);
    assert.ok(ms <= backoff.capMs);
  });
  // Full jitter, not a fixed ladder: draws are spread (odds of ten equal draws are nil).
  assert.ok(new Set(delays).size > 5, `${delays}`);
  assert.deepEqual(
    [0, 1, 2, 3, 4, 5].map((a) => ceiling(backoff, a)),
    [20, 40, 80, 160, 160, 160],
  );
});

test("values print as people read them", () => {
  const f32 = Math.fround(56.1767);
  assert.equal(String(f32), "56.176700592041016");
  assert.equal(shortestF32(f32), "56.1767");
  const info = (type: proto.DataType, resolution: number, decimals?: number) =>
    ({ type, resolution, decimals }) as proto.TagInfo;
  const v = (x: number) => ({ kind: { case: "f64", value: x } }) as proto.Value;
  assert.equal(formatValue(v(559 * 0.1), info(proto.DataType.F64, 0.1)), "55.9");
  assert.equal(formatValue(v(f32), info(proto.DataType.F32, 0)), "56.1767");
  assert.equal(formatValue(undefined), "-");
  // clients/format-vectors.txt: the same rule as Rust and Python.
  const vectors = readFileSync(new URL("../../../format-vectors.txt", import.meta.url), "utf8");
  for (const line of vectors.split("\n")) {
    if (!line.trim() || line.startsWith("#")) continue;
    const [kind, resolution, places, value, text] = line.trim().split(/\s+/);
    const type = kind === "F32" ? proto.DataType.F32 : proto.DataType.F64;
    const number = value === "inf" ? Infinity : value === "-inf" ? -Infinity : Number(value);
    const d = places === "-" ? undefined : Number(places);
    assert.equal(formatValue(v(number), info(type, Number(resolution), d)), text, line);
  }
});

const SECRET = "ts-sdk-hs256-secret-0123456789abcdef";

/** A JWT signed here (no JWT library needed for a test). */
function hs256(claims: object): string {
  const b64 = (v: string | Buffer) => Buffer.from(v).toString("base64url");
  const unsigned = `${b64(JSON.stringify({ alg: "HS256", typ: "JWT" }))}.${b64(JSON.stringify(claims))}`;
  return `${unsigned}.${b64(createHmac("sha256", SECRET).update(unsigned).digest())}`;
}

test("a token provider refreshes the session before its token expires", async () => {
  const config =
    '[server]\nlisten = "127.0.0.1:{port}"\n[auth]\njwt = { hs256_secret_env = "JWT_SECRET", leeway = "0s" }\n' +
    '[[sim]]\nname = "sim"\nprefix = "sim"\ntags = 4\nrate = 20\n';
  const d = await Demo.serve(config, { JWT_SECRET: SECRET });
  demos.push(d);
  let minted = 0;
  // Each token lives 2 s: the session outlives several only by Refresh.
  const token = () => {
    minted += 1;
    return hs256({ sub: "op", exp: Math.floor(Date.now() / 1000) + 2, read: ["#"], write: [] });
  };
  const c = client(d.url, { token, subscribe: ["sim/#"] }).start();
  await until(c, "state", live(proto.ResumeOutcome.FRESH));
  assert.ok((c.welcome?.tokenExpiresAtUs ?? 0n) > 0n);
  const states: State[] = [];
  c.on("state", (s) => states.push(s));
  await sleep(6000);
  assert.deepEqual(states, [], "the session stayed up");
  assert.ok(minted >= 3, `the provider was asked again (${minted})`);
  c.close();
});
