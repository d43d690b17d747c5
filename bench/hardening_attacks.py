"""The memory and CPU attacks of the second hardening review, against a
running `tagstream demo` (BENCHMARKS.md "Hardening, round 2").

    python3 bench/hardening_attacks.py BINARY patterns|churn|sparkplug|scope

Starts BINARY as `demo` (or `run` for `scope`) on a free port, runs one
attack, and prints the server's RSS and CPU seconds before and after (and
after the attacking connections closed). Needs `websockets`, `protobuf`
(the Python SDK's dev extras) and, for `sparkplug`, `paho-mqtt` and
`grpcio-tools`.
"""

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "clients", "python"))
import websockets
from tagstream_client._proto import tagstream_pb2 as pb


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def report(pid, label):
    print(
        f"{label:>28}: RSS {rss_mb(pid):8.1f} MB  CPU {cpu_s(pid):6.2f} s", flush=True
    )


def msg(**kind):
    return pb.ClientMessage(**kind).SerializeToString()


async def hello(url, patterns=()):
    ws = await websockets.connect(url, subprotocols=["tagstream.v1"], max_size=None)
    await ws.send(msg(hello=pb.Hello(client_name="attack", subscribe=list(patterns))))
    return ws


async def drain(ws, seconds):
    got = 0
    try:
        while True:
            frame = await asyncio.wait_for(ws.recv(), seconds)
            got += len(frame)
    except (TimeoutError, websockets.ConnectionClosed):
        pass
    return got


async def patterns(url, pid):
    """300 Subscribes of a distinct 60 KB pattern each, three rounds."""
    for round_ in range(3):
        ws = await hello(url)
        for i in range(300):
            p = f"a/{round_}/{i}/" + "x" * 60_000
            await ws.send(msg(subscribe=pb.Subscribe(patterns=[p])))
        await drain(ws, 1.0)
        report(pid, f"round {round_ + 1}, connected")
        await ws.close()
        await asyncio.sleep(0.5)
        report(pid, f"round {round_ + 1}, closed")


async def churn(url, pid):
    """100 x (Subscribe '#', Unsubscribe '#') from each of two clients."""
    received = 0
    for _ in range(2):
        ws = await hello(url)
        await drain(ws, 0.5)
        for _ in range(100):
            await ws.send(msg(subscribe=pb.Subscribe(patterns=["#"])))
            await ws.send(msg(unsubscribe=pb.Unsubscribe(patterns=["#"])))
        received += await drain(ws, 2.0)
        await ws.close()
    print(f"{'bytes sent to the churners':>28}: {received / 1e6:.1f} MB")


def sparkplug(broker, pid):
    """A rogue Sparkplug publisher with 60 KB identifiers, through an
    external broker."""
    import paho.mqtt.client as mqtt
    from grpc_tools import protoc

    out = tempfile.mkdtemp()
    proto_dir = os.path.join(os.path.dirname(__file__), "..", "proto")
    protoc.main(
        ["protoc", f"-I{proto_dir}", f"--python_out={out}", "sparkplug_b.proto"]
    )
    sys.path.insert(0, out)
    import sparkplug_b_pb2 as sp

    host, port = broker.rsplit(":", 1)
    if hasattr(mqtt, "CallbackAPIVersion"):
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="rogue")
    else:  # paho-mqtt 1.x
        c = mqtt.Client(client_id="rogue")
    c.connect(host, int(port))
    c.loop_start()
    long = "x" * 60_000

    def payload(seq, metrics):
        p = sp.Payload(timestamp=int(time.time() * 1000), seq=seq)
        for name, value in metrics:
            m = p.metrics.add(name=name, datatype=10)  # Double
            m.double_value = value
        return p.SerializeToString()

    # Born node with a normal name, so its device births are taken.
    c.publish(
        "spBv1.0/site/NBIRTH/rogue", payload(0, [("bdSeq", 0.0)]), qos=1
    ).wait_for_publish()
    for i in range(5000):
        topic = f"spBv1.0/site/DBIRTH/rogue/{long}{i}"
        c.publish(topic, payload((i + 1) % 256, [("m", 1.0)]), qos=0)
    time.sleep(2)
    report(pid, "5,000 DBIRTH, 60 KB devices")
    for i in range(5000):
        c.publish(f"spBv1.0/site/NDATA/{long}{i}", payload(0, [("m", 1.0)]), qos=0)
    time.sleep(2)
    report(pid, "5,000 NDATA, 60 KB nodes")
    metrics = [(f"{long}{i}", 1.0) for i in range(2000)]
    c.publish(
        "spBv1.0/site/NBIRTH/rogue2", payload(0, metrics), qos=1
    ).wait_for_publish()
    time.sleep(3)
    report(pid, "2,000 metrics, 60 KB names")
    c.loop_stop()


async def scope(url, pid):
    """Subscribe '#' with a static token holding 1,000 read patterns."""
    ws = await websockets.connect(
        url,
        subprotocols=["tagstream.v1", "bearer.wide-scope-token-0123456789"],
        max_size=None,
    )
    await ws.send(msg(hello=pb.Hello(client_name="wide")))
    await drain(ws, 0.5)
    started = time.monotonic()
    await ws.send(msg(subscribe=pb.Subscribe(patterns=["#"])))
    await ws.send(msg(ping=pb.Ping(nonce=1)))
    entries = 0
    while True:
        frame = pb.ServerMessage.FromString(await ws.recv())
        if frame.WhichOneof("kind") == "catalog":
            entries += len(frame.catalog.tags)
        if frame.WhichOneof("kind") == "pong":
            break
    elapsed = time.monotonic() - started
    print(f"{'Subscribe # answered in':>28}: {elapsed:.3f} s ({entries} tags)")
    await ws.close()


def main():
    binary, attack = sys.argv[1], sys.argv[2]
    port = free_port()
    env = dict(os.environ, RUST_LOG="info")
    mosquitto = None
    if attack == "sparkplug":
        # An external broker (Debian's Mosquitto), so the server's RSS is
        # the host's alone, not an in-process broker's buffers too.
        mqtt_port = free_port()
        conf = os.path.join(tempfile.mkdtemp(), "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {mqtt_port} 127.0.0.1\nallow_anonymous true\n")
        mosquitto = subprocess.Popen(
            ["/usr/sbin/mosquitto", "-c", conf], stderr=subprocess.DEVNULL
        )
        time.sleep(0.5)
        broker = f"127.0.0.1:{mqtt_port}"
        path = os.path.join(tempfile.mkdtemp(), "attack.toml")
        with open(path, "w") as cfg:
            cfg.write(
                f'[server]\nlisten = "127.0.0.1:{port}"\n'
                f'[[sparkplug]]\nname = "site"\nurl = "mqtt://{broker}"\n'
                'groups = ["site"]\nhost_id = "attacked"\n'
            )
        args = [binary, "run", "--config", path]
    else:
        text = f'[server]\nlisten = "127.0.0.1:{port}"\n'
        if attack == "scope":
            reads = ", ".join(f'"sim/g{i}/#"' for i in range(1000))
            text += f'[auth]\ntokens = [ {{ name = "wide", token_env = "WIDE", read = [{reads}] }} ]\n'
            text += '[[sim]]\nname = "sim"\ntags = 100000\ngroup = 100\nrate = 1000\n'
            env["WIDE"] = "wide-scope-token-0123456789"
        else:
            text += '[[sim]]\nname = "sim"\ntags = 20000\ngroup = 100\nrate = 100\n'
        path = os.path.join(tempfile.mkdtemp(), "attack.toml")
        with open(path, "w") as cfg:
            cfg.write(text)
        args = [binary, "run", "--config", path]
    server = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        line = server.stderr.readline()
        if "serving" in line:
            break
    threading_drain(server)
    time.sleep(1)
    url = f"ws://127.0.0.1:{port}/api/v1/stream"
    report(server.pid, "before")
    try:
        if attack == "patterns":
            asyncio.run(patterns(url, server.pid))
        elif attack == "churn":
            asyncio.run(churn(url, server.pid))
        elif attack == "sparkplug":
            sparkplug(broker, server.pid)
        elif attack == "scope":
            asyncio.run(scope(url, server.pid))
        report(server.pid, "after")
    finally:
        server.terminate()
        server.wait()
        if mosquitto:
            mosquitto.terminate()


def threading_drain(server):
    """Keeps reading the server's log so it never blocks on a full pipe."""
    import threading

    threading.Thread(target=lambda: [None for _ in server.stderr], daemon=True).start()


if __name__ == "__main__":
    main()
