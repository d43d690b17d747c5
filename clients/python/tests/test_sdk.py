"""The Python SDK against a real ``tagstream demo`` (real Modbus devices
behind it, real sockets): snapshot, a delta after a device change, resume
through a cut relay, resync after a restart, writes, a refused token, the
backoff schedule."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import math
import pathlib
import random
import struct
import time

import pytest
from harness import DEADLINE, Demo, Relay, free_port

from tagstream_client import (
    Backoff,
    Changes,
    Client,
    Connecting,
    History,
    Live,
    Options,
    Paced,
    ServerError,
    StateChanged,
    Stopped,
    Update,
    Waiting,
    Welcomed,
    WriteError,
    format_value,
    proto,
    shortest_f32,
)


def options(url: str, **extra) -> Options:
    fields = {
        "subscribe": ["plant/boiler1/#"],
        "backoff": Backoff(initial=0.05, cap=0.4),
        "ping_interval": 0.2,
    }
    return Options(url=url, **{**fields, **extra})


async def until(client: Client, pred) -> list[Update]:
    """Reads updates until ``pred`` holds; returns them."""
    seen: list[Update] = []
    async with asyncio.timeout(DEADLINE):
        async for u in client.updates():
            seen.append(u)
            if pred(u):
                return seen
    raise AssertionError(f"updates ended: {seen}")


def live(outcome: int):
    return lambda u: isinstance(u, StateChanged) and u.state == Live(outcome)


def changed(name: str, text: str | None = None):
    def pred(u: Update) -> bool:
        if not isinstance(u, Changes):
            return False
        return any(
            c.name == name and (text is None or format_value(c.update.value, c.info) == text)
            for c in u.changes
        )

    return pred


def run(coro):
    return asyncio.run(coro)


def test_snapshot_then_a_delta_after_a_device_change():
    async def main():
        async with Demo() as demo:
            async with Client(options(demo.url)) as c:
                seen = await until(c, changed("plant/boiler1/setpoint"))
                assert any(isinstance(u, Changes) and u.kind == "snapshot" for u in seen)
                assert c.mirror.value("plant/boiler1/temperature") is not None
                assert c.mirror.info("plant/boiler1/pressure").resolution == 0.01
                # The setpoint is a holding register: written, then read back
                # from the device by the poll.
                drain = asyncio.create_task(until(c, changed("plant/boiler1/setpoint", "66.5")))
                outcome = await c.write("plant/boiler1/setpoint", 66.5)
                assert outcome.status_name == "Good"
                seen = await drain
                assert isinstance(seen[-1], Changes) and seen[-1].kind == "delta"

    run(main())


def test_a_writes_result_carries_the_typed_status_name():
    async def main():
        async with Demo() as demo:
            c = Client(options(demo.url))
            c.start()
            await until(c, live(proto.FRESH))
            reader = asyncio.create_task(until(c, lambda u: False))
            far = await c.write("plant/boiler1/setpoint", 1000.0)
            assert (far.status_name, far.good) == ("BadOutOfRange", False)
            ro = await c.write("plant/boiler1/temperature", 1.0)
            assert ro.status_name == "BadNotWritable"
            page = await c.browse("plant/line1/+", 2)
            assert len(page.tags) == 2 and page.next_after
            reader.cancel()
            await c.close()
            with pytest.raises(WriteError) as e:
                await c.write("plant/boiler1/setpoint", 1.0)
            assert e.value.code == "stopped"

    run(main())


def test_a_dropped_connection_resumes_with_one_delta_and_no_snapshot():
    async def main():
        async with Demo() as demo:
            relay = await Relay(demo.port).listen()
            try:
                async with Client(options(f"ws://127.0.0.1:{relay.port}/api/v1/stream")) as c:
                    await until(c, live(proto.FRESH))
                    epoch = c.welcome.epoch
                    await relay.cut()
                    await until(c, lambda u: isinstance(u, StateChanged) and isinstance(u.state, Waiting))
                    await asyncio.sleep(0.4)  # the plant moves on meanwhile
                    await relay.listen()
                    await until(c, live(proto.RESUMED))
                    assert c.welcome.epoch == epoch
                    after = await until(c, lambda u: isinstance(u, Changes))
                    assert not any(isinstance(u, Welcomed) for u in after[:-1])
                    assert after[-1].kind == "delta", "one Delta after RESUMED, no snapshot"
            finally:
                await relay.cut()

    run(main())


def test_start_then_ready_then_write():
    async def main():
        async with Demo() as demo:
            c = Client(options(demo.url))
            c.start()
            await c.ready()
            outcome = await c.write("plant/boiler1/setpoint", 61)
            assert outcome.good, outcome
            await c.ready()  # live already: at once
            await c.close()
            with pytest.raises(WriteError) as stopped:
                await c.ready(1.0)
            assert stopped.value.code == "stopped"
        away = Client(options("ws://127.0.0.1:9/api/v1/stream"))
        away.start()
        with pytest.raises(WriteError) as late:
            await away.ready(0.3)
        assert late.value.code == "timeout"
        await away.close()

    run(main())


def test_pacing_asked_in_the_hello_granted_in_the_welcome_changed_with_pace():
    async def main():
        async with Demo() as demo:
            # No Pings: each Pong brings the connection current (a Delta) first.
            c = Client(options(demo.url, publish_interval_ms=1000, ping_interval=0))
            c.start()
            await c.ready()
            assert c.publish_interval_ms == 1000
            # Honoured: the boiler changes every 100 ms, the Deltas come once a second.
            deltas = 0
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(3.2):
                    async for u in c.updates():
                        deltas += isinstance(u, Changes) and u.kind == "delta"
            assert 2 <= deltas <= 4, f"{deltas} Deltas in 3.2 s paced at 1 s"
            await c.pace(120_000)
            seen = await until(c, lambda u: isinstance(u, Paced) and u.publish_interval_ms != 1000)
            assert seen[-1] == Paced(60_000), "the server caps it at 60 s"
            assert c.publish_interval_ms == 60_000
            await c.close()

    run(main())


def test_history_then_live_continues_without_a_gap_or_an_overlap():
    async def main():
        async with Demo() as demo:
            c = Client(options(demo.url))
            c.start()
            await c.ready()
            await asyncio.sleep(1.5)  # the demo's boiler changes every 100 ms
            tag = "plant/boiler1/temperature"
            # Asked while the updates are read: the answer comes among them.
            asked = asyncio.create_task(c.history([tag, "plant/no/such"]))
            seen = await until(c, lambda u: isinstance(u, History))
            h = await asked
            assert seen[-1] == h
            assert [s.name for s in h.series] == [tag], "an unknown tag is absent"
            series = h.series[0]
            assert len(series.points) >= 5, f"{len(series.points)} points after 1.5 s"
            assert series.complete and not series.decimated
            times = [p.source_time_us for p in series.points]
            assert times == sorted(times)
            after = await until(c, changed(tag))
            first = next(ch for u in after if isinstance(u, Changes) for ch in u.changes if ch.name == tag)
            assert first.update.source_time_us > times[-1], "the changes after it are newer: no overlap"
            # More than 100 names: LIMIT_EXCEEDED and the session stays.
            refused = asyncio.create_task(c.history([f"plant/{i}" for i in range(101)]))
            errors = await until(c, lambda u: isinstance(u, ServerError))
            assert errors[-1].error.code == proto.LIMIT_EXCEEDED
            assert isinstance(c.state, Live)
            await c.close()
            with pytest.raises(WriteError):
                await refused

    run(main())


def test_a_server_restart_is_a_resync():
    async def main():
        async with Demo() as demo:
            async with Client(options(demo.url)) as c:
                await until(c, live(proto.FRESH))
                epoch = c.welcome.epoch
                await demo.kill()
                await until(c, lambda u: isinstance(u, StateChanged) and isinstance(u.state, Waiting))
                await demo.start()
                await until(c, live(proto.RESYNC))
                assert c.welcome.epoch != epoch
                assert c.mirror.epoch == c.welcome.epoch
                seen = await until(c, lambda u: isinstance(u, Changes))
                assert seen[-1].kind == "snapshot"

    run(main())


def test_a_refused_token_stops_the_client():
    async def main():
        async with Demo() as demo:
            c = Client(options(demo.url, token="not-a-token"))
            c.start()
            seen = await until(c, lambda u: isinstance(u, StateChanged) and isinstance(u.state, Stopped))
            assert seen[-1].state == Stopped("refused", status=401)
            with pytest.raises(WriteError) as e:
                await c.write("plant/boiler1/setpoint", 1.0)
            assert e.value.code == "stopped"

    run(main())


def test_while_the_server_is_away_retries_follow_the_capped_jittered_schedule():
    async def main():
        backoff = Backoff(initial=0.02, cap=0.16)
        o = options(f"ws://127.0.0.1:{free_port()}/api/v1/stream", backoff=backoff, ping_interval=0)
        c = Client(o, rng=random.Random(7))
        c.start()
        delays: list[float] = []
        async with asyncio.timeout(DEADLINE):
            async for u in c.updates():
                if isinstance(u, StateChanged) and isinstance(u.state, Connecting):
                    assert u.state.attempt == len(delays)
                if isinstance(u, StateChanged) and isinstance(u.state, Waiting):
                    delays.append(u.state.delay)
                    if len(delays) == 10:
                        break
        await c.close()
        for attempt, d in enumerate(delays):
            assert 0 <= d <= backoff.ceiling(attempt) <= backoff.cap, (attempt, d)
        assert len(set(delays)) > 5, "full jitter, not a fixed ladder"
        assert [backoff.ceiling(a) for a in range(6)] == [0.02, 0.04, 0.08, 0.16, 0.16, 0.16]

    run(main())


def test_values_print_as_people_read_them():
    f32 = struct.unpack("<f", struct.pack("<f", 56.1767))[0]
    assert repr(f32) == "56.176700592041016"
    assert shortest_f32(f32) == "56.1767"
    assert format_value(proto.Value(f64=559 * 0.1), proto.TagInfo(type=proto.F64, resolution=0.1)) == "55.9"
    assert format_value(proto.Value(f64=f32), proto.TagInfo(type=proto.F32)) == "56.1767"
    assert format_value(None) == "-"
    assert not math.isnan(f32)


def test_the_shared_display_vectors():
    """clients/format-vectors.txt: the same rule as Rust and TypeScript."""
    path = pathlib.Path(__file__).resolve().parents[2] / "format-vectors.txt"
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        kind, resolution, places, value, text = line.split()
        info = proto.TagInfo(type=getattr(proto, kind), resolution=float(resolution))
        if places != "-":
            info.decimals = int(places)
        assert format_value(proto.Value(f64=float(value)), info) == text, line


SECRET = "py-sdk-hs256-secret-0123456789abcdef"
JWT_SERVER = """
[server]
listen = "127.0.0.1:{port}"
[auth]
jwt = { hs256_secret_env = "JWT_SECRET", leeway = "0s" }
[[sim]]
name = "sim"
prefix = "sim"
tags = 4
rate = 20
"""


def hs256(claims: dict) -> str:
    """A JWT signed here (no JWT library needed for a test)."""

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def test_a_token_provider_refreshes_the_session_before_its_token_expires():
    async def main():
        minted = 0

        async def provider() -> str:
            nonlocal minted
            minted += 1
            # Each token lives 2 s: the session outlives several only by Refresh.
            return hs256({"sub": "op", "exp": int(time.time()) + 2, "read": ["#"], "write": []})

        async with Demo(config=JWT_SERVER, env={"JWT_SECRET": SECRET}) as server:
            o = options(server.url, token=provider, subscribe=["sim/#"])
            async with Client(o) as c:
                await until(c, live(proto.FRESH))
                assert c.welcome.token_expires_at_us > 0
                states = []
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(6):
                        async for u in c.updates():
                            if isinstance(u, StateChanged):
                                states.append(u.state)
                assert states == [], f"the session stayed up: {states}"
                assert minted >= 3, "the provider was asked again"

    run(main())
