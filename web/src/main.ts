// The web view at `/`: a tag tree from Browse with a filter, a live table
// of the subscribed tags (value with unit, status colour and name, source
// and server time, age, a sparkline of the last ten minutes filled from
// the server's history when the page opens and continued live), a trend
// panel for one tag (click its name), the connection's state, latency and
// Deltas per second, a details panel (server, epoch, seq, heartbeat), and a
// write dialog for the tags the
// Welcome's write scope allows. Built on the TypeScript SDK; the
// token (when /api/v1/info says one is needed) travels as the `bearer.`
// subprotocol entry. DOM updates are batched per animation frame.

import {
  type Change,
  Client,
  formatValue,
  type History,
  proto,
  quality,
  type State,
  statusName,
} from "@tagstream/client";

const TOKEN_KEY = "tagstream.token";
/** What the sparklines and the trend panel show: the server's default history window. */
const TREND_MS = 10 * 60_000;
/** Sparkline width in SVG units, and the points asked per tag for it. */
const SPARK_W = 120;
const SPARK_POINTS = 240;
/** Points kept per row (history plus live). */
const KEEP = 2400;
/** The trend panel's SVG size, and the points asked for it. */
const PANEL_W = 800;
const PANEL_H = 200;
const PANEL_POINTS = 2000;
/** HistoryRequests the page sends per second (the server allows 10, 20 at once). */
const HISTORY_PER_S = 8;
const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;

interface Row {
  tr: HTMLTableRowElement;
  value: HTMLTableCellElement;
  unit: HTMLTableCellElement;
  status: HTMLTableCellElement;
  spark: SVGPolylineElement;
  source: HTMLTableCellElement;
  server: HTMLTableCellElement;
  age: HTMLTableCellElement;
  write: HTMLButtonElement;
  /** (source time ms, value), oldest first: history, then live changes. */
  trend: Array<[number, number]>;
  change?: Change;
}

/** A change's time on the trend: its source time, else its server time, else now. */
function when(u: proto.TagUpdate): number {
  const us = u.sourceTimeUs || u.serverTimeUs;
  return us > 0n ? Number(us / 1000n) : Date.now();
}

/**
 * SVG polyline points of `trend`, `w` × `h`: from its first point (at
 * most TREND_MS back, at least 30 s) to now, so a trend of a few minutes
 * fills its box too.
 */
function polyline(trend: Array<[number, number]>, w: number, h: number, now: number): string {
  const shown = trend.filter(([t]) => t >= now - TREND_MS);
  if (shown.length === 0) return "";
  const from = Math.min(shown[0][0], now - 30_000);
  const spanMs = now - from;
  let lo = Infinity;
  let hi = -Infinity;
  for (const [, v] of shown) {
    lo = Math.min(lo, v);
    hi = Math.max(hi, v);
  }
  const span = hi - lo || 1;
  const y = (v: number) => (h - 1 - ((v - lo) / span) * (h - 2)).toFixed(1);
  const x = (t: number) => (((t - from) / spanMs) * w).toFixed(1);
  // A step line: a value holds until the next change, and the last one until now.
  const out: string[] = [];
  shown.forEach(([t, v], i) => {
    if (i > 0) out.push(`${x(t)},${y(shown[i - 1][1])}`);
    out.push(`${x(t)},${y(v)}`);
  });
  out.push(`${w},${y(shown[shown.length - 1][1])}`);
  return out.join(" ");
}

/** A path and each of its parents: `a/b/c` -> `a`, `a/b`, `a/b/c`. */
function pathsOf(name: string): string[] {
  const parts = name.split("/");
  return parts.map((_, i) => parts.slice(0, i + 1).join("/"));
}

/** MQTT-style match: `+` one level, `#` the rest. */
export function matches(pattern: string, name: string): boolean {
  const p = pattern.split("/");
  const n = name.split("/");
  for (let i = 0; i < p.length; i++) {
    if (p[i] === "#") return true;
    if (i >= n.length || (p[i] !== "+" && p[i] !== n[i])) return false;
  }
  return p.length === n.length;
}

function time(us: bigint): string {
  if (us <= 0n) return "-";
  return new Date(Number(us / 1000n)).toISOString().slice(11, 23);
}

function age(us: bigint): string {
  if (us <= 0n) return "-";
  const s = Math.max(0, Date.now() / 1000 - Number(us) / 1e6);
  return s < 60
    ? `${s.toFixed(1)} s`
    : s < 3600
      ? `${(s / 60).toFixed(1)} min`
      : `${(s / 3600).toFixed(1)} h`;
}

function numeric(v: proto.Value | undefined): number | undefined {
  const k = v?.kind;
  if (k?.case === "f64") return k.value;
  if (k?.case === "i64" || k?.case === "u64") return Number(k.value);
  if (k?.case === "bool") return k.value ? 1 : 0;
  return undefined;
}

function askToken(): Promise<string> {
  const dialog = $<HTMLDialogElement>("login");
  const input = $<HTMLInputElement>("token");
  input.value = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.onclose = () => resolve(input.value.trim());
  });
}

class View {
  private readonly rows = new Map<string, Row>();
  private readonly dirty = new Set<Row>();
  private names: string[] = [];
  private filter = "";
  private frame = 0;
  private client: Client | undefined;
  private writeScope: string[] = [];
  private everLive = false;
  /** Arrival times (ms) of the Deltas of the last 3 s: the page's own rate. */
  private deltas: number[] = [];
  /** The tag the trend panel shows, if open. */
  private panel: string | undefined;
  /** Tags waiting for their history (asked at most HISTORY_PER_S a second). */
  private historyQueue: string[] = [];
  private historyTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(
    private readonly needsToken: boolean,
    private token: string | undefined,
  ) {
    $<HTMLInputElement>("filter").addEventListener("input", (e) => {
      this.filter = (e.target as HTMLInputElement).value.trim();
      this.applyFilter();
    });
    setInterval(() => this.tickAges(), 1000);
    $<HTMLButtonElement>("trend-close").onclick = () => this.closePanel();
  }

  /** 1 s when the "slow link" box is ticked or the tab is hidden, else 0 (every change). */
  private wantedInterval(): number {
    return $<HTMLInputElement>("slow").checked || document.hidden ? 1000 : 0;
  }

  start(): void {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const c = new Client({
      url: `${scheme}//${location.host}/api/v1/stream`,
      clientName: "tagstream-web",
      subscribe: ["#"],
      token: this.token,
      pingIntervalMs: 2000,
      publishIntervalMs: this.wantedInterval(),
    });
    this.client = c;
    // A slow link, or a tab nobody looks at, gets the latest value once a
    // second instead of every change; shown again, the page is live.
    const repace = () => {
      const ms = this.wantedInterval();
      if (ms !== c.publishIntervalMs) c.pace(ms);
    };
    $<HTMLInputElement>("slow").addEventListener("change", repace);
    document.addEventListener("visibilitychange", repace);
    c.on("paced", (ms) => {
      $("paced").textContent = ms > 0 ? `paced ${ms / 1000} s` : "";
    });
    c.on("state", (s) => this.onState(s));
    c.on("welcome", (w) => this.onWelcome(w));
    c.on("catalog", (tags) => this.addNames(tags.map((t) => t.name)));
    c.on("change", (ch) => this.onChange(ch));
    c.on("history", (h) => this.onHistory(h));
    c.on("message", (m) => {
      if (m.kind.case === "delta") this.deltas.push(performance.now());
      // The snapshot complete: ask for the trends of what it showed.
      if (m.kind.case === "snapshot" && m.kind.value.last) this.askHistory();
    });
    c.on("latency", (ms) => {
      $("latency").textContent = `${ms.toFixed(1)} ms`;
    });
    c.on("serverError", (e) => this.log(`server error ${proto.ErrorCode[e.code]}: ${e.message}`));
    c.start();
  }

  /**
   * While not live, every value on the page is stale: the table greys out,
   * a banner says since when, and writes are disabled with the reason.
   * They come back on the next live state (RESUMED or RESYNC).
   */
  private markStale(live: boolean): void {
    const banner = $("stale");
    const tags = $("tags");
    if (live) {
      delete tags.dataset.stale;
      banner.hidden = true;
    } else if (this.everLive && tags.dataset.stale === undefined) {
      const since = new Date().toLocaleTimeString([], { hour12: false });
      tags.dataset.stale = since;
      banner.textContent = `not connected: values are stale since ${since}; writes are disabled until the connection is back`;
      banner.hidden = false;
    }
    document.querySelectorAll<HTMLButtonElement>("button.write").forEach((b) => {
      b.disabled = !live;
      b.title = live ? "" : "not connected";
    });
  }

  private onState(s: State): void {
    const conn = $("conn");
    conn.dataset.state = s.kind;
    this.markStale(s.kind === "live");
    switch (s.kind) {
      case "connecting":
        conn.textContent = s.attempt ? `connecting (attempt ${s.attempt + 1})` : "connecting";
        break;
      case "live":
        this.everLive = true;
        conn.textContent = `live (${proto.ResumeOutcome[s.outcome]})`;
        this.log(`live: ${proto.ResumeOutcome[s.outcome]}`);
        break;
      case "waiting":
        conn.textContent = `reconnecting in ${(s.delayMs / 1000).toFixed(1)} s`;
        this.log(`${s.reason}; reconnecting in ${(s.delayMs / 1000).toFixed(1)} s`);
        // A browser cannot see a refused handshake's 401: a token that
        // never got in is asked for again.
        if (this.needsToken && !this.everLive && this.client && s.delayMs >= 0) {
          sessionStorage.removeItem(TOKEN_KEY);
          this.client.close();
          void askToken().then((t) => {
            this.token = t;
            sessionStorage.setItem(TOKEN_KEY, t);
            this.start();
          });
        }
        break;
      case "stopped":
        conn.textContent = `stopped (${s.stop.reason})`;
        break;
    }
    this.updatePosition();
  }

  /** Asks the history of every tag that keeps one, 100 per request, paced. */
  private askHistory(): void {
    const c = this.client;
    if (!c) return;
    const names = [...c.mirror.catalog.values()].filter((t) => t.history).map((t) => t.name);
    this.historyQueue = names.sort();
    clearTimeout(this.historyTimer);
    const next = () => {
      const chunk = this.historyQueue.splice(0, 100);
      if (chunk.length === 0 || c.state.kind !== "live") return;
      c.history(chunk, new Date(Date.now() - TREND_MS), undefined, SPARK_POINTS).catch(() => {});
      this.historyTimer = setTimeout(next, 1000 / HISTORY_PER_S);
    };
    next();
  }

  /**
   * A history answer replaces what its rows held: it ends at the
   * connection's position, and the changes dispatched after it continue it.
   */
  private onHistory(h: History): void {
    for (const s of h.series) {
      const row = this.rows.get(s.name);
      if (!row) continue;
      const trend: Array<[number, number]> = [];
      for (const p of s.points) {
        const v = numeric(p.value);
        if (v !== undefined && Number.isFinite(v)) trend.push([Number(p.sourceTimeUs / 1000n), v]);
      }
      // A panel's answer has more points than a sparkline's: keep the finer one.
      if (s.name !== this.panel || trend.length >= row.trend.length) row.trend = trend;
      row.tr.dataset.historyFrom = trend.length ? String(trend[0][0]) : "";
      this.dirty.add(row);
    }
    if (!this.frame) this.frame = requestAnimationFrame(() => this.render());
  }

  private openPanel(name: string): void {
    const row = this.rows.get(name);
    if (!row || !this.client) return;
    this.panel = name;
    $("trend").hidden = false;
    $("trend-tag").textContent = name;
    this.drawPanel();
    this.client.history([name], new Date(Date.now() - TREND_MS), undefined, PANEL_POINTS).catch(() => {});
  }

  private closePanel(): void {
    this.panel = undefined;
    $("trend").hidden = true;
  }

  private drawPanel(): void {
    const row = this.panel ? this.rows.get(this.panel) : undefined;
    if (!row) return;
    const now = Date.now();
    $("trend-line").setAttribute("points", polyline(row.trend, PANEL_W, PANEL_H, now));
    const values = row.trend.filter(([t]) => t >= now - TREND_MS).map(([, v]) => v);
    const info = row.change?.info;
    const num = (v: number) => formatValue({ kind: { case: "f64", value: v } } as proto.Value, info);
    $("trend-range").textContent = values.length
      ? `${num(Math.min(...values))} … ${num(Math.max(...values))} ${info?.unit ?? ""} · ${values.length} points · last 10 min`
      : "no changes in the last 10 min";
  }

  private onWelcome(w: proto.Welcome): void {
    this.writeScope = w.writeScope;
    $("server-id").textContent = w.serverId;
    $("heartbeat").textContent = `${w.heartbeatMs / 1000} s`;
    $("principal").textContent = `may read: ${inWords(w.readScope)} · may write: ${inWords(w.writeScope)}`;
    if (w.resume !== proto.ResumeOutcome.RESUMED) {
      // A new epoch: ids and the table start over.
      for (const row of this.rows.values()) row.tr.remove();
      this.rows.clear();
      this.names = [];
      void this.browseAll();
    }
    this.updatePosition();
  }

  private async browseAll(): Promise<void> {
    const c = this.client;
    if (!c) return;
    let after = "";
    for (let page = 0; page < 40; page++) {
      let result: proto.BrowseResult;
      try {
        result = await c.browse("#", 500, after);
      } catch {
        return;
      }
      this.addNames(result.tags.map((t) => t.name));
      after = result.nextAfter;
      if (!after) return;
    }
  }

  private addNames(names: string[]): void {
    const set = new Set(this.names);
    let added = false;
    for (const n of names) {
      if (!set.has(n)) {
        set.add(n);
        added = true;
      }
    }
    if (!added) return;
    this.names = [...set].sort();
    this.renderTree();
  }

  private renderTree(): void {
    const tree = $("tree");
    const prefixes = new Set(this.names.flatMap(pathsOf));
    // A match keeps its parent path, so `temp` shows where each
    // temperature sits; a parent shown only for that is muted.
    const matched = [...prefixes].filter((p) => !this.filter || p.includes(this.filter));
    const shown = new Set(matched.flatMap(pathsOf));
    const hits = new Set(matched);
    tree.replaceChildren(
      ...[...shown].sort().map((p) => {
        const li = document.createElement("li");
        if (!hits.has(p)) li.classList.add("context");
        const depth = p.split("/").length - 1;
        li.textContent = p.split("/").pop() ?? p;
        li.title = p;
        li.style.paddingLeft = `${depth * 0.9 + 0.2}em`;
        li.dataset.path = p;
        if (p === this.filter) li.classList.add("selected");
        li.onclick = () => {
          const input = $<HTMLInputElement>("filter");
          input.value = p;
          this.filter = p;
          this.applyFilter();
        };
        return li;
      }),
    );
  }

  private applyFilter(): void {
    for (const [name, row] of this.rows) row.tr.hidden = !!this.filter && !name.includes(this.filter);
    this.renderTree();
  }

  private onChange(ch: Change): void {
    const row = this.rows.get(ch.name) ?? this.addRow(ch.name);
    row.change = ch;
    const n = numeric(ch.update.value);
    if (n !== undefined && Number.isFinite(n)) {
      row.trend.push([when(ch.update), n]);
      if (row.trend.length > KEEP) row.trend.splice(0, row.trend.length - KEEP);
    }
    this.dirty.add(row);
    if (!this.frame) this.frame = requestAnimationFrame(() => this.render());
  }

  private addRow(name: string): Row {
    const tr = document.createElement("tr");
    tr.dataset.tag = name;
    const cell = (cls = "") => {
      const td = document.createElement("td");
      td.className = cls;
      tr.append(td);
      return td;
    };
    const nameCell = cell("mono tag");
    nameCell.textContent = name;
    nameCell.title = "show its trend";
    nameCell.onclick = () => this.openPanel(name);
    const value = cell("num mono value");
    const unit = cell("muted");
    const status = cell("status");
    const sparkCell = cell();
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("class", "spark");
    svg.setAttribute("viewBox", `0 0 ${SPARK_W} 20`);
    svg.setAttribute("preserveAspectRatio", "none");
    const spark = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    svg.append(spark);
    sparkCell.append(svg);
    const source = cell("mono muted");
    const server = cell("mono muted server");
    const ageCell = cell("num muted age");
    const write = document.createElement("button");
    write.textContent = "write…";
    write.className = "write";
    write.hidden = true;
    write.onclick = () => this.openWrite(name);
    cell().append(write);
    const row: Row = {
      tr,
      value,
      unit,
      status,
      spark,
      source,
      server,
      age: ageCell,
      write,
      trend: [],
    };
    // Keep the table in name order.
    const tbody = document.querySelector("#tags tbody") as HTMLTableSectionElement;
    const next = [...this.rows.keys()].sort().find((n) => n > name);
    tbody.insertBefore(tr, next ? (this.rows.get(next)?.tr ?? null) : null);
    this.rows.set(name, row);
    tr.hidden = !!this.filter && !name.includes(this.filter);
    return row;
  }

  private render(): void {
    this.frame = 0;
    for (const row of this.dirty) {
      const ch = row.change;
      if (!ch) continue;
      row.value.textContent = shown(ch);
      row.unit.textContent = ch.info.unit;
      row.status.textContent = statusName(ch.update.status);
      row.status.dataset.quality = quality(ch.update.status);
      row.source.textContent = time(ch.update.sourceTimeUs);
      row.server.textContent = time(ch.update.serverTimeUs);
      row.age.textContent = age(ch.update.sourceTimeUs || ch.update.serverTimeUs);
      row.write.hidden = !(ch.info.writable && this.writeScope.some((p) => matches(p, ch.name)));
      this.drawSpark(row);
    }
    if (this.panel && [...this.dirty].some((r) => r === this.rows.get(this.panel ?? ""))) this.drawPanel();
    this.dirty.clear();
    this.updatePosition();
  }

  private drawSpark(row: Row): void {
    row.spark.setAttribute("points", polyline(row.trend, SPARK_W, 20, Date.now()));
  }

  private tickAges(): void {
    const now = performance.now();
    this.deltas = this.deltas.filter((t) => t > now - 3000);
    const rate = $("rate");
    rate.textContent = `${(this.deltas.length / 3).toFixed(1)} Δ/s`;
    rate.dataset.rate = String(this.deltas.length / 3);
    for (const row of this.rows.values()) {
      const u = row.change?.update;
      if (u && !row.tr.hidden) row.age.textContent = age(u.sourceTimeUs || u.serverTimeUs);
    }
  }

  private updatePosition(): void {
    const m = this.client?.mirror;
    if (!m?.epoch) return;
    $("epoch").textContent = m.epoch.toString(16).padStart(16, "0");
    $("position").textContent = String(m.position);
  }

  private log(line: string): void {
    const li = document.createElement("li");
    li.textContent = `${new Date().toISOString().slice(11, 19)} ${line}`;
    const events = $("events");
    events.prepend(li);
    while (events.children.length > 50) events.lastElementChild?.remove();
  }

  private openWrite(name: string): void {
    const row = this.rows.get(name);
    const info = row?.change?.info;
    if (!info || !this.client) return;
    const dialog = $<HTMLDialogElement>("write");
    $("write-tag").textContent = name;
    const range = info.euMin !== 0 || info.euMax !== 0 ? `range ${info.euMin} … ${info.euMax}` : "";
    $("write-range").textContent = `${proto.DataType[info.type]} ${info.unit} ${range}`.trim();
    const input = $<HTMLInputElement>("write-value");
    input.value = row.change ? shown(row.change) : "";
    const result = $("write-result");
    result.textContent = "";
    result.dataset.status = "";
    const confirm = $<HTMLButtonElement>("write-confirm");
    confirm.onclick = (e) => {
      e.preventDefault();
      const text = input.value.trim();
      if (!text) return;
      const value =
        info.type === proto.DataType.BOOL
          ? text === "true" || text === "1"
          : info.type === proto.DataType.STRING
            ? text
            : Number(text);
      if (typeof value === "number" && !Number.isFinite(value)) {
        result.textContent = "not a number";
        return;
      }
      result.textContent = "writing…";
      this.client
        ?.write(name, value)
        .then((r) => {
          result.textContent = `${r.statusName}${r.message ? `: ${r.message}` : ""}`;
          result.dataset.status = r.statusName;
          this.log(`write ${name} = ${text}: ${r.statusName}`);
        })
        .catch((err: Error) => {
          result.textContent = err.message;
          result.dataset.status = "error";
        });
    };
    dialog.showModal();
  }
}

async function main(): Promise<void> {
  let info = { auth: "none", anonymous: true };
  try {
    info = await (await fetch("api/v1/info")).json();
  } catch {
    // An older server or a proxy without the path: try without a token.
  }
  const needsToken = info.auth === "token" && !info.anonymous;
  let token = sessionStorage.getItem(TOKEN_KEY) ?? undefined;
  if (needsToken && !token) {
    token = await askToken();
    sessionStorage.setItem(TOKEN_KEY, token);
  }
  new View(needsToken, token).start();
}

void main();

/** A value as the table shows it: text as it is, not quoted as the SDKs print it. */
function shown(ch: Change): string {
  const v = ch.update.value;
  return v?.kind.case === "text" ? v.kind.value : formatValue(v, ch.info);
}

/** A scope in words: "everything" for `#`, "nothing" for none, else the patterns. */
function inWords(scope: string[]): string {
  if (scope.includes("#")) return "everything";
  return scope.length === 0 ? "nothing" : scope.join(", ");
}
