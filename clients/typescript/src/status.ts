// OPC UA StatusCodes used on the wire (protocol.md "Tags, ids, quality")
// and their names, as in the Rust SDK's `status` module. Top two bits:
// 00 Good, 01 Uncertain, 10 Bad.

export const Status = {
  Good: 0,
  BadNoCommunication: 0x80310000,
  BadWaitingForInitialData: 0x80320000,
  BadTimeout: 0x800a0000,
  BadCommunicationError: 0x80050000,
  BadConfigurationError: 0x80890000,
  BadNodeIdUnknown: 0x80340000,
  BadNotWritable: 0x803b0000,
  BadUserAccessDenied: 0x801f0000,
  BadTypeMismatch: 0x80740000,
  BadOutOfRange: 0x803c0000,
  BadDecodingError: 0x80070000,
  BadDeviceFailure: 0x808b0000,
  BadTooManyOperations: 0x80100000,
  BadNotSupported: 0x803d0000,
  BadInternalError: 0x80020000,
  UncertainLastUsableValue: 0x40900000,
} as const;

export type Quality = "Good" | "Uncertain" | "Bad";

const names = new Map<number, string>(Object.entries(Status).map(([name, code]) => [code, name]));

/** Good, Uncertain or Bad, from the top two bits. */
export function quality(status: number): Quality {
  const top = status >>> 30;
  return top === 0 ? "Good" : top === 1 ? "Uncertain" : "Bad";
}

/** The code's OPC UA name, else its quality. */
export function statusName(status: number): string {
  return names.get(status >>> 0) ?? quality(status);
}
