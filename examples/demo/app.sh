#!/bin/sh
# The demo's application: it runs under basenode and reaches the `web` service on 127.0.0.1:9302.
set -eu
consul="http://$CONSUL_HTTP_ADDR"
say() { printf '\n== %s\n' "$*"; }
register() {  # name port
    curl -fsS -X PUT "$consul/v1/agent/service/register" \
        -d "{\"ID\":\"web-$1\",\"Name\":\"web\",\"Address\":\"127.0.0.1\",\"Port\":$2}"
}
requests() {  # n: who answers n requests through HAProxy
    i=0
    while [ "$i" -lt "$1" ]; do curl -fsS http://127.0.0.1:9302/ || echo "(request failed)"; i=$((i + 1)); done
}
wait_for() {  # text: until a request through HAProxy answers with it
    n=0
    until curl -fsS http://127.0.0.1:9302/ 2>/dev/null | grep -q "$1"; do
        n=$((n + 1)); [ "$n" -lt 200 ] || { echo "timed out waiting for $1"; exit 1; }; sleep 0.05
    done
}

say "no instance registered yet: HAProxy answers 503 at once"
curl -sS -o /dev/null -w 'HTTP %{http_code}\n' http://127.0.0.1:9302/

say "register alpha and beta in Consul: both answer, balanced"
register alpha 18081
register beta 18082
wait_for alpha; wait_for beta
requests 4

say "deregister beta: only alpha answers (runtime API, no HAProxy reload)"
curl -fsS -X PUT "$consul/v1/agent/service/deregister/web-beta"
sleep 0.3
requests 3

say "register beta again: traffic follows"
register beta 18082
wait_for beta
requests 2

say "basenode status"
basenode_cmd=$(dirname "$0")/../../dist/basenode
python3 "$basenode_cmd" status --config "$BASENODE_DEMO_CONFIG"
say "done: the app exits, basenode stops Consul and HAProxy and exits with the app's status"
