"""A Sparkplug B edge node built on PyPI's pysparkplug: an implementation
of the payload encoding independent of tagstream's, for tests/mqtt.

Usage: pysparkplug_edge.py HOST PORT. It connects as plant/py1 with a
device "pump", births them, prints "connected", then reads commands from
stdin: "temp V" publishes NDATA temp = V and prints "sent". A DCMD to the
pump's setpoint is applied (DDATA with the new value) and printed as
"dcmd setpoint V".
"""

import sys

import pysparkplug as sp


def metric(name: str, datatype: sp.DataType, value: object) -> sp.Metric:
    return sp.Metric(
        timestamp=sp.get_current_timestamp(),
        name=name,
        datatype=datatype,
        value=value,
    )


def on_dcmd(node: sp.EdgeNode, message: sp.Message) -> None:
    for m in message.payload.metrics:
        if m.name == "setpoint":
            node.update_device(
                "pump", [metric("setpoint", sp.DataType.DOUBLE, m.value)]
            )
            print(f"dcmd setpoint {m.value}", flush=True)


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    node = sp.EdgeNode(
        "plant",
        "py1",
        metrics=[
            metric("temp", sp.DataType.DOUBLE, 20.5),
            metric("count", sp.DataType.INT8, -3),
            metric("label", sp.DataType.STRING, "hello"),
            metric("big", sp.DataType.UINT64, 2**63 + 1),
            metric("on", sp.DataType.BOOLEAN, True),
        ],
    )
    pump = sp.Device(
        "pump",
        metrics=[
            metric("rpm", sp.DataType.UINT32, 1500),
            metric("setpoint", sp.DataType.DOUBLE, 1.0),
        ],
        cmd_callback=on_dcmd,
    )
    node.register(pump)
    node.connect(host, port=port, blocking=False)
    print("connected", flush=True)
    for line in sys.stdin:
        words = line.split()
        if words and words[0] == "temp":
            node.update([metric("temp", sp.DataType.DOUBLE, float(words[1]))])
            print("sent", flush=True)


if __name__ == "__main__":
    main()
