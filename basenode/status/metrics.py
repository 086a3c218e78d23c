"""The status document (and the sync duration histogram) in Prometheus' text format, for /metrics."""

from __future__ import annotations

from typing import Any, Dict, List

from .state import APPLY_HOWS, DURATION_BUCKETS, TEMPLATE_ERROR_KINDS, SyncState


def metrics_text(doc: Dict[str, Any], state: SyncState) -> bytes:
    """The document (and the sync duration histogram) in Prometheus' text format."""
    # Imported on the first scrape: a basenode nobody scrapes does not pay for it.
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    def gauge(name: str, doc_text: str, value: float) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc_text, value=value)

    def counter(name: str, doc_text: str, value: float) -> CounterMetricFamily:
        return CounterMetricFamily(name, doc_text, value=value)

    families: List[Any] = [
        gauge("basenode_healthy", "1 when /health passes", 1 if doc["healthy"] else 0),
        counter("basenode_syncs", "successful syncs (applies, including unchanged)", doc["sync"]["count"]),
        counter("basenode_render_errors", "templates that failed to load or render", state.render_errors),
        counter("basenode_check_failures", "rendered configs haproxy -c rejected", state.check_failures),
        counter("basenode_apply_errors", "configs that could not be written or applied", state.apply_errors),
        counter("basenode_consul_errors", "failed Consul queries", doc["consul"]["errors"]),
        # A blocking query to an unreachable server just waits: no error is counted until it times out.
        gauge(
            "basenode_consul_ok",
            "1 when the agent answers, knows a leader and reads work",
            0 if any(p.startswith("consul: ") for p in doc["problems"]) else 1,
        ),
        gauge("basenode_routes", "routes HAProxy serves", len(doc["routes"])),
    ]
    watch_doc = doc.get("watch")
    if watch_doc:
        families += [
            gauge("basenode_watch_queries", "Consul queries followed", watch_doc["queries"]),
            gauge("basenode_watch_connections", "connections open to the agent", watch_doc["connections"]),
            gauge(
                "basenode_watch_catalog_services",
                "services past watch.max_conns, on the catalog-wide watch",
                len(watch_doc["catalog_watch"]),
            ),
            counter("basenode_watch_requests", "requests sent to the agent", watch_doc["requests"]),
            counter(
                "basenode_watch_received_bytes", "bytes read from the agent", watch_doc["bytes_received"]
            ),
        ]
    if state.last_sync is not None:
        families.append(
            gauge("basenode_last_sync_timestamp_seconds", "time of the last successful sync", state.last_sync)
        )
    applies = CounterMetricFamily("basenode_applies", "changes applied, by how", labels=["how"])
    for how in APPLY_HOWS:
        applies.add_metric([how], state.applies[how])
    instances = GaugeMetricFamily("basenode_route_instances", "healthy instances", labels=["service"])
    for route in doc["routes"]:
        instances.add_metric([route["service"]], route["healthy"])
    up = GaugeMetricFamily("basenode_program_up", "1 when the program runs", labels=["program"])
    restarts = CounterMetricFamily("basenode_program_restarts", "restarts of the program", labels=["program"])
    for program in doc["programs"] or ():
        up.add_metric([program["name"]], 1 if program["state"] == "running" else 0)
        restarts.add_metric([program["name"]], program["restarts"])
    # observe() keeps the buckets cumulative already; every sync was observed once.
    buckets = [(repr(bound), count) for bound, count in zip(DURATION_BUCKETS, state.bucket_counts)]
    buckets.append(("+Inf", state.syncs))
    duration = HistogramMetricFamily(
        "basenode_sync_duration_seconds",
        "render + check + apply time of a sync",
        buckets=buckets,
        sum_value=state.duration_sum,
    )
    template_errors = CounterMetricFamily(
        "basenode_template_errors",
        "template renders, plugins, checks and reloads that failed",
        labels=["template", "kind"],
    )
    template_writes = CounterMetricFamily(
        "basenode_template_writes", "destinations written", labels=["template"]
    )
    for name, template in state.templates.items():
        for kind in TEMPLATE_ERROR_KINDS:
            template_errors.add_metric([name, kind], getattr(template, kind))
        template_writes.add_metric([name], template.writes)
    families += [applies, instances, up, restarts, duration, template_errors, template_writes]

    class Collector:
        def collect(self) -> Any:
            return iter(families)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector())
    return generate_latest(registry)
