"""OPC UA StatusCodes used on the wire (protocol.md "Tags, ids, quality") and
their names, as in the Rust SDK's ``status`` module. Top two bits: 00 Good,
01 Uncertain, 10 Bad."""

from __future__ import annotations

GOOD = 0
BAD_NO_COMMUNICATION = 0x80310000
BAD_WAITING_FOR_INITIAL_DATA = 0x80320000
BAD_TIMEOUT = 0x800A0000
BAD_COMMUNICATION_ERROR = 0x80050000
BAD_CONFIGURATION_ERROR = 0x80890000
BAD_NODE_ID_UNKNOWN = 0x80340000
BAD_NOT_WRITABLE = 0x803B0000
BAD_USER_ACCESS_DENIED = 0x801F0000
BAD_TYPE_MISMATCH = 0x80740000
BAD_OUT_OF_RANGE = 0x803C0000
BAD_DECODING_ERROR = 0x80070000
BAD_DEVICE_FAILURE = 0x808B0000
BAD_TOO_MANY_OPERATIONS = 0x80100000
BAD_NOT_SUPPORTED = 0x803D0000
BAD_INTERNAL_ERROR = 0x80020000
UNCERTAIN_LAST_USABLE_VALUE = 0x40900000

_NAMES = {
    GOOD: "Good",
    BAD_NO_COMMUNICATION: "BadNoCommunication",
    BAD_WAITING_FOR_INITIAL_DATA: "BadWaitingForInitialData",
    BAD_TIMEOUT: "BadTimeout",
    BAD_COMMUNICATION_ERROR: "BadCommunicationError",
    BAD_CONFIGURATION_ERROR: "BadConfigurationError",
    BAD_NODE_ID_UNKNOWN: "BadNodeIdUnknown",
    BAD_NOT_WRITABLE: "BadNotWritable",
    BAD_USER_ACCESS_DENIED: "BadUserAccessDenied",
    BAD_TYPE_MISMATCH: "BadTypeMismatch",
    BAD_OUT_OF_RANGE: "BadOutOfRange",
    BAD_DECODING_ERROR: "BadDecodingError",
    BAD_DEVICE_FAILURE: "BadDeviceFailure",
    BAD_TOO_MANY_OPERATIONS: "BadTooManyOperations",
    BAD_NOT_SUPPORTED: "BadNotSupported",
    BAD_INTERNAL_ERROR: "BadInternalError",
    UNCERTAIN_LAST_USABLE_VALUE: "UncertainLastUsableValue",
}


def quality(status: int) -> str:
    """Good, Uncertain or Bad, from the top two bits."""
    top = (status >> 30) & 3
    return "Good" if top == 0 else "Uncertain" if top == 1 else "Bad"


def name(status: int) -> str:
    """The code's OPC UA name, else its quality."""
    return _NAMES.get(status, quality(status))


def is_good(status: int) -> bool:
    return (status >> 30) & 3 == 0
