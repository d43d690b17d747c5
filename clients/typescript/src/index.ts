// tagstream's TypeScript SDK: see README.md ("TypeScript") and the
// protocol page. Same behaviour as the Rust and Python SDKs.

export { type Backoff, ceiling, defaultBackoff, delay, serverHint } from "./backoff.js";
export {
  type Change,
  Client,
  type History,
  type Options,
  type Series,
  type SocketConstructor,
  type SocketLike,
  type State,
  type Stop,
  SUBPROTOCOL,
  toValue,
  WriteError,
  type WriteErrorCode,
  type WriteOutcome,
} from "./client.js";
export { decimals, formatValue, shortestF32 } from "./format.js";
export * as proto from "./gen/tagstream/v1/tagstream_pb.js";
export { GapError, Mirror, ProtocolError } from "./mirror.js";
export { type Quality, quality, Status, statusName } from "./status.js";
