#!/usr/bin/env bash
# `make cluster-demo`: starts docker-compose.yml's cluster (1 Consul server, 2 hello apps,
# 1 client), waits until the client's HAProxy routes to both apps, and shows the answers.
# Needs the `basenode` image (`make image`). Stop it with `docker-compose down`.
set -euo pipefail
cd "$(dirname "$0")/.."

compose() { docker-compose "$@"; }
log() { printf 'cluster-demo: %s\n' "$*" >&2; }

compose up -d --build
log "waiting for the client to reach both apps through 127.0.0.1:9302 (up to 60 s)"
deadline=$((SECONDS + 60))
while :; do
    out=$(compose exec -T client python3 /demo/fetch.py http://127.0.0.1:9302/ 10 2>/dev/null || true)
    if grep -q 'hello from app1' <<<"$out" && grep -q 'hello from app2' <<<"$out"; then
        break
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
        log "the client does not reach both apps; last answers:"
        printf '%s\n' "$out" >&2
        compose ps >&2
        compose logs --tail=30 >&2
        exit 1
    fi
    sleep 0.5
done
log "20 requests from the client container to 127.0.0.1:9302:"
compose exec -T client python3 /demo/fetch.py http://127.0.0.1:9302/ 20
cat >&2 <<'TXT'
cluster-demo: try next:
  docker-compose stop app1        # drained, then stopped: the client's requests keep succeeding
  docker-compose exec client python3 /demo/fetch.py http://127.0.0.1:9302/ 10
  docker-compose start app1
  docker-compose down             # stop and remove the cluster
TXT
