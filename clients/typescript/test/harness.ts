// What the SDK's tests (and the web view's browser test) run against: a
// real `tagstream demo` process (TAGSTREAM_BIN, set by `cargo test --test
// clients`), a TCP relay that can cut every connection, free ports.

import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { createServer, type Server, type Socket, connect as tcpConnect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const BIN = process.env.TAGSTREAM_BIN ?? "../../target/debug/tagstream";
export const DEADLINE_MS = 20_000;

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const addr = s.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      s.close(() => resolve(port));
    });
  });
}

/** A demo server on `port`; killed (SIGKILL: a crash) by kill(). */
export class Demo {
  proc: ChildProcess | undefined;
  /** The simulated Modbus devices' addresses (boiler, line), from the demo's banner. */
  devices: string[] = [];
  constructor(readonly port: number) {}

  static async start(port?: number): Promise<Demo> {
    const d = new Demo(port ?? (await freePort()));
    await d.spawn();
    return d;
  }

  /** `tagstream run` with this TOML (`{port}` filled in) instead of the demo. */
  static async serve(config: string, env: Record<string, string>): Promise<Demo> {
    const d = new Demo(await freePort());
    const dir = mkdtempSync(join(tmpdir(), "tagstream-sdk-"));
    d.config = join(dir, "server.toml");
    writeFileSync(d.config, config.replaceAll("{port}", String(d.port)));
    d.env = env;
    await d.spawn();
    return d;
  }

  private config: string | undefined;
  private env: Record<string, string> = {};

  async spawn(): Promise<void> {
    const args = this.config
      ? ["run", "--config", this.config]
      : ["demo", "--listen", `127.0.0.1:${this.port}`];
    this.proc = spawn(BIN, args, {
      stdio: ["ignore", "ignore", "pipe"],
      env: { ...process.env, RUST_LOG: "warn,rumqttd=off", ...this.env },
    });
    this.proc.stderr?.on("data", (chunk: Buffer) => {
      const text = chunk.toString();
      process.stderr.write(text);
      const m = /Modbus devices at (\S+) and (\S+),/.exec(text);
      if (m) this.devices = [m[1], m[2]];
    });
    const until = Date.now() + DEADLINE_MS;
    while (Date.now() < until) {
      try {
        const r = await fetch(`http://127.0.0.1:${this.port}/readyz`);
        if (r.ok) return;
      } catch {
        // not listening yet
      }
      await sleep(50);
    }
    throw new Error(`demo on ${this.port} not ready`);
  }

  get url(): string {
    return `ws://127.0.0.1:${this.port}/api/v1/stream`;
  }

  async kill(): Promise<void> {
    const p = this.proc;
    if (!p || p.exitCode !== null) return;
    await new Promise<void>((resolve) => {
      p.once("exit", () => resolve());
      p.kill("SIGKILL");
    });
  }
}

/** A TCP relay: cut() drops every connection and stops listening; restore() listens again on the same port. */
export class Relay {
  private server: Server | undefined;
  private readonly sockets = new Set<Socket>();
  port = 0;
  constructor(private readonly target: number) {}

  async listen(): Promise<this> {
    const server = createServer((inbound) => {
      const outbound = tcpConnect(this.target, "127.0.0.1");
      // Either side ending ends both: a dead server is a dead connection.
      const both = [inbound, outbound];
      for (const s of both) {
        this.sockets.add(s);
        s.on("close", () => {
          this.sockets.delete(s);
          for (const other of both) other.destroy();
        });
        s.on("error", () => s.destroy());
      }
      inbound.pipe(outbound).pipe(inbound);
    });
    await new Promise<void>((resolve) => server.listen(this.port, "127.0.0.1", () => resolve()));
    const addr = server.address();
    this.port = typeof addr === "object" && addr ? addr.port : 0;
    this.server = server;
    return this;
  }

  async cut(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
