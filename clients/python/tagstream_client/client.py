"""The SDK's client, with the same behaviour as the Rust SDK's ``Client``:
one connection at a time, an exact mirror, reconnect with exponential
backoff and full jitter honouring the server's hints (1001 delay,
4000-4499 fresh token, 4500-4999 stop), resume with {epoch, seq}, a
Refresh before the token expires, writes and browses as awaitables.

Updates go through a bounded queue: a consumer that stops reading stalls
the socket, and the server then conflates (fewer, larger deltas; nothing
lost). Pending writes and browses are bounded by ``max_in_flight``."""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from . import status as _status
from ._proto import tagstream_pb2 as pb
from .backoff import Backoff, server_hint
from .mirror import GapError, Mirror, ProtocolError

SUBPROTOCOL = "tagstream.v1"

TokenSource = str | Callable[[], str | Awaitable[str]]


# ---- states and updates ---------------------------------------------------


@dataclass(frozen=True)
class Connecting:
    attempt: int


@dataclass(frozen=True)
class Live:
    outcome: int
    """pb.FRESH, pb.RESUMED or pb.RESYNC."""


@dataclass(frozen=True)
class Waiting:
    delay: float
    reason: str


@dataclass(frozen=True)
class Stopped:
    reason: str
    """"closed", "refused" (status set) or "told" (code and message set)."""
    status: int = 0
    code: int = 0
    message: str = ""


State = Connecting | Live | Waiting | Stopped


@dataclass(frozen=True)
class Change:
    name: str
    info: pb.TagInfo
    update: pb.TagUpdate


@dataclass(frozen=True)
class StateChanged:
    state: State


@dataclass(frozen=True)
class Welcomed:
    welcome: pb.Welcome


@dataclass(frozen=True)
class CatalogChanged:
    tags: list[pb.TagInfo]


@dataclass(frozen=True)
class Changes:
    """One batch: a Snapshot chunk or a Delta."""

    changes: list[Change]
    kind: str
    """"snapshot" or "delta"."""


@dataclass(frozen=True)
class Latency:
    seconds: float


@dataclass(frozen=True)
class ServerError:
    error: pb.Error


@dataclass(frozen=True)
class Paced:
    """The pacing the server granted, ms (after the Welcome and each pace())."""

    publish_interval_ms: int


@dataclass(frozen=True)
class Series:
    """One tag's recent values (protocol.md History), oldest first."""

    name: str
    info: pb.TagInfo
    points: list[pb.HistoryPoint]
    complete: bool
    """The kept values reach back to the start asked for."""
    decimated: bool
    """Thinned to max_points (first, min, max, last per time bucket and status changes)."""


@dataclass(frozen=True)
class History:
    """Recent values as of ``seq``, the connection's position: each series ends
    with its tag's state there, and the ``Changes`` after this update continue
    it. A tag missing from ``series`` is unknown, hidden, or keeps no history."""

    seq: int
    series: list[Series]


Update = StateChanged | Welcomed | CatalogChanged | Changes | Latency | Paced | ServerError | History


@dataclass(frozen=True)
class WriteOutcome:
    status: int
    status_name: str
    message: str

    @property
    def good(self) -> bool:
        return _status.is_good(self.status)


class WriteError(Exception):
    """A request that got no answer. ``code``: not-connected, connection-lost,
    timeout, busy or stopped."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def to_value(v: float | int | bool | str | bytes | pb.Value) -> pb.Value:
    """bool -> bool, int -> i64, float -> f64, str -> text, bytes -> raw."""
    if isinstance(v, pb.Value):
        return v
    if isinstance(v, bool):
        return pb.Value(bool=v)
    if isinstance(v, int):
        return pb.Value(i64=v)
    if isinstance(v, float):
        return pb.Value(f64=v)
    if isinstance(v, bytes):
        return pb.Value(raw=v)
    return pb.Value(text=str(v))


def _now_us() -> int:
    return time.time_ns() // 1000


@dataclass
class _Ended:
    kind: str  # closed | server | gap | broken | lost
    why: str = ""
    code: int = 0


@dataclass
class Options:
    url: str
    client_name: str = "tagstream-client-py"
    subscribe: list[str] = field(default_factory=lambda: ["#"])
    token: TokenSource | None = None
    ssl: ssl.SSLContext | None = None
    backoff: Backoff = field(default_factory=Backoff)
    write_timeout: float = 10.0
    ping_interval: float = 5.0
    """0: never ping."""
    refresh_before: float = 30.0
    queue: int = 256
    max_in_flight: int = 64
    publish_interval_ms: int = 0
    """At most one Delta per this many ms (protocol.md Pacing): a wallboard or
    a slow link asks for the latest value every second, not every change.
    0: every change as it comes. The server may revise it:
    ``Client.publish_interval_ms`` holds what it granted."""


class Client:
    """``async with Client(Options(url)) as c: async for u in c.updates(): ...``"""

    def __init__(self, options: Options, rng: random.Random | None = None) -> None:
        self.options = options
        self.mirror = Mirror()
        self.state: State = Connecting(0)
        self.welcome: pb.Welcome | None = None
        self.latency: float | None = None
        self.publish_interval_ms = 0
        """The pacing in force, ms, as the server granted it (0: unpaced)."""
        self._ask_interval_ms = options.publish_interval_ms
        self._rng = rng or random.Random()
        self._queue: asyncio.Queue[Update | None] = asyncio.Queue(maxsize=max(1, options.queue))
        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._next_id = 1
        self._writes: dict[int, asyncio.Future[WriteOutcome]] = {}
        self._browses: dict[int, asyncio.Future[pb.BrowseResult]] = {}
        self._histories: dict[int, asyncio.Future[History]] = {}
        self._subscribe = list(options.subscribe)
        self._welcomed = False
        self._refresh: asyncio.Task[None] | None = None
        # Set (and replaced) at each state change: what ready() waits on.
        self._changed = asyncio.Event()

    async def __aenter__(self) -> Client:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def ready(self, within: float = 10.0) -> None:
        """Waits until the session is live (at once if it is): ``start()``
        then ``await ready()`` before a write. Raises ``WriteError("stopped")``
        if the client stops first, ``WriteError("timeout")`` after
        ``within`` seconds."""
        try:
            async with asyncio.timeout(within):
                while True:
                    if isinstance(self.state, Live):
                        return
                    if isinstance(self.state, Stopped):
                        raise WriteError("stopped", "client stopped before it was live")
                    await self._changed.wait()
        except TimeoutError:
            raise WriteError("timeout", f"not live within {within} s") from None

    async def close(self) -> None:
        """Closes the connection and stops for good."""
        self._closing.set()
        if self._ws is not None:
            await self._ws.close()
        if self._task is not None:
            # Let the task emit its last state; drop what nobody reads.
            while not self._task.done():
                with contextlib.suppress(asyncio.QueueEmpty):
                    self._queue.get_nowait()
                await asyncio.sleep(0.01)

    async def updates(self) -> AsyncIterator[Update]:
        """Every update in order, until the client stops."""
        while True:
            u = await self._queue.get()
            if u is None:
                return
            yield u

    async def next_update(self) -> Update | None:
        """The next update (None once stopped); bound the wait with ``asyncio.timeout``."""
        return await self._queue.get()

    # ---- requests ------------------------------------------------------

    async def write(self, tag: str, value: float | int | bool | str | bytes | pb.Value) -> WriteOutcome:
        """Writes a value and returns its WriteResult (raises WriteError without one)."""
        msg = pb.ClientMessage(write=pb.WriteRequest(tag=tag, value=to_value(value)))
        return await self._request(self._writes, msg, msg.write)

    async def browse(self, pattern: str, limit: int = 0, after: str = "") -> pb.BrowseResult:
        """One page of the tags matching ``pattern``, subscribed or not."""
        msg = pb.ClientMessage(browse=pb.Browse(pattern=pattern, limit=limit, after=after))
        return await self._request(self._browses, msg, msg.browse)

    async def history(
        self,
        tags: list[str],
        start_us: int = 0,
        end_us: int = 0,
        max_points: int = 0,
    ) -> History:
        """Recent values of ``tags`` (names, at most 100) with source times in
        ``start_us..end_us`` (µs since the Unix epoch; 0: as far back as kept /
        now), at most ``max_points`` per tag (0: the server's cap). The answer
        also comes as a ``History`` update in its place among the updates: a
        trend that starts from it and appends the ``Changes`` after it has no
        gap and no overlap."""
        msg = pb.ClientMessage(
            history=pb.HistoryRequest(tags=tags, start_us=start_us, end_us=end_us, max_points=max_points)
        )
        return await self._request(self._histories, msg, msg.history)

    async def pace(self, ms: int) -> None:
        """Asks for at most one Delta per ``ms`` from now on (0: every change),
        on this connection and the next ones; a ``Paced`` update reports what
        the server granted."""
        self._ask_interval_ms = ms
        await self._send(pb.ClientMessage(pace=pb.Pace(publish_interval_ms=ms)))

    async def subscribe(self, patterns: list[str]) -> None:
        self._subscribe += [p for p in patterns if p not in self._subscribe]
        await self._send(pb.ClientMessage(subscribe=pb.Subscribe(patterns=patterns)))

    async def unsubscribe(self, patterns: list[str]) -> None:
        self._subscribe = [p for p in self._subscribe if p not in patterns]
        await self._send(pb.ClientMessage(unsubscribe=pb.Unsubscribe(patterns=patterns)))

    async def _request(self, pending: dict, msg: pb.ClientMessage, inner) -> object:
        if self._closing.is_set() or isinstance(self.state, Stopped):
            raise WriteError("stopped", "client stopped")
        if self._ws is None or not isinstance(self.state, Live):
            # Never queued for later: a setpoint sent minutes late is worse
            # than one refused now.
            raise WriteError("not-connected", "not connected")
        if len(self._writes) + len(self._browses) + len(self._histories) >= self.options.max_in_flight:
            raise WriteError("busy", "too many requests in flight")
        request_id = self._next_id
        self._next_id += 1
        inner.request_id = request_id
        future = asyncio.get_running_loop().create_future()
        pending[request_id] = future
        try:
            await self._send(msg)
            return await asyncio.wait_for(future, self.options.write_timeout)
        except TimeoutError:
            raise WriteError("timeout", f"no answer within {self.options.write_timeout} s") from None
        finally:
            pending.pop(request_id, None)

    async def _send(self, msg: pb.ClientMessage) -> None:
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(ConnectionClosed):
                await ws.send(msg.SerializeToString())

    # ---- the connection loop ---------------------------------------------

    async def _emit(self, update: Update) -> None:
        await self._queue.put(update)

    async def _set_state(self, state: State) -> None:
        self.state = state
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        await self._emit(StateChanged(state))

    async def _token(self) -> str | None:
        t = self.options.token
        if t is None or isinstance(t, str):
            return t
        got = t()
        return await got if isinstance(got, Awaitable) else got

    async def _run(self) -> None:
        b = self.options.backoff
        attempt = 0
        try:
            while not self._closing.is_set():
                await self._set_state(Connecting(attempt))
                delay, reason = await self._connect_and_serve(attempt)
                if isinstance(self.state, Stopped):
                    return
                if delay is None:
                    break
                if self._welcomed:
                    attempt, self._welcomed = 0, False
                if delay < 0:
                    delay = b.delay(attempt, self._rng)
                attempt += 1
                await self._set_state(Waiting(delay, reason))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), delay)
            await self._set_state(Stopped("closed"))
        finally:
            await self._queue.put(None)

    async def _connect_and_serve(self, attempt: int) -> tuple[float | None, str]:
        """Returns (delay, reason): delay None stops, -1 means "the backoff's"."""
        b = self.options.backoff
        try:
            token = await self._token()
        except Exception as e:  # a provider's failure is retried
            return -1, f"no token: {e}"
        headers = {"Authorization": f"Bearer {token}"} if token else None
        try:
            ws = await ws_connect(
                self.options.url,
                subprotocols=[Subprotocol(SUBPROTOCOL)],
                additional_headers=headers,
                ssl=self.options.ssl,
                open_timeout=10,
                max_size=64 * 1024 * 1024,
            )
        except InvalidStatus as e:
            code = e.response.status_code
            if code in (401, 403) and not callable(self.options.token):
                # Retrying does not make a fixed token valid.
                await self._set_state(Stopped("refused", status=code))
                return None, ""
            return -1, f"handshake refused ({code})"
        except (OSError, InvalidHandshake, TimeoutError) as e:
            return -1, f"connect: {e}"
        ended = await self._serve(ws)
        if ended.kind == "closed" or self._closing.is_set():
            return None, ""
        if ended.kind == "server":
            if 4500 <= ended.code <= 4999:
                await self._set_state(Stopped("told", code=ended.code, message=ended.why))
                return None, ""
            if ended.code == 1001:
                hint = server_hint(ended.why, b.cap)
                return (hint if hint is not None else b.delay(0, self._rng)), "server going away (1001)"
            return -1, f"closed by server: {ended.code} {ended.why}".strip()
        if ended.kind == "gap":
            return b.delay(0, self._rng), ended.why
        if ended.kind == "broken":
            self.mirror.clear()
        return -1, ended.why

    async def _serve(self, ws: ClientConnection) -> _Ended:
        self._ws = ws
        hello = pb.Hello(
            client_name=self.options.client_name,
            subscribe=self._subscribe,
            publish_interval_ms=self._ask_interval_ms,
        )
        resume = self.mirror.resume()
        if resume is not None:
            hello.resume.CopyFrom(resume)
        pinger: asyncio.Task[None] | None = None
        ended = _Ended("lost", "connection closed")
        try:
            await ws.send(pb.ClientMessage(hello=hello).SerializeToString())
            if self.options.ping_interval > 0:
                pinger = asyncio.create_task(self._pinger())
            async for data in ws:
                if isinstance(data, str):
                    ended = _Ended("broken", "server sent a text frame")
                    break
                msg = pb.ServerMessage()
                try:
                    msg.ParseFromString(data)
                    self.mirror.apply(msg)
                except GapError as e:
                    ended = _Ended("gap", str(e))
                    break
                except ProtocolError as e:
                    ended = _Ended("broken", str(e))
                    break
                except Exception as e:  # protobuf's DecodeError
                    ended = _Ended("broken", f"undecodable server message: {e}")
                    break
                await self._dispatch(msg)
            else:
                ended = self._close_of(ws)
        except ConnectionClosed:
            ended = self._close_of(ws)
        finally:
            self._ws = None
            for t in (pinger, self._refresh):
                if t is not None:
                    t.cancel()
            self._refresh = None
            for pending in (self._writes, self._browses, self._histories):
                for f in pending.values():
                    if not f.done():
                        f.set_exception(WriteError("connection-lost", "connection lost before the answer"))
                pending.clear()
            with contextlib.suppress(Exception):
                await ws.close()
        if self._closing.is_set():
            return _Ended("closed")
        return ended

    def _close_of(self, ws: ClientConnection) -> _Ended:
        code = ws.close_code
        if code is None or code == 1006:
            return _Ended("lost", "connection closed")
        return _Ended("server", ws.close_reason or "", code)

    async def _pinger(self) -> None:
        while True:
            await asyncio.sleep(self.options.ping_interval)
            ping = pb.Ping(nonce=self._next_id, client_time_us=_now_us())
            await self._send(pb.ClientMessage(ping=ping))

    async def _refresher(self, expires_at_us: int) -> None:
        left = (expires_at_us - _now_us()) / 1e6
        await asyncio.sleep(max(0.0, left - min(self.options.refresh_before, left / 2)))
        try:
            token = await self._token()
        except Exception:
            # Without a fresh token the server closes with 4001 at expiry;
            # the reconnect asks the provider again.
            return
        if token:
            await self._send(pb.ClientMessage(refresh=pb.Refresh(token=token)))

    def _schedule_refresh(self, expires_at_us: int) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
            self._refresh = None
        if expires_at_us > 0 and callable(self.options.token):
            self._refresh = asyncio.create_task(self._refresher(expires_at_us))

    async def _dispatch(self, msg: pb.ServerMessage) -> None:
        kind = msg.WhichOneof("kind")
        if kind == "welcome":
            w = msg.welcome
            self._welcomed = True
            self.welcome = w
            self._schedule_refresh(w.token_expires_at_us)
            await self._emit(Welcomed(w))
            self.publish_interval_ms = w.publish_interval_ms
            await self._emit(Paced(w.publish_interval_ms))
            await self._set_state(Live(w.resume))
        elif kind == "catalog":
            await self._emit(CatalogChanged(list(msg.catalog.tags)))
        elif kind == "snapshot":
            await self._changes(msg.snapshot.tags, "snapshot")
        elif kind == "delta":
            await self._changes(msg.delta.updates, "delta")
        elif kind == "write_result":
            r = msg.write_result
            f = self._writes.pop(r.request_id, None)
            if f is not None and not f.done():
                f.set_result(WriteOutcome(r.status, _status.name(r.status), r.message))
        elif kind == "browse_result":
            f = self._browses.pop(msg.browse_result.request_id, None)
            if f is not None and not f.done():
                f.set_result(msg.browse_result)
        elif kind == "history_result":
            history = self._history(msg.history_result)
            await self._emit(history)
            f = self._histories.pop(msg.history_result.request_id, None)
            if f is not None and not f.done():
                f.set_result(history)
        elif kind == "pong":
            self.latency = max(0.0, (_now_us() - msg.pong.client_time_us) / 1e6)
            await self._emit(Latency(self.latency))
        elif kind == "refreshed":
            self._schedule_refresh(msg.refreshed.expires_at_us)
        elif kind == "paced":
            self.publish_interval_ms = msg.paced.publish_interval_ms
            await self._emit(Paced(self.publish_interval_ms))
        elif kind == "error":
            await self._emit(ServerError(msg.error))

    def _history(self, h: pb.HistoryResult) -> History:
        series = [
            Series(info.name, info, list(s.points), s.complete, s.decimated)
            for s in h.series
            if (info := self.mirror.catalog.get(s.id)) is not None
        ]
        return History(h.seq, series)

    async def _changes(self, updates, kind: str) -> None:
        if not updates:
            return
        batch = [
            Change(self.mirror.catalog[u.id].name, self.mirror.catalog[u.id], u)
            for u in updates
            if u.id in self.mirror.catalog
        ]
        await self._emit(Changes(batch, kind))
