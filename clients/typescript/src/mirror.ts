// The client's copy of the server's tags, kept by the protocol's rules
// (protocol.md "Sequence, epoch, and the resync rule"), as the Rust SDK's
// `mirror`: a Catalog entry before any update that uses its id, Snapshot
// chunks at the position, every Delta starting where the last one ended,
// no Pong ahead of the position. No I/O.

import {
  ResumeOutcome,
  type ServerMessage,
  type TagInfo,
  type TagUpdate,
} from "./gen/tagstream/v1/tagstream_pb.js";

/** Something was lost: a resume from the position recovers it. */
export class GapError extends Error {
  constructor(
    readonly expected: bigint,
    readonly got: bigint,
  ) {
    super(`sequence gap: expected ${expected}, got ${got}`);
    this.name = "GapError";
  }
}

/** The stream broke another rule: the mirror cannot be trusted; start over. */
export class ProtocolError extends Error {
  constructor(message: string) {
    super(`protocol violation: ${message}`);
    this.name = "ProtocolError";
  }
}

export class Mirror {
  /** Tag descriptions by id. */
  readonly catalog = new Map<number, TagInfo>();
  /** Latest state by id. */
  readonly values = new Map<number, TagUpdate>();
  private readonly byName = new Map<string, number>();
  /** Epoch from Welcome (0: never welcomed). */
  epoch = 0n;
  /** Seq of the last Snapshot / Delta. */
  position = 0n;

  /** The resume point, if this mirror has seen a Welcome. */
  resume(): { epoch: bigint; seq: bigint } | undefined {
    return this.epoch === 0n ? undefined : { epoch: this.epoch, seq: this.position };
  }

  clear(): void {
    this.catalog.clear();
    this.values.clear();
    this.byName.clear();
    this.epoch = 0n;
    this.position = 0n;
  }

  id(name: string): number | undefined {
    return this.byName.get(name);
  }

  info(name: string): TagInfo | undefined {
    const id = this.byName.get(name);
    return id === undefined ? undefined : this.catalog.get(id);
  }

  value(name: string): TagUpdate | undefined {
    const id = this.byName.get(name);
    return id === undefined ? undefined : this.values.get(id);
  }

  /** Adds or replaces a tag's description (a redefined tag keeps its id). */
  learn(info: TagInfo): void {
    const old = this.catalog.get(info.id);
    if (old && old.name !== info.name) this.byName.delete(old.name);
    this.catalog.set(info.id, info);
    this.byName.set(info.name, info.id);
  }

  /** Applies one server message; throws GapError or ProtocolError and then changes nothing. */
  apply(msg: ServerMessage): void {
    const k = msg.kind;
    switch (k.case) {
      case undefined:
        throw new ProtocolError("ServerMessage without kind");
      case "welcome":
        if (k.value.resume !== ResumeOutcome.RESUMED) this.clear();
        this.epoch = k.value.epoch;
        this.position = k.value.seq;
        return;
      case "catalog":
        for (const t of k.value.tags) this.learn(t);
        return;
      case "snapshot":
        this.expect(k.value.seq);
        this.applyUpdates(k.value.tags);
        return;
      case "delta":
        this.expect(k.value.fromSeq);
        if (k.value.toSeq < k.value.fromSeq) {
          throw new ProtocolError(`delta goes backwards: ${k.value.fromSeq} -> ${k.value.toSeq}`);
        }
        this.applyUpdates(k.value.updates);
        this.position = k.value.toSeq;
        return;
      case "pong":
        // The server is current before each Pong: a position below its
        // seq means a Delta was lost.
        if (k.value.seq > this.position) throw new GapError(this.position, k.value.seq);
        return;
      case "historyResult": {
        // Made at the position (the server brings the connection current
        // first): one from elsewhere means a Delta was lost.
        if (k.value.seq !== this.position) throw new GapError(this.position, k.value.seq);
        const unknown = k.value.series.find((s) => !this.catalog.has(s.id));
        if (unknown) throw new ProtocolError(`history for id ${unknown.id} before its Catalog entry`);
        return;
      }
      default:
        return;
    }
  }

  private expect(from: bigint): void {
    if (from !== this.position) throw new GapError(this.position, from);
  }

  private applyUpdates(updates: TagUpdate[]): void {
    const unknown = updates.find((u) => !this.catalog.has(u.id));
    if (unknown) throw new ProtocolError(`update for id ${unknown.id} before its Catalog entry`);
    for (const u of updates) this.values.set(u.id, u);
  }
}
