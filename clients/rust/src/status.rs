//! OPC UA StatusCodes used on the wire (protocol.md, "Tags, ids, quality")
//! and their names. Top two bits: `00` Good, `01` Uncertain, `10` Bad.

/// The value is good.
pub const GOOD: u32 = 0;
/// The source has been tried and never reached.
pub const BAD_NO_COMMUNICATION: u32 = 0x8031_0000;
/// The tag was never read yet.
pub const BAD_WAITING_FOR_INITIAL_DATA: u32 = 0x8032_0000;
/// The source stopped answering within its timeout.
pub const BAD_TIMEOUT: u32 = 0x800A_0000;
/// The connection to the source failed or was lost.
pub const BAD_COMMUNICATION_ERROR: u32 = 0x8005_0000;
/// The configuration points at something the device does not have.
pub const BAD_CONFIGURATION_ERROR: u32 = 0x8089_0000;
/// No tag of that name.
pub const BAD_NODE_ID_UNKNOWN: u32 = 0x8034_0000;
/// The tag is read-only.
pub const BAD_NOT_WRITABLE: u32 = 0x803B_0000;
/// The caller may not write this tag.
pub const BAD_USER_ACCESS_DENIED: u32 = 0x801F_0000;
/// The written value does not convert to the tag's type.
pub const BAD_TYPE_MISMATCH: u32 = 0x8074_0000;
/// The written value is outside the tag's limits.
pub const BAD_OUT_OF_RANGE: u32 = 0x803C_0000;
/// The payload could not be decoded.
pub const BAD_DECODING_ERROR: u32 = 0x8007_0000;
/// The device reported a failure of its own (Modbus exception 04).
pub const BAD_DEVICE_FAILURE: u32 = 0x808B_0000;
/// The device is busy (Modbus exceptions 05, 06); retried on the next poll.
pub const BAD_TOO_MANY_OPERATIONS: u32 = 0x8010_0000;
/// The device does not support the request (Modbus exception 01).
pub const BAD_NOT_SUPPORTED: u32 = 0x803D_0000;
/// BadInternalError: the source itself failed (it panicked and is being
/// restarted).
pub const BAD_INTERNAL_ERROR: u32 = 0x8002_0000;
/// Last usable value, quality not assured.
pub const UNCERTAIN_LAST_USABLE_VALUE: u32 = 0x4090_0000;

/// True for any Good code (top bits `00`).
pub fn is_good(status: u32) -> bool {
    status >> 30 == 0
}

/// True for any Bad code (top bits `10`).
pub fn is_bad(status: u32) -> bool {
    status >> 30 == 2
}

/// A short name for logs and `tagstream tail`.
pub fn name(status: u32) -> &'static str {
    match status {
        GOOD => "Good",
        BAD_NO_COMMUNICATION => "BadNoCommunication",
        BAD_INTERNAL_ERROR => "BadInternalError",
        BAD_WAITING_FOR_INITIAL_DATA => "BadWaitingForInitialData",
        BAD_TIMEOUT => "BadTimeout",
        BAD_COMMUNICATION_ERROR => "BadCommunicationError",
        BAD_CONFIGURATION_ERROR => "BadConfigurationError",
        BAD_NODE_ID_UNKNOWN => "BadNodeIdUnknown",
        BAD_NOT_WRITABLE => "BadNotWritable",
        BAD_USER_ACCESS_DENIED => "BadUserAccessDenied",
        BAD_TYPE_MISMATCH => "BadTypeMismatch",
        BAD_OUT_OF_RANGE => "BadOutOfRange",
        BAD_DECODING_ERROR => "BadDecodingError",
        BAD_DEVICE_FAILURE => "BadDeviceFailure",
        BAD_TOO_MANY_OPERATIONS => "BadTooManyOperations",
        BAD_NOT_SUPPORTED => "BadNotSupported",
        UNCERTAIN_LAST_USABLE_VALUE => "UncertainLastUsableValue",
        s if is_good(s) => "Good",
        s if is_bad(s) => "Bad",
        _ => "Uncertain",
    }
}

/// The three qualities a status falls into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quality {
    /// Top bits `00`.
    Good,
    /// Top bits `01`.
    Uncertain,
    /// Top bits `10` (and the reserved `11`).
    Bad,
}

/// The quality of a status code.
pub fn quality(status: u32) -> Quality {
    match status >> 30 {
        0 => Quality::Good,
        1 => Quality::Uncertain,
        _ => Quality::Bad,
    }
}
