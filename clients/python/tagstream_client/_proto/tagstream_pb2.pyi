from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ResumeOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FRESH: _ClassVar[ResumeOutcome]
    RESUMED: _ClassVar[ResumeOutcome]
    RESYNC: _ClassVar[ResumeOutcome]

class DataType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TYPE_UNSPECIFIED: _ClassVar[DataType]
    BOOL: _ClassVar[DataType]
    U16: _ClassVar[DataType]
    I16: _ClassVar[DataType]
    U32: _ClassVar[DataType]
    I32: _ClassVar[DataType]
    U64: _ClassVar[DataType]
    I64: _ClassVar[DataType]
    F32: _ClassVar[DataType]
    F64: _ClassVar[DataType]
    STRING: _ClassVar[DataType]
    BYTES: _ClassVar[DataType]

class ErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_UNSPECIFIED: _ClassVar[ErrorCode]
    MALFORMED: _ClassVar[ErrorCode]
    UNEXPECTED_MESSAGE: _ClassVar[ErrorCode]
    TOO_LARGE: _ClassVar[ErrorCode]
    UNAUTHORIZED: _ClassVar[ErrorCode]
    LIMIT_EXCEEDED: _ClassVar[ErrorCode]
    SHUTTING_DOWN: _ClassVar[ErrorCode]
FRESH: ResumeOutcome
RESUMED: ResumeOutcome
RESYNC: ResumeOutcome
TYPE_UNSPECIFIED: DataType
BOOL: DataType
U16: DataType
I16: DataType
U32: DataType
I32: DataType
U64: DataType
I64: DataType
F32: DataType
F64: DataType
STRING: DataType
BYTES: DataType
ERROR_UNSPECIFIED: ErrorCode
MALFORMED: ErrorCode
UNEXPECTED_MESSAGE: ErrorCode
TOO_LARGE: ErrorCode
UNAUTHORIZED: ErrorCode
LIMIT_EXCEEDED: ErrorCode
SHUTTING_DOWN: ErrorCode

class ClientMessage(_message.Message):
    __slots__ = ("hello", "subscribe", "unsubscribe", "write", "ping", "browse", "refresh", "history", "pace")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBE_FIELD_NUMBER: _ClassVar[int]
    UNSUBSCRIBE_FIELD_NUMBER: _ClassVar[int]
    WRITE_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    BROWSE_FIELD_NUMBER: _ClassVar[int]
    REFRESH_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    PACE_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    subscribe: Subscribe
    unsubscribe: Unsubscribe
    write: WriteRequest
    ping: Ping
    browse: Browse
    refresh: Refresh
    history: HistoryRequest
    pace: Pace
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., subscribe: _Optional[_Union[Subscribe, _Mapping]] = ..., unsubscribe: _Optional[_Union[Unsubscribe, _Mapping]] = ..., write: _Optional[_Union[WriteRequest, _Mapping]] = ..., ping: _Optional[_Union[Ping, _Mapping]] = ..., browse: _Optional[_Union[Browse, _Mapping]] = ..., refresh: _Optional[_Union[Refresh, _Mapping]] = ..., history: _Optional[_Union[HistoryRequest, _Mapping]] = ..., pace: _Optional[_Union[Pace, _Mapping]] = ...) -> None: ...

class HistoryRequest(_message.Message):
    __slots__ = ("request_id", "tags", "start_us", "end_us", "max_points")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    START_US_FIELD_NUMBER: _ClassVar[int]
    END_US_FIELD_NUMBER: _ClassVar[int]
    MAX_POINTS_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    tags: _containers.RepeatedScalarFieldContainer[str]
    start_us: int
    end_us: int
    max_points: int
    def __init__(self, request_id: _Optional[int] = ..., tags: _Optional[_Iterable[str]] = ..., start_us: _Optional[int] = ..., end_us: _Optional[int] = ..., max_points: _Optional[int] = ...) -> None: ...

class Pace(_message.Message):
    __slots__ = ("publish_interval_ms",)
    PUBLISH_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    publish_interval_ms: int
    def __init__(self, publish_interval_ms: _Optional[int] = ...) -> None: ...

class Refresh(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: str
    def __init__(self, token: _Optional[str] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("client_name", "resume", "subscribe", "publish_interval_ms")
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBE_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    client_name: str
    resume: Resume
    subscribe: _containers.RepeatedScalarFieldContainer[str]
    publish_interval_ms: int
    def __init__(self, client_name: _Optional[str] = ..., resume: _Optional[_Union[Resume, _Mapping]] = ..., subscribe: _Optional[_Iterable[str]] = ..., publish_interval_ms: _Optional[int] = ...) -> None: ...

class Resume(_message.Message):
    __slots__ = ("epoch", "seq")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    seq: int
    def __init__(self, epoch: _Optional[int] = ..., seq: _Optional[int] = ...) -> None: ...

class Subscribe(_message.Message):
    __slots__ = ("patterns",)
    PATTERNS_FIELD_NUMBER: _ClassVar[int]
    patterns: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, patterns: _Optional[_Iterable[str]] = ...) -> None: ...

class Unsubscribe(_message.Message):
    __slots__ = ("patterns",)
    PATTERNS_FIELD_NUMBER: _ClassVar[int]
    patterns: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, patterns: _Optional[_Iterable[str]] = ...) -> None: ...

class WriteRequest(_message.Message):
    __slots__ = ("request_id", "tag", "value")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    tag: str
    value: Value
    def __init__(self, request_id: _Optional[int] = ..., tag: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...

class Ping(_message.Message):
    __slots__ = ("nonce", "client_time_us")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_TIME_US_FIELD_NUMBER: _ClassVar[int]
    nonce: int
    client_time_us: int
    def __init__(self, nonce: _Optional[int] = ..., client_time_us: _Optional[int] = ...) -> None: ...

class Browse(_message.Message):
    __slots__ = ("pattern", "request_id", "limit", "after")
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    pattern: str
    request_id: int
    limit: int
    after: str
    def __init__(self, pattern: _Optional[str] = ..., request_id: _Optional[int] = ..., limit: _Optional[int] = ..., after: _Optional[str] = ...) -> None: ...

class ServerMessage(_message.Message):
    __slots__ = ("welcome", "catalog", "snapshot", "delta", "write_result", "pong", "error", "refreshed", "browse_result", "history_result", "paced")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    WRITE_RESULT_FIELD_NUMBER: _ClassVar[int]
    PONG_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REFRESHED_FIELD_NUMBER: _ClassVar[int]
    BROWSE_RESULT_FIELD_NUMBER: _ClassVar[int]
    HISTORY_RESULT_FIELD_NUMBER: _ClassVar[int]
    PACED_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    catalog: Catalog
    snapshot: Snapshot
    delta: Delta
    write_result: WriteResult
    pong: Pong
    error: Error
    refreshed: Refreshed
    browse_result: BrowseResult
    history_result: HistoryResult
    paced: Paced
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., catalog: _Optional[_Union[Catalog, _Mapping]] = ..., snapshot: _Optional[_Union[Snapshot, _Mapping]] = ..., delta: _Optional[_Union[Delta, _Mapping]] = ..., write_result: _Optional[_Union[WriteResult, _Mapping]] = ..., pong: _Optional[_Union[Pong, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., refreshed: _Optional[_Union[Refreshed, _Mapping]] = ..., browse_result: _Optional[_Union[BrowseResult, _Mapping]] = ..., history_result: _Optional[_Union[HistoryResult, _Mapping]] = ..., paced: _Optional[_Union[Paced, _Mapping]] = ...) -> None: ...

class HistoryResult(_message.Message):
    __slots__ = ("request_id", "seq", "series")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SERIES_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    seq: int
    series: _containers.RepeatedCompositeFieldContainer[TagHistory]
    def __init__(self, request_id: _Optional[int] = ..., seq: _Optional[int] = ..., series: _Optional[_Iterable[_Union[TagHistory, _Mapping]]] = ...) -> None: ...

class TagHistory(_message.Message):
    __slots__ = ("id", "points", "complete", "decimated")
    ID_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    DECIMATED_FIELD_NUMBER: _ClassVar[int]
    id: int
    points: _containers.RepeatedCompositeFieldContainer[HistoryPoint]
    complete: bool
    decimated: bool
    def __init__(self, id: _Optional[int] = ..., points: _Optional[_Iterable[_Union[HistoryPoint, _Mapping]]] = ..., complete: _Optional[bool] = ..., decimated: _Optional[bool] = ...) -> None: ...

class HistoryPoint(_message.Message):
    __slots__ = ("source_time_us", "value", "status")
    SOURCE_TIME_US_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    source_time_us: int
    value: Value
    status: int
    def __init__(self, source_time_us: _Optional[int] = ..., value: _Optional[_Union[Value, _Mapping]] = ..., status: _Optional[int] = ...) -> None: ...

class Paced(_message.Message):
    __slots__ = ("publish_interval_ms",)
    PUBLISH_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    publish_interval_ms: int
    def __init__(self, publish_interval_ms: _Optional[int] = ...) -> None: ...

class BrowseResult(_message.Message):
    __slots__ = ("tags", "request_id", "next_after")
    TAGS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NEXT_AFTER_FIELD_NUMBER: _ClassVar[int]
    tags: _containers.RepeatedCompositeFieldContainer[TagInfo]
    request_id: int
    next_after: str
    def __init__(self, tags: _Optional[_Iterable[_Union[TagInfo, _Mapping]]] = ..., request_id: _Optional[int] = ..., next_after: _Optional[str] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("server_id", "epoch", "seq", "heartbeat_ms", "resume", "read_scope", "write_scope", "token_expires_at_us", "publish_interval_ms")
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_MS_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    READ_SCOPE_FIELD_NUMBER: _ClassVar[int]
    WRITE_SCOPE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_EXPIRES_AT_US_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    server_id: str
    epoch: int
    seq: int
    heartbeat_ms: int
    resume: ResumeOutcome
    read_scope: _containers.RepeatedScalarFieldContainer[str]
    write_scope: _containers.RepeatedScalarFieldContainer[str]
    token_expires_at_us: int
    publish_interval_ms: int
    def __init__(self, server_id: _Optional[str] = ..., epoch: _Optional[int] = ..., seq: _Optional[int] = ..., heartbeat_ms: _Optional[int] = ..., resume: _Optional[_Union[ResumeOutcome, str]] = ..., read_scope: _Optional[_Iterable[str]] = ..., write_scope: _Optional[_Iterable[str]] = ..., token_expires_at_us: _Optional[int] = ..., publish_interval_ms: _Optional[int] = ...) -> None: ...

class Refreshed(_message.Message):
    __slots__ = ("expires_at_us",)
    EXPIRES_AT_US_FIELD_NUMBER: _ClassVar[int]
    expires_at_us: int
    def __init__(self, expires_at_us: _Optional[int] = ...) -> None: ...

class TagInfo(_message.Message):
    __slots__ = ("id", "name", "type", "unit", "description", "writable", "eu_min", "eu_max", "source", "resolution", "history", "decimals")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    WRITABLE_FIELD_NUMBER: _ClassVar[int]
    EU_MIN_FIELD_NUMBER: _ClassVar[int]
    EU_MAX_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    DECIMALS_FIELD_NUMBER: _ClassVar[int]
    id: int
    name: str
    type: DataType
    unit: str
    description: str
    writable: bool
    eu_min: float
    eu_max: float
    source: str
    resolution: float
    history: bool
    decimals: int
    def __init__(self, id: _Optional[int] = ..., name: _Optional[str] = ..., type: _Optional[_Union[DataType, str]] = ..., unit: _Optional[str] = ..., description: _Optional[str] = ..., writable: _Optional[bool] = ..., eu_min: _Optional[float] = ..., eu_max: _Optional[float] = ..., source: _Optional[str] = ..., resolution: _Optional[float] = ..., history: _Optional[bool] = ..., decimals: _Optional[int] = ...) -> None: ...

class Catalog(_message.Message):
    __slots__ = ("tags", "last")
    TAGS_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    tags: _containers.RepeatedCompositeFieldContainer[TagInfo]
    last: bool
    def __init__(self, tags: _Optional[_Iterable[_Union[TagInfo, _Mapping]]] = ..., last: _Optional[bool] = ...) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("seq", "tags", "last")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    seq: int
    tags: _containers.RepeatedCompositeFieldContainer[TagUpdate]
    last: bool
    def __init__(self, seq: _Optional[int] = ..., tags: _Optional[_Iterable[_Union[TagUpdate, _Mapping]]] = ..., last: _Optional[bool] = ...) -> None: ...

class Delta(_message.Message):
    __slots__ = ("from_seq", "to_seq", "updates")
    FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    TO_SEQ_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    from_seq: int
    to_seq: int
    updates: _containers.RepeatedCompositeFieldContainer[TagUpdate]
    def __init__(self, from_seq: _Optional[int] = ..., to_seq: _Optional[int] = ..., updates: _Optional[_Iterable[_Union[TagUpdate, _Mapping]]] = ...) -> None: ...

class TagUpdate(_message.Message):
    __slots__ = ("id", "value", "status", "source_time_us", "server_time_us")
    ID_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TIME_US_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_US_FIELD_NUMBER: _ClassVar[int]
    id: int
    value: Value
    status: int
    source_time_us: int
    server_time_us: int
    def __init__(self, id: _Optional[int] = ..., value: _Optional[_Union[Value, _Mapping]] = ..., status: _Optional[int] = ..., source_time_us: _Optional[int] = ..., server_time_us: _Optional[int] = ...) -> None: ...

class Value(_message.Message):
    __slots__ = ("f64", "i64", "u64", "bool", "text", "raw")
    F64_FIELD_NUMBER: _ClassVar[int]
    I64_FIELD_NUMBER: _ClassVar[int]
    U64_FIELD_NUMBER: _ClassVar[int]
    BOOL_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    f64: float
    i64: int
    u64: int
    bool: bool
    text: str
    raw: bytes
    def __init__(self, f64: _Optional[float] = ..., i64: _Optional[int] = ..., u64: _Optional[int] = ..., bool: _Optional[bool] = ..., text: _Optional[str] = ..., raw: _Optional[bytes] = ...) -> None: ...

class WriteResult(_message.Message):
    __slots__ = ("request_id", "status", "message")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    status: int
    message: str
    def __init__(self, request_id: _Optional[int] = ..., status: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class Pong(_message.Message):
    __slots__ = ("nonce", "client_time_us", "server_time_us", "seq")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_TIME_US_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_US_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    nonce: int
    client_time_us: int
    server_time_us: int
    seq: int
    def __init__(self, nonce: _Optional[int] = ..., client_time_us: _Optional[int] = ..., server_time_us: _Optional[int] = ..., seq: _Optional[int] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: ErrorCode
    message: str
    def __init__(self, code: _Optional[_Union[ErrorCode, str]] = ..., message: _Optional[str] = ...) -> None: ...
