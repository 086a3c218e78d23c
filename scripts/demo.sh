#!/usr/bin/env bash
# `make demo`: basenode as a container would run it, on this machine's loopback.
#
# basenode runs its own Consul agent (a one-node server), the sync loop and HAProxy, and
# then the application: examples/demo/app.sh, which registers two HTTP backends in Consul,
# sends requests through 127.0.0.1:9302, changes the catalog and shows traffic following it.
# When the app exits, basenode stops everything and exits with the app's status.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export PATH="$root/.deps/bin:$PATH"
work=$(mktemp -d /tmp/basenode-demo.XXXXXX)
backends=()
cleanup() {
    for pid in "${backends[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# Two tiny HTTP backends that answer with their name.
for name in alpha beta; do
    mkdir -p "$work/$name"
    echo "hello from $name" >"$work/$name/index.html"
done
python3 -m http.server 18081 --bind 127.0.0.1 --directory "$work/alpha" >/dev/null 2>&1 & backends+=($!)
python3 -m http.server 18082 --bind 127.0.0.1 --directory "$work/beta" >/dev/null 2>&1 & backends+=($!)

cat >"$work/basenode.toml" <<TOML
state_dir = "$work/state"

[routes.web]
port = 9302
mode = "http"

[consul]
# A one-node cluster on loopback, its data in the demo's temp dir.
data_dir = "$work/consul"
extra_args = ["-bind=127.0.0.1", "-dns-port=-1"]
TOML

echo "demo: basenode run --config $work/basenode.toml -- examples/demo/app.sh"
export CONSUL_SERVER=1 CONSUL_BOOTSTRAP_EXPECT=1 CONSUL_HTTP_ADDR=127.0.0.1:18500
export BASENODE_STATUS_ADDR=127.0.0.1:18089 BASENODE_DEMO_CONFIG="$work/basenode.toml"
exec_status=0
python3 "$root/dist/basenode" run --config "$work/basenode.toml" -- "$root/examples/demo/app.sh" || exec_status=$?
echo "demo: basenode exited with status $exec_status (the app's)"
exit "$exec_status"
