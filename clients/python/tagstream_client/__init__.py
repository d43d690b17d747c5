"""tagstream's Python SDK (asyncio): see README.md ("Python") and the
protocol page. Same behaviour as the Rust and TypeScript SDKs."""

from ._proto import tagstream_pb2 as proto
from .backoff import Backoff, server_hint
from .client import (
    SUBPROTOCOL,
    CatalogChanged,
    Change,
    Changes,
    Client,
    Connecting,
    History,
    Latency,
    Live,
    Options,
    Paced,
    Series,
    ServerError,
    State,
    StateChanged,
    Stopped,
    Update,
    Waiting,
    Welcomed,
    WriteError,
    WriteOutcome,
    to_value,
)
from .display import decimals, format_value, shortest_f32
from .mirror import GapError, Mirror, ProtocolError
from .status import name as status_name
from .status import quality

__all__ = [
    "SUBPROTOCOL",
    "Backoff",
    "CatalogChanged",
    "Change",
    "Changes",
    "Client",
    "Connecting",
    "GapError",
    "History",
    "Latency",
    "Live",
    "Mirror",
    "Options",
    "Paced",
    "ProtocolError",
    "Series",
    "ServerError",
    "State",
    "StateChanged",
    "Stopped",
    "Update",
    "Waiting",
    "Welcomed",
    "WriteError",
    "WriteOutcome",
    "decimals",
    "format_value",
    "proto",
    "quality",
    "server_hint",
    "shortest_f32",
    "status_name",
    "to_value",
]
