# basenode: a base image whose containers find each other through Consul and reach every
# service on 127.0.0.1:<route port> through HAProxy. basenode is PID 1 and supervises both.
#
#   make image            (builds dist/basenode, then: docker build -t basenode .)
#
# Derive an application image from it:
#   FROM basenode
#   COPY app /app
#   ENV SERVICE_NAME=web SERVICE_PORT=8080 BASENODE_ROUTES=postgresql:9301
#   CMD ["python3", "/app/server.py"]        # basenode runs it as `basenode run -- CMD`
#
# A Consul server is the same image with CONSUL_SERVER=1 and CONSUL_BOOTSTRAP_EXPECT=N.

ARG DEBIAN_IMAGE=debian:bookworm-slim

# --- Consul 1.8.7: Debian's own build from bullseye (bookworm has no consul package) ---
FROM ${DEBIAN_IMAGE} AS consul
ARG CONSUL_VERSION=1.8.7+dfsg1-2+b3
ARG CONSUL_SHA256=e4e888bba104daba1d9161f49bfc52649a7e4efd45b1a7ead5bc54f2cb9c89d9
# When bullseye leaves deb.debian.org: --build-arg BULLSEYE_MIRROR=http://archive.debian.org/debian
ARG BULLSEYE_MIRROR=http://deb.debian.org/debian
# A one-off bullseye source list, used for this download only; the .deb must match the
# checksum the project pins (the same one scripts/install-system-deps.sh checks).
RUN set -eux; \
    echo "deb ${BULLSEYE_MIRROR} bullseye main" >/tmp/bullseye.list; \
    opts="-o Dir::Etc::SourceList=/tmp/bullseye.list -o Dir::Etc::SourceParts=/dev/null -o APT::Architecture=amd64"; \
    apt-get $opts update -qq; \
    cd /tmp; \
    apt-get $opts download "consul=${CONSUL_VERSION}"; \
    deb="consul_$(echo "${CONSUL_VERSION}" | sed 's/:/%3a/')_amd64.deb"; \
    echo "${CONSUL_SHA256}  ${deb}" | sha256sum --check --strict; \
    dpkg -x "${deb}" /tmp/consul; \
    /tmp/consul/usr/bin/consul version | grep -q '^Consul v1.8.7'

# --- the image ---
FROM ${DEBIAN_IMAGE}
# HAProxy 2.6 and python3 from Debian; the package creates the unprivileged `haproxy`
# user and group that HAProxy's workers run as. No SSH server, no keys, no init system:
# basenode is PID 1.
RUN set -eux; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends haproxy python3; \
    rm -rf /var/lib/apt/lists/* /var/log/*.log; \
    id haproxy; \
    install -d -m 0700 /run/basenode; \
    install -d -m 0755 /etc/basenode

COPY --from=consul /tmp/consul/usr/bin/consul /usr/local/bin/consul
COPY --from=consul /tmp/consul/usr/share/doc/consul/copyright /usr/share/doc/consul/copyright
# dist/basenode is built mode 0755 (`make zipapp`); COPY keeps the mode.
COPY dist/basenode /usr/local/bin/basenode

# shiv unpacks the bundled packages once; doing it here, into a root-owned directory,
# makes the first start fast and lets the image run with a read-only root file system.
ENV SHIV_ROOT=/usr/local/lib/basenode \
    BASENODE_STATE_DIR=/run/basenode
RUN set -eux; \
    basenode version; \
    chmod -R go-w "$SHIV_ROOT"

# Only what a cluster needs from other containers: Serf LAN gossip (tcp+udp) and, on
# server nodes, server RPC. Consul's HTTP API and every HAProxy frontend bind 127.0.0.1.
EXPOSE 8301/tcp 8301/udp 8300/tcp

# `basenode health` works in every mode: from the sync loop's status endpoint, or, with no sync loop
# (--no-consul --no-haproxy: a plain supervisor), from PID 1's control socket in BASENODE_STATE_DIR.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 CMD ["basenode", "health"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["basenode", "run"]
