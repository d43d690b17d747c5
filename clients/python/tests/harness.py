"""What the SDK's tests run against: a real ``tagstream demo`` process
(TAGSTREAM_BIN, set by ``cargo test --test clients``), a TCP relay that can
cut every connection, and free ports."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tempfile

BIN = os.environ.get("TAGSTREAM_BIN", "../../target/debug/tagstream")
DEADLINE = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Demo:
    """A demo server on a fixed port; ``kill`` is a crash (SIGKILL)."""

    def __init__(self, port: int | None = None, config: str | None = None, env: dict | None = None) -> None:
        """``config``: serve this TOML (``{port}`` filled in) with ``tagstream run`` instead of the demo."""
        self.port = port or free_port()
        self.proc: asyncio.subprocess.Process | None = None
        self.env = env or {}
        self.config: str | None = None
        if config is not None:
            fd, self.config = tempfile.mkstemp(suffix=".toml")
            with os.fdopen(fd, "w") as f:
                f.write(config.replace("{port}", str(self.port)))

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/api/v1/stream"

    async def start(self) -> Demo:
        env = {**os.environ, "RUST_LOG": "warn,rumqttd=off", **self.env}
        if self.config:
            args = ["run", "--config", self.config]
        else:
            args = ["demo", "--listen", f"127.0.0.1:{self.port}"]
        quiet = asyncio.subprocess.DEVNULL
        self.proc = await asyncio.create_subprocess_exec(BIN, *args, env=env, stdout=quiet)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE
        while loop.time() < deadline:
            if await self._ready():
                return self
            await asyncio.sleep(0.05)
        raise RuntimeError(f"demo on {self.port} not ready")

    async def __aenter__(self) -> Demo:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.kill()

    async def _ready(self) -> bool:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        writer.write(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        head = await reader.read(64)
        writer.close()
        return head.startswith(b"HTTP/1.1 200")

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self.config:
            with contextlib.suppress(OSError):
                os.unlink(self.config)


class Relay:
    """A TCP relay: ``cut`` drops every connection and stops listening;
    ``listen`` resumes on the same port."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def listen(self) -> Relay:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _relay(self, r_in: asyncio.StreamReader, w_in: asyncio.StreamWriter) -> None:
        try:
            r_out, w_out = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            w_in.close()
            return
        self._writers |= {w_in, w_out}

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            # Either side ending ends both.
            for x in (w_in, w_out):
                x.close()

        await asyncio.gather(pipe(r_in, w_out), pipe(r_out, w_in))

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in self._writers:
            w.transport.abort()
        self._writers.clear()
