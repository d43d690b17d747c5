// The web view in a real headless Chromium (Debian's, driven by
// playwright-core), against a real `tagstream demo`: it sees values move,
// writes a setpoint through the dialog and the write reaches the Modbus
// device (read back with `tagstream probe`), rides out a cut connection
// (RESUMED) and a server restart (RESYNC), and saves a screenshot.

import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, test } from "node:test";
import { chromium } from "playwright-core";
import { BIN, Demo, freePort, Relay } from "../../clients/typescript/dist/test/harness.js";

const CHROMIUM = process.env.TAGSTREAM_CHROMIUM ?? "/usr/bin/chromium";
const SHOT = process.env.TAGSTREAM_SCREENSHOT ?? "../target/webview.png";
const WAIT = { timeout: 20_000 };

const cleanup = [];
after(async () => {
  for (const f of cleanup.reverse()) await f();
});

/** The f32 in holding registers 4..6 of a device, read by `tagstream probe`. */
function probeSetpoint(device) {
  const out = execFileSync(BIN, ["probe", "--address", device, "--register", "4", "--count", "2"]).toString();
  const m = /f32 ABCD\s+(\S+)/.exec(out);
  assert.ok(m, out);
  return Number(m[1]);
}

test("the web view shows live values, writes to the device, and survives a cut and a restart", async () => {
  assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM}`);
  const demo = await Demo.start();
  cleanup.push(() => demo.kill());
  const relay = await new Relay(demo.port).listen();
  cleanup.push(() => relay.cut());
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic"],
  });
  cleanup.push(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 1280, height: 760 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  // The demo keeps history: let it gather some before the page opens.
  await new Promise((r) => setTimeout(r, 3000));
  const opened = Date.now();
  await page.goto(`http://127.0.0.1:${relay.port}/`);

  // Live, with the tree from Browse and the subscribed tags in the table.
  await page.waitForSelector('#conn[data-state="live"]', WAIT);
  assert.match(await page.textContent("#conn"), /FRESH/);
  await page.waitForSelector('#tree li[data-path="plant/boiler1"]', WAIT);
  const temp = 'tr[data-tag="plant/boiler1/temperature"] td.value';
  await page.waitForSelector(temp, WAIT);
  const first = await page.textContent(temp);
  await page.waitForFunction(
    ([sel, was]) => document.querySelector(sel)?.textContent !== was,
    [temp, first],
    WAIT,
  );
  const status = await page.getAttribute(
    'tr[data-tag="plant/boiler1/temperature"] td.status',
    "data-quality",
  );
  assert.equal(status, "Good");
  // The trend is full when the page opens: its first point is older than
  // the page (it came from the server's history, not from live changes).
  const row = 'tr[data-tag="plant/boiler1/temperature"]';
  await page.waitForFunction((sel) => document.querySelector(sel)?.dataset.historyFrom, row, WAIT);
  const from = Number(await page.getAttribute(row, "data-history-from"));
  assert.ok(from < opened - 1500, `trend starts at ${from}, the page opened at ${opened}`);
  const spark = await page.getAttribute(`${row} svg.spark polyline`, "points");
  assert.ok(spark.split(" ").length >= 20, `a full sparkline: ${spark}`);
  // The trend panel: click the name; the last ten minutes, continued live.
  await page.click(`${row} td.tag`);
  await page.waitForFunction(
    () => /points/.test(document.querySelector("#trend-range")?.textContent ?? ""),
    null,
    WAIT,
  );
  assert.ok((await page.getAttribute("#trend-line", "points")).length > 0);
  await page.click("#trend-close");

  // Latency from Ping/Pong (every 2 s).
  await page.waitForFunction(
    () => /ms$/.test(document.querySelector("#latency")?.textContent ?? ""),
    null,
    WAIT,
  );

  // Text shows as it is, not quoted; the demo's anonymous principal in words.
  await page.waitForFunction(
    () => document.querySelector('tr[data-tag="plant/line1/product"] td.value')?.textContent === "WIDGET-A",
    null,
    WAIT,
  );
  assert.match(await page.textContent("#principal"), /may read: everything · may write: everything/);
  // The tag's `decimals` (1 in the demo) decides the digits, not f32's shortest form.
  assert.match(await page.textContent(temp), /^-?\d+\.\d$/);
  // Epoch and seq live in a details panel, closed at first.
  assert.equal(await page.isVisible("#position"), false, "seq out of the header");
  await page.click("#details summary");
  assert.match(await page.textContent("#epoch"), /^[0-9a-f]{16}$/);
  assert.match(await page.textContent("#position"), /^\d+$/);
  assert.match(await page.textContent("#heartbeat"), /^\d+(\.\d+)? s$/);
  await page.click("#details summary");
  // A filter keeps each match's parent path (muted), so a match shows where it sits.
  await page.fill("#filter", "temperature");
  await page.waitForSelector('#tree li[data-path="plant/boiler1/temperature"]:not(.context)', WAIT);
  for (const parent of ["plant", "plant/boiler1"]) {
    assert.ok(await page.isVisible(`#tree li.context[data-path="${parent}"]`), `${parent} kept`);
  }
  assert.equal(await page.isVisible('#tree li[data-path="plant/line1"]'), false, "no match under line1");
  await page.fill("#filter", "");

  // Pacing: the "slow link" box, then a hidden tab, each ask for one
  // update a second; live again when unticked and shown.
  const paced = (text) =>
    page.waitForFunction((t) => document.querySelector("#paced")?.textContent === t, text, WAIT);
  await page.check("#slow");
  await paced("paced 1 s");
  await page.uncheck("#slow");
  await paced("");
  const hide = (hidden) =>
    page.evaluate((h) => {
      Object.defineProperty(document, "hidden", { value: h, configurable: true });
      document.dispatchEvent(new Event("visibilitychange"));
    }, hidden);
  // Deltas per second measured in the page: at most about one while
  // hidden (paced 1 s; the window is 3 s), many again when shown.
  const rate = () => page.evaluate(() => Number(document.querySelector("#rate")?.dataset.rate));
  await hide(true);
  await paced("paced 1 s");
  await new Promise((r) => setTimeout(r, 4000));
  const hidden = await rate();
  assert.ok(hidden <= 4 / 3, `${hidden} Deltas/s while hidden`);
  await hide(false);
  await paced("");
  await page.waitForFunction(() => Number(document.querySelector("#rate")?.dataset.rate) > 2, null, WAIT);

  // The filter narrows the table.
  await page.fill("#filter", "line1");
  assert.equal(await page.isVisible('tr[data-tag="plant/boiler1/temperature"]'), false);
  assert.equal(await page.isVisible('tr[data-tag="plant/line1/flow"]'), true);
  await page.fill("#filter", "plant/boiler1");

  // A write through the dialog, confirmed, answered Good, on the device.
  assert.equal(
    await page.isVisible('tr[data-tag="plant/boiler1/temperature"] button.write'),
    false,
    "no write control on a read-only tag",
  );
  await page.click('tr[data-tag="plant/boiler1/setpoint"] button.write');
  await page.fill("#write-value", "72.5");
  await page.click("#write-confirm");
  await page.waitForSelector('#write-result[data-status="Good"]', WAIT);
  assert.equal(probeSetpoint(demo.devices[0]), 72.5);
  await page.click("#write-cancel");
  await page.waitForFunction(
    () => document.querySelector('tr[data-tag="plant/boiler1/setpoint"] td.value')?.textContent === "72.5",
    null,
    WAIT,
  );

  // A cut connection: reconnecting, then RESUMED.
  await relay.cut();
  await page.waitForSelector('#conn:not([data-state="live"])', WAIT);
  // Stale, not healthy: the table greys out, a banner says since when,
  // and the write buttons are disabled.
  await page.waitForSelector("#tags[data-stale]", WAIT);
  assert.match(await page.textContent("#stale"), /stale since \d\d:\d\d:\d\d/);
  assert.ok(await page.isVisible("#stale"));
  assert.ok(
    await page.isDisabled('tr[data-tag="plant/boiler1/setpoint"] button.write'),
    "writes disabled while not connected",
  );
  await relay.listen();
  await page.waitForFunction(
    () => /RESUMED/.test(document.querySelector("#conn")?.textContent ?? ""),
    null,
    WAIT,
  );
  await page.waitForSelector("#tags:not([data-stale])", WAIT);
  assert.ok(await page.isHidden("#stale"));
  assert.ok(await page.isEnabled('tr[data-tag="plant/boiler1/setpoint"] button.write'));

  // A server restart: a new epoch, RESYNC, values again.
  await demo.kill();
  await page.waitForSelector('#conn:not([data-state="live"])', WAIT);
  await demo.spawn();
  await page.waitForFunction(
    () => /RESYNC/.test(document.querySelector("#conn")?.textContent ?? ""),
    null,
    WAIT,
  );
  await page.waitForSelector(temp, WAIT);
  await page.fill("#filter", "");
  // A few seconds of values, so the sparklines show a trend.
  await page.waitForTimeout(5000);

  mkdirSync(dirname(SHOT), { recursive: true });
  await page.screenshot({ path: SHOT });
  assert.deepEqual(errors, [], "no uncaught errors in the page");
});

test("a server that needs a token gets a prompt, and the token is sent as the bearer subprotocol", async () => {
  assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM}`);
  const dir = mkdtempSync(join(tmpdir(), "tagstream-web-"));
  cleanup.push(() => rmSync(dir, { recursive: true, force: true }));
  const port = await freePort();
  const config = join(dir, "token.toml");
  writeFileSync(
    config,
    `[server]\nlisten = "127.0.0.1:${port}"\n` +
      `[auth]\ntokens = [{ name = "op", token_env = "OP_TOKEN", read = ["sim/#"], write = [] }]\n` +
      `[[sim]]\nname = "sim"\nprefix = "sim"\ntags = 5\nrate = 20\n`,
  );
  const token = "web-view-token-0123456789abcdef";
  const server = spawn(BIN, ["run", "--config", config], {
    stdio: ["ignore", "ignore", "inherit"],
    env: { ...process.env, OP_TOKEN: token, RUST_LOG: "warn" },
  });
  cleanup.push(() => server.kill("SIGKILL"));
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic"],
  });
  cleanup.push(() => browser.close());
  const page = await browser.newPage();
  for (let i = 0; i < 200; i++) {
    try {
      await page.goto(`http://127.0.0.1:${port}/`);
      break;
    } catch {
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  // /api/v1/info says a token is needed: the page asks before it connects.
  await page.waitForSelector("#login[open]", WAIT);
  await page.fill("#token", token);
  await page.click("#token-ok");
  await page.waitForSelector('#conn[data-state="live"]', WAIT);
  await page.waitForSelector('tr[data-tag="sim/g0/t0"] td.value', WAIT);
  assert.match(await page.textContent("#principal"), /may read: sim\/# · may write: nothing/);
  assert.equal(await page.isVisible("button.write"), false, "no write control without a write scope");
});
