"""The client's copy of the server's tags, kept by the protocol's rules
(protocol.md "Sequence, epoch, and the resync rule"), as the Rust SDK's
``mirror``: a Catalog entry before any update that uses its id, Snapshot
chunks at the position, every Delta starting where the last one ended, no
Pong ahead of the position. No I/O."""

from __future__ import annotations

from ._proto import tagstream_pb2 as pb


class GapError(Exception):
    """Something was lost: a resume from the position recovers it."""

    def __init__(self, expected: int, got: int) -> None:
        super().__init__(f"sequence gap: expected {expected}, got {got}")
        self.expected = expected
        self.got = got


class ProtocolError(Exception):
    """The stream broke another rule: the mirror cannot be trusted; start over."""


class Mirror:
    def __init__(self) -> None:
        self.catalog: dict[int, pb.TagInfo] = {}
        self.values: dict[int, pb.TagUpdate] = {}
        self._by_name: dict[str, int] = {}
        self.epoch = 0
        self.position = 0

    def resume(self) -> pb.Resume | None:
        return pb.Resume(epoch=self.epoch, seq=self.position) if self.epoch else None

    def clear(self) -> None:
        self.__init__()

    def id(self, name: str) -> int | None:
        return self._by_name.get(name)

    def info(self, name: str) -> pb.TagInfo | None:
        i = self._by_name.get(name)
        return None if i is None else self.catalog.get(i)

    def value(self, name: str) -> pb.TagUpdate | None:
        i = self._by_name.get(name)
        return None if i is None else self.values.get(i)

    def learn(self, info: pb.TagInfo) -> None:
        """Adds or replaces a tag's description (a redefined tag keeps its id)."""
        old = self.catalog.get(info.id)
        if old is not None and old.name != info.name:
            self._by_name.pop(old.name, None)
        self.catalog[info.id] = info
        self._by_name[info.name] = info.id

    def apply(self, msg: pb.ServerMessage) -> None:
        """Applies one message; raises GapError or ProtocolError and then changes nothing."""
        kind = msg.WhichOneof("kind")
        if kind is None:
            raise ProtocolError("ServerMessage without kind")
        if kind == "welcome":
            w = msg.welcome
            if w.resume != pb.RESUMED:
                self.clear()
            self.epoch, self.position = w.epoch, w.seq
        elif kind == "catalog":
            for t in msg.catalog.tags:
                self.learn(t)
        elif kind == "snapshot":
            self._expect(msg.snapshot.seq)
            self._apply_updates(msg.snapshot.tags)
        elif kind == "delta":
            d = msg.delta
            self._expect(d.from_seq)
            if d.to_seq < d.from_seq:
                raise ProtocolError(f"delta goes backwards: {d.from_seq} -> {d.to_seq}")
            self._apply_updates(d.updates)
            self.position = d.to_seq
        elif kind == "pong" and msg.pong.seq > self.position:
            # The server is current before each Pong: a position below its
            # seq means a Delta was lost.
            raise GapError(self.position, msg.pong.seq)
        elif kind == "history_result":
            # Made at the position (the server brings the connection current
            # first): one from elsewhere means a Delta was lost.
            h = msg.history_result
            if h.seq != self.position:
                raise GapError(self.position, h.seq)
            for s in h.series:
                if s.id not in self.catalog:
                    raise ProtocolError(f"history for id {s.id} before its Catalog entry")

    def _expect(self, start: int) -> None:
        if start != self.position:
            raise GapError(self.position, start)

    def _apply_updates(self, updates) -> None:
        for u in updates:
            if u.id not in self.catalog:
                raise ProtocolError(f"update for id {u.id} before its Catalog entry")
        for u in updates:
            self.values[u.id] = u
